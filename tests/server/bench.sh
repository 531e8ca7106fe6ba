#!/usr/bin/env bash
# lathe-server benchmark (not in ctest): wrk against GET /api/v1/jobs/{id}, against job
# submission (POST /api/v1/jobs), and claim throughput with 8 workers competing (8 connections
# POSTing /api/v1/workers/claim). Prints requests/s and p99 for each.
#   tests/server/bench.sh [BUILD_DIR] [SECONDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
secs=${2:-10}
bin=$build/bin
command -v wrk >/dev/null || { echo "bench: wrk not found"; exit 77; }
port=${LATHE_BENCH_PORT:-18190}
data=$(mktemp -d /tmp/lathe-bench-XXXXXX)
work=$(mktemp -d /tmp/lathe-bench-w-XXXXXX)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$data" "$work"
}
trap cleanup EXIT

admin=$("$bin/lathe-server" token create --data "$data" --scope admin --name bench)
worker=$("$bin/lathe-server" token create --data "$data" --scope worker --name bench-worker)
LATHE_CLI=$bin/lathe "$bin/lathe-server" --listen 127.0.0.1:$port --data "$data" 2>"$work/server.log" &
server_pid=$!
base=http://127.0.0.1:$port
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.05; done

"$bin/server_make_h5" "$work/tiny.h5"
ds=$(curl -sf -H "Authorization: Bearer $admin" -H 'Content-Type: application/octet-stream' \
  --data-binary @"$work/tiny.h5" "$base/api/v1/datasets?name=tiny.h5" | sed -E 's/.*"id":"(ds_[0-9a-f]+)".*/\1/')
body="{\"kind\":\"inspect\",\"spec\":{\"dataset\":\"$ds\"}}"
job=$(curl -sf -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' -d "$body" \
  "$base/api/v1/jobs" | sed -E 's/^\{"id":"(job_[0-9a-f]+)".*/\1/')

cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $admin"
LUA
cat >"$work/claim.lua" <<LUA
-- Each connection is a worker; counts 200 (claimed) and 204 (queue empty) answers.
local threads = {}
local n = 0
function setup(thread)
  n = n + 1
  thread:set("id", n)
  table.insert(threads, thread)
end
function init(args)
  claimed = 0
  empty = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer $worker"
  wrk.body = '{"worker":"bench:' .. id .. ':cpu","device":"cpu","kinds":["inspect"],"wait_s":0}'
end
function response(status, headers, body)
  if status == 200 then claimed = claimed + 1 elseif status == 204 then empty = empty + 1 end
end
function done(summary, latency, requests)
  local c, e = 0, 0
  for _, t in ipairs(threads) do c = c + t:get("claimed"); e = e + t:get("empty") end
  io.write(string.format("claims: %d jobs claimed, %d empty answers, %.0f claims/s\n", c, e, c / (summary.duration / 1e6)))
end
LUA

report() { # name wrk-output
  local rps p99
  rps=$(sed -nE 's/^Requests\/sec: +([0-9.]+).*/\1/p' "$2")
  p99=$(sed -nE 's/^ +99% +([0-9.]+[a-z]+).*/\1/p' "$2")
  printf '%-34s %10s req/s   p99 %s\n' "$1" "$rps" "$p99"
}
echo "lathe-server bench: $(nproc) cores, ${secs}s per run, $(date -u +%FT%TZ)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other processes share these cores)"
for c in 8 32; do
  wrk -t2 -c$c -d"${secs}s" --latency -H "Authorization: Bearer $admin" "$base/api/v1/jobs/$job" >"$work/get.txt"
  report "GET /api/v1/jobs/{id} ($c conns)" "$work/get.txt"
done
wrk -t2 -c16 -d"${secs}s" --latency -s "$work/post.lua" "$base/api/v1/jobs" >"$work/post.txt"
report "POST /api/v1/jobs (16 conns)" "$work/post.txt"
queued=$(curl -sf -H "Authorization: Bearer $admin" "$base/metrics" | sed -nE 's/^lathe_jobs\{state="queued"\} ([0-9]+)/\1/p')
wrk -t2 -c8 -d"${secs}s" --latency -s "$work/claim.lua" "$base/api/v1/workers/claim" >"$work/claim.txt"
report "POST /api/v1/workers/claim (8 workers)" "$work/claim.txt"
grep '^claims:' "$work/claim.txt"
m=$(curl -sf -H "Authorization: Bearer $admin" "$base/metrics")
running=$(echo "$m" | sed -nE 's/^lathe_jobs\{state="running"\} ([0-9]+)/\1/p')
echo "queued before claims: $queued; running after: $running (each claimed exactly once: $(sqlite3 "$data/lathe.db" 'SELECT count(*) FROM jobs WHERE attempt > 1') claimed twice)"

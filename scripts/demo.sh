#!/usr/bin/env bash
# Starts a local Lathe demo: installs and builds (scripts/setup.sh), then runs lathe-server and one
# CPU lathe-worker on 127.0.0.1, prints an admin token once, registers the demo data
# (Fashion-MNIST converted to HDF5; the CIFAR-10 JPEG data and the ResNet-20 models of
# ../shared/data when that folder exists), queues one real training job and prints the URL.
#   scripts/demo.sh          start (stops a previous demo first)
#   scripts/demo.sh stop     stop the demo's server and worker
# Environment: LATHE_DEMO_PORT (default 8080), LATHE_DEMO_DIR (default build/demo).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
demo=${LATHE_DEMO_DIR:-$root/build/demo}
port=${LATHE_DEMO_PORT:-8080}
url="http://127.0.0.1:$port"

stop_demo() {
  for name in worker server; do
    if [ -f "$demo/$name.pid" ]; then
      pid=$(cat "$demo/$name.pid")
      if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
      fi
      rm -f "$demo/$name.pid"
    fi
  done
}
if [ "${1:-}" = "stop" ]; then stop_demo; echo "demo stopped"; exit 0; fi

scripts/setup.sh
stop_demo
mkdir -p "$demo"
bin=$root/build/bin

setsid nohup "$bin/lathe-server" --listen "127.0.0.1:$port" --data "$demo/data" >"$demo/server.log" 2>&1 </dev/null &
echo $! >"$demo/server.pid"
for _ in $(seq 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done
curl -sf "$url/healthz" >/dev/null || { echo "lathe-server did not start; see $demo/server.log"; tail -n 20 "$demo/server.log"; exit 1; }

admin=$("$bin/lathe-server" token create --data "$demo/data" --scope admin --name demo-admin)
worker=$("$bin/lathe-server" token create --data "$demo/data" --scope worker --name demo-worker)
setsid nohup "$bin/lathe-worker" --server "$url" --token "$worker" --device cpu --cache "$demo/cache" \
  --name "demo-cpu" >"$demo/worker.log" 2>&1 </dev/null &
echo $! >"$demo/worker.pid"

json_field() { /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
upload() { # kind file name → id
  curl -sf -X POST -H "Authorization: Bearer $admin" -H "Content-Type: application/octet-stream" \
    --data-binary "@$2" "$url/api/v1/$1?name=$3" | json_field id
}

fmnist=$(upload datasets "$root/build/data/fashion-mnist.h5" fashion-mnist.h5)
echo "registered Fashion-MNIST as $fmnist"
if [ -d "$root/../shared/data" ]; then
  cifar=$(upload datasets "$root/../shared/data/cifar10-jpeg.h5" cifar10-jpeg.h5)
  m1=$(upload models "$root/../shared/data/models/resnet20-cifar10.onnx" resnet20-cifar10.onnx)
  m2=$(upload models "$root/../shared/data/models/resnet20-cifar10-bn.onnx" resnet20-cifar10-bn.onnx)
  echo "registered CIFAR-10 JPEG as $cifar, ResNet-20 models as $m1 and $m2"
fi

# The example spec of the train kind, pointed at the uploaded dataset.
job=$(/usr/bin/python3 - "$fmnist" <<'PY' | curl -sf -X POST -H "Authorization: Bearer $admin" -H "Content-Type: application/json" --data-binary @- "$url/api/v1/jobs" | json_field id
import json, sys
ex = json.load(open("schema/jobs/train.example.json"))
ex["spec"]["dataset"] = sys.argv[1]
print(json.dumps({"kind": ex["kind"], "spec": ex["spec"]}))
PY
)
cat <<TXT

Lathe is running at $url
Admin token (shown once; create more with: build/bin/lathe-server token create --data $demo/data --scope admin):

  $admin

Queued job $job (small CNN on Fashion-MNIST): $url/#/jobs/$job
Logs: $demo/server.log, $demo/worker.log.  Stop with: scripts/demo.sh stop
TXT

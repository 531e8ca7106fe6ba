#!/usr/bin/env bash
# Installs, builds and runs every test suite: the full suite on the normal build, then the
# suites labelled `asan` (unit tests, server bad-input tests) on the sanitizer build. The libFuzzer
# targets carry their own sanitizers and run once, in the first pass.
# Ends with one line "N passed, N failed[, N skipped]".
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh --asan || exit 1

export LATHE_ROOT="$root"
# Idle OpenMP threads must not spin: they would take the 2 cores from OpenBLAS (lathe sets this
# itself; test programs get it here).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
passed=0 failed=0 skipped=0 status=0
run_ctest() { # dir label-args...
  local dir=$1; shift
  local log="$dir/ctest.log"
  ctest --test-dir "$dir" --output-on-failure --timeout 1500 -j"${LATHE_TEST_JOBS:-2}" "$@" 2>&1 | tee "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  local total f s
  total=$(sed -nE 's/.*tests passed, [0-9]+ tests failed out of ([0-9]+).*/\1/p' "$log" | tail -n1)
  f=$(sed -nE 's/.*tests passed, ([0-9]+) tests failed out of.*/\1/p' "$log" | tail -n1)
  s=$(grep -cE '\*\*\*Skipped|Not Run' "$log" || true)
  passed=$((passed + ${total:-0} - ${f:-0} - s)); failed=$((failed + ${f:-0})); skipped=$((skipped + s))
}
echo "== full suite (build/)"
run_ctest build
echo "== sanitizer suite (build-asan/, label asan)"
run_ctest build-asan -L asan
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
exit $status

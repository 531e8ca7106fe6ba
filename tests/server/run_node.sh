#!/usr/bin/env bash
# Runs a server test script with node 20, finding npm packages in the repo root's node_modules.
#   run_node.sh SCRIPT.mjs LATHE_SERVER LATHE_CLI MAKE_H5
# Exits 77 (skipped) when node or the packages are absent.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
command -v node >/dev/null || { echo "node not found: skipped"; exit 77; }
[ -d "$root/node_modules/ajv" ] || { echo "$root/node_modules/ajv missing (run scripts/setup.sh): skipped"; exit 77; }
export NODE_PATH="$root/node_modules"
node "$@"
rc=$?
# Node 20 exits 13, silently, when the event loop empties under a pending top-level await.
[ "$rc" -eq 13 ] && echo "node exited 13: the test awaited an event that never came (unsettled top-level await)"
exit "$rc"

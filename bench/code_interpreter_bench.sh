#!/usr/bin/env bash
# The code interpreter's benchmark (issue 16): `moatd serve` with the code-interpreter-v1
# template baked, driven by bench/code_interpreter_bench.mjs through the official client
# (tests/compat's locked npm packages).
#
# usage: bench/code_interpreter_bench.sh [BUILD_DIR] [JSON_PATH]
# CI_BENCH_N: iterations (default 10).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
json_path=${2:-$build/bench/code_interpreter.json}
moatd=$build/bin/moatd
[ -x "$moatd" ] || { echo "code_interpreter_bench: build first" >&2; exit 1; }
[ -f "$build/guest/code-interpreter.ext4" ] \
  || { echo "code_interpreter_bench: $build/guest has no code-interpreter.ext4 (make guest)" >&2; exit 1; }
(cd "$root/tests/compat" && { npm ci --offline --no-audit --no-fund >/dev/null 2>&1 || npm ci --no-audit --no-fund >/dev/null; })

. "$root/tests/support/moatd_procs.sh"
declare -A pid url
procs_bench_begin code_interpreter_bench

url[serve]=http://127.0.0.1:$(procs_free_port)
mkdir -p "$work/data"
MOAT_API_KEY=$key "$moatd" serve --listen "${url[serve]#http://}" --data-dir "$work/data" \
  --guest-dir "$build/guest" --accel auto --net-pool "10.228.$(($$ % 250)).0/24" \
  --dns 192.0.2.53 --warm-sandboxes 2 >>"$work/serve.log" 2>&1 &
pid[serve]=$!
procs_wait_healthy serve
# The template is baked in the background at start: the benchmark begins once it is.
for _ in $(seq 1 600); do
  grep -q 'event=agent.builtin_ready template=code-interpreter-v1' "$work/serve.log" && break
  grep -q 'event=agent.builtin_bake_failed' "$work/serve.log" \
    && { procs_say "the code-interpreter-v1 bake failed"; exit 1; }
  sleep 1
done
bake_ms=$(grep -o 'event=agent.builtin_ready template=code-interpreter-v1 ms=[0-9]*' "$work/serve.log" | cut -d= -f4 || true)
[ -n "$bake_ms" ] || { procs_say "code-interpreter-v1 was not baked within 600 s"; exit 1; }
accel=$(grep -o 'event=moatd.accel accel=[a-z]*' "$work/serve.log" | head -1 | cut -d= -f3)
CI_CLIENT="$root/tests/compat/node_modules/@e2b/code-interpreter/dist/index.mjs" \
  E2B_API_URL=${url[serve]} E2B_SANDBOX_URL=${url[serve]} E2B_API_KEY=$key \
  node "$root/bench/code_interpreter_bench.mjs" >"$work/result.json"
mkdir -p "$(dirname "$json_path")"
python3 - "$work/result.json" "$json_path" "$accel" "$bake_ms" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r = {"bench": "code_interpreter", "accel": sys.argv[3], "bake_ms": int(sys.argv[4]), **r}
open(sys.argv[2], "w").write(json.dumps(r, indent=2) + "\n")
print(json.dumps(r, indent=2))
PY

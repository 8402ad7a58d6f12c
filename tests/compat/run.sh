#!/usr/bin/env bash
# The compatibility suite: the official e2b SDK (package-lock.json) against a real moatd.
# Builds nothing. Usage: tests/compat/run.sh [BUILD_DIR]   (default: build)
# Installs the locked npm packages (npm ci, offline cache first), starts BUILD_DIR/bin/moatd on
# a free loopback port with a temp data dir and a known key, waits for /healthz, runs the tests
# with Node's test runner, and always stops moatd and checks that no VMM of it is left.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
case "$build" in /*) ;; *) build=$root/$build ;; esac
moatd=$build/bin/moatd
[ -x "$moatd" ] || { echo "compat: $moatd not built" >&2; exit 1; }
[ -f "$build/guest/vmlinux" ] || { echo "compat: $build/guest has no guest image (make guest)" >&2; exit 1; }

cd "$here"
if ! npm ci --offline --no-audit --no-fund >/dev/null 2>&1; then
  npm ci --no-audit --no-fund >/dev/null
fi

data=$(mktemp -d /tmp/moat-compat.XXXXXX)
key="moat_compat_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
moatd_pid=
cleanup() {
  local rc=$?
  if [ -n "$moatd_pid" ] && kill -0 "$moatd_pid" 2>/dev/null; then
    kill -TERM "$moatd_pid"
    for _ in $(seq 1 100); do kill -0 "$moatd_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$moatd_pid" 2>/dev/null; then
      echo "compat: moatd did not stop on SIGTERM; killing it" >&2
      kill -KILL "$moatd_pid"; rc=1
    fi
    wait "$moatd_pid" 2>/dev/null || true
  fi
  if pgrep -f -- "$data" >/dev/null; then
    echo "compat: processes left behind mentioning $data:" >&2
    pgrep -af -- "$data" >&2; rc=1
  fi
  if [ "$rc" != 0 ] && [ -f "$data/moatd.log" ]; then
    echo "compat: last lines of moatd's log:" >&2; tail -n 40 "$data/moatd.log" >&2
  fi
  rm -rf "$data"
  exit "$rc"
}
trap cleanup EXIT INT TERM

# A free loopback port: bind port 0, read what the kernel chose, release it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MOAT_API_KEY=$key "$moatd" serve --listen "127.0.0.1:$port" --data-dir "$data" --accel auto \
  --guest-dir "$build/guest" >"$data/moatd.log" 2>&1 &
moatd_pid=$!

url=http://127.0.0.1:$port
for _ in $(seq 1 600); do
  curl -fs "$url/healthz" >/dev/null 2>&1 && break
  kill -0 "$moatd_pid" 2>/dev/null || { echo "compat: moatd exited during start-up" >&2; exit 1; }
  sleep 0.1
done
curl -fs "$url/healthz" >/dev/null || { echo "compat: moatd did not answer /healthz" >&2; exit 1; }

E2B_API_KEY=$key E2B_API_URL=$url E2B_SANDBOX_URL=$url node --test --test-concurrency=1

# The moat CLI against the same moatd: create, exec (output and exit code), cp both ways, kill.
moat=$build/bin/moat
[ -x "$moat" ] || { echo "compat: $moat not built" >&2; exit 1; }
export MOAT_API_URL=$url MOAT_API_KEY=$key
cli_fail() { echo "compat: moat CLI: $*" >&2; exit 1; }
sbx=$("$moat" sandbox create --json --timeout 60 | python3 -c 'import json,sys; print(json.load(sys.stdin)["sandboxID"])')
[ -n "$sbx" ] || cli_fail "create printed no sandboxID"
out=$("$moat" exec "$sbx" -- echo hi) || cli_fail "exec echo hi exited $?"
[ "$out" = hi ] || cli_fail "exec echo hi printed '$out'"
rc=0; "$moat" exec "$sbx" -- sh -c 'exit 3' || rc=$?
[ "$rc" = 3 ] || cli_fail "exec 'exit 3' exited $rc"
head -c 70000 /dev/urandom >"$data/cli-in.bin"
"$moat" cp "$data/cli-in.bin" "$sbx:/tmp/cli-in.bin" || cli_fail "cp in failed"
"$moat" cp "$sbx:/tmp/cli-in.bin" "$data/cli-out.bin" || cli_fail "cp out failed"
cmp -s "$data/cli-in.bin" "$data/cli-out.bin" || cli_fail "cp round trip changed the bytes"
"$moat" sandbox kill "$sbx" >/dev/null || cli_fail "kill failed"
echo "compat: moat CLI ok"

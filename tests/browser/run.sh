#!/usr/bin/env bash
# The dashboard in a real browser (dashboard.test.mjs): Debian's chromium, driven headless by
# puppeteer-core, against a real moatd, with the official e2b SDK creating the sandboxes.
# Builds nothing. Usage: tests/browser/run.sh [BUILD_DIR]   (default: build)
# Installs the locked npm packages (npm ci, offline cache first; no browser is downloaded),
# starts BUILD_DIR/bin/moatd on a free loopback port with a temp data dir and a known key (no
# built-in template baked), runs the test with Node's test runner, and always stops moatd and
# chromium and removes the temp dir. Screenshots: BUILD_DIR/artifacts/dashboard/*.png.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
case "$build" in /*) ;; *) build=$root/$build ;; esac
moatd=$build/bin/moatd
chromium=${MOAT_CHROMIUM:-/usr/bin/chromium}
[ -x "$moatd" ] || { echo "browser: $moatd not built" >&2; exit 1; }
[ -f "$build/guest/vmlinux" ] || { echo "browser: $build/guest has no guest image (make guest)" >&2; exit 1; }
[ -f "$build/dashboard/index.html" ] || { echo "browser: $build/dashboard not built (cmake --build $build --target dashboard)" >&2; exit 1; }
[ -x "$chromium" ] || { echo "browser: $chromium not found (scripts/setup-deps.sh installs chromium)" >&2; exit 1; }

cd "$here"
export PUPPETEER_SKIP_DOWNLOAD=1
if ! npm ci --offline --no-audit --no-fund --loglevel=error >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi

data=$(mktemp -d /tmp/moat-browser.XXXXXX)
key="e2b_$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')"
artifacts=$build/artifacts/dashboard
moatd_pid=
cleanup() {
  local rc=$?
  # chromium's processes (puppeteer closes them; one left by a crash is named by the profile
  # directory inside $data), then moatd.
  local left
  left=$(pgrep -f -- "$data/chromium" || true)
  if [ -n "$left" ]; then
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
  if [ -n "$moatd_pid" ] && kill -0 "$moatd_pid" 2>/dev/null; then
    kill -TERM "$moatd_pid"
    for _ in $(seq 1 100); do kill -0 "$moatd_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$moatd_pid" 2>/dev/null; then
      echo "browser: moatd did not stop on SIGTERM; killing it" >&2
      kill -KILL "$moatd_pid"; rc=1
    fi
    wait "$moatd_pid" 2>/dev/null || true
  fi
  if pgrep -f -- "$data" >/dev/null; then
    echo "browser: processes left behind mentioning $data:" >&2
    pgrep -af -- "$data" >&2; rc=1
  fi
  if [ "$rc" != 0 ] && [ -f "$data/moatd.log" ]; then
    echo "browser: last lines of moatd's log:" >&2; tail -n 40 "$data/moatd.log" >&2
  fi
  rm -rf "$data"
  exit "$rc"
}
trap cleanup EXIT INT TERM

# A free loopback port: bind port 0, read what the kernel chose, release it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Network slots from a pool of this run's own; the sandboxes' resolver is a documentation
# address (no test resolves a name). One warm clone is enough for the sandboxes created here.
MOAT_API_KEY=$key "$moatd" serve --listen "127.0.0.1:$port" --data-dir "$data" --accel auto \
  --guest-dir "$build/guest" --net-pool "10.228.$(($$ % 250)).0/24" --domain moat.test \
  --dns 192.0.2.53 --prebake-templates=false --warm-sandboxes 2 --ready-slots 3 \
  >"$data/moatd.log" 2>&1 &
moatd_pid=$!

url=http://127.0.0.1:$port
for _ in $(seq 1 600); do
  curl -fs "$url/healthz" >/dev/null 2>&1 && break
  kill -0 "$moatd_pid" 2>/dev/null || { echo "browser: moatd exited during start-up" >&2; exit 1; }
  sleep 0.1
done
curl -fs "$url/healthz" >/dev/null || { echo "browser: moatd did not answer /healthz" >&2; exit 1; }
curl -fs "$url/dashboard/" >/dev/null || { echo "browser: moatd does not serve /dashboard/" >&2; exit 1; }

rm -rf "$artifacts"
mkdir -p "$artifacts"
E2B_API_KEY=$key E2B_API_URL=$url E2B_SANDBOX_URL=$url MOAT_ADMIN_KEY=$key \
  MOAT_CHROMIUM=$chromium MOAT_BROWSER_PROFILE=$data/chromium MOAT_ARTIFACTS_DIR=$artifacts \
  node --test --test-concurrency=1 dashboard.test.mjs

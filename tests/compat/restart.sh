#!/usr/bin/env bash
# Restarts through the public API: a moatd started with --keep-sandboxes-on-stop leaves its
# sandboxes running on SIGTERM, and the next moatd on the same data dir re-adopts them (GET
# answers 200, exec works, files and processes are intact); a sandbox whose VMM died while no
# moatd ran is dropped (404); a moatd killed with SIGKILL leaves its sandboxes to the next one
# too; a moatd without the flag kills them on SIGTERM. Builds nothing.
# Usage: tests/compat/restart.sh [BUILD_DIR]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
case "$build" in /*) ;; *) build=$root/$build ;; esac
moatd=$build/bin/moatd
moat=$build/bin/moat
for b in "$moatd" "$moat"; do [ -x "$b" ] || { echo "restart: $b not built" >&2; exit 1; }; done
[ -f "$build/guest/vmlinux" ] || { echo "restart: $build/guest has no guest image (make guest)" >&2; exit 1; }

data=$(mktemp -d /tmp/moat-restart.XXXXXX)
key="moat_restart_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
# A pool of its own: other moatds (make up, the compat suite) may run beside this one.
pool="10.226.$(( $$ % 250 )).0/24"
moatd_pid=
fail() { echo "restart: $*" >&2; exit 1; }

stop_moatd() {
  [ -n "$moatd_pid" ] || return 0
  kill -TERM "$moatd_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$moatd_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$moatd_pid" 2>/dev/null; then
    echo "restart: moatd did not stop on SIGTERM; killing it" >&2
    kill -KILL "$moatd_pid"
  fi
  wait "$moatd_pid" 2>/dev/null || true
  moatd_pid=
}

cleanup() {
  local rc=$?
  stop_moatd
  # VMMs this script's moatds left (a failure between the two runs): ended by pid.
  local left
  left=$(pgrep -f -- "$data/sandboxes/" || true)
  if [ -n "$left" ]; then
    if [ "$rc" = 0 ]; then
      echo "restart: processes left behind mentioning $data:" >&2
      pgrep -af -- "$data/sandboxes/" >&2 || true
      rc=1
    fi
    for pid in $left; do kill -KILL "$pid" 2>/dev/null || true; done
    # A moatd without the flag adopts or cleans what is left (cgroups, slots) and kills it.
    start_moatd "" || true
    stop_moatd
  fi
  if [ "$rc" != 0 ] && [ -f "$data/moatd.log" ]; then
    echo "restart: last lines of moatd's log:" >&2; tail -n 40 "$data/moatd.log" >&2
  fi
  rm -rf "$data"
  exit "$rc"
}
trap cleanup EXIT INT TERM

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port

# start_moatd [--keep-sandboxes-on-stop]
start_moatd() {
  MOAT_API_KEY=$key "$moatd" serve --listen "127.0.0.1:$port" --data-dir "$data" --accel auto \
    --guest-dir "$build/guest" --net-pool "$pool" --ready-slots 1 --prebake-templates=false $1 \
    >>"$data/moatd.log" 2>&1 &
  moatd_pid=$!
  for _ in $(seq 1 600); do
    curl -fs "$url/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$moatd_pid" 2>/dev/null || { echo "restart: moatd exited during start-up" >&2; return 1; }
    sleep 0.1
  done
  echo "restart: moatd did not answer /healthz" >&2
  return 1
}

api() {  # api METHOD PATH [BODY]: prints the body, then the status on a line of its own
  curl -s -X "$1" -H "X-API-Key: $key" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} -w '\n%{http_code}' "$url$2"
}
create() {
  api POST /sandboxes '{"templateID":"base","timeout":600}' | head -n 1 \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["sandboxID"])'
}

# A sandbox's VM directory: a warm clone keeps its own local name, so it is found by the
# sandbox id in its state.json (a sandbox restored for the request is named by its id).
vm_dir() {  # ID
  local f
  f=$(grep -l "\"$1\"" "$data"/sandboxes/*/state.json 2>/dev/null | head -1)
  [ -n "$f" ] && dirname "$f" || echo "$data/sandboxes/$1"
}

export MOAT_API_URL=$url MOAT_API_KEY=$key
start_moatd --keep-sandboxes-on-stop || exit 1
kept=$(create) || fail "create failed"
dies=$(create) || fail "create of the second sandbox failed"
"$moat" exec "$kept" -- sh -c 'echo kept-file > /home/user/keep.txt' || fail "exec write failed"
"$moat" exec "$kept" -- sh -c "(setsid sh -c 'i=0; while :; do i=\$((i+1)); echo \$i > /tmp/n; sleep 0.1; done' >/dev/null 2>&1 &)" \
  || fail "exec of the counter failed"
sleep 1
n1=$("$moat" exec "$kept" -- cat /tmp/n) || fail "reading the counter failed"

stop_moatd
# The VMMs outlived moatd.
pgrep -f -- "$(vm_dir "$kept")/" >/dev/null || fail "the VMM of $kept did not survive moatd"
dies_vmm=$(pgrep -f -- "$(vm_dir "$dies")/") || fail "the VMM of $dies did not survive moatd"
# One dies while no moatd runs.
kill -KILL $dies_vmm
sleep 1

start_moatd "" || exit 1  # this one kills its sandboxes when stopped
out=$(api GET "/sandboxes/$kept")
[ "$(echo "$out" | tail -n 1)" = 200 ] || fail "GET /sandboxes/$kept after the restart: $out"
echo "$out" | head -n 1 | grep -q '"state":"running"' || fail "$kept is not running: $out"
out=$("$moat" exec "$kept" -- cat /home/user/keep.txt) || fail "exec after the restart failed"
[ "$out" = kept-file ] || fail "the file read '$out' after the restart"
n2=$("$moat" exec "$kept" -- cat /tmp/n) || fail "reading the counter after the restart failed"
[ "$n2" -gt "$n1" ] || fail "the counter stood still: $n1 then $n2"
out=$(api GET "/sandboxes/$dies")
[ "$(echo "$out" | tail -n 1)" = 404 ] || fail "GET /sandboxes/$dies (its VMM died): $out"
grep -q "event=api.sandbox_dropped sandbox=$dies .*marked and cleaned" "$data/moatd.log" \
  || fail "moatd did not log $dies as marked and cleaned"

# A moatd that crashes (SIGKILL: no shutdown at all) leaves its sandboxes to the next one too.
kill -KILL "$moatd_pid"
wait "$moatd_pid" 2>/dev/null || true
moatd_pid=
start_moatd "" || exit 1
out=$(api GET "/sandboxes/$kept")
[ "$(echo "$out" | tail -n 1)" = 200 ] || fail "GET /sandboxes/$kept after a crash: $out"
out=$("$moat" exec "$kept" -- cat /home/user/keep.txt) || fail "exec after a crash failed"
[ "$out" = kept-file ] || fail "the file read '$out' after a crash"

stop_moatd
if pgrep -f -- "$data/sandboxes/" >/dev/null; then fail "moatd without the flag left VMMs running"; fi
echo "restart: ok (counter $n1 -> $n2 across the restart)"

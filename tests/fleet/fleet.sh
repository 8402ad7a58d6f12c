#!/usr/bin/env bash
# The fleet harness (shared/FLEET.md §7, docs/fleet.md): a private PostgreSQL, two `moatd agent`
# hosts and two `moatd api` replicas on loopback, all real (VMs included), then the failure model:
#   1. the official SDK's compatibility cases through replica A, sandboxes landing on both hosts;
#   2. every sandbox answers through replica B too (control and envd, relayed to its host);
#   3. 20 concurrent creates through two tightly-overcommitted replicas never overbook a host;
#   4. PostgreSQL restarted under load: 503s while it is down, no host declared lost, all works;
#   5. kill -9 of an API replica in the middle of creates leaves nothing half-made (janitor);
#   6. kill -9 of an agent: `lost` within --lost-after, its sandboxes 404, creates go on;
#   7. that agent restarted on its data dir is fenced and leaves none of its lost VMs running.
# Builds nothing. Usage: tests/fleet/fleet.sh [BUILD_DIR]   (default: build)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
case "$build" in /*) ;; *) build=$root/$build ;; esac
moatd=$build/bin/moatd
moat=$build/bin/moat
[ -x "$moatd" ] && [ -x "$moat" ] || { echo "fleet: $build/bin has no moatd/moat" >&2; exit 1; }
[ -f "$build/guest/vmlinux" ] || { echo "fleet: $build/guest has no guest image (make guest)" >&2; exit 1; }

. "$root/tests/support/pg.sh"
. "$root/tests/support/moatd_procs.sh"
work=$(mktemp -d /tmp/moat-fleet.XXXXXX)
key="moat_fleet_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
declare -A pid url
procs_who=fleet
lost_after=4

say() { echo "fleet: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

down_agent=
cleanup() {
  local rc=$?
  if [ -n "$down_agent" ]; then
    # A test failed while an agent was down: its VMs and slots are released only by an agent
    # on its data dir (it re-adopts them, then SIGTERM kills them).
    trap - EXIT INT TERM
    start_agent "$down_agent" 232 2100000 || rc=1
    down_agent=
    trap cleanup EXIT INT TERM
  fi
  procs_stop_all || rc=1
  [ "$rc" = 0 ] || procs_show_logs
  pg_stop
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT INT TERM

wait_healthy() { procs_wait_healthy "$1" || fail "$1 did not start"; }

# An agent: its own host id, data dir, port, slot pool and jail ids.
start_agent() {  # NAME POOL_OCTET JAIL_FIRST
  local name=$1 port
  port=$(procs_free_port)
  url[$name]=http://127.0.0.1:$port
  mkdir -p "$work/$name"
  "$moatd" agent --listen "127.0.0.1:$port" --store "$PG_URI" --fleet-token-file "$work/token" \
    --host-id "$name" --data-dir "$work/$name" --guest-dir "$build/guest" --accel auto \
    --net-pool "10.$2.$(($$ % 250)).0/24" --dns 192.0.2.53 --jail-id-first "$3" \
    --heartbeat-interval-ms 500 --warm-sandboxes 1 --prebake-templates=false >>"$work/$name.log" 2>&1 &
  pid[$name]=$!
  wait_healthy "$name"
}

start_api() {  # NAME [extra flags…]
  local name=$1 port
  shift
  port=$(procs_free_port)
  url[$name]=http://127.0.0.1:$port
  mkdir -p "$work/$name"
  MOAT_API_KEY=$key "$moatd" api --listen "127.0.0.1:$port" --store "$PG_URI" \
    --fleet-token-file "$work/token" --data-dir "$work/$name" --domain moat.test \
    --lost-after "$lost_after" --creating-timeout 10 "$@" >>"$work/$name.log" 2>&1 &
  pid[$name]=$!
  wait_healthy "$name"
}

api() {  # REPLICA METHOD PATH [BODY] → body on stdout; HTTP status in $work/status
  local out
  out=$(curl -s -o "$work/body" -w '%{http_code}' -X "$2" -H "X-API-Key: $key" \
    -H 'Content-Type: application/json' ${4:+--data "$4"} "${url[$1]}$3") || out=000
  echo "$out" >"$work/status"
  cat "$work/body"
}
status() { cat "$work/status"; }
# Whether the VM of sandbox ID runs on agent AGENT (a warm clone keeps its own directory name:
# the sandbox's id is in its state.json).
vm_runs() {  # ID AGENT
  local f
  f=$(grep -l "\"$1\"" "$work/$2"/sandboxes/*/state.json 2>/dev/null | head -1)
  [ -n "$f" ] && pgrep -f -- "$(dirname "$f")/qmp.sock" >/dev/null
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
sql() { "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d moat -Atc "$1"; }

host_state() {  # REPLICA HOST
  api "$1" GET /hosts | json "next((h['state'] for h in d if h['hostID']=='$2'), 'none')"
}

create() {  # REPLICA → sandbox id
  local out
  out=$(api "$1" POST /sandboxes '{"templateID":"base","timeout":600}')
  [ "$(status)" = 201 ] || fail "create through $1 answered $(status): $out"
  echo "$out" | json "d['sandboxID']"
}

# --- the fleet -------------------------------------------------------------------------------
pg_start "$(mktemp -d /tmp/moat-fleet-pg.XXXXXX)"
od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$work/token"
chmod 600 "$work/token"
start_agent a1 231 2000000
start_agent a2 232 2100000
start_api A
start_api B
for _ in $(seq 1 100); do
  [ "$(host_state A a1)" = active ] && [ "$(host_state A a2)" = active ] && break
  sleep 0.1
done
[ "$(host_state B a1)" = active ] && [ "$(host_state B a2)" = active ] \
  || fail "the agents did not register: $(api B GET /hosts)"
say "fleet up: PostgreSQL, agents a1 a2, replicas A B"

# --- 1. the SDK's cases through replica A ---------------------------------------------------
cd "$root/tests/compat"
if ! npm ci --offline --no-audit --no-fund >/dev/null 2>&1; then
  npm ci --no-audit --no-fund >/dev/null
fi
E2B_API_KEY=$key E2B_API_URL=${url[A]} E2B_SANDBOX_URL=${url[A]} \
  node --test --test-concurrency=1 e2b_sdk.test.mjs network.test.mjs parity.test.mjs template.test.mjs \
  || fail "the SDK's compatibility cases failed through replica A"
cd "$root"
say "1. SDK compatibility cases pass through replica A"

# --- 2. placement spreads; replica B serves every sandbox ----------------------------------
ids=()
for i in 1 2 3 4; do ids+=("$(create A)"); done
hosts=$(for id in "${ids[@]}"; do api B GET "/sandboxes/$id" | json "d['hostID']"; done | sort -u | xargs)
[ "$hosts" = "a1 a2" ] || fail "4 creates landed on '$hosts', not on both hosts"
for id in "${ids[@]}"; do
  out=$(MOAT_API_URL=${url[B]} MOAT_API_KEY=$key "$moat" exec "$id" -- sh -c 'echo relayed-$((6*7))') \
    || fail "exec in $id through replica B failed"
  [ "$out" = relayed-42 ] || fail "exec in $id through replica B printed '$out'"
done
head -c 300000 /dev/urandom >"$work/in.bin"
MOAT_API_URL=${url[B]} MOAT_API_KEY=$key "$moat" cp "$work/in.bin" "${ids[0]}:/tmp/in.bin" \
  || fail "upload through replica B failed"
MOAT_API_URL=${url[A]} MOAT_API_KEY=$key "$moat" cp "${ids[0]}:/tmp/in.bin" "$work/out.bin" \
  || fail "download through replica A failed"
cmp -s "$work/in.bin" "$work/out.bin" || fail "a file written through B read back changed through A"
# Either replica's /metrics reports every host: its sandboxes, state and capacity.
metrics=$(curl -fs -H "Authorization: Bearer $key" "${url[B]}/metrics") || fail "GET /metrics on B failed"
for h in a1 a2; do
  n=$(sed -n "s/^moat_host_sandboxes{host=\"$h\",state=\"running\"} //p" <<<"$metrics")
  [ "${n:-0}" -ge 1 ] || fail "B's /metrics counts ${n:-no} running sandboxes on $h"
  grep -qx "moat_host_state{host=\"$h\",state=\"active\"} 1" <<<"$metrics" \
    || fail "B's /metrics does not show $h active"
  grep -q "^moat_host_vcpus_reserved{host=\"$h\"} [1-9]" <<<"$metrics" \
    || fail "B's /metrics shows no reservation on $h"
done
for id in "${ids[@]}"; do api B DELETE "/sandboxes/$id" >/dev/null; done
say "2. creates spread over a1 and a2; every sandbox answers through replica B (exec, files, per-host metrics)"

# History is the fleet's (PostgreSQL): a sandbox killed through B, whose commands its host's agent
# recorded, reads the same on A — who killed it, the exec run through B, its console kept by the
# host at the kill; the audit log names the kill; a dashboard session made on A works on B.
h=$(api A GET "/history/${ids[0]}")
[ "$(json "d['endReason'] + ' by ' + str(d['endedBy'])" <<<"$h")" = "killed by admin" ] \
  || fail "A's history of ${ids[0]} killed through B: $h"
cmds=$(api A GET "/history/${ids[0]}/commands")
json "[c for c in d['items'] if 'relayed-' in c['command'] and c['exitCode'] == 0 and c['stdout']['head'] == 'relayed-42\\n']" <<<"$cmds" | grep -q relayed \
  || fail "the exec through B is not in A's command history: $cmds"
[ -n "$(curl -fs -H "X-API-Key: $key" "${url[A]}/history/${ids[1]}/console")" ] \
  || fail "no console log kept for ${ids[1]}"
audit=$(api A GET "/audit?action=sandbox.kill&target=${ids[0]}")
[ "$(json "len(d['items'])" <<<"$audit")" = 1 ] || fail "the kill through B is not in A's audit log: $audit"
csrf=$(curl -fs -c "$work/cookies" -H 'Content-Type: application/json' \
  --data "{\"apiKey\":\"$key\"}" "${url[A]}/dashboard/api/session" | json "d['csrfToken']") \
  || fail "dashboard sign-in on A failed"
[ "$(curl -s -o /dev/null -w '%{http_code}' -b "$work/cookies" -H "X-Moat-CSRF: $csrf" \
  "${url[B]}/history?limit=1")" = 200 ] || fail "A's dashboard session is not honoured by B"
say "2b. history, commands, console, audit and dashboard sessions are the fleet's: A and B agree"

# --- 3. no overbooking under 20 concurrent creates from two replicas ------------------------
start_api C --cpu-overcommit 1
start_api D --cpu-overcommit 1
cpids=()
for i in $(seq 1 20); do
  r=C; [ $((i % 2)) = 0 ] && r=D
  curl -s -o "$work/c$i.json" -w '%{http_code}' -X POST -H "X-API-Key: $key" \
    -H 'Content-Type: application/json' --data '{"templateID":"base","timeout":600}' \
    "${url[$r]}/sandboxes" >"$work/c$i.code" &
  cpids+=($!)
done
wait "${cpids[@]}" || true
ok=0
for i in $(seq 1 20); do
  case $(cat "$work/c$i.code") in
    201) ok=$((ok + 1)) ;;
    503) ;;
    *) fail "concurrent create $i answered $(cat "$work/c$i.code"): $(cat "$work/c$i.json")" ;;
  esac
done
capacity=$(api C GET /hosts | json "sum(int(h['vcpuTotal']*1) for h in d if h['state']=='active')")
first=$(json "d['sandboxID']" <"$(grep -l sandboxID "$work"/c*.json | head -1)")
cpu=$(api C GET "/sandboxes/$first" | json "d['cpuCount']")
max=$((capacity / cpu))
[ "$ok" -ge 1 ] && [ "$ok" -le "$max" ] || fail "$ok of 20 creates succeeded; room for $max"
api C GET /hosts | python3 -c '
import json, sys
for h in json.load(sys.stdin):
    assert h["vcpuReserved"] <= h["vcpuTotal"], h
' || fail "a host is overbooked: $(api C GET /hosts)"
for f in "$work"/c*.json; do
  id=$(json "d.get('sandboxID','')" <"$f" 2>/dev/null || true)
  [ -n "$id" ] && api C DELETE "/sandboxes/$id" >/dev/null
done
kill -TERM "${pid[C]}" "${pid[D]}"; wait "${pid[C]}" "${pid[D]}" || true
unset 'pid[C]' 'pid[D]'
say "3. 20 concurrent creates through C and D: $ok placed (room for $max), the rest 503, no host overbooked"

# --- 4. PostgreSQL restarted under load ------------------------------------------------------
keep=$(create A)
pg_server_stop
down_codes=""
for _ in 1 2 3; do
  api A GET /sandboxes >/dev/null; down_codes+="$(status) "
  api B POST /sandboxes '{"templateID":"base"}' >/dev/null; down_codes+="$(status) "
done
for c in $down_codes; do [ "$c" = 503 ] || fail "with the database down the API answered $c (all: $down_codes)"; done
sleep $((lost_after + 2))  # longer than --lost-after: an outage must not declare hosts lost
pg_server_start
for _ in $(seq 1 100); do api A GET /sandboxes >/dev/null; [ "$(status)" = 200 ] && break; sleep 0.2; done
[ "$(status)" = 200 ] || fail "the API did not recover after the database came back"
sleep $((lost_after + 2))  # a full period after the outage: the sweeper judges again
for h in a1 a2; do
  [ "$(host_state A $h)" = active ] || fail "host $h is '$(host_state A $h)' after a database restart"
done
out=$(MOAT_API_URL=${url[B]} MOAT_API_KEY=$key "$moat" exec "$keep" -- echo still-here) \
  || fail "exec after the database restart failed"
[ "$out" = still-here ] || fail "exec after the database restart printed '$out'"
api A DELETE "/sandboxes/$keep" >/dev/null
say "4. database restart: 503s while down ($down_codes), no host lost, the fleet works after"

# --- 5. kill -9 of a replica in the middle of creates ---------------------------------------
cpids=()
for i in 1 2 3; do
  curl -s -o /dev/null -X POST -H "X-API-Key: $key" -H 'Content-Type: application/json' \
    --data '{"templateID":"base"}' "${url[A]}/sandboxes" &
  cpids+=($!)
done
sleep 0.05
kill -KILL "${pid[A]}"; wait "${pid[A]}" 2>/dev/null || true
unset 'pid[A]'
wait "${cpids[@]}" || true
# The janitor (--creating-timeout 10, every 5 s) on B settles what A left: sandboxes that
# started are running, those that did not are gone, and every reservation is accounted for.
settled=0
for _ in $(seq 1 60); do
  # Reserved on the hosts minus what the records that hold resources account for; creating.
  read -r drift creating < <(sql "SELECT (SELECT coalesce(sum(vcpu_reserved),0) FROM hosts WHERE state <> 'lost')
      - (SELECT coalesce(sum(cpu_count),0) FROM sandboxes
         WHERE state IN ('creating','running','pausing','resuming','killing','error')),
      (SELECT count(*) FROM sandboxes WHERE state = 'creating')" | tr '|' ' ')
  [ "$drift" = 0 ] && [ "$creating" = 0 ] && { settled=1; break; }
  sleep 0.5
done
[ "$settled" = 1 ] || fail "after kill -9 of replica A: $creating creating records, reservations off by $drift vCPUs"
for id in $(api B GET /v2/sandboxes | json "' '.join(s['sandboxID'] for s in d)"); do
  api B DELETE "/sandboxes/$id" >/dev/null
done
start_api A
# A replica that dies between reserving and recording leaks exactly one reservation, which no
# record names: the audit (the replica leading the reaper, after three janitor rounds in a row
# that see it unchanged) gives it back, and nothing more.
a1_drift() {
  sql "SELECT h.vcpu_reserved - coalesce(sum(s.cpu_count),0), h.mem_reserved_mb - coalesce(sum(s.memory_mb),0)
       FROM hosts h LEFT JOIN sandboxes s ON s.host_id = h.id AND s.state IN
       ('creating','running','pausing','resuming','killing','error') WHERE h.id = 'a1'
       GROUP BY h.vcpu_reserved, h.mem_reserved_mb" | tr '|' ' '
}
sql "UPDATE hosts SET vcpu_reserved = vcpu_reserved + 1, mem_reserved_mb = mem_reserved_mb + 512
     WHERE id = 'a1'" >/dev/null
[ "$(a1_drift)" = "1 512" ] || fail "the injected leak reads as '$(a1_drift)'"
audited=0
for _ in $(seq 1 80); do
  [ "$(a1_drift)" = "0 0" ] && { audited=1; break; }
  sleep 0.5
done
[ "$audited" = 1 ] || fail "a leaked reservation on a1 was not given back: drift $(a1_drift)"
say "5. kill -9 of replica A mid-create: nothing half-made, reservations match; a leaked reservation is audited back"

# --- 6. kill -9 of an agent -------------------------------------------------------------------
on_a2=()
for _ in $(seq 1 8); do
  id=$(create A)
  [ "$(api A GET "/sandboxes/$id" | json "d['hostID']")" = a2 ] && on_a2+=("$id")
  [ "${#on_a2[@]}" -ge 2 ] && break
done
[ "${#on_a2[@]}" -ge 1 ] || fail "no sandbox landed on a2"
killed_at=$(date +%s.%N)
kill -KILL "${pid[a2]}"; wait "${pid[a2]}" 2>/dev/null || true
unset 'pid[a2]'
down_agent=a2  # until it is back: cleanup restarts it so that it releases its VMs and slots
for _ in $(seq 1 100); do [ "$(host_state B a2)" = lost ] && break; sleep 0.1; done
[ "$(host_state B a2)" = lost ] || fail "a2 not declared lost: $(api B GET /hosts)"
took=$(python3 -c "import time; print(round(time.time() - $killed_at, 1))")
# --lost-after, plus the sweep interval (1 s), a heartbeat interval and this loop's own requests
# on a machine this test keeps busy with VMs.
python3 -c "import sys; sys.exit(0 if $took <= $lost_after + 6 else 1)" \
  || fail "a2 was declared lost after ${took}s (--lost-after $lost_after)"
for id in "${on_a2[@]}"; do
  api B GET "/sandboxes/$id" >/dev/null
  [ "$(status)" = 404 ] || fail "a sandbox of lost a2 answered $(status)"
  vm_runs "$id" a2 || fail "the VM of $id should still run until a2 comes back"
done
after=$(create B)
[ "$(api B GET "/sandboxes/$after" | json "d['hostID']")" = a1 ] || fail "a create after a2's loss did not land on a1"
for id in "${on_a2[@]}"; do
  for _ in $(seq 1 50); do
    [ "$(api A GET "/history/$id" | json "d['endReason']")" = host_lost ] && break
    sleep 0.2
  done
  [ "$(api A GET "/history/$id" | json "d['endReason']")" = host_lost ] \
    || fail "the history of $id on lost a2 says: $(api A GET "/history/$id")"
done
say "6. kill -9 of agent a2: lost after ${took}s, its sandboxes 404 (history: host lost), creates go to a1"

# --- 7. the lost agent comes back: fenced, its lost VMs killed -------------------------------
start_agent a2 232 2100000
down_agent=
for _ in $(seq 1 100); do [ "$(host_state B a2)" = active ] && break; sleep 0.1; done
[ "$(host_state B a2)" = active ] || fail "a2 did not re-register: $(api B GET /hosts)"
for id in "${on_a2[@]}"; do
  for _ in $(seq 1 50); do vm_runs "$id" a2 || break; sleep 0.1; done
  vm_runs "$id" a2 && fail "a2 came back and left lost sandbox $id running"
done
second=$(create A)
api B DELETE "/sandboxes/$second" >/dev/null
api B DELETE "/sandboxes/$after" >/dev/null
say "7. a2 restarted: fenced, re-registered, none of its ${#on_a2[@]} lost VMs left running"
say "ok"

#!/usr/bin/env bash
# Snapshots across hosts (issue 18, docs/snapshots.md "Across hosts"), all real: a private
# PostgreSQL, an S3 server (s3rver from npm, tests/support/s3rver) on loopback, two `moatd agent`
# hosts with --snapshot-store and a `moatd api` replica:
#   T. a template baked on a1 is restored on a2 from the store, without a cold boot;
#   R. pause on a1 → kill -9 a1 → the resume lands on a2 with its file and a running counter;
#   F. a fork of a sandbox on a1 with its child on a2: memory and files equal at fork time,
#      writes isolated, identities differ;
#   Z. a second create from one named snapshot on a2 makes no S3 GET;
#   U. the store unreachable during an upload: it completes once the store is back;
#   G. the sweep leaves no unreferenced chunk and deletes none a manifest needs.
# Builds nothing. Usage: tests/fleet/snapshots.sh [BUILD_DIR]   (default: build)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
case "$build" in /*) ;; *) build=$root/$build ;; esac
moatd=$build/bin/moatd
moat=$build/bin/moat
[ -x "$moatd" ] && [ -x "$moat" ] || { echo "snapshots: $build/bin has no moatd/moat" >&2; exit 1; }
[ -f "$build/guest/vmlinux" ] || { echo "snapshots: $build/guest has no guest image" >&2; exit 1; }

. "$root/tests/support/pg.sh"
. "$root/tests/support/s3.sh"
. "$root/tests/support/moatd_procs.sh"
work=$(mktemp -d /tmp/moat-fleet-snap.XXXXXX)
key="moat_snap_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
declare -A pid url
procs_who=snapshots
lost_after=4

say() { echo "snapshots: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

down_agent=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$down_agent" ]; then
    # An agent that was killed: only an agent on its data dir releases its VMs and slots.
    start_agent "$down_agent" || rc=1
    down_agent=
  fi
  procs_stop_all || rc=1
  # memfs stops with its agent; one left behind (a killed agent's) is stopped and unmounted.
  pkill -TERM -f -- "memfs.*$work" 2>/dev/null || true
  sleep 0.5
  pkill -KILL -f -- "memfs.*$work" 2>/dev/null || true
  while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done \
    < <(awk -v w="$work" '$2 ~ "^"w {print $2}' /proc/mounts)
  [ "$rc" = 0 ] || { procs_show_logs; tail -n 20 "$work"/*/memfs/control/memfs.log 2>/dev/null || true; }
  s3_stop
  pg_stop
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT INT TERM

declare -A octet=([a1]=233 [a2]=234) jail=([a1]=2200000 [a2]=2300000)
start_agent() {  # NAME
  local name=$1 port
  port=$(procs_free_port)
  url[$name]=http://127.0.0.1:$port
  mkdir -p "$work/$name"
  AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER \
  "$moatd" agent --listen "127.0.0.1:$port" --store "$PG_URI" --fleet-token-file "$work/token" \
    --host-id "$name" --data-dir "$work/$name" --guest-dir "$build/guest" --accel auto \
    --net-pool "10.${octet[$name]}.$(($$ % 250)).0/24" --dns 192.0.2.53 \
    --jail-id-first "${jail[$name]}" --heartbeat-interval-ms 500 --warm-sandboxes 0 \
    --prebake-templates=false --snapshot-store "s3://$S3_BUCKET/fleet" --s3-endpoint "$S3_ENDPOINT" \
    --sweep-interval 3 --snapshot-delete-grace 2 >>"$work/$name.log" 2>&1 &
  pid[$name]=$!
  procs_wait_healthy "$name" || fail "$name did not start"
}

start_api() {
  local port
  port=$(procs_free_port)
  url[A]=http://127.0.0.1:$port
  mkdir -p "$work/A"
  MOAT_API_KEY=$key "$moatd" api --listen "127.0.0.1:$port" --store "$PG_URI" \
    --fleet-token-file "$work/token" --data-dir "$work/A" --domain moat.test \
    --lost-after "$lost_after" >>"$work/A.log" 2>&1 &
  pid[A]=$!
  procs_wait_healthy A || fail "A did not start"
}

api() {  # METHOD PATH [BODY] → body on stdout; HTTP status in $work/status
  local out
  out=$(curl -s -o "$work/body" -w '%{http_code}' -X "$1" -H "X-API-Key: $key" \
    -H 'Content-Type: application/json' ${3:+--data "$3"} "${url[A]}$2") || out=000
  echo "$out" >"$work/status"
  cat "$work/body"
}
status() { cat "$work/status"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
sql() { "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d moat -Atc "$1"; }
host_state() { api GET /hosts | json "next((h['state'] for h in d if h['hostID']=='$1'), 'none')"; }
host_of() { api GET "/sandboxes/$1" | json "d['hostID']"; }
drain() { api POST "/hosts/$1/drain" >/dev/null; [ "$(status)" = 200 ] || [ "$(status)" = 204 ] || fail "drain $1: $(status)"; }
undrain() { api POST "/hosts/$1/undrain" >/dev/null; }
sh_in() {  # ID COMMAND → stdout
  MOAT_API_URL=${url[A]} MOAT_API_KEY=$key "$moat" exec "$1" -- sh -c "$2"
}
create() {  # [TEMPLATE] → sandbox id
  local out
  out=$(api POST /sandboxes "{\"templateID\":\"${1:-base}\",\"timeout\":900}")
  [ "$(status)" = 201 ] || fail "create ${1:-base} answered $(status): $out"
  echo "$out" | json "d['sandboxID']"
}
wait_uploaded() {  # KIND OWNER
  for _ in $(seq 1 600); do
    [ "$(sql "SELECT count(*) FROM stored_snapshots WHERE kind='$1' AND owner_id='$2' AND state='uploaded'")" -ge 1 ] && return 0
    sleep 0.2
  done
  fail "the $1 snapshot of $2 was not uploaded: $(sql "SELECT key, state, attempts, last_error FROM stored_snapshots WHERE owner_id='$2'")"
}
# GETs host NAME made to restore snapshots: its replicator's (manifests, state, disks) and its
# memfs's (memory chunks), from the stats files each writes every second or two.
s3_gets() {  # NAME
  python3 - "$work/$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1] + "/store-cache/stats.json"))
m = json.load(open(sys.argv[1] + "/memfs/control/stats.json"))
def find(d, k):
    if isinstance(d, dict):
        if k in d and isinstance(d[k], (int, float)): return d[k]
        for v in d.values():
            x = find(v, k)
            if x is not None: return x
    return None
print(int(r["restoreGets"]) + int(m["store"]["gets"]))
PY
}

pg_start "$(mktemp -d /tmp/moat-snap-pg.XXXXXX)"
# Outside $work: the harness flags any process left mentioning $work, and s3rver (restarted in U)
# is stopped by s3_stop after the moatd processes.
s3_start "$(mktemp -d /tmp/moat-snap-s3.XXXXXX)"
od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$work/token"
chmod 600 "$work/token"
start_agent a1
start_api
for _ in $(seq 1 100); do [ "$(host_state a1)" = active ] && break; sleep 0.1; done
say "up: PostgreSQL, s3rver at $S3_ENDPOINT, agent a1, replica A"

# --- T. a template baked once per fleet -----------------------------------------------------
first=$(create)
wait_uploaded template "base/$(sql "SELECT split_part(owner_id,'/',2) FROM stored_snapshots WHERE kind='template' LIMIT 1")"
start_agent a2
for _ in $(seq 1 100); do [ "$(host_state a2)" = active ] && break; sleep 0.1; done
drain a1
on_a2=$(create)
[ "$(host_of "$on_a2")" = a2 ] || fail "a create with a1 draining landed on $(host_of "$on_a2")"
grep -q 'template.fetched' "$work/a2.log" || fail "a2 did not restore the template from the store"
grep -q 'template.baked' "$work/a2.log" && fail "a2 cold-booted (baked) the template itself"
[ "$(sh_in "$on_a2" 'echo ok')" = ok ] || fail "the sandbox on a2 does not run commands"
api DELETE "/sandboxes/$on_a2" >/dev/null
undrain a1
say "T. a template baked on a1 is restored on a2 from the store (no cold boot)"

# --- R. pause on a1, a1 dies, resume on a2 --------------------------------------------------
drain a2
s=$first
[ "$(host_of "$s")" = a1 ] || fail "the first sandbox is on $(host_of "$s")"
head -c 4096 /dev/urandom | base64 -w0 >"$work/payload"
sh_in "$s" "echo $(cat "$work/payload") > ~/payload; (i=0; while :; do i=\$((i+1)); echo \$i > /tmp/counter; sleep 0.2; done) >/dev/null 2>&1 &" \
  || fail "setting up the sandbox failed"
sleep 1
before=$(sh_in "$s" 'cat /tmp/counter')
api POST "/sandboxes/$s/pause" >/dev/null
[ "$(status)" = 204 ] || fail "pause answered $(status)"
wait_uploaded paused "$s"
undrain a2
kill -KILL "${pid[a1]}"; wait "${pid[a1]}" 2>/dev/null || true
unset 'pid[a1]'
down_agent=a1
for _ in $(seq 1 150); do [ "$(host_state a1)" = lost ] && break; sleep 0.1; done
[ "$(host_state a1)" = lost ] || fail "a1 not declared lost"
t0=$(date +%s.%N)
out=$(api POST "/sandboxes/$s/resume" '{"timeout":900}')
[ "$(status)" = 201 ] || fail "the resume after a1's loss answered $(status): $out"
resume_s=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
[ "$(host_of "$s")" = a2 ] || fail "the resumed sandbox is on $(host_of "$s")"
[ "$(sh_in "$s" 'cat ~/payload')" = "$(cat "$work/payload")" ] || fail "the file changed across hosts"
c1=$(sh_in "$s" 'cat /tmp/counter')
sleep 1
c2=$(sh_in "$s" 'cat /tmp/counter')
[ "$c1" -ge "$before" ] && [ "$c2" -gt "$c1" ] \
  || fail "the counter went $before (paused) → $c1 → $c2 (resumed on a2): not running on"
say "R. paused on a1, a1 killed -9, resumed on a2 in ${resume_s}s: file intact, counter $before → $c1 → $c2"
start_agent a1
down_agent=
for _ in $(seq 1 100); do [ "$(host_state a1)" = active ] && break; sleep 0.1; done
[ "$(host_state a1)" = active ] || fail "a1 did not come back"
# Its disk copy of the moved sandbox's pause is gone (reconciliation).
for _ in $(seq 1 50); do [ -d "$work/a1/snapshots/$s" ] || break; sleep 0.2; done
[ -d "$work/a1/snapshots/$s" ] && fail "a1 kept the pause of $s that now runs on a2"

# --- F. a fork with its child on another host ------------------------------------------------
drain a2
p=$(create)
[ "$(host_of "$p")" = a1 ] || fail "the parent is on $(host_of "$p")"
sh_in "$p" 'echo parent-file > ~/f; head -c 1000000 /dev/urandom > ~/big; md5sum ~/big | cut -c1-32 > ~/big.md5' \
  || fail "writing in the parent failed"
undrain a2
drain a1
out=$(api POST "/sandboxes/$p/fork" '{"count":1,"timeout":900}')
case "$(status)" in 200|201) ;; *) fail "fork answered $(status): $out" ;; esac
child=$(echo "$out" | json "d[0]['sandbox']['sandboxID']")
[ "$(host_of "$child")" = a2 ] || fail "the child is on $(host_of "$child"), not a2"
[ "$(sh_in "$child" 'cat ~/f')" = parent-file ] || fail "the child's file differs"
[ "$(sh_in "$child" 'md5sum ~/big | cut -c1-32')" = "$(sh_in "$p" 'cat ~/big.md5')" ] \
  || fail "the child's 1 MB file differs from the parent's"
sh_in "$child" 'echo child > ~/f' >/dev/null
[ "$(sh_in "$p" 'cat ~/f')" = parent-file ] || fail "a write in the child reached the parent"
sh_in "$p" 'echo parent-2 > ~/f' >/dev/null
[ "$(sh_in "$child" 'cat ~/f')" = child ] || fail "a write in the parent reached the child"
# A fresh identity: its own id, and a kernel RNG reseeded with the host's entropy (a clone that
# kept its parent's pool would print the same bytes).
[ "$child" != "$p" ] || fail "the child has its parent's id"
r_parent=$(sh_in "$p" 'od -An -N16 -tx1 /dev/urandom | tr -d " \n"')
r_child=$(sh_in "$child" 'od -An -N16 -tx1 /dev/urandom | tr -d " \n"')
[ -n "$r_child" ] && [ "$r_parent" != "$r_child" ] || fail "parent and child drew the same random bytes"
undrain a1
say "F. fork of $p on a1 → child $child on a2: files equal, writes isolated, identities differ"

# --- Z. a second restore of one snapshot on a host makes no S3 GET --------------------------
out=$(api POST "/sandboxes/$p/snapshots" '{"name":"zero-gets"}')
case "$(status)" in 200|201) ;; *) fail "snapshot answered $(status): $out" ;; esac
snap=$(echo "$out" | json "d.get('snapshotID') or d.get('templateID')")
wait_uploaded named "$snap"
drain a1
z1=$(create "$snap")
[ "$(host_of "$z1")" = a2 ] || fail "a create from snapshot $snap landed on $(host_of "$z1")"
# memfs fills the rest of the memory file in the background (after --fill-delay-ms): wait until
# it is done and the counts are still.
g0=-1
for _ in $(seq 1 60); do
  sleep 2
  g=$(s3_gets a2)
  filled=$(python3 -c "import json; f=json.load(open('$work/a2/memfs/control/stats.json'))['fill']; print(int(f['done'] + f['failed'] >= f['queued']))")
  [ "$filled" = 1 ] && [ "$g" = "$g0" ] && break
  g0=$g
done
z2=$(create "$snap")
[ "$(host_of "$z2")" = a2 ] || fail "the second create landed on $(host_of "$z2")"
[ "$(sh_in "$z2" 'cat ~/f')" = parent-2 ] || fail "the second restore's file differs"
sleep 3
g1=$(s3_gets a2)
[ "$g1" = "$g0" ] || fail "the second restore of $snap on a2 made $((g1 - g0)) S3 GETs"
undrain a1
for id in "$z1" "$z2" "$child"; do api DELETE "/sandboxes/$id" >/dev/null; done
say "Z. a second create from snapshot $snap on a2: 0 S3 GETs (the first: cached since)"

# --- U. the store unreachable during an upload ----------------------------------------------
s3_server_stop
api POST "/sandboxes/$p/pause" >/dev/null
[ "$(status)" = 204 ] || fail "a pause with the store down answered $(status) (it must not wait for the upload)"
for _ in $(seq 1 100); do
  [ "$(sql "SELECT max(attempts) FROM stored_snapshots WHERE kind='paused' AND owner_id='$p'")" -ge 1 ] && break
  sleep 0.2
done
[ "$(sql "SELECT state FROM stored_snapshots WHERE kind='paused' AND owner_id='$p'")" = local-only ] \
  || fail "with the store down the pause of $p is $(sql "SELECT state FROM stored_snapshots WHERE owner_id='$p'")"
s3_server_start
wait_uploaded paused "$p"
say "U. the store down during an upload: local-only with failed attempts, uploaded once it is back"

# --- G. the sweep ------------------------------------------------------------------------------
api DELETE "/sandboxes/$p" >/dev/null
api DELETE "/sandboxes/$s" >/dev/null
api DELETE "/snapshots/$snap" >/dev/null || true
for _ in $(seq 1 150); do
  [ "$(sql "SELECT count(*) FROM stored_snapshots WHERE state='deleting'")" = 0 ] && break
  sleep 0.2
done
[ "$(sql "SELECT count(*) FROM stored_snapshots WHERE state='deleting'")" = 0 ] \
  || fail "released snapshots were not deleted: $(sql "SELECT key, kind FROM stored_snapshots WHERE state='deleting'")"
sleep 8  # a sweep after the deletions (--sweep-interval 3)
python3 - "$S3_DIR" "$S3_BUCKET" <<'EOF' || fail "the store's chunks and manifests disagree after the sweep"
import json, os, sys
root = os.path.join(sys.argv[1], "data", sys.argv[2], "fleet")
chunks = set(os.listdir(os.path.join(root, "chunks"))) if os.path.isdir(os.path.join(root, "chunks")) else set()
chunks = {c.split("._S3rver")[0] for c in chunks if not c.startswith(".")}
need = set()
snaps = os.path.join(root, "snapshots")
for key in os.listdir(snaps) if os.path.isdir(snaps) else []:
    m = os.path.join(snaps, key, "manifest.json._S3rver_object")
    if not os.path.exists(m):
        continue
    d = json.load(open(m))
    for f in d["files"].values():
        need.update(h for h in f["chunks"] if h)
missing = need - chunks
extra = chunks - need
print(f"chunks {len(chunks)}, referenced {len(need)}, missing {len(missing)}, unreferenced {len(extra)}")
sys.exit(1 if missing or extra else 0)
EOF
say "G. after the sweep every chunk in the store is referenced and none referenced is missing"
say "ok"

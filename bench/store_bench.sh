#!/usr/bin/env bash
# The benchmark of snapshots across hosts (issue 18, docs/snapshots.md "Lazy memory" and "Across
# hosts"), in one run: a private PostgreSQL, s3rver on loopback (tests/support/s3.sh), two `moatd
# agent` hosts with --snapshot-store (all other flags at their defaults: sweep, grace, chunk
# cache) and a `moatd api` replica. Placement is forced by draining the other host. It measures,
# each STORE_BENCH_REPS times (median reported), for a guest of the base template's size with
# STORE_BENCH_DIRTY_MIB of random bytes in guest RAM (/dev/shm):
#   resume  pause → resume → first exec (`true`): on the same host, and on the other host with
#           its chunk cache cold (fresh dirty bytes each time) and warm (the target host filled
#           the same pause content two hops earlier: the sandbox goes a1 → a2 → a1 → a2 …);
#   named   a named snapshot of a dirty sandbox: create → first exec on its own host, and on the
#           other host twice (the first cold, the second warm: chunk cache and page cache);
#   fork    fork {"count":1} → first exec in the child: on the parent's host, and elsewhere
#           (the parent's host draining; fresh dirty bytes each time);
#   fetch   per cross-host restore, the target host's S3 GETs and bytes (replicator and memfs
#           stats files) just after the first exec and once memfs's fill has run, against the
#           snapshot's non-zero bytes (stored_snapshots and its manifest, per file), and the
#           chunks the guest touched in its first 10 s (memfs's trace);
#   memfs   chunk fetch latency (memfs's fetch.latency_ms histogram: mean, p50 and p99 estimated
#           from the buckets).
# Writes JSON (raw samples, medians, ratios against the issue's targets). About 10–15 minutes.
#
# usage: bench/store_bench.sh [BUILD_DIR] [JSON_PATH]
# STORE_BENCH_REPS (5), STORE_BENCH_DIRTY_MIB (128); STORE_BENCH_LOGS=DIR keeps the logs there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
json_path=${2:-$build/bench/store.json}
reps=${STORE_BENCH_REPS:-5}
dirty_mib=${STORE_BENCH_DIRTY_MIB:-128}
moatd=$build/bin/moatd
moat=$build/bin/moat
[ -x "$moatd" ] && [ -x "$moat" ] || { echo "store_bench: $build/bin has no moatd/moat (build first)" >&2; exit 1; }
[ -f "$build/guest/vmlinux" ] || { echo "store_bench: $build/guest has no guest image (make guest)" >&2; exit 1; }

. "$root/tests/support/pg.sh"
. "$root/tests/support/s3.sh"
. "$root/tests/support/moatd_procs.sh"
work=$(mktemp -d /tmp/moat-store-bench.XXXXXX)
key="moat_bench_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
declare -A pid url
procs_who=store_bench
samples=$work/samples.jsonl
poll_pid=
: >"$samples"

say() { echo "store_bench: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$poll_pid" ]; then touch "$work/poll.stop"; kill "$poll_pid" 2>/dev/null || true; wait "$poll_pid" 2>/dev/null || true; fi
  procs_stop_all || rc=1
  # memfs outlives its agent only when the agent was killed; stop any left and unmount.
  pkill -TERM -f -- "memfs.*$work" 2>/dev/null || true
  sleep 0.5
  pkill -KILL -f -- "memfs.*$work" 2>/dev/null || true
  while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done \
    < <(awk -v w="$work" '$2 ~ "^"w {print $2}' /proc/mounts)
  [ "$rc" = 0 ] || { procs_show_logs; tail -n 20 "$work"/*/memfs/control/memfs.log 2>/dev/null || true; }
  if [ -n "${STORE_BENCH_LOGS:-}" ]; then
    mkdir -p "$STORE_BENCH_LOGS" && cp "$work"/*.log "$STORE_BENCH_LOGS"/ 2>/dev/null || true
    for h in a1 a2; do cp "$work/$h/memfs/control/memfs.log" "$STORE_BENCH_LOGS/$h-memfs.log" 2>/dev/null || true; done
  fi
  s3_stop
  pg_stop
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT INT TERM

declare -A octet=([a1]=235 [a2]=236) jail=([a1]=2400000 [a2]=2500000)
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
    --prebake-templates=false --snapshot-store "s3://$S3_BUCKET/fleet" \
    --s3-endpoint "$S3_ENDPOINT" >>"$work/$name.log" 2>&1 &
  pid[$name]=$!
  procs_wait_healthy "$name" || fail "$name did not start"
}

start_api() {
  local port
  port=$(procs_free_port)
  url[A]=http://127.0.0.1:$port
  mkdir -p "$work/A"
  MOAT_API_KEY=$key "$moatd" api --listen "127.0.0.1:$port" --store "$PG_URI" \
    --fleet-token-file "$work/token" --data-dir "$work/A" --domain moat.test >>"$work/A.log" 2>&1 &
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
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
host_state() { api GET /hosts | json "next((h['state'] for h in d if h['hostID']=='$1'), 'none')"; }
host_of() { api GET "/sandboxes/$1" | json "d['hostID']"; }
drain() { api POST "/hosts/$1/drain" >/dev/null; case "$(status)" in 200|204) ;; *) fail "drain $1: $(status)" ;; esac; }
undrain() { api POST "/hosts/$1/undrain" >/dev/null; case "$(status)" in 200|204) ;; *) fail "undrain $1: $(status)" ;; esac; }
only() {  # HOST: every placement goes to HOST (the other host drains)
  local other=a1
  [ "$1" = a1 ] && other=a2
  undrain "$1"
  drain "$other"
}
other_of() { if [ "$1" = a1 ]; then echo a2; else echo a1; fi; }
run_in() {  # ID COMMAND
  MOAT_API_URL=${url[A]} MOAT_API_KEY=$key "$moat" exec "$1" -- sh -c "$2"
}
first_exec() {  # ID → fails the benchmark unless `true` runs
  MOAT_API_URL=${url[A]} MOAT_API_KEY=$key "$moat" exec "$1" -- true \
    || fail "the first exec in $1 failed (host $(host_of "$1"))"
}
kill_sandbox() { api DELETE "/sandboxes/$1" >/dev/null; }
create() {  # TEMPLATE → sandbox id
  local out
  out=$(api POST /sandboxes "{\"templateID\":\"$1\",\"timeout\":3600}")
  [ "$(status)" = 201 ] || fail "create $1 answered $(status): $out"
  echo "$out" | json "d['sandboxID']"
}
dirty() {  # ID: fresh random bytes in guest RAM (a tmpfs file), over the last ones in place
  # (`1<>` does not truncate: the same guest pages are rewritten, the dirty set stays one size)
  run_in "$1" "head -c ${dirty_mib}M /dev/urandom 1<>$dirty_path" || fail "dirtying $1 failed"
}
wait_key_uploaded() {  # KEY
  local st
  for _ in $(seq 1 900); do
    st=$(sql "SELECT state FROM stored_snapshots WHERE key='$1'")
    case "$st" in uploaded|deleting) return 0 ;; esac
    sleep 0.2
  done
  fail "snapshot $1 was not uploaded: $(sql "SELECT key, state, attempts, last_error FROM stored_snapshots WHERE key='$1'")"
}
latest_key() {  # KIND OWNER → the key of its newest stored snapshot
  sql "SELECT key FROM stored_snapshots WHERE kind='$1' AND owner_id='$2' ORDER BY created_at_ms DESC LIMIT 1"
}

# The counters of host NAME's replicator and memfs (their stats files; zeros before memfs ran),
# as one JSON object.
host_stats() {  # NAME
  python3 - "$work/$1" <<'PY'
import json, os, sys
d = sys.argv[1]
def load(p):
    try:
        return json.load(open(p)), os.stat(p).st_mtime
    except (OSError, ValueError):
        return {}, 0.0
r, rt = load(d + "/store-cache/stats.json")
m, _ = load(d + "/memfs/control/stats.json")
rs, ms, f, c = r.get("store", {}), m.get("store", {}), m.get("fetch", {}), m.get("cache", {})
lat = f.get("latency_ms", {})
print(json.dumps({
    "r_time": rt, "m_time": m.get("time_unix_ms", 0) / 1000.0,
    "restores": r.get("restores", 0), "restore_gets": r.get("restoreGets", 0),
    "restore_bytes": r.get("restoreBytes", 0),
    "r_store_gets": rs.get("gets", 0), "r_store_get_bytes": rs.get("getBytes", 0),
    "m_store_gets": ms.get("gets", 0), "m_store_get_bytes": ms.get("get_bytes", 0),
    "fetches": f.get("fetches", 0), "fetch_bytes": f.get("fetch_bytes", 0),
    "fetch_failures": f.get("failures", 0),
    "cache_hits": c.get("hits", 0), "cache_misses": c.get("misses", 0),
    "prefetch_queued": m.get("prefetch", {}).get("queued", 0),
    "prefetch_done": m.get("prefetch", {}).get("done", 0),
    "fill_queued": m.get("fill", {}).get("queued", 0), "fill_done": m.get("fill", {}).get("done", 0),
    "pending": m.get("background", {}).get("pending", 0),
    "lat_bounds": lat.get("bounds", []), "lat_counts": lat.get("counts", []),
    "lat_sum": lat.get("sum", 0),
}))
PY
}
# Host NAME's counters from stats files both written after time T (each refreshes every 1–2 s).
stats_after() {  # NAME T
  local s
  for _ in $(seq 1 60); do
    s=$(host_stats "$1")
    if python3 -c "import json,sys; s=json.loads(sys.argv[1]); t=float(sys.argv[2]); sys.exit(0 if s['r_time'] > t and (s['m_time'] > t or s['m_time'] == 0) else 1)" "$s" "$2"; then
      echo "$s"; return 0
    fi
    sleep 0.2
  done
  echo "$s"
}
# Host NAME's counters once memfs is idle: nothing pending and no fetch for one stats refresh,
# at least MIN seconds after time T (the trace window is 10 s).
stats_settled() {  # NAME T MIN
  local s prev='' t
  t=$(awk -v a="$2" -v b="$3" 'BEGIN { printf "%.3f", a + b }')
  while [ "$(awk -v a="$t" -v b="$(now)" 'BEGIN { print (b < a) }')" = 1 ]; do sleep 0.5; done
  for _ in $(seq 1 60); do
    s=$(stats_after "$1" "$(now)")
    if [ -n "$prev" ] && python3 -c "
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.exit(0 if b['pending'] == 0 and a['fetches'] == b['fetches'] else 1)" "$prev" "$s"; then
      echo "$s"; return 0
    fi
    prev=$s
  done
  say "memfs on $1 did not settle in 60 refreshes"
  echo "$s"
}
# The snapshot's sizes from its manifest in s3rver's files: per file its size and non-zero bytes.
manifest_sizes() {  # KEY
  python3 - "$S3_DIR/data/$S3_BUCKET/fleet/snapshots/$1/manifest.json._S3rver_object" <<'PY'
import json, sys
C = 4 << 20
try:
    m = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print("null"); sys.exit(0)
out = {}
for name, f in m.get("files", {}).items():
    size = f["size"]
    nz = sum(min(C, size - i * C) for i, h in enumerate(f["chunks"]) if h)
    out[name] = {"size": size, "nonzero_bytes": nz, "chunks": len(f["chunks"]),
                 "nonzero_chunks": sum(1 for h in f["chunks"] if h)}
print(json.dumps(out))
PY
}
trace_chunks() {  # HOST KEY → how many chunks memfs's trace of the restore lists (null: none)
  python3 - "$work/$1/memfs/control/$2.trace" <<'PY'
import json, sys
try:
    print(len(json.load(open(sys.argv[1]))))
except (OSError, ValueError):
    print("null")
PY
}
# What the target host's agent logged for restoring sandbox ID (its log from byte OFFSET): the
# replicator's layout, the VMM's restore and the sandbox's readiness, in µs/ms as logged.
agent_timing() {  # HOST ID OFFSET
  python3 - "$work/$1.log" "$2" "$3" <<'PY'
import json, re, sys
log, sb, off = sys.argv[1], sys.argv[2], int(sys.argv[3])
want = {"event=replicator.materialized": ("sandbox=" + sb + " ", ["ms"]),
        "event=vmm.restored": ("vm=moat-" + sb + " ", ["spawn_us", "qmp_ready_us", "state_loaded_us"]),
        "event=sandbox.restored": ("sandbox=" + sb + " ", ["ready_us", "guest_us", "identity_us", "network_us"])}
out = {}
with open(log, "rb") as f:
    f.seek(off)
    for line in f.read().decode(errors="replace").splitlines():
        for ev, (who, keys) in want.items():
            if ev in line and who in line:
                for k in keys:
                    m = re.search(r"\b" + k + r"=(\d+)", line)
                    if m:
                        out[("materialize_" if ev.endswith("materialized") else "") + k] = int(m.group(1))
print(json.dumps(out))
PY
}
logpos() { stat -c %s "$work/$1.log"; }
# memfs's stats on HOST as they refresh (about every second), into $work/poll.jsonl, from
# poll_start to poll_stop: what it had fetched just before and just after the first exec.
poll_start() {  # HOST
  rm -f "$work/poll.stop"
  python3 - "$work/$1/memfs/control/stats.json" "$work/poll.stop" >"$work/poll.jsonl" <<'PY' &
import json, os, sys, time
path, stop = sys.argv[1], sys.argv[2]
last = None
while not os.path.exists(stop):
    try:
        d = json.load(open(path))
        if d.get("time_unix_ms") != last:
            last = d.get("time_unix_ms")
            print(json.dumps({"t": last / 1000.0, "fetches": d["fetch"]["fetches"],
                              "fetch_bytes": d["fetch"]["fetch_bytes"], "gets": d["store"]["gets"],
                              "get_bytes": d["store"]["get_bytes"]}), flush=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    time.sleep(0.05)
PY
  poll_pid=$!
}
poll_stop() {
  touch "$work/poll.stop"
  wait "$poll_pid" 2>/dev/null || true
  poll_pid=
  python3 -c 'import json, sys; print(json.dumps([json.loads(l) for l in open(sys.argv[1]) if l.strip()]))' "$work/poll.jsonl"
}
rec() {  # GROUP key=NUMBER-or-JSON … → a line of $samples
  python3 - "$@" >>"$samples" <<'PY'
import json, sys
out = {"group": sys.argv[1]}
for a in sys.argv[2:]:
    k, v = a.split("=", 1)
    try:
        out[k] = json.loads(v)
    except ValueError:
        out[k] = v
print(json.dumps(out))
PY
}
# One cross-host restore's store traffic on TARGET: BEFORE (counters) → after the first exec at
# T_EXEC → settled (fill done, trace written), for snapshot KEY; recorded as a "fetch" sample.
# memfs's refreshes from poll_start (before the request) on are kept with it.
record_fetch() {  # WHAT TARGET KEY BEFORE T_EXEC T_START
  local after settled progress
  after=$(stats_after "$2" "$5")
  settled=$(stats_settled "$2" "$6" 11)
  progress=$(poll_stop)
  rec fetch what="$1" host="$2" key="$3" before="$4" after_exec="$after" settled="$settled" \
    t_start="$6" t_exec="$5" memfs_progress="$progress" \
    stored_nonzero="$(sql "SELECT nonzero_bytes FROM stored_snapshots WHERE key='$3'")" \
    stored_bytes="$(sql "SELECT bytes FROM stored_snapshots WHERE key='$3'")" \
    manifest="$(manifest_sizes "$3")" trace_chunks="$(trace_chunks "$2" "$3")"
}

pg_start "$(mktemp -d /tmp/moat-store-bench-pg.XXXXXX)"
# s3rver's files outside $work: procs_stop_all kills whatever still mentions $work, and s3rver
# stops after the agents (s3_stop, in cleanup).
s3_start "$(mktemp -d /tmp/moat-store-bench-s3.XXXXXX)"
od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$work/token"
chmod 600 "$work/token"
start_agent a1
start_agent a2
start_api
for h in a1 a2; do
  for _ in $(seq 1 100); do [ "$(host_state $h)" = active ] && break; sleep 0.1; done
  [ "$(host_state $h)" = active ] || fail "$h is not active"
done
bench_t0=$(now)

# --- setup: base baked on a1 and uploaded; a2 fetches it (both hosts hold the template, as in a
# fleet); the guest's memory size and where dirty bytes can go. ---------------------------------
only a1
s=$(create base)
wait_key_uploaded "$(sql "SELECT key FROM stored_snapshots WHERE kind='template' LIMIT 1")"
mem_mb=$(api GET "/sandboxes/$s" | json "d.get('memoryMB', 0)")
only a2
t=$(create base)
[ "$(host_of "$t")" = a2 ] || fail "the warm-up create landed on $(host_of "$t")"
first_exec "$t"
kill_sandbox "$t"
grep -q 'template.fetched' "$work/a2.log" || say "note: a2 did not fetch the template from the store"
shm=$(run_in "$s" 'stat -f -c %T /dev/shm 2>/dev/null; id -un') || fail "probing the guest failed"
shm_fs=$(echo "$shm" | head -1)
guest_user=$(echo "$shm" | tail -1)
case "$shm_fs" in tmpfs) dirty_path=/dev/shm/dirty ;;
  *) shm_fs=$(run_in "$s" 'stat -f -c %T /tmp'); [ "$shm_fs" = tmpfs ] || fail "no tmpfs in the guest for dirty bytes"; dirty_path=/tmp/dirty ;;
esac
t0=$(now)
dirty "$s"
dirty_s=$(since "$t0")
say "setup: guest ${mem_mb} MiB, user $guest_user, ${dirty_mib} MiB dirty in $dirty_path ($shm_fs) in ${dirty_s}s"
[ "$mem_mb" = 512 ] || say "note: the base template has ${mem_mb} MiB, not 512 (reported as is)"

# --- 1. resume: same host -------------------------------------------------------------------
only a1
for i in $(seq 1 "$reps"); do
  api POST "/sandboxes/$s/pause" >/dev/null
  [ "$(status)" = 204 ] || fail "pause answered $(status)"
  off=$(logpos a1)
  t0=$(now)
  out=$(api POST "/sandboxes/$s/resume" '{"timeout":3600}')
  [ "$(status)" = 201 ] || fail "resume answered $(status): $out"
  r_s=$(since "$t0")
  first_exec "$s"
  total=$(since "$t0")
  h=$(host_of "$s")
  [ "$h" = a1 ] || fail "the same-host resume landed on $h"
  rec resume.same_host rep="$i" host="$h" resume_s="$r_s" to_first_exec_s="$total" \
    agent="$(agent_timing a1 "$s" "$off")"
  say "resume same host #$i: resume ${r_s}s, → first exec ${total}s"
done

# --- 1b. resume across hosts: a1 → a2 → a1 → … Cold hops get fresh dirty bytes; then one more
# cold hop (so both hosts have filled the last content) and warm hops without new bytes. -------
cross_resume() {  # MODE(cold|warm) N
  local from to k before t0 r_s total t_exec out off
  from=$(host_of "$s")
  to=$(other_of "$from")
  [ "$1" = cold ] && [ "$2" -le "$reps" ] && dirty "$s"
  api POST "/sandboxes/$s/pause" >/dev/null
  [ "$(status)" = 204 ] || fail "pause answered $(status)"
  k=$(latest_key paused "$s")
  t0=$(now)
  wait_key_uploaded "$k"
  up_s=$(since "$t0")
  only "$to"
  before=$(stats_after "$to" "$(now)")
  off=$(logpos "$to")
  poll_start "$to"
  t0=$(now)
  out=$(api POST "/sandboxes/$s/resume" '{"timeout":3600}')
  [ "$(status)" = 201 ] || fail "cross-host resume answered $(status): $out"
  r_s=$(since "$t0")
  first_exec "$s"
  t_exec=$(now)
  total=$(since "$t0")
  [ "$(host_of "$s")" = "$to" ] || fail "the cross-host resume landed on $(host_of "$s"), not $to"
  rec "resume.cross_$1" rep="$2" from="$from" host="$to" key="$k" upload_wait_s="$up_s" \
    resume_s="$r_s" to_first_exec_s="$total" agent="$(agent_timing "$to" "$s" "$off")"
  say "resume $from → $to ($1) #$2: upload ${up_s}s, resume ${r_s}s, → first exec ${total}s"
  record_fetch "resume_$1" "$to" "$k" "$before" "$t_exec" "$t0"
}
for i in $(seq 1 "$reps"); do cross_resume cold "$i"; done
cross_resume cold $((reps + 1))
for i in $(seq 1 "$reps"); do cross_resume warm "$i"; done
kill_sandbox "$s"

# --- 2. a named snapshot: creates on its own host and on the other (cold, then warm) ---------
only a1
n=$(create base)
for i in $(seq 1 "$reps"); do
  only a1
  dirty "$n"
  out=$(api POST "/sandboxes/$n/snapshots" "{\"name\":\"bench-$i\"}")
  case "$(status)" in 200|201) ;; *) fail "snapshot answered $(status): $out" ;; esac
  snap=$(echo "$out" | json "d.get('snapshotID') or d.get('templateID')")
  t0=$(now)
  wait_key_uploaded "$snap"
  up_s=$(since "$t0")
  off=$(logpos a1)
  t0=$(now)
  c=$(create "$snap")
  first_exec "$c"
  total=$(since "$t0")
  [ "$(host_of "$c")" = a1 ] || fail "the same-host create landed on $(host_of "$c")"
  rec named.same_host rep="$i" host=a1 key="$snap" upload_wait_s="$up_s" to_first_exec_s="$total" \
    agent="$(agent_timing a1 "$c" "$off")"
  say "named $snap on a1 #$i: create → first exec ${total}s (upload wait ${up_s}s)"
  kill_sandbox "$c"
  only a2
  for mode in cold warm; do
    before=$(stats_after a2 "$(now)")
    off=$(logpos a2)
    poll_start a2
    t0=$(now)
    c=$(create "$snap")
    c_s=$(since "$t0")
    first_exec "$c"
    t_exec=$(now)
    total=$(since "$t0")
    [ "$(host_of "$c")" = a2 ] || fail "the cross-host create landed on $(host_of "$c")"
    rec "named.cross_$mode" rep="$i" host=a2 key="$snap" create_s="$c_s" to_first_exec_s="$total" \
      agent="$(agent_timing a2 "$c" "$off")"
    say "named $snap on a2 ($mode) #$i: create ${c_s}s, → first exec ${total}s"
    record_fetch "named_$mode" a2 "$snap" "$before" "$t_exec" "$t0"
    kill_sandbox "$c"
  done
done

# --- 3. fork: on the parent's host, and elsewhere (its host draining) ------------------------
only a1
for i in $(seq 1 "$reps"); do
  only a1
  off=$(logpos a1)
  t0=$(now)
  out=$(api POST "/sandboxes/$n/fork" '{"count":1,"timeout":3600}')
  case "$(status)" in 200|201) ;; *) fail "fork answered $(status): $out" ;; esac
  f_s=$(since "$t0")
  c=$(echo "$out" | json "d[0]['sandbox']['sandboxID']")
  first_exec "$c"
  total=$(since "$t0")
  [ "$(host_of "$c")" = a1 ] || fail "the same-host fork child is on $(host_of "$c")"
  rec fork.same_host rep="$i" host=a1 fork_s="$f_s" to_first_exec_s="$total" \
    agent="$(agent_timing a1 "$c" "$off")"
  say "fork on a1 #$i: fork ${f_s}s, → first exec ${total}s"
  kill_sandbox "$c"
  dirty "$n"
  only a2
  before=$(stats_after a2 "$(now)")
  since_ms=$(date +%s%3N)
  off=$(logpos a2)
  poll_start a2
  t0=$(now)
  out=$(api POST "/sandboxes/$n/fork" '{"count":1,"timeout":3600}')
  case "$(status)" in 200|201) ;; *) fail "cross-host fork answered $(status): $out" ;; esac
  f_s=$(since "$t0")
  c=$(echo "$out" | json "d[0]['sandbox']['sandboxID']")
  first_exec "$c"
  t_exec=$(now)
  total=$(since "$t0")
  [ "$(host_of "$c")" = a2 ] || fail "the cross-host fork child is on $(host_of "$c")"
  k=$(sql "SELECT key FROM stored_snapshots WHERE kind='named' AND created_at_ms >= $since_ms ORDER BY created_at_ms DESC LIMIT 1")
  rec fork.cross rep="$i" host=a2 key="$k" fork_s="$f_s" to_first_exec_s="$total" \
    agent="$(agent_timing a2 "$c" "$off")"
  say "fork a1 → a2 #$i: fork ${f_s}s, → first exec ${total}s"
  record_fetch fork a2 "$k" "$before" "$t_exec" "$t0"
  kill_sandbox "$c"
done
kill_sandbox "$n"

# --- 4/5. memfs latency (whole run, per host) and the JSON ------------------------------------
for h in a1 a2; do rec memfs host="$h" stats="$(host_stats "$h")"; done
accel=$(grep -o 'event=moatd.accel accel=[a-z]*' "$work/a1.log" | head -1 | cut -d= -f3 || true)
mkdir -p "$(dirname "$json_path")"
python3 - "$samples" "$json_path" <<PY
import json, statistics, sys
samples = [json.loads(l) for l in open(sys.argv[1])]
info = {"accel": "${accel:-unknown}", "cores": $(nproc), "guest_memory_mb": $mem_mb,
        "guest_memory_note": "the base template's size (GET /sandboxes/{id} memoryMB)",
        "dirty_mib": $dirty_mib, "dirty_path": "$dirty_path", "dirty_fs": "$shm_fs",
        "dirty_write_s": $dirty_s, "reps": $reps, "chunk_bytes": 4 << 20,
        "store": "s3rver on loopback", "agents": 2, "replicas": 1,
        "source": "$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)",
        "wall_s": round($(since "$bench_t0"), 1)}
def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None
groups = {}
for s in samples:
    if s["group"] in ("fetch", "memfs"):
        continue
    groups.setdefault(s["group"], []).append(s)
timings = {}
for g, ss in groups.items():
    top, sub = g.split(".")
    keys = [k for k in ss[0] if k.endswith("_s")]
    akeys = sorted({k for x in ss for k in (x.get("agent") or {})})
    timings.setdefault(top, {})[sub] = {
        "samples": ss, "median": {k: med([x.get(k) for x in ss]) for k in keys},
        "median_agent": {k: med([(x.get("agent") or {}).get(k) for x in ss]) for k in akeys}}
D = lambda a, b, k: b[k] - a[k]
fetch = []
for s in samples:
    if s["group"] != "fetch":
        continue
    b, e, f = s["before"], s["after_exec"], s["settled"]
    def traffic(a):
        return {"replicator_restore_gets": D(b, a, "restore_gets"),
                "replicator_restore_bytes": D(b, a, "restore_bytes"),
                "replicator_store_gets": D(b, a, "r_store_gets"),
                "replicator_store_get_bytes": D(b, a, "r_store_get_bytes"),
                "memfs_store_gets": D(b, a, "m_store_gets"),
                "memfs_fetches": D(b, a, "fetches"),
                "memfs_fetch_bytes": D(b, a, "fetch_bytes"),
                "memfs_cache_hits": D(b, a, "cache_hits"),
                "memfs_cache_misses": D(b, a, "cache_misses"),
                "memfs_fill_done": D(b, a, "fill_done"),
                "memfs_prefetch_done": D(b, a, "prefetch_done"),
                "s3_gets": D(b, a, "r_store_gets") + D(b, a, "m_store_gets"),
                "s3_bytes": D(b, a, "r_store_get_bytes") + D(b, a, "m_store_get_bytes")}
    man = s.get("manifest") or {}
    mem_nz = (man.get("mem") or {}).get("nonzero_bytes")
    own_nz = sum(v["nonzero_bytes"] for k, v in man.items() if k != "disk.raw") if man else None
    stored_nz = s.get("stored_nonzero") or None
    if s["what"] == "named_warm":  # the cold create's trace (one per snapshot and host)
        s["trace_chunks"] = None
    x = {"what": s["what"], "host": s["host"], "key": s["key"],
         "stored_bytes": s.get("stored_bytes"), "stored_nonzero_bytes": stored_nz,
         "manifest": man, "mem_nonzero_bytes": mem_nz,
         "own_nonzero_bytes": own_nz,
         "trace_chunks": s.get("trace_chunks"),
         "trace_bytes": s["trace_chunks"] * (4 << 20) if isinstance(s.get("trace_chunks"), int) else None,
         "by_first_exec": traffic(e), "after_fill": traffic(f)}
    # memfs's stats refresh about once a second: its bytes at the last refresh before the first
    # exec completed (a lower bound) and the first after (the by_first_exec figures above, an
    # upper bound), and its progress from the request on (seconds, bytes).
    prog = s.get("memfs_progress") or []
    t0, tx = s["t_start"], s["t_exec"]
    lo = [q for q in prog if q["t"] <= tx and q["t"] >= t0]
    x["memfs_progress"] = [[round(q["t"] - t0, 2), q["get_bytes"] - b["m_store_get_bytes"]]
                           for q in prog if q["t"] >= t0 - 1]
    x["first_exec_after_request_s"] = round(tx - t0, 3)
    x["by_first_exec"]["lower_bound_s3_bytes"] = (
        D(b, e, "r_store_get_bytes") + (lo[-1]["get_bytes"] - b["m_store_get_bytes"] if lo else 0))
    x["by_first_exec"]["lower_bound_at_s"] = round(lo[-1]["t"] - t0, 2) if lo else None
    for when in ("by_first_exec", "after_fill"):
        t = x[when]
        for name, den in (("stored_nonzero", stored_nz), ("own_nonzero", own_nz), ("mem_nonzero", mem_nz)):
            t["fraction_of_" + name] = round(t["s3_bytes"] / den, 4) if den else None
            if "lower_bound_s3_bytes" in t:
                t["lower_bound_fraction_of_" + name] = round(t["lower_bound_s3_bytes"] / den, 4) if den else None
    fetch.append(x)
fetch_summary = {}
for what in sorted({x["what"] for x in fetch}):
    xs = [x for x in fetch if x["what"] == what]
    fetch_summary[what] = {
        when: {k: med([x[when][k] for x in xs]) for k in
               ("s3_gets", "s3_bytes", "memfs_fetch_bytes", "replicator_restore_bytes",
                "replicator_restore_gets", "memfs_store_gets", "lower_bound_s3_bytes",
                "fraction_of_stored_nonzero", "fraction_of_own_nonzero", "fraction_of_mem_nonzero",
                "lower_bound_fraction_of_own_nonzero", "lower_bound_fraction_of_stored_nonzero")
               if k in xs[0][when]}
        for when in ("by_first_exec", "after_fill")}
    fetch_summary[what]["trace_bytes"] = med([x["trace_bytes"] for x in xs])
    fetch_summary[what]["mem_nonzero_bytes"] = med([x["mem_nonzero_bytes"] for x in xs])
    fetch_summary[what]["own_nonzero_bytes"] = med([x["own_nonzero_bytes"] for x in xs])
    fetch_summary[what]["stored_nonzero_bytes"] = med([x["stored_nonzero_bytes"] for x in xs])
def hist(st):
    bounds, counts, total = st["lat_bounds"], st["lat_counts"], sum(st["lat_counts"])
    out = {"bounds_ms": bounds, "counts": counts, "sum_ms": round(st["lat_sum"], 1),
           "fetches": total, "mean_ms": round(st["lat_sum"] / total, 1) if total else None}
    for q in (0.5, 0.99):
        v = None
        if total:
            want, acc = q * total, 0
            for i, c in enumerate(counts):
                if c and acc + c >= want:
                    lo = bounds[i - 1] if i > 0 else 0
                    hi = bounds[i] if i < len(bounds) else None
                    # linear inside the bucket (Prometheus' histogram_quantile); past the last
                    # bound: that bound (a lower bound of the true value)
                    v = lo + (hi - lo) * (want - acc) / c if hi is not None else lo
                    break
                acc += c
        out["p%g_ms" % (q * 100)] = round(v, 1) if v is not None else None
    return out
memfs = {}
tot = None
for s in samples:
    if s["group"] == "memfs":
        st = s["stats"]
        memfs[s["host"]] = hist(st)
        if st["lat_counts"]:
            if tot is None:
                tot = {"lat_bounds": st["lat_bounds"], "lat_counts": list(st["lat_counts"]), "lat_sum": st["lat_sum"]}
            else:
                tot["lat_counts"] = [a + b for a, b in zip(tot["lat_counts"], st["lat_counts"])]
                tot["lat_sum"] += st["lat_sum"]
memfs["all"] = hist(tot) if tot else None
def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None
rm = lambda t, g, k="to_first_exec_s": timings.get(t, {}).get(g, {}).get("median", {}).get(k)
res_cold = ratio(rm("resume", "cross_cold"), rm("resume", "same_host"))
res_warm = ratio(rm("resume", "cross_warm"), rm("resume", "same_host"))
nam_cold = ratio(rm("named", "cross_cold"), rm("named", "same_host"))
nam_warm = ratio(rm("named", "cross_warm"), rm("named", "same_host"))
frk = ratio(rm("fork", "cross"), rm("fork", "same_host"))
rc = fetch_summary.get("resume_cold", {})
f_exec = rc.get("by_first_exec", {}).get("fraction_of_own_nonzero")
f_exec_stored = rc.get("by_first_exec", {}).get("fraction_of_stored_nonzero")
f_exec_lo = rc.get("by_first_exec", {}).get("lower_bound_fraction_of_own_nonzero")
f_exec_lo_stored = rc.get("by_first_exec", {}).get("lower_bound_fraction_of_stored_nonzero")
f_fill = rc.get("after_fill", {}).get("fraction_of_own_nonzero")
f_trace = ratio(rc.get("trace_bytes"), rc.get("own_nonzero_bytes"))
targets = {
    "resume_cross_cold_vs_same": {"ratio": res_cold, "target": 3.0, "met": res_cold is not None and res_cold <= 3.0},
    "resume_cross_warm_vs_same": {"ratio": res_warm, "target": 1.2, "met": res_warm is not None and res_warm <= 1.2},
    "named_cross_cold_vs_same": {"ratio": nam_cold, "target": 3.0, "met": nam_cold is not None and nam_cold <= 3.0},
    "named_cross_warm_vs_same": {"ratio": nam_warm, "target": 1.2, "met": nam_warm is not None and nam_warm <= 1.2},
    "fork_cross_vs_same": {"ratio": frk, "cross_s": rm("fork", "cross"),
                           "anchor": "PandaStack cross-host fork 1.2-3.5 s"},
    "resume_cold_bytes_by_first_exec": {
        "fraction": f_exec, "target": 0.25, "met": f_exec is not None and f_exec <= 0.25,
        "judged_on": "cold cross-host resumes (median): S3 bytes the target host fetched "
                     "(replicator + memfs) from the resume request to the first exec's "
                     "completion, over the snapshot's own non-zero bytes (mem, state, disk "
                     "overlay; the base disk, matched against the host's own template, "
                     "excluded). memfs fill runs in the background from the file's first open, "
                     "so this includes what fill fetched by then. 'fraction' counts memfs at its "
                     "first stats refresh after the exec (upper bound), 'lower_bound_fraction' "
                     "at its last refresh before it; touched_in_first_10s_fraction is memfs's "
                     "trace (the non-zero chunks the guest read in 10 s from the open), i.e. "
                     "what a restore without fill would have needed",
        "fraction_of_stored_nonzero": f_exec_stored,
        "lower_bound_fraction": f_exec_lo,
        "lower_bound_fraction_of_stored_nonzero": f_exec_lo_stored,
        "after_fill_fraction": f_fill,
        "touched_in_first_10s_fraction": f_trace},
}
json.dump({"bench": "store", "info": info, "timings": timings, "fetch": fetch,
           "fetch_summary": fetch_summary, "memfs_fetch_latency": memfs, "targets": targets},
          open(sys.argv[2], "w"), indent=1)
print(json.dumps(targets, indent=1))
PY
say "wrote $json_path"

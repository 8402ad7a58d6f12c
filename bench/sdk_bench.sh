#!/usr/bin/env bash
# Performance under sustained load (issue 19), side by side in one run, through the official
# `e2b` client (tests/compat's locked npm packages) against `moatd serve` as a user starts it:
#   1. defaults (2 warm clones, pools grow to --warm-max 16 when creates find them dry):
#      fresh-sandbox first vs second command, create -> port answer, the serial agent loop,
#      4 concurrent loops, creates sustained for 60 s, PSS at SDK_BENCH_IDLE idle sandboxes
#   2. --warm-max 0 (the pool before this issue: never grows): the serial loop again; and
#      --refill-priority low (refills as background work): the serial and the 4 loops again
#   3. --warm-sandboxes 0 (every create restores on the request's path): fresh sandboxes; and
#      --refill-delay-ms 0 (a claim refills at once, beside the new sandbox's first commands):
#      fresh sandboxes, the serial loop and sustained creates again
# moatd's log gives what the client cannot see: which creates a warm clone served, a refill's
# restore and warm-up times, and each kill's teardown after its answer.
#
#   4. with SDK_BENCH_BEFORE_MOATD=<an earlier build's moatd>: the phases of 1 against it, on a
#      data dir of its own ("before" in the JSON: the same run, the same machine)
#
# usage: bench/sdk_bench.sh [BUILD_DIR] [JSON_PATH]
# SDK_BENCH_N (100), SDK_BENCH_FRESH (20), SDK_BENCH_SUSTAIN_S (60), SDK_BENCH_IDLE (50).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
json_path=${2:-$build/bench/sdk.json}
moatd=$build/bin/moatd
[ -x "$moatd" ] || { echo "sdk_bench: build first" >&2; exit 1; }
[ -f "$build/guest/rootfs.ext4" ] || { echo "sdk_bench: $build/guest has no rootfs.ext4 (make guest)" >&2; exit 1; }
(cd "$root/tests/compat" && { npm ci --offline --no-audit --no-fund >/dev/null 2>&1 || npm ci --no-audit --no-fund >/dev/null; })

. "$root/tests/support/moatd_procs.sh"
declare -A pid url
procs_bench_begin sdk_bench

N=${SDK_BENCH_N:-100}
FRESH=${SDK_BENCH_FRESH:-20}
mkdir -p "$work/data" "$work/out"
net="10.227.$(($$ % 250)).0/24"

# start_serve NAME ARGS...: moatd serve on $work/data (the template baked once, kept across
# restarts), logging to $work/NAME.log; waits until its base pool holds what it asked for.
start_serve() {
  local name=$1 warm=$2 bin=${MOATD_BIN:-$moatd} data=${MOATD_DATA:-$work/data}
  shift 2
  url[serve]=http://127.0.0.1:$(procs_free_port)
  mkdir -p "$data"
  MOAT_API_KEY=$key "$bin" serve --listen "${url[serve]#http://}" --data-dir "$data" \
    --guest-dir "$build/guest" --accel auto --net-pool "$net" --dns 192.0.2.53 \
    --warm-sandboxes "$warm" "$@" >>"$work/$name.log" 2>&1 &
  pid[serve]=$!
  procs_wait_healthy serve
  procs_lift_quotas serve "$key"  # the host is measured, not the team's create rate
  for _ in $(seq 1 600); do
    [ "$(grep -c 'event=agent.warm_clone_added' "$work/$name.log" || true)" -ge "$warm" ] && return 0
    sleep 0.5
  done
  procs_say "$name: the warm pool did not fill"; return 1
}
stop_serve() {
  kill -TERM "${pid[serve]}"; wait "${pid[serve]}" 2>/dev/null || true; unset 'pid[serve]'
}
# The client resolves `e2b` from the script's directory: link the locked packages beside it.
ln -s "$root/tests/compat/node_modules" "$work/node_modules"
cp "$root/bench/sdk_bench.mjs" "$work/sdk_bench.mjs"
phase() {  # phase PHASE OUTNAME [ENV=VALUE...]
  local p=$1 o=$2
  shift 2
  echo "sdk_bench: $o" >&2
  env "$@" SDK_BENCH_PHASE="$p" E2B_API_URL="${url[serve]}" E2B_SANDBOX_URL="${url[serve]}" \
    E2B_API_KEY="$key" node "$work/sdk_bench.mjs" >"$work/out/$o.json"
}

all_phases() {  # all_phases PREFIX: every phase of set-up 1, outputs named PREFIX<phase>
  phase fresh "${1}fresh" SDK_BENCH_N="$FRESH"
  phase port "${1}port" SDK_BENCH_N=10
  phase loop "${1}loop" SDK_BENCH_N="$N"
  phase loop4 "${1}loop4" SDK_BENCH_N="$N"
  phase creates "${1}creates" SDK_BENCH_SUSTAIN_S="${SDK_BENCH_SUSTAIN_S:-60}"
  phase idle "${1}idle" SDK_BENCH_IDLE="${SDK_BENCH_IDLE:-50}"
}

start_serve defaults 2
all_phases ""
stop_serve
start_serve fixed_pool 2 --warm-max 0
phase loop loop_fixed_pool SDK_BENCH_N="$N"
stop_serve
start_serve low_priority 2 --refill-priority low
phase loop loop_low_priority SDK_BENCH_N="$N"
phase loop4 loop4_low_priority SDK_BENCH_N="$N"
stop_serve
start_serve no_pool 0
phase fresh fresh_no_pool SDK_BENCH_N=$((FRESH / 2))
stop_serve
start_serve no_refill_delay 2 --refill-delay-ms 0
phase fresh fresh_no_refill_delay SDK_BENCH_N="$FRESH"
phase loop loop_no_refill_delay SDK_BENCH_N="$N"
phase creates creates_no_refill_delay SDK_BENCH_SUSTAIN_S="${SDK_BENCH_SUSTAIN_S:-60}"
stop_serve
if [ -n "${SDK_BENCH_BEFORE_MOATD:-}" ]; then
  MOATD_BIN=$SDK_BENCH_BEFORE_MOATD MOATD_DATA=$work/data-before start_serve before 2
  all_phases before_
  stop_serve
fi

accel=$(grep -o 'event=moatd.accel accel=[a-z]*' "$work/defaults.log" | head -1 | cut -d= -f3)
mkdir -p "$(dirname "$json_path")"
python3 - "$work" "$json_path" "$accel" <<'PY'
import json, re, sys, glob, os
work, out_path, accel = sys.argv[1:4]
def stats(xs):
    if not xs: return {"n": 0}
    s = sorted(xs); q = lambda p: s[min(len(s) - 1, int(p * len(s)))]
    return {"n": len(s), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": s[-1]}
logs = {}
for f in glob.glob(f"{work}/*.log"):
    logs[os.path.basename(f)[:-4]] = open(f, errors="replace").read()
def events(log, name):
    for line in log.splitlines():
        if f"event={name} " in line:
            yield dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
r = {"bench": "sdk", "accel": accel, "client": "e2b (tests/compat lockfile)"}
for f in sorted(glob.glob(f"{work}/out/*.json")):
    name = os.path.basename(f)[:-5]
    o = json.load(open(f))
    ids = set(o.pop("ids", []))
    log = logs["defaults" if name in ("fresh", "port", "loop", "loop4", "creates", "idle")
               else "before" if name.startswith("before_")
               else {"loop_fixed_pool": "fixed_pool", "fresh_no_pool": "no_pool",
                     "loop_low_priority": "low_priority",
                     "loop4_low_priority": "low_priority",
                     "fresh_no_refill_delay": "no_refill_delay",
                     "loop_no_refill_delay": "no_refill_delay",
                     "creates_no_refill_delay": "no_refill_delay"}[name]]
    claimed = {e["sandbox"] for e in events(log, "sandbox.claimed")} & ids
    o["from_warm_pool"] = f"{len(claimed)}/{len(ids)}"
    td = [e for e in events(log, "sandbox.torn_down") if e["sandbox"] in ids]
    if td:
        o["teardown_after_kill_answer_ms"] = stats([int(e["queued_ms"]) + int(e["teardown_ms"]) for e in td])
    if name.startswith("before_"):
        r.setdefault("before", {"moatd": "SDK_BENCH_BEFORE_MOATD"})[name[len("before_"):]] = o
    else:
        r[name] = o
adds = list(events(logs["defaults"], "agent.warm_clone_added"))
r["refill"] = {"restore_ms": stats([int(e["restore_ms"]) for e in adds if "restore_ms" in e]),
               "warmup_ms": stats([int(e["warmup_ms"]) for e in adds if "warmup_ms" in e]),
               "clones_added": len(adds),
               "dry_creates": sum(1 for _ in events(logs["defaults"], "agent.warm_pool_dry"))}
if "before" in logs:
    r["before"]["clones_added"] = len(list(events(logs["before"], "agent.warm_clone_added")))
open(out_path, "w").write(json.dumps(r, indent=2) + "\n")
print(json.dumps(r, indent=2))
PY

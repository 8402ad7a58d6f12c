#!/usr/bin/env bash
# How many idle sandboxes one host holds before creates fail, and what fails first (issue 19,
# "Density"). `moatd serve` as a user starts it (networking on, a /16 net pool, the default
# --memory-reserve-mb), the admin team's quotas raised out of the way, then sandboxes created
# through the E2B API by CAPACITY_BENCH_WORKERS clients and left idle until a create fails, the
# cap is reached or the time limit passes. Every CAPACITY_BENCH_STEP sandboxes it records the
# host's MemAvailable, the load, moatd's and the VMs' resident memory and the create latency;
# at the end, the failure (status and message) and what the host had left. Everything is killed
# and the leftovers checked before it exits.
#
# usage: bench/capacity_bench.sh [BUILD_DIR] [JSON_PATH]
# CAPACITY_BENCH_CAP (1500), CAPACITY_BENCH_LIMIT_S (900), CAPACITY_BENCH_WORKERS (2),
# CAPACITY_BENCH_STEP (50); extra moatd flags in CAPACITY_BENCH_MOATD_FLAGS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
json_path=${2:-$build/bench/capacity.json}
moatd=$build/bin/moatd
[ -x "$moatd" ] || { echo "capacity_bench: build first" >&2; exit 1; }
[ -f "$build/guest/rootfs.ext4" ] || { echo "capacity_bench: no $build/guest/rootfs.ext4 (make guest)" >&2; exit 1; }

. "$root/tests/support/moatd_procs.sh"
declare -A pid url
procs_bench_begin capacity_bench

url[serve]=http://127.0.0.1:$(procs_free_port)
# shellcheck disable=SC2086 # the extra flags are words
MOAT_API_KEY=$key "$moatd" serve --listen "${url[serve]#http://}" --data-dir "$work/data" \
  --guest-dir "$build/guest" --accel auto --net-pool "10.226.0.0/16" --dns 192.0.2.53 \
  --warm-sandboxes 2 ${CAPACITY_BENCH_MOATD_FLAGS:-} >>"$work/serve.log" 2>&1 &
pid[serve]=$!
procs_wait_healthy serve
procs_lift_quotas serve "$key"  # the host is measured, not the team's quotas

mkdir -p "$(dirname "$json_path")"
python3 - "${url[serve]}" "$key" "$json_path" "${pid[serve]}" "$work/serve.log" <<'PY'
import json, os, sys, threading, time, urllib.request, urllib.error
base, key, out_path, moatd_pid, log_path = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
CAP = int(os.environ.get("CAPACITY_BENCH_CAP", "1500"))
LIMIT_S = float(os.environ.get("CAPACITY_BENCH_LIMIT_S", "900"))
WORKERS = int(os.environ.get("CAPACITY_BENCH_WORKERS", "2"))
STEP = int(os.environ.get("CAPACITY_BENCH_STEP", "50"))

def call(method, path, body=None, timeout=120):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"X-API-Key": key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = r.read()
            return r.status, json.loads(data) if data else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")

def meminfo():
    m = {}
    for line in open("/proc/meminfo"):
        k, v = line.split(":", 1)
        m[k] = int(v.split()[0]) // 1024
    return m

def rss_mib(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total // 1024

def qemu_pids():
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if b"qemu-system" in open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")[0]:
                    out.append(int(p))
            except OSError:
                pass
    return out

mem0 = meminfo()
lock = threading.Lock()
ids, latencies, samples = [], [], []
failure = None
stop = threading.Event()
t_start = time.monotonic()

def sample():
    m = meminfo()
    q = qemu_pids()
    samples.append({"sandboxes": len(ids), "seconds": round(time.monotonic() - t_start, 1),
                    "mem_available_mib": m["MemAvailable"], "mem_free_mib": m["MemFree"],
                    "load1": round(os.getloadavg()[0], 2), "qemu_processes": len(q),
                    "qemu_rss_mib": rss_mib(q), "moatd_rss_mib": rss_mib([moatd_pid]),
                    "create_ms_p50_last_step": sorted(latencies[-STEP:])[len(latencies[-STEP:]) // 2] if latencies else None})
    print(json.dumps(samples[-1]), flush=True)

def worker():
    global failure
    while not stop.is_set():
        t = time.monotonic()
        status, body = call("POST", "/sandboxes", {"templateID": "base", "timeout": 3600})
        ms = (time.monotonic() - t) * 1000
        with lock:
            if stop.is_set():
                if status == 201: ids.append(body["sandboxID"])
                return
            if status != 201:
                failure = {"status": status, "message": str(body)[:500], "after": len(ids),
                           "create_ms": round(ms)}
                stop.set()
                return
            ids.append(body["sandboxID"])
            latencies.append(ms)
            n = len(ids)
            if n % STEP == 0: sample()
            if n >= CAP:
                stop.set()
            elif time.monotonic() - t_start > LIMIT_S:
                failure = {"status": None, "message": f"time limit {LIMIT_S:.0f} s", "after": n}
                stop.set()

sample()
threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
for t in threads: t.start()
for t in threads: t.join()
with lock: sample()
memlow = [l for l in open(log_path, errors="replace") if "event=agent.memory_low" in l]
# Is every sandbox still alive? (An OOM kill would show as fewer QEMUs than sandboxes.)
status, listed = call("GET", "/sandboxes")
running = len(listed) if status == 200 else None
lat = sorted(latencies)
r = {"bench": "capacity", "host_mem_total_mib": mem0["MemTotal"],
     "mem_available_at_start_mib": mem0["MemAvailable"], "workers": WORKERS, "cap": CAP,
     "sandboxes_created": len(ids), "sandboxes_listed_running": running,
     "first_failure": failure,
     "agent_memory_low_events": len(memlow),
     "create_ms": {"p50": round(lat[len(lat) // 2]), "p90": round(lat[int(len(lat) * 0.9)]),
                   "max": round(lat[-1])} if lat else None,
     "host_mib_per_sandbox": round((mem0["MemAvailable"] - samples[-1]["mem_available_mib"]) / max(1, len(ids)), 1),
     "samples": samples}
# Kill them all (the bench's own clean-up also stops moatd, which kills what is left).
t = time.monotonic()
def killer(part):
    for i in part: call("DELETE", f"/sandboxes/{i}")
parts = [ids[i::4] for i in range(4)]
ks = [threading.Thread(target=killer, args=(p,)) for p in parts]
for k in ks: k.start()
for k in ks: k.join()
r["kill_all_answered_s"] = round(time.monotonic() - t, 1)
# Their teardowns (in moatd's background) finish before moatd is stopped, so that the stop
# measures nothing of them and leaves nothing behind.
def torn_down():
    return sum(1 for l in open(log_path, errors="replace") if "event=sandbox.torn_down" in l)
deadline = time.monotonic() + 600
while torn_down() < len(ids) and time.monotonic() < deadline: time.sleep(0.5)
r["kill_all_torn_down_s"] = round(time.monotonic() - t, 1)
r["torn_down"] = torn_down()
open(out_path, "w").write(json.dumps(r, indent=2) + "\n")
print(json.dumps({k: v for k, v in r.items() if k != "samples"}, indent=2))
PY

#!/usr/bin/env bash
# The fleet benchmark (issue 13): `moatd serve` and a fleet — a private PostgreSQL, two `moatd
# agent` hosts and one `moatd api` replica — side by side on this machine, driven by fleet_bench
# (bench/fleet_bench.cc) in one run. PostgreSQL runs durable here (fsync and synchronous commit
# on, as in production), unlike the test harness. serve keeps two warm clones, each agent one,
# so both sides hold the same pool; every side has networking on, with its own slot pool.
#
# usage: bench/fleet_bench.sh [BUILD_DIR] [JSON_PATH] [fleet_bench flags…]
# FLEET_BENCH_LOGS=DIR keeps the processes' logs there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
json_path=${2:-$build/bench/fleet.json}
shift $(( $# > 2 ? 2 : $# ))
moatd=$build/bin/moatd
[ -x "$moatd" ] && [ -x "$build/bin/fleet_bench" ] || { echo "fleet_bench: build first" >&2; exit 1; }
[ -f "$build/guest/vmlinux" ] || { echo "fleet_bench: $build/guest has no guest image (make guest)" >&2; exit 1; }

. "$root/tests/support/pg.sh"
. "$root/tests/support/moatd_procs.sh"
work=$(mktemp -d /tmp/moat-fleet-bench.XXXXXX)
key="moat_bench_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
declare -A pid url
procs_who=fleet_bench

cleanup() {
  local rc=$?
  procs_stop_all || rc=1
  [ "$rc" = 0 ] || procs_show_logs
  if [ -n "${FLEET_BENCH_LOGS:-}" ]; then mkdir -p "$FLEET_BENCH_LOGS" && cp "$work"/*.log "$FLEET_BENCH_LOGS"/; fi
  pg_stop
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT INT TERM

start() {  # NAME ROLE flags…
  local name=$1 role=$2
  shift 2
  url[$name]=http://127.0.0.1:$(procs_free_port)
  mkdir -p "$work/$name"
  MOAT_API_KEY=$key "$moatd" "$role" --listen "${url[$name]#http://}" --data-dir "$work/$name" \
    "$@" >>"$work/$name.log" 2>&1 &
  pid[$name]=$!
  procs_wait_healthy "$name"
}

PG_DURABLE=1 pg_start "$(mktemp -d /tmp/moat-fleet-bench-pg.XXXXXX)"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"
chmod 600 "$work/token"
vm=(--guest-dir "$build/guest" --accel auto --dns 192.0.2.53)
octet=$(($$ % 250))
start serve serve "${vm[@]}" --net-pool "10.241.$octet.0/24" --warm-sandboxes 2 --prebake-templates=false
for i in 1 2; do
  start "a$i" agent --store "$PG_URI" --fleet-token-file "$work/token" --host-id "bench-a$i" \
    "${vm[@]}" --net-pool "10.24$((1 + i)).$octet.0/24" --jail-id-first "$((2300000 + i * 100000))" \
    --warm-sandboxes 1 --prebake-templates=false
done
start api api --store "$PG_URI" --fleet-token-file "$work/token"
accel=$(grep -o 'event=moatd.accel accel=[a-z]*' "$work/serve.log" | head -1 | cut -d= -f3 || true)
info=$(printf '{"accel":"%s","agents":2,"replicas":1,"pg":"15, fsync on","cores":%s,"network":true}' \
  "${accel:-unknown}" "$(nproc)")
"$build/bin/fleet_bench" --serve "${url[serve]}" --fleet "${url[api]}" --key "$key" \
  --json "$json_path" --info "$info" "$@"

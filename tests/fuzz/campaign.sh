#!/usr/bin/env bash
# A longer fuzz campaign (docs/security.md, "Fuzzing"): every target at once, each with its
# share of processes sharing one corpus, until the target has run its executions or SECONDS
# have passed. Prints one row per target (executions, exec/s summed over its processes, the
# largest cov and ft, crashes) and leaves the tails of the logs, the corpora and any crashing
# input under OUT.
#   tests/fuzz/campaign.sh BIN_DIR SECONDS OUT name:processes:max_len:executions ...
set -uo pipefail
bin=$1 secs=$2 out=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
pids=()
for spec in "$@"; do
  IFS=: read -r name procs max_len runs <<< "$spec"
  mkdir -p "$out/$name/corpus" "$out/$name/crashes"
  seeds="$here/seeds/$name"
  [ -d "$seeds" ] || seeds=
  for ((i = 0; i < procs; i++)); do
    "$bin/${name}_fuzz" -max_total_time="$secs" -runs=$(((runs + procs - 1) / procs)) \
      -max_len="$max_len" -reload=1 -print_final_stats=1 \
      -artifact_prefix="$out/$name/crashes/" "$out/$name/corpus" $seeds \
      > "$out/$name/log.$i" 2>&1 &
    pids+=($!)
  done
done
for p in "${pids[@]}"; do wait "$p"; done

printf '%-14s %12s %9s %6s %7s %7s\n' target executions exec/s cov ft crashes
for spec in "$@"; do
  IFS=: read -r name procs max_len runs <<< "$spec"
  total=0 rate=0 cov=0 ft=0
  for log in "$out/$name"/log.*; do
    r=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || true)
    total=$((total + ${r:-0}))
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    e=$(grep -o 'exec/s: [0-9]*' <<< "$last" | grep -o '[0-9]*' || true)
    c=$(grep -o 'cov: [0-9]*' <<< "$last" | grep -o '[0-9]*' || true)
    f=$(grep -o 'ft: [0-9]*' <<< "$last" | grep -o '[0-9]*' || true)
    rate=$((rate + ${e:-0}))
    ((${c:-0} > cov)) && cov=$c
    ((${f:-0} > ft)) && ft=$f
    tail -n 60 "$log" > "$log.tail" && mv "$log.tail" "$log"
  done
  crashes=$(find "$out/$name/crashes" -type f | wc -l)
  printf '%-14s %12d %9d %6d %7d %7d\n' "$name" "$total" "$rate" "$cov" "$ft" "$crashes"
done

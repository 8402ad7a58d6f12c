# moatd processes for shell-driven tests and benchmarks, sourced. The caller declares
#   declare -A pid url
# (a name → the process's pid and base URL) and sets `work` (a temp dir every process's files
# are under) and `procs_who` (the prefix of messages).
#   procs_free_port                  a free loopback TCP port
#   procs_wait_healthy NAME          0 once ${url[NAME]}/healthz answers; 1 (said why) if the
#                                    process exits first or 60 s pass
#   procs_stop_all                   SIGTERM to every process, SIGKILL after 15 s, then any
#                                    process still mentioning $work is killed; 1 if either was
#                                    needed
#   procs_show_logs                  the last lines of every $work/*.log
#   procs_lift_quotas NAME KEY       raises the quotas of KEY's team (an admin key: moatd's
#                                    bootstrap one) on ${url[NAME]} out of a benchmark's way
#   procs_bench_begin WHO            a benchmark's set-up: procs_who=WHO, work=a new temp dir,
#                                    key=a random API key, and a trap on EXIT, INT and TERM that
#                                    stops every process, shows the logs if anything failed and
#                                    removes $work (the caller declares pid and url first)

procs_say() { echo "$procs_who: $*" >&2; }

procs_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

procs_wait_healthy() {
  local name=$1
  for _ in $(seq 1 600); do
    curl -fs "${url[$name]}/healthz" >/dev/null 2>&1 && return 0
    kill -0 "${pid[$name]}" 2>/dev/null || { procs_say "$name exited during start-up"; return 1; }
    sleep 0.1
  done
  procs_say "$name did not answer /healthz"
  return 1
}

procs_stop_all() {
  local name rc=0
  for name in "${!pid[@]}"; do kill -TERM "${pid[$name]}" 2>/dev/null || true; done
  for name in "${!pid[@]}"; do
    for _ in $(seq 1 150); do kill -0 "${pid[$name]}" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "${pid[$name]}" 2>/dev/null; then
      procs_say "$name did not stop on SIGTERM; killing it"; kill -KILL "${pid[$name]}"; rc=1
    fi
    wait "${pid[$name]}" 2>/dev/null || true
  done
  sleep 0.5
  if pgrep -f -- "$work" >/dev/null; then
    procs_say "processes left behind mentioning $work:"; pgrep -af -- "$work" >&2
    pkill -KILL -f -- "$work" || true; rc=1
  fi
  return "$rc"
}

procs_show_logs() {
  local log
  for log in "$work"/*.log; do
    [ -f "$log" ] || continue
    procs_say "last lines of $(basename "$log"):"; tail -n 25 "$log" >&2
  done
}

procs_bench_begin() {
  procs_who=$1
  work=$(mktemp -d "/tmp/moat-$1.XXXXXX")
  key="moat_bench_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
  trap procs_bench_end EXIT INT TERM
}

procs_bench_end() {
  local rc=$?
  procs_stop_all || rc=1
  [ "$rc" = 0 ] || procs_show_logs
  rm -rf "$work"
  exit "$rc"
}

procs_lift_quotas() {
  local base=${url[$1]} key=$2 team
  team=$(curl -fsS -H "X-API-Key: $key" "$base/keys" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["teamID"])') || return 1
  curl -fsS -X PUT -H "X-API-Key: $key" -H 'Content-Type: application/json' \
    -d '{"maxSandboxes": 100000, "maxVcpus": 100000, "maxMemoryMiB": 102400000,
         "maxCreatesPerMinute": 100000}' "$base/teams/$team/quotas" >/dev/null
}

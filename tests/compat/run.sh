#!/usr/bin/env bash
# The compatibility suite: the official e2b SDK (package-lock.json) against a real moatd.
# Builds nothing. Usage: tests/compat/run.sh [BUILD_DIR]   (default: build)
# MOAT_COMPAT_FILES="a.test.mjs b.test.mjs" runs only those files (and skips the CLI part).
# Installs the locked npm packages (npm ci, offline cache first), starts BUILD_DIR/bin/moatd on
# a free loopback port with a temp data dir and a known key, waits for /healthz, runs the tests
# with Node's test runner, and always stops moatd and checks that no VMM of it is left.
# MOAT_COMPAT_STORE=postgresql: moatd keeps its metadata in a private PostgreSQL this script
# starts (tests/support/pg.sh) instead of SQLite in its data dir.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
case "$build" in /*) ;; *) build=$root/$build ;; esac
moatd=$build/bin/moatd
[ -x "$moatd" ] || { echo "compat: $moatd not built" >&2; exit 1; }
[ -f "$build/guest/vmlinux" ] || { echo "compat: $build/guest has no guest image (make guest)" >&2; exit 1; }

cd "$here"
if ! npm ci --offline --no-audit --no-fund >/dev/null 2>&1; then
  npm ci --no-audit --no-fund >/dev/null
fi

. "$root/tests/support/pg.sh"
data=$(mktemp -d /tmp/moat-compat.XXXXXX)
key="moat_compat_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
moatd_pid=
cleanup() {
  local rc=$?
  if [ -n "$moatd_pid" ] && kill -0 "$moatd_pid" 2>/dev/null; then
    kill -TERM "$moatd_pid"
    for _ in $(seq 1 100); do kill -0 "$moatd_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$moatd_pid" 2>/dev/null; then
      echo "compat: moatd did not stop on SIGTERM; killing it" >&2
      kill -KILL "$moatd_pid"; rc=1
    fi
    wait "$moatd_pid" 2>/dev/null || true
  fi
  if pgrep -f -- "$data" >/dev/null; then
    echo "compat: processes left behind mentioning $data:" >&2
    pgrep -af -- "$data" >&2; rc=1
  fi
  if [ "$rc" != 0 ] && [ -f "$data/moatd.log" ]; then
    echo "compat: last lines of moatd's log:" >&2; tail -n 40 "$data/moatd.log" >&2
  fi
  rm -rf "$data"
  pg_stop
  exit "$rc"
}
trap cleanup EXIT INT TERM

store_args=()
case "${MOAT_COMPAT_STORE:-sqlite}" in
  sqlite) ;;
  postgresql)
    pg_start "$(mktemp -d /tmp/moat-compat-pg.XXXXXX)"
    store_args=(--store "$PG_URI")
    ;;
  *) echo "compat: MOAT_COMPAT_STORE: expected sqlite or postgresql" >&2; exit 2 ;;
esac

# The code interpreter's template is baked at start for the whole suite (its tests and the CLI's
# run-code); a run of chosen files without them does not pay for the bake.
prebake_args=()
if [ -n "${MOAT_COMPAT_FILES:-}" ] && [[ "$MOAT_COMPAT_FILES" != *code_interpreter* ]]; then
  prebake_args=(--prebake-templates=false)
fi

# A free loopback port: bind port 0, read what the kernel chose, release it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Sandboxes get network slots from a pool of this run's own (moatd's default pool may be in use
# by a moatd on this machine); <port>-<id>.moat.test names are sent to moatd by the tests. The
# sandboxes' resolver is a documentation address (TEST-NET-1): no test resolves a name, and
# none may reach the machine's real resolver.
MOAT_API_KEY=$key "$moatd" serve --listen "127.0.0.1:$port" --data-dir "$data" --accel auto \
  --insecure-registry 127.0.0.1 \
  --guest-dir "$build/guest" --net-pool "10.226.$(($$ % 250)).0/24" --domain moat.test \
  --dns 192.0.2.53 "${store_args[@]}" "${prebake_args[@]}" >"$data/moatd.log" 2>&1 &
moatd_pid=$!

url=http://127.0.0.1:$port
for _ in $(seq 1 600); do
  curl -fs "$url/healthz" >/dev/null 2>&1 && break
  kill -0 "$moatd_pid" 2>/dev/null || { echo "compat: moatd exited during start-up" >&2; exit 1; }
  sleep 0.1
done
curl -fs "$url/healthz" >/dev/null || { echo "compat: moatd did not answer /healthz" >&2; exit 1; }

# MOAT_COMPAT_FILES (e.g. "parity.test.mjs"): only those test files, and not the CLI part below.
# shellcheck disable=SC2086
E2B_API_KEY=$key E2B_API_URL=$url E2B_SANDBOX_URL=$url node --test --test-concurrency=1 \
  ${MOAT_COMPAT_FILES:-}
[ -z "${MOAT_COMPAT_FILES:-}" ] || exit 0

# The moat CLI against the same moatd: create, exec (output and exit code, -i, -it), cp both
# ways, snapshots, API keys, kill, templates.
moat=$build/bin/moat
[ -x "$moat" ] || { echo "compat: $moat not built" >&2; exit 1; }
export MOAT_API_URL=$url MOAT_API_KEY=$key
cli_fail() { echo "compat: moat CLI: $*" >&2; exit 1; }
sbx=$("$moat" sandbox create --json --timeout 300 | python3 -c 'import json,sys; print(json.load(sys.stdin)["sandboxID"])')
[ -n "$sbx" ] || cli_fail "create printed no sandboxID"
out=$("$moat" exec "$sbx" -- echo hi) || cli_fail "exec echo hi exited $?"
[ "$out" = hi ] || cli_fail "exec echo hi printed '$out'"
rc=0; "$moat" exec "$sbx" -- sh -c 'exit 3' || rc=$?
[ "$rc" = 3 ] || cli_fail "exec 'exit 3' exited $rc"
head -c 70000 /dev/urandom >"$data/cli-in.bin"
"$moat" cp "$data/cli-in.bin" "$sbx:/tmp/cli-in.bin" || cli_fail "cp in failed"
"$moat" cp "$sbx:/tmp/cli-in.bin" "$data/cli-out.bin" || cli_fail "cp out failed"
cmp -s "$data/cli-in.bin" "$data/cli-out.bin" || cli_fail "cp round trip changed the bytes"

# exec -i: our stdin reaches the command, and its end closes the command's stdin.
out=$(printf 'line one\nline two\n' | "$moat" exec -i "$sbx" -- cat) || cli_fail "exec -i cat exited $?"
[ "$out" = "$(printf 'line one\nline two')" ] || cli_fail "exec -i cat printed '$out'"
# exec -it under script(1), which gives moat a terminal: the command gets a PTY, typed input
# reaches it, and its exit status comes back.
if command -v script >/dev/null; then
  out=$(script -qec "$moat exec -it $sbx -- sh -c 'test -t 0 && echo tty-ok; stty size'" /dev/null </dev/null) \
    || cli_fail "exec -it (tty check) exited $?"
  # With stdin at its end at once, moat sends ^D (end of input) before the command runs; the
  # remote line discipline may echo it (as "^@" or "^D") at the start of the output.
  out=$(printf '%s' "$out" | tr -d '\r' | sed -E 's/^(\^[@D])+//')
  echo "$out" | grep -qx tty-ok || cli_fail "exec -it: no PTY in the sandbox: '$out'"
  echo "$out" | grep -Eqx '[1-9][0-9]* [1-9][0-9]*' || cli_fail "exec -it: no PTY size: '$out'"
  rc=0
  out=$(printf 'echo typed-$((40+2))\nexit 7\n' | script -qec "$moat exec -it $sbx -- sh" /dev/null) || rc=$?
  [ "$rc" = 7 ] || cli_fail "exec -it sh (exit 7) exited $rc: '$out'"
  # Not -x: the shell's prompt may share the line.
  echo "$out" | tr -d '\r' | grep -q typed-42 || cli_fail "exec -it: typed input not run: '$out'"
else
  echo "compat: script(1) not found; skipping moat exec -it" >&2
fi

# pause (memory, then --filesystem-only: the resume reboots it) and resume keep the files.
"$moat" exec "$sbx" -- sh -c 'echo kept >/home/user/pause.txt' || cli_fail "exec write failed"
boot=$("$moat" exec "$sbx" -- cat /proc/sys/kernel/random/boot_id) || cli_fail "boot_id failed"
"$moat" sandbox pause "$sbx" >/dev/null || cli_fail "pause failed"
"$moat" sandbox resume "$sbx" >/dev/null || cli_fail "resume failed"
[ "$("$moat" exec "$sbx" -- cat /proc/sys/kernel/random/boot_id)" = "$boot" ] || cli_fail "a memory resume rebooted"
"$moat" sandbox pause --filesystem-only "$sbx" >/dev/null || cli_fail "pause --filesystem-only failed"
"$moat" sandbox resume "$sbx" >/dev/null || cli_fail "resume after a filesystem-only pause failed"
[ "$("$moat" exec "$sbx" -- cat /home/user/pause.txt)" = kept ] || cli_fail "the file did not survive the reboot"
[ "$("$moat" exec "$sbx" -- cat /proc/sys/kernel/random/boot_id)" != "$boot" ] || cli_fail "no reboot"

# snapshot create|list|delete, and a sandbox created from a snapshot.
"$moat" exec "$sbx" -- sh -c 'echo snapped >/home/user/snap.txt' || cli_fail "exec write failed"
snap=$("$moat" snapshot create "$sbx" --name "cli-$$" --json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshotID"])') || cli_fail "snapshot create failed"
case "$snap" in snap*) ;; *) cli_fail "snapshot create printed '$snap'" ;; esac
out=$("$moat" snapshot list --sandbox "$sbx") || cli_fail "snapshot list failed"
echo "$out" | grep -q "^$snap  cli-$$  $sbx " || cli_fail "snapshot list lacks $snap: '$out'"
out=$("$moat" snapshot list --name "cli-$$" --json) || cli_fail "snapshot list --name failed"
echo "$out" | grep -q "\"$snap\"" || cli_fail "snapshot list --name lacks $snap: '$out'"
child=$("$moat" sandbox create --template "$snap" --json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["sandboxID"])') || cli_fail "create from $snap failed"
out=$("$moat" exec "$child" -- cat /home/user/snap.txt) || cli_fail "exec in the snapshot's child failed"
[ "$out" = snapped ] || cli_fail "the snapshot's child read '$out'"
"$moat" sandbox kill "$child" >/dev/null || cli_fail "kill child failed"
"$moat" snapshot delete "$snap" >/dev/null || cli_fail "snapshot delete failed"
err=$("$moat" snapshot delete "$snap" 2>&1) && cli_fail "deleting $snap twice succeeded"
[ "$(echo "$err" | wc -l)" = 1 ] && echo "$err" | grep -q "not found" || cli_fail "second delete said '$err'"
"$moat" sandbox kill "$sbx" >/dev/null || cli_fail "kill failed"

# keys create|list|revoke: a new team's key works until it is revoked.
created=$("$moat" keys create ci --team "cli-$$" --json) || cli_fail "keys create failed"
newkey=$(echo "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
keyid=$(echo "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
out=$(MOAT_API_KEY=$newkey "$moat" keys list) || cli_fail "keys list failed"
echo "$out" | grep -q "^$keyid  ci " || cli_fail "keys list lacks $keyid: '$out'"
echo "$out" | grep -q "$newkey" && cli_fail "keys list shows a key's value"
MOAT_API_KEY=$newkey "$moat" sandbox list >/dev/null || cli_fail "the new key was refused"
# A team keeps a key: its last one cannot be revoked (409), so a second one comes first.
err=$(MOAT_API_KEY=$newkey "$moat" keys revoke "$keyid" 2>&1) && cli_fail "revoking a team's last key succeeded"
echo "$err" | grep -qi "last" || cli_fail "revoking the last key said '$err'"
second=$(MOAT_API_KEY=$newkey "$moat" keys create second --json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])') || cli_fail "second key failed"
"$moat" keys revoke "$keyid" >/dev/null || cli_fail "keys revoke failed"
MOAT_API_KEY=$second "$moat" sandbox list >/dev/null || cli_fail "the team's second key was refused"
err=$(MOAT_API_KEY=$newkey "$moat" sandbox list 2>&1) && cli_fail "a revoked key still works"
echo "$err" | grep -q "invalid API key" || cli_fail "a revoked key got '$err'"

# template build|list|info|delete: a Dockerfile (fixtures/cli-template: ENV, RUN, COPY of a file
# and of a directory with --chown, WORKDIR, USER) built in VMs; a sandbox of it has the files,
# its user and its workdir; a rebuild comes from the cache; a refused instruction names its line;
# a failing RUN exits non-zero; delete waits for the template's sandboxes.
fixture=$here/fixtures/cli-template
tpl=cli-tpl-$$
tbuild() { "$moat" template build --cpu 1 --memory-mb 512 "$@"; }
out=$(tbuild -f "$fixture/Dockerfile" --name "$tpl" "$fixture" 2>&1) || cli_fail "template build exited $?: $out"
echo "$out" | grep -q '\[builder 4/9\] RUN echo "$GREETING' || cli_fail "the build log shows no steps: '$out'"
echo "$out" | grep -q "^template $tpl is ready: " || cli_fail "template build did not say it is ready: '$out'"
tsbx=$("$moat" sandbox create --template "$tpl" --json --timeout 300 \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["sandboxID"])') || cli_fail "create from $tpl failed"
out=$("$moat" exec "$tsbx" -- sh -c 'id -un; pwd; cat /etc/cli-run-marker greeting.txt site/sub/data.txt
  cat /home/user/cli-user-marker; stat -c %U greeting.txt site/index.html') || cli_fail "exec in $tpl failed"
[ "$out" = "$(printf '%s\n' user /opt/cli 'hello from the cli, site in /opt/cli/site, as root' \
  'greetings, copied' nested 'user in /opt/cli' root user)" ] || cli_fail "a sandbox of $tpl saw '$out'"
out=$("$moat" template list) || cli_fail "template list failed"
echo "$out" | grep -q " $tpl " || cli_fail "template list lacks $tpl: '$out'"
out=$("$moat" template info "$tpl") || cli_fail "template info failed"
echo "$out" | grep -q "ready" || cli_fail "template info shows no ready build: '$out'"
out=$(tbuild -f "$fixture/Dockerfile" --name "$tpl" "$fixture" 2>&1) || cli_fail "the rebuild exited $?: $out"
[ "$(echo "$out" | grep -c 'CACHED \[builder [1-9]/9\]')" = 9 ] || cli_fail "the rebuild was not all cached: '$out'"
printf 'FROM e2bdev/base\nRUN true\nHEALTHCHECK CMD true\n' >"$data/refused.Dockerfile"
err=$(tbuild -f "$data/refused.Dockerfile" --name "$tpl-refused" "$fixture" 2>&1) && cli_fail "HEALTHCHECK was built"
echo "$err" | grep -q "line 3: HEALTHCHECK is not supported" || cli_fail "a refused instruction said '$err'"
printf 'FROM e2bdev/base\nRUN echo failing-step; exit 3\n' >"$data/failing.Dockerfile"
rc=0; err=$(tbuild -f "$data/failing.Dockerfile" --name "$tpl-failing" "$fixture" 2>&1) || rc=$?
[ "$rc" != 0 ] || cli_fail "a failing RUN built"
echo "$err" | grep -q "exited with status 3" || cli_fail "a failing RUN said '$err'"
"$moat" template delete "$tpl-failing" >/dev/null || cli_fail "deleting the failed template failed"
err=$("$moat" template delete "$tpl" 2>&1) && cli_fail "a template in use was deleted"
echo "$err" | grep -q "used by sandbox $tsbx" || cli_fail "deleting a template in use said '$err'"
"$moat" sandbox kill "$tsbx" >/dev/null || cli_fail "kill $tsbx failed"
"$moat" template delete "$tpl" >/dev/null || cli_fail "template delete failed"
out=$("$moat" template list) || cli_fail "template list failed"
echo "$out" | grep -q " $tpl " && cli_fail "template list still shows $tpl: '$out'"

# run-code in a code-interpreter-v1 sandbox: stdout streams, the value prints, a figure is saved
# to a file, an exception exits 1 with its traceback, bash and a context with its cwd.
isbx=$("$moat" sandbox create --template code-interpreter-v1 --json --timeout 300 \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["sandboxID"])') || cli_fail "create code-interpreter-v1 failed"
out=$(printf 'print("from the cli")\nn = 6 * 7\nn\n' | "$moat" run-code "$isbx") || cli_fail "run-code exited $?: $out"
[ "$out" = "$(printf 'from the cli\n42')" ] || cli_fail "run-code printed '$out'"
out=$(echo 'n + 1' | "$moat" run-code "$isbx" -) || cli_fail "run-code (state) exited $?"
[ "$out" = 43 ] || cli_fail "run-code kept no state: '$out'"
printf 'import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])\nplt.show()\n' >"$data/plot.py"
mkdir "$data/plots"
out=$("$moat" run-code "$isbx" --output-dir "$data/plots" "$data/plot.py") || cli_fail "run-code plot exited $?: $out"
echo "$out" | grep -q "saved image/png to $data/plots/result-1.png" || cli_fail "run-code plot said '$out'"
[ "$(head -c 8 "$data/plots/result-1.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] \
  || cli_fail "the saved plot is not a PNG"
rc=0; err=$(echo '1/0' | "$moat" run-code "$isbx" 2>&1) || rc=$?
[ "$rc" = 1 ] || cli_fail "run-code of 1/0 exited $rc"
echo "$err" | grep -q "ZeroDivisionError: division by zero" || cli_fail "run-code of 1/0 said '$err'"
out=$(echo 'cd /tmp; echo "bash in $(pwd) with $GREETING"' | "$moat" run-code "$isbx" --language bash --env GREETING=hi) \
  || cli_fail "run-code --language bash exited $?"
[ "$out" = "bash in /tmp with hi" ] || cli_fail "run-code --language bash printed '$out'"
rc=0; err=$(echo 1 | "$moat" run-code "$isbx" --context no-such-context 2>&1) || rc=$?
[ "$rc" = 2 ] || cli_fail "run-code with an unknown context exited $rc"
echo "$err" | grep -q "404" || cli_fail "run-code with an unknown context said '$err'"
"$moat" sandbox kill "$isbx" >/dev/null || cli_fail "kill $isbx failed"
echo "compat: moat CLI ok"

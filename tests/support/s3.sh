# A private S3-compatible server for shell-driven tests (the C++ tests use s3_server.h), sourced:
#   . tests/support/s3.sh; s3_start DIR [BUCKET]; … "$S3_ENDPOINT" "$S3_URL" …; s3_stop
# s3rver from npm, pinned by tests/support/s3rver/package-lock.json and installed there on first
# use (npm ci, offline cache first), on a free loopback port with its objects in DIR/data and
# the bucket (default moat-test) made at start. Exports:
#   S3_ENDPOINT       http://127.0.0.1:PORT (moatd's --s3-endpoint)
#   S3_BUCKET, S3_URL the bucket, and s3://BUCKET (moatd's --snapshot-store; add a /prefix)
#   S3_CREDENTIALS_FILE  DIR/credentials: s3rver's keys (S3RVER/S3RVER) as KEY=VALUE lines, for
#                     LoadS3Credentials; the caller's AWS_* variables are left alone
#   S3_PORT, S3_DIR, S3_PID
# s3_server_stop kills the server (SIGKILL, as a crash; the objects stay) and s3_server_start
# starts it again on the same port and data, for tests of an outage. s3_stop kills it and removes
# DIR; call it from the caller's exit trap. start_s3 / stop_s3 are the same as s3_start / s3_stop.
S3_DIR=
S3_PORT=
S3_PID=
S3_ENDPOINT=
S3_BUCKET=
S3_URL=
S3_CREDENTIALS_FILE=
_S3_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")/s3rver" && pwd)

_s3_install() {
  [ -f "$_S3_HOME/node_modules/s3rver/bin/s3rver.js" ] && return 0
  command -v npm >/dev/null || { echo "s3.sh: npm is not installed (make deps)" >&2; return 1; }
  (
    cd "$_S3_HOME" || exit 1
    flock 9
    [ -f node_modules/s3rver/bin/s3rver.js ] && exit 0
    npm ci --offline --no-audit --no-fund >/dev/null 2>&1 || npm ci --no-audit --no-fund >/dev/null
  ) 9>"$_S3_HOME/.install.lock"  # beside what it guards (git-ignored), not left in /tmp
}

# Starts s3rver on S3_PORT (0: a free one, read back from what s3rver prints) and waits until it
# listens. With BUCKET, s3rver makes that bucket as it starts.
_s3_run() {
  local bucket_args=() log="$S3_DIR/server.log" from
  [ -n "${1:-}" ] && bucket_args=(--configure-bucket "$1")
  from=$( [ -f "$log" ] && wc -c <"$log" || echo 0 )
  # --openssl-legacy-provider: s3rver's continuation tokens use DES (OpenSSL 3's legacy
  # provider); without it a listing of more than one page answers 500.
  node --openssl-legacy-provider "$_S3_HOME/node_modules/s3rver/bin/s3rver.js" \
    --directory "$S3_DIR/data" --address 127.0.0.1 --port "$S3_PORT" --silent \
    --no-vhost-buckets "${bucket_args[@]}" >>"$log" 2>&1 &
  S3_PID=$!
  local port=
  for _ in $(seq 1 300); do
    port=$(tail -c +"$((from + 1))" "$log" | sed -n 's/.*S3rver listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p')
    [ -n "$port" ] && break
    kill -0 "$S3_PID" 2>/dev/null || { echo "s3.sh: s3rver exited at start:" >&2; tail -20 "$log" >&2; return 1; }
    sleep 0.1
  done
  [ -n "$port" ] || { echo "s3.sh: s3rver not listening after 30 s" >&2; tail -20 "$log" >&2; return 1; }
  S3_PORT=$port
}

s3_start() {
  S3_DIR=$1
  S3_BUCKET=${2:-moat-test}
  command -v node >/dev/null || { echo "s3.sh: node is not installed (make deps)" >&2; return 1; }
  _s3_install || return 1
  mkdir -p "$S3_DIR/data" || return 1
  S3_PORT=0
  _s3_run "$S3_BUCKET" || return 1
  S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
  S3_URL="s3://$S3_BUCKET"
  S3_CREDENTIALS_FILE="$S3_DIR/credentials"
  printf 'AWS_ACCESS_KEY_ID=S3RVER\nAWS_SECRET_ACCESS_KEY=S3RVER\n' >"$S3_CREDENTIALS_FILE"
  export S3_ENDPOINT S3_BUCKET S3_URL S3_CREDENTIALS_FILE S3_PORT S3_DIR S3_PID
  echo "s3.sh: s3rver on $S3_ENDPOINT, bucket $S3_BUCKET (data in $S3_DIR/data)" >&2
}

# Kills the server (node itself: s3rver starts no processes), keeping its objects.
s3_server_stop() {
  [ -n "$S3_PID" ] || return 0
  kill -KILL "$S3_PID" 2>/dev/null || true
  wait "$S3_PID" 2>/dev/null || true
  S3_PID=
}

# Starts the server of S3_DIR again on S3_PORT.
s3_server_start() {
  _s3_run "" || return 1
  export S3_PID
}

s3_stop() {
  [ -n "$S3_DIR" ] || return 0
  s3_server_stop
  rm -rf "$S3_DIR"
  S3_DIR=
}

start_s3() { s3_start "$@"; }
stop_s3() { s3_stop "$@"; }

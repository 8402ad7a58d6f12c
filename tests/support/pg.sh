# A private PostgreSQL 15 for shell-driven tests (the C++ tests use postgres_server.h), sourced:
#   . tests/support/pg.sh; pg_start DIR; … "$PG_URI" …; pg_stop
# initdb refuses root, so as root the server runs as the `postgres` user; it listens on a free
# loopback port and a socket dir of its own, with fsync off (shared/FLEET.md §7). pg_stop stops
# it (fast shutdown) and removes DIR; call it from the caller's exit trap.
PG_BIN=${MOAT_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_DIR=
PG_URI=
PG_PORT=

_pg_as() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_start() {
  PG_DIR=$1
  [ -x "$PG_BIN/initdb" ] || { echo "pg.sh: PostgreSQL 15 is not installed ($PG_BIN; make deps)" >&2; return 1; }
  mkdir -p "$PG_DIR/sock"
  [ "$(id -u)" = 0 ] && chown -R postgres: "$PG_DIR"
  _pg_as "$PG_BIN/initdb" --no-sync -A trust -U postgres -D "$PG_DIR/data" >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; return 1; }
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  PG_PORT=$port
  pg_server_start || return 1
  _pg_as "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres moat || return 1
  PG_URI="postgresql://postgres@127.0.0.1:$port/moat"
  echo "pg.sh: PostgreSQL on 127.0.0.1:$port (data in $PG_DIR)" >&2
}

# fsync off (tests), or on with PG_DURABLE=1 (benchmarks: as a production server runs).
_pg_durability() {
  if [ "${PG_DURABLE:-0}" = 1 ]; then
    echo "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
  else
    echo "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
}

# Starts the server of an initialised PG_DIR on PG_PORT (pg_start does; tests that restart the
# database under load call pg_server_stop, then this).
pg_server_start() {
  _pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 30 \
    -o "-p $PG_PORT -k $PG_DIR/sock -c listen_addresses=127.0.0.1 $(_pg_durability)" \
    start >/dev/null || { cat "$PG_DIR/server.log" >&2; return 1; }
}

# Stops the server (fast shutdown: open connections are cut), keeping its data.
pg_server_stop() {
  _pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null
}

pg_stop() {
  [ -n "$PG_DIR" ] || return 0
  if [ -f "$PG_DIR/data/postmaster.pid" ]; then
    _pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
      || _pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PG_DIR"
  PG_DIR=
}

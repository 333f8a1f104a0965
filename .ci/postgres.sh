#!/usr/bin/env bash
# A private PostgreSQL server for dgen's tests and benchmarks, on this machine only.
#
#   eval "$(.ci/postgres.sh start)"   # install if missing, init if new, start if stopped
#   .ci/postgres.sh env               # print the exports for a running server
#   .ci/postgres.sh stop              # stop it (fast shutdown)
#
# `start` is idempotent: run it as often as you like. It prints shell `export` lines on stdout
# (everything else goes to stderr) for:
#   DGEN_PG_URL   connection URL for the tests (`tests/storage/_postgres.ts`) and `bench/`
#   DGEN_PG_DATA  the data directory, DGEN_PG_CTL the pg_ctl binary, DGEN_PG_USER the OS user
#                 that owns the server: the restart test restarts it with these.
#   DGEN_PG_STARTED  1 if this call started the server, 0 if it was running already.
#   DGEN_PG_BRIDGE_HOST  10.213.0.1, when the server also listens on the bridge `dgen-br0`: the
#                 multi-process test puts each process in a network namespace of its own, wired
#                 to that bridge by a veth pair, so they reach the database as separate hosts.
#                 Creating the bridge needs root and `ip` (iproute2); without them it is skipped
#                 and the server listens on 127.0.0.1 only.
#
# Settings (environment): DGEN_PG_PORT (default 54329), DGEN_PG_DIR (default
# ${TMPDIR:-/tmp}/dgen-pg-$DGEN_PG_PORT). Debian's `postgresql` package refuses to run as root,
# so as root the server runs as the `postgres` user the package creates.
set -euo pipefail

PORT="${DGEN_PG_PORT:-54329}"
DIR="${DGEN_PG_DIR:-${TMPDIR:-/tmp}/dgen-pg-$PORT}"

log() { echo "postgres.sh: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

find_bin() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [[ -n "$d" && -x "$d/pg_ctl" ]]; then
    echo "$d"
  elif command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
  fi
}

install_postgres() {
  [[ -n "$(find_bin)" ]] && return 0
  [[ "$(id -u)" == 0 ]] || die "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
  log "installing PostgreSQL from Debian (apt-get install postgresql)…"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq postgresql >&2 || die "apt-get install postgresql failed"
  [[ -n "$(find_bin)" ]] || die "pg_ctl not found after installing postgresql"
}

BIN=""
RUN_AS=""
STARTED=0
setup_paths() {
  BIN="$(find_bin)"
  [[ -n "$BIN" ]] || die "pg_ctl not found: run '$0 start' to install PostgreSQL"
  if [[ "$(id -u)" == 0 ]]; then
    getent passwd postgres >/dev/null || die "user 'postgres' missing (it comes with Debian's postgresql package)"
    RUN_AS=postgres
  else
    RUN_AS="$(id -un)"
  fi
}

# Runs a command as the server's owner.
as_owner() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u "$RUN_AS" -- "$@"
  else
    "$@"
  fi
}

BRIDGE=dgen-br0
BRIDGE_HOST=10.213.0.1
# The bridge the test's network namespaces attach to (see DGEN_PG_BRIDGE_HOST); true if it is up.
bridge() {
  [[ "$(id -u)" == 0 ]] && command -v ip >/dev/null 2>&1 || return 1
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    { ip link add "$BRIDGE" type bridge && ip addr add "$BRIDGE_HOST/16" dev "$BRIDGE"; } >&2 2>&1 ||
      { ip link del "$BRIDGE" >/dev/null 2>&1 || true; return 1; }
  fi
  ip link set "$BRIDGE" up >&2 2>&1 || return 1
  ip -4 addr show dev "$BRIDGE" | grep -q "inet $BRIDGE_HOST/"
}
HAS_BRIDGE=0
print_env() {
  echo "export DGEN_PG_URL='postgres://$RUN_AS@127.0.0.1:$PORT/postgres'"
  echo "export DGEN_PG_DATA='$DIR'"
  echo "export DGEN_PG_CTL='$BIN/pg_ctl'"
  echo "export DGEN_PG_USER='$RUN_AS'"
  if [[ "$HAS_BRIDGE" == 1 ]]; then
    echo "export DGEN_PG_BRIDGE_HOST='$BRIDGE_HOST'"
  else
    echo "unset DGEN_PG_BRIDGE_HOST"
  fi
}

running() {
  [[ -f "$DIR/PG_VERSION" ]] && as_owner "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1
}

start() {
  install_postgres
  setup_paths
  if ! [[ -f "$DIR/PG_VERSION" ]]; then
    log "initializing a cluster in $DIR"
    mkdir -p "$DIR"
    [[ "$(id -u)" == 0 ]] && chown "$RUN_AS" "$DIR"
    chmod 700 "$DIR"
    as_owner "$BIN/initdb" -D "$DIR" -A trust -U "$RUN_AS" -E UTF8 --no-sync >"$DIR.initdb.log" 2>&1 ||
      { cat "$DIR.initdb.log" >&2; die "initdb failed"; }
  fi
  # The settings live in the data directory (not on pg_ctl's command line) so that a plain
  # `pg_ctl -D "$DIR" start` or `restart`, as the restart test does, brings back the same server.
  local listen="127.0.0.1"
  if bridge; then
    HAS_BRIDGE=1
    listen="127.0.0.1,$BRIDGE_HOST"
  else
    log "no bridge $BRIDGE (needs root and ip): listening on 127.0.0.1 only"
  fi
  printf '%s\n' "port = $PORT" "listen_addresses = '$listen'" \
    "unix_socket_directories = '$DIR'" "max_connections = 200" |
    as_owner tee "$DIR/dgen.conf" >/dev/null
  grep -q "^include_if_exists = 'dgen.conf'" "$DIR/postgresql.conf" ||
    echo "include_if_exists = 'dgen.conf'" | as_owner tee -a "$DIR/postgresql.conf" >/dev/null
  # Clients on the bridge's network are trusted like local ones; nobody else is let in.
  grep -q "^host all all 10.213.0.0/16 trust" "$DIR/pg_hba.conf" ||
    echo "host all all 10.213.0.0/16 trust" | as_owner tee -a "$DIR/pg_hba.conf" >/dev/null
  if running; then
    log "already running (data $DIR, port $PORT)"
    if [[ "$HAS_BRIDGE" == 1 ]] && ! (exec 3<>"/dev/tcp/$BRIDGE_HOST/$PORT") 2>/dev/null; then
      log "restarting to listen on $BRIDGE_HOST too"
      as_owner "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w -t 60 restart -m fast >&2 ||
        die "PostgreSQL did not restart"
    fi
  else
    # Another server (not ours) on the port would make the tests talk to the wrong database.
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      die "port $PORT is taken by another process; set DGEN_PG_PORT"
    fi
    log "starting on 127.0.0.1:$PORT (data $DIR, log $DIR/server.log)"
    as_owner "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w -t 60 start >&2 ||
      { tail -n 30 "$DIR/server.log" >&2 || true; die "PostgreSQL did not start"; }
    STARTED=1
  fi
  if ! as_owner "$BIN/pg_isready" -h 127.0.0.1 -p "$PORT" -t 30 >/dev/null; then
    [[ "$STARTED" == 1 ]] && as_owner "$BIN/pg_ctl" -D "$DIR" -m immediate stop >&2 || true
    die "PostgreSQL on port $PORT does not accept connections"
  fi
  print_env
  # Tells the caller whether this call started the server (and so should stop it).
  echo "export DGEN_PG_STARTED='$STARTED'"
}

stop() {
  setup_paths
  if running; then
    log "stopping (data $DIR)"
    as_owner "$BIN/pg_ctl" -D "$DIR" -m fast -w stop >&2
  else
    log "not running (data $DIR)"
  fi
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
env)
  setup_paths
  running || die "not running (data $DIR): run '$0 start'"
  print_env
  ;;
*) die "usage: $0 [start|stop|env]" ;;
esac

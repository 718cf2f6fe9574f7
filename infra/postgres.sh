#!/usr/bin/env bash
# Local PostgreSQL server (Debian's binaries) for tests, CI and local development. No Docker.
#
#   infra/postgres.sh start    initdb once, start, wait until healthy, create database
#                              `stageroute`; prints its SQLAlchemy URL
#                              (postgresql+psycopg://postgres@127.0.0.1:<port>/stageroute) as the
#                              last stdout line. Re-running it while the server is up only prints it.
#   infra/postgres.sh stop     fast shutdown (rolls back open transactions), up to 60 s
#   infra/postgres.sh status   exit 0 if running and healthy, 1 otherwise
#   infra/postgres.sh reset    stop and delete the state dir (all databases)
#
# Environment:
#   STAGEROUTE_PG_DIR            state dir (default <repo>/.run/postgres): the cluster is in
#                                data/, the server log in postgres.log
#   STAGEROUTE_PG_PORT           TCP port on 127.0.0.1 (default 15432)
#   STAGEROUTE_PG_BINDIR         PostgreSQL bin dir (default: `pg_config --bindir`, else the
#                                newest /usr/lib/postgresql/*/bin; installed with apt-get as root)
#   STAGEROUTE_PG_FAST           1: fsync, full_page_writes and synchronous_commit off. For
#                                throwaway test clusters only: a crash can corrupt the cluster.
#                                Read on each start; the default keeps full durability.
#   STAGEROUTE_PG_START_TIMEOUT  seconds to wait for the server on start (default 60)
#
# Authentication is `trust`, and the server listens on 127.0.0.1 only (no Unix socket): anyone
# with a shell on this machine can connect as any role. It is a development server.
# When run as root, the server runs as the `postgres` OS user (initdb refuses root).
#
# stdout carries only the URL (for `url=$(infra/postgres.sh start)`); progress and errors go
# to stderr.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd -P)"

STATE_DIR="${STAGEROUTE_PG_DIR:-$REPO_ROOT/.run/postgres}"
PORT="${STAGEROUTE_PG_PORT:-15432}"
FAST="${STAGEROUTE_PG_FAST:-0}"
START_TIMEOUT="${STAGEROUTE_PG_START_TIMEOUT:-60}"

HOST=127.0.0.1
DB_NAME=stageroute
DB_USER=postgres
URL="postgresql+psycopg://$DB_USER@$HOST:$PORT/$DB_NAME"

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$PORT" =~ ^[0-9]+$ ]] || die "STAGEROUTE_PG_PORT must be a number, not '$PORT'"

# The state dir may be given relative to the caller's cwd; the server runs elsewhere and
# `SHOW data_directory` is compared against it, so it must be absolute.
resolve_state_dir() {
  STATE_DIR="$(realpath -m "$STATE_DIR")"
  DATA_DIR="$STATE_DIR/data"
  LOG_FILE="$STATE_DIR/postgres.log"
  CONF_FILE="$DATA_DIR/stageroute.conf"
}

# ---------------------------------------------------------------------------------------
# binaries and the server's OS user
# ---------------------------------------------------------------------------------------

has_server_bins() { [[ -x "$1/initdb" && -x "$1/pg_ctl" && -x "$1/postgres" && -x "$1/psql" ]]; }

# pg_config alone may come from libpq-dev without a server, so its answer is checked.
find_bindir() {
  local dir
  if [[ -n "${STAGEROUTE_PG_BINDIR:-}" ]]; then
    has_server_bins "$STAGEROUTE_PG_BINDIR" ||
      die "STAGEROUTE_PG_BINDIR=$STAGEROUTE_PG_BINDIR lacks initdb/pg_ctl/postgres/psql"
    echo "$STAGEROUTE_PG_BINDIR"
    return 0
  fi
  if command -v pg_config >/dev/null && dir="$(pg_config --bindir 2>/dev/null)" &&
     has_server_bins "$dir"; then
    echo "$dir"
    return 0
  fi
  # Newest major version first.
  for dir in $(compgen -G '/usr/lib/postgresql/*/bin' | sort -t/ -k4,4 -rn); do
    if has_server_bins "$dir"; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

install_postgres() {
  ((EUID == 0)) ||
    die "no PostgreSQL server binaries found; install them (sudo apt-get install postgresql) or set STAGEROUTE_PG_BINDIR"
  command -v apt-get >/dev/null ||
    die "no PostgreSQL server binaries found and no apt-get; install PostgreSQL and set STAGEROUTE_PG_BINDIR"
  log "no PostgreSQL server binaries found; installing with apt-get (this takes a minute) ..."
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends postgresql >&2; then
    apt-get update -q >&2 && apt-get install -y -q --no-install-recommends postgresql >&2 ||
      die "apt-get install postgresql failed"
  fi
}

BINDIR=
ensure_bindir() {
  [[ -n "$BINDIR" ]] && return 0
  if ! BINDIR="$(find_bindir)"; then
    install_postgres
    BINDIR="$(find_bindir)" || die "PostgreSQL installed but no server binaries found"
  fi
}

# initdb and the postmaster refuse to run as root: as root they run as `postgres`.
RUN_AS=()
if ((EUID == 0)); then
  RUN_AS=(runuser -u postgres --)
fi

# Run a server-side binary as the server's OS user.
as_server() { "${RUN_AS[@]}" "$@"; }

ensure_server_user() {
  ((EUID == 0)) || return 0
  id -u postgres >/dev/null 2>&1 ||
    die "running as root needs a 'postgres' OS user (the Debian package creates it)"
  # The user must be able to reach the data dir; a repo under /root (mode 700) is not.
  runuser -u postgres -- test -x "$STATE_DIR" ||
    die "the 'postgres' OS user cannot reach $STATE_DIR; set STAGEROUTE_PG_DIR to a path it can traverse"
}

# ---------------------------------------------------------------------------------------
# health
# ---------------------------------------------------------------------------------------

psql_q() {
  # Client connections use TCP and trust auth, so they need no OS user switch.
  PGCONNECT_TIMEOUT=5 "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" \
    -U "$DB_USER" -d "${2:-postgres}" -tAc "$1"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

# Healthy = a server answers queries on our port *and* it serves our data dir, so that a
# different cluster squatting on the port does not count.
healthy() {
  port_open || return 1
  local dir
  dir="$(psql_q 'SHOW data_directory' 2>/dev/null)" || return 1
  [[ "$(realpath -m "$dir")" == "$DATA_DIR" ]]
}

# pg_ctl status needs read access to the data dir (mode 700, owned by the server's user).
server_running() {
  [[ -f "$DATA_DIR/PG_VERSION" ]] || return 1
  as_server "$BINDIR/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1
}

# Serialise start/stop/reset on one state dir (e.g. parallel test workers all calling
# `start`). status stays lock-free so it never blocks.
lock_state() {
  exec 9>"$STATE_DIR/.lock"
  flock 9
}

# stop/reset must not delete a directory that was never ours, e.g. a mistyped
# STAGEROUTE_PG_DIR pointing at $HOME.
looks_like_state_dir() { [[ -e "$DATA_DIR/PG_VERSION" || -e "$LOG_FILE" || -e "$STATE_DIR/.lock" ]]; }

print_log_tail() {
  if [[ -s "$LOG_FILE" ]]; then
    log "---- last 30 lines of $LOG_FILE ----"
    tail -n 30 "$LOG_FILE" >&2
  fi
}

# ---------------------------------------------------------------------------------------
# start / stop / status / reset
# ---------------------------------------------------------------------------------------

init_cluster() {
  log "initialising a new cluster in $DATA_DIR ($("$BINDIR/postgres" --version))"
  mkdir -p "$DATA_DIR"
  chmod 700 "$DATA_DIR"
  if ((EUID == 0)); then chown postgres: "$DATA_DIR"; fi
  # C collation: byte order, identical on every machine, and no dependency on installed
  # locales. UTF8 so any JSON text fits.
  if ! as_server "$BINDIR/initdb" -D "$DATA_DIR" -U "$DB_USER" --auth=trust \
       --encoding=UTF8 --locale=C >"$STATE_DIR/initdb.out" 2>&1; then
    cat "$STATE_DIR/initdb.out" >&2
    # Leave no half-initialised cluster behind: the next start would refuse it.
    rm -rf "$DATA_DIR"
    die "initdb failed"
  fi
  # Our settings live in one generated file, included last so they win.
  echo "include_if_exists = 'stageroute.conf'" >>"$DATA_DIR/postgresql.conf"
}

write_conf() {
  local fast=""
  if [[ "$FAST" == 1 ]]; then
    log "STAGEROUTE_PG_FAST=1: fsync, full_page_writes and synchronous_commit are off"
    fast="fsync = off
full_page_writes = off
synchronous_commit = off"
  fi
  as_server tee "$CONF_FILE" >/dev/null <<EOF
# Generated by infra/postgres.sh on every start; edit the script, not this file.
listen_addresses = '$HOST'
port = $PORT
# TCP only: a socket path under a deep repo checkout can exceed the 107-byte limit.
unix_socket_directories = ''
max_connections = 200
shared_buffers = 256MB
# Bulk audit writes (COPY of ~10^5 rows per batch) checkpoint less often with more WAL room.
max_wal_size = 2GB
$fast
EOF
}

start_server() {
  # The log file lives outside the data dir but is written by the server's user.
  touch "$LOG_FILE"
  if ((EUID == 0)); then chown postgres: "$LOG_FILE"; fi
  # -w: pg_ctl waits until postmaster.pid says "ready" (it does not need to connect).
  # setsid: the server must not receive the caller's Ctrl-C (e.g. an interrupted pytest
  # run); its lifecycle is `stop`'s job. 9>&-: do not leak the start lock into the server.
  if ! setsid -w "${RUN_AS[@]}" "$BINDIR/pg_ctl" start -w -t "$START_TIMEOUT" -D "$DATA_DIR" \
       -l "$LOG_FILE" </dev/null >&2 9>&-; then
    print_log_tail
    die "pg_ctl start failed"
  fi
}

ensure_database() {
  if [[ "$(psql_q "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]]; then
    log "creating database $DB_NAME"
    # A concurrent `start` may win the race; its database is as good as ours.
    psql_q "CREATE DATABASE $DB_NAME" >/dev/null 2>&1 ||
      [[ "$(psql_q "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" == 1 ]] ||
      die "could not create database $DB_NAME"
  fi
}

# Poll until healthy; fails when the deadline passes or the server process goes away.
wait_healthy() {
  local deadline=$((SECONDS + START_TIMEOUT))
  until healthy; do
    server_running || return 1
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

cmd_start() {
  resolve_state_dir
  ensure_bindir
  mkdir -p "$STATE_DIR"
  ensure_server_user
  lock_state

  # A server that is starting (or shutting down after a crash) is waited for: it either
  # becomes healthy or goes away, and then we start our own.
  if ! healthy && server_running; then
    log "server process exists but is not healthy yet; waiting"
    wait_healthy || true
  fi
  if ! healthy; then
    if server_running; then
      print_log_tail
      die "PostgreSQL on $DATA_DIR is running but not healthy on $HOST:$PORT after ${START_TIMEOUT}s ('infra/postgres.sh stop' to stop it)"
    fi
    if port_open; then
      die "port $HOST:$PORT is in use by another process (another PostgreSQL? set STAGEROUTE_PG_PORT)"
    fi
    [[ -f "$DATA_DIR/PG_VERSION" ]] || init_cluster
    write_conf
    log "starting PostgreSQL on $HOST:$PORT (state in $STATE_DIR)"
    start_server
    if ! wait_healthy; then
      print_log_tail
      die "PostgreSQL on $HOST:$PORT did not become healthy (see the log above)"
    fi
    log "PostgreSQL is up ($(psql_q 'SHOW server_version'))"
  fi
  ensure_database
  echo "$URL"
}

cmd_stop() {
  resolve_state_dir
  if ! looks_like_state_dir; then
    log "not running"
    return 0
  fi
  ensure_bindir
  lock_state
  if ! server_running; then
    log "not running"
    return 0
  fi
  log "stopping PostgreSQL"
  if ! as_server "$BINDIR/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t 60 >&2; then
    log "fast shutdown timed out; sending an immediate shutdown"
    as_server "$BINDIR/pg_ctl" stop -D "$DATA_DIR" -m immediate -w -t 30 >&2 ||
      die "could not stop PostgreSQL"
  fi
  log "stopped"
}

cmd_status() {
  resolve_state_dir
  ensure_bindir
  if healthy; then
    log "running and healthy on $HOST:$PORT ($URL)"
    return 0
  fi
  if server_running; then
    log "a server is running on $DATA_DIR but not healthy on $HOST:$PORT"
  else
    log "not running"
  fi
  return 1
}

cmd_reset() {
  cmd_stop
  [[ -d "$STATE_DIR" ]] || return 0
  if looks_like_state_dir || [[ -z "$(ls -A "$STATE_DIR")" ]]; then
    rm -rf "$STATE_DIR"
    log "removed $STATE_DIR"
  else
    die "$STATE_DIR does not look like a postgres.sh state dir; not deleting it"
  fi
}

usage() {
  sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  reset) cmd_reset ;;
  *) usage ;;
esac

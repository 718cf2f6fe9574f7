#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft mode, broker+controller in one JVM) for tests, CI and
# local development. No Docker: the broker jars come from Maven Central via
# infra/kafka/pom.xml and run on the local JDK (17+).
#
#   infra/kafka.sh fetch    download the jars into infra/kafka/libs/ (no-op when present)
#   infra/kafka.sh start    fetch, format storage once, start, wait until healthy;
#                           prints the bootstrap address (127.0.0.1:<port>) as the last
#                           stdout line. Re-running it while the broker is up only prints it.
#   infra/kafka.sh stop     SIGTERM, up to 20 s grace, then SIGKILL
#   infra/kafka.sh status   exit 0 if running and healthy, 1 otherwise
#   infra/kafka.sh reset    stop and delete the state dir (topics, offsets, logs)
#
# Environment:
#   STAGEROUTE_KAFKA_DIR              state dir (default <repo>/.run/kafka)
#   STAGEROUTE_KAFKA_PORT             client listener port (default 19092)
#   STAGEROUTE_KAFKA_CONTROLLER_PORT  KRaft controller port (default 19093)
#   STAGEROUTE_KAFKA_START_TIMEOUT    seconds to wait for health on start (default 60)
#   STAGEROUTE_PYTHON                 python with kafka-python for health checks (default python3)
#   JAVA                              java binary (default: $JAVA_HOME/bin/java, else java)
#
# stdout carries only the bootstrap address (for `addr=$(infra/kafka.sh start)`);
# all progress and errors go to stderr.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd -P)"
KAFKA_HOME="$SCRIPT_DIR/kafka"
LIBS="$KAFKA_HOME/libs"
# Maven's scratch space; git-ignored like libs/.
WORK="$KAFKA_HOME/target"

STATE_DIR="${STAGEROUTE_KAFKA_DIR:-$REPO_ROOT/.run/kafka}"
PORT="${STAGEROUTE_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${STAGEROUTE_KAFKA_CONTROLLER_PORT:-19093}"
START_TIMEOUT="${STAGEROUTE_KAFKA_START_TIMEOUT:-60}"
PYTHON="${STAGEROUTE_PYTHON:-python3}"
if [[ -n "${JAVA:-}" ]]; then :
elif [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"
else JAVA=java
fi

HOST=127.0.0.1
ADDR="$HOST:$PORT"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The state dir may be given relative to the caller's cwd; every path we hand to the JVM
# and compare against /proc/<pid>/cmdline must be absolute and stable. (-m: it need not
# exist yet; only `start` creates it.)
resolve_state_dir() {
  STATE_DIR="$(realpath -m "$STATE_DIR")"
  PROPS="$STATE_DIR/server.properties"
  DATA_DIR="$STATE_DIR/data"
  LOG_DIR="$STATE_DIR/logs"
  PID_FILE="$STATE_DIR/kafka.pid"
  OUT_FILE="$STATE_DIR/kafka.out"
}

# ---------------------------------------------------------------------------------------
# fetch
# ---------------------------------------------------------------------------------------

pom_stamp() { sha256sum "$KAFKA_HOME/pom.xml" | cut -d' ' -f1; }

# libs/ counts as complete only if it was produced from the current pom: the stamp file is
# written last, so an interrupted or outdated download is redone.
libs_complete() {
  [[ -f "$LIBS/.pom.sha256" ]] && [[ "$(cat "$LIBS/.pom.sha256")" == "$(pom_stamp)" ]] &&
    compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null
}

cmd_fetch() {
  libs_complete && return 0
  command -v mvn >/dev/null || die "Maven (mvn) is needed to download Kafka; install it (apt-get install maven)"
  mkdir -p "$WORK"
  # Parallel callers (e.g. several CI steps or test workers) must not interleave downloads.
  exec 8>"$WORK/fetch.lock"
  flock 8
  if libs_complete; then exec 8>&-; return 0; fi
  log "downloading Kafka jars from Maven Central into $LIBS ..."
  local tmp="$WORK/libs.tmp"
  rm -rf "$tmp"
  # Download into a scratch dir and swap it in, so a version bump never leaves old jars
  # next to new ones on the classpath. Maven's own output goes to a file (it is noisy
  # and even with -q emits terminal escape codes) and is shown only on failure.
  if ! mvn -q -B -f "$KAFKA_HOME/pom.xml" dependency:copy-dependencies \
       -DoutputDirectory="$tmp" >"$WORK/fetch.log" 2>&1; then
    cat "$WORK/fetch.log" >&2
    die "mvn dependency:copy-dependencies failed (see above)"
  fi
  pom_stamp >"$tmp/.pom.sha256"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  exec 8>&-
  log "fetched $(compgen -G "$LIBS/*.jar" | wc -l) jars"
}

# ---------------------------------------------------------------------------------------
# process and health checks
# ---------------------------------------------------------------------------------------

# True if $1 is a live `java ... kafka.Kafka <our server.properties>`. Checking the command
# line guards against a stale pid file whose pid was reused, and treats a zombie (empty
# cmdline; possible if nobody reaps the detached JVM) as gone. Linux-only (/proc).
is_our_broker() {
  local cmdline
  cmdline="$( { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null)" || return 1
  [[ "$cmdline" == *"kafka.Kafka $PROPS"* ]]
}

# True while any thread of process $1 has not finished exiting. Neither an empty cmdline
# nor a zombie thread-group leader means the JVM is gone: its other threads (and its
# listening sockets) can outlive both for a moment, and an immediate restart would then
# find the ports still bound. Fully exited threads are zombies (Z) or dead (X).
pid_alive() {
  local t line
  for t in /proc/"$1"/task/*/stat; do
    { read -r line <"$t"; } 2>/dev/null || continue
    line="${line##*) }"  # drop "tid (comm) "; comm may contain spaces
    [[ "${line%% *}" == [ZX] ]] || return 0
  done
  return 1
}

# Echo the broker pid if the pid file points at our running broker.
broker_pid() {
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && is_our_broker "$pid" || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

cluster_id() { sed -n 's/^cluster\.id=//p' "$DATA_DIR/meta.properties" 2>/dev/null; }

# A real Kafka round trip: the broker must answer a metadata request, list itself as a live
# broker and report *our* cluster id (so a different broker squatting on the port does not
# count). Unknown client configs are filtered out so this works with kafka-python 2.x and 3.x.
HEALTH_PY='
import logging, sys
logging.disable(logging.CRITICAL)
from kafka import KafkaAdminClient
addr, want = sys.argv[1], sys.argv[2]
cfg = dict(bootstrap_servers=addr, client_id="stageroute-kafka-sh",
           request_timeout_ms=5000, bootstrap_timeout_ms=5000,
           api_version_auto_timeout_ms=5000, reconnect_backoff_max_ms=500)
cfg = {k: v for k, v in cfg.items() if k == "bootstrap_servers" or k in KafkaAdminClient.DEFAULT_CONFIG}
admin = KafkaAdminClient(**cfg)
try:
    info = admin.describe_cluster()
    admin.list_topics()
finally:
    admin.close()
if info.get("cluster_id") != want:
    sys.exit("cluster id %r != %r" % (info.get("cluster_id"), want))
if not info.get("brokers"):
    sys.exit("no live brokers")
'

# Cached: each python start costs ~0.2 s and healthy() is polled.
HAVE_KAFKA_PYTHON=
have_kafka_python() {
  if [[ -z "$HAVE_KAFKA_PYTHON" ]]; then
    if "$PYTHON" -c 'import kafka' 2>/dev/null; then HAVE_KAFKA_PYTHON=yes; else HAVE_KAFKA_PYTHON=no; fi
  fi
  [[ "$HAVE_KAFKA_PYTHON" == yes ]]
}

healthy() {
  broker_pid >/dev/null || return 1
  port_open "$PORT" || return 1
  if have_kafka_python; then
    "$PYTHON" -c "$HEALTH_PY" "$ADDR" "$(cluster_id)" >/dev/null 2>&1
  else
    # Without kafka-python we can only tell that our process owns a listening port.
    return 0
  fi
}

# Byte offset of server.log when this start began; the failure report shows only what
# this attempt logged, not the previous run's shutdown.
LOG_OFFSET=0

print_log_tail() {
  if [[ -s "$OUT_FILE" ]]; then
    log "---- $OUT_FILE (JVM stdout/stderr) ----"
    tail -n 20 "$OUT_FILE" >&2
  fi
  if [[ -s "$LOG_DIR/server.log" ]]; then
    log "---- last 40 lines of $LOG_DIR/server.log ----"
    tail -c +"$((LOG_OFFSET + 1))" "$LOG_DIR/server.log" | tail -n 40 >&2
  fi
}

# Serialise start/stop/reset on one state dir (e.g. parallel test workers all calling
# `start`). status stays lock-free so it never blocks.
lock_state() {
  exec 9>"$STATE_DIR/.lock"
  flock 9
}

# stop/reset must not drop files into (or delete) a directory that was never ours, e.g.
# a mistyped STAGEROUTE_KAFKA_DIR pointing at $HOME.
looks_like_state_dir() { [[ -e "$PROPS" || -e "$DATA_DIR" || -e "$PID_FILE" ]]; }

# ---------------------------------------------------------------------------------------
# start / stop / status / reset
# ---------------------------------------------------------------------------------------

write_server_properties() {
  # Regenerated on every start so port changes take effect; the storage format (cluster id)
  # lives in data/meta.properties and is kept.
  cat >"$PROPS" <<EOF
# Generated by infra/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA_DIR

# Single node: every internal topic must be satisfiable by one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
min.insync.replicas=1
default.replication.factor=1
# One partition each instead of 50: creating them on the first consumer group /
# transaction is then near-instant, which matters for test start-up.
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
num.partitions=1

# broker.session.timeout.ms stays at its default (9 s) on purpose: after a SIGKILL the
# restarted broker waits that long for its old registration to expire (start then takes
# ~15 s instead of ~4 s), but a shorter value would fence the broker on a long GC pause
# or an overloaded CI machine.

# Tests expect consumer groups to form immediately and topics to exist only when created.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
EOF
}

start_jvm() {
  mkdir -p "$LOG_DIR"
  # setsid: the broker must outlive this script and not receive the caller's Ctrl-C
  # (e.g. an interrupted pytest run); its lifecycle is `stop`'s job.
  # 8>&- 9>&-: do not leak our lock fds into the long-lived JVM, or it would hold the
  # start lock forever.
  # GC flags follow Kafka's own bin/kafka-run-class.sh defaults.
  setsid "$JAVA" -Xmx512m \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dkafka.logs.dir="$LOG_DIR" \
    -Dlog4j.configuration="file:$KAFKA_HOME/log4j.properties" \
    -cp "$LIBS/*" kafka.Kafka "$PROPS" \
    </dev/null >"$OUT_FILE" 2>&1 8>&- 9>&- &
  echo $! >"$PID_FILE"
}

cmd_start() {
  cmd_fetch
  resolve_state_dir
  mkdir -p "$STATE_DIR"
  command -v "$JAVA" >/dev/null || die "java not found (need JDK/JRE 17+; set JAVA or JAVA_HOME)"
  lock_state

  if broker_pid >/dev/null; then
    # server.properties is only rewritten when the broker is down, so it describes the
    # running broker; different ports requested now cannot be honoured without a restart.
    if ! grep -qxF "listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT" "$PROPS"; then
      die "the broker in $STATE_DIR is running with other ports ($(sed -n 's/^listeners=//p' "$PROPS")); 'infra/kafka.sh stop' first"
    fi
    if healthy; then
      echo "$ADDR"
      return 0
    fi
    # Running but not (yet) healthy, e.g. another caller just started it: wait below.
    log "broker process $(broker_pid) exists but is not healthy yet; waiting"
  else
    rm -f "$PID_FILE"
    local p
    for p in "$PORT" "$CONTROLLER_PORT"; do
      if port_open "$p"; then
        die "port $HOST:$p is already in use by another process" \
          "(another broker? set STAGEROUTE_KAFKA_PORT / STAGEROUTE_KAFKA_CONTROLLER_PORT)"
      fi
    done
    write_server_properties
    if [[ ! -f "$DATA_DIR/meta.properties" ]]; then
      local cid
      cid="$("$JAVA" -Dlog4j.configuration="file:$KAFKA_HOME/log4j-tools.properties" -cp "$LIBS/*" \
        kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
      [[ -n "$cid" ]] || die "could not generate a cluster id with kafka.tools.StorageTool"
      log "formatting storage in $DATA_DIR (cluster id $cid)"
      if ! "$JAVA" -Dlog4j.configuration="file:$KAFKA_HOME/log4j-tools.properties" -cp "$LIBS/*" \
           kafka.tools.StorageTool format -t "$cid" -c "$PROPS" >"$STATE_DIR/format.out" 2>&1; then
        cat "$STATE_DIR/format.out" >&2
        die "kafka.tools.StorageTool format failed"
      fi
    fi
    log "starting broker on $ADDR (state in $STATE_DIR)"
    LOG_OFFSET="$(stat -c %s "$LOG_DIR/server.log" 2>/dev/null || echo 0)"
    start_jvm
  fi

  if ! have_kafka_python; then
    log "warning: '$PYTHON' cannot import kafka (kafka-python); health check is a TCP connect only"
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  until healthy; do
    if ! broker_pid >/dev/null; then
      print_log_tail
      rm -f "$PID_FILE"
      die "broker process exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
      print_log_tail
      die "broker on $ADDR not healthy after ${START_TIMEOUT}s (still running as pid $(broker_pid); 'infra/kafka.sh stop' to kill it)"
    fi
    sleep 0.5
  done
  log "broker is up (pid $(broker_pid))"
  echo "$ADDR"
}

cmd_stop() {
  resolve_state_dir
  if ! looks_like_state_dir; then
    log "not running"
    return 0
  fi
  lock_state
  local pid
  if ! pid="$(broker_pid)"; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  log "stopping broker (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 200; i++)); do
    pid_alive "$pid" || break
    sleep 0.1
  done
  if pid_alive "$pid"; then
    log "broker did not stop within 20 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      pid_alive "$pid" || break
      sleep 0.1
    done
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  resolve_state_dir
  if healthy; then
    log "running and healthy on $ADDR (pid $(broker_pid))"
    return 0
  fi
  local pid
  if pid="$(broker_pid)"; then
    log "process $pid is running but the broker on $ADDR is not healthy"
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
    die "$STATE_DIR does not look like a kafka.sh state dir; not deleting it"
  fi
}

usage() {
  sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  reset) cmd_reset ;;
  *) usage ;;
esac

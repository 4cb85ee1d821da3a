#!/usr/bin/env bash
# kafka.sh — a real, single-node Apache Kafka broker for Busbar's integration
# tests, without Docker: the broker jars come from Maven Central and run on the
# machine's JDK (17+) in KRaft mode (one JVM = broker + controller).
#
# Usage: bash integration/brokers/kafka/kafka.sh {start|stop|status|reset|fetch}
#   fetch   download kafka_2.13 + its runtime closure + a log4j2 binding into the
#           cache (no-op, and no network, when the cache is complete)
#   start   fetch, format the KRaft log dir if it is not formatted yet, start the
#           broker in the background, wait for metadata, run smoke.mjs (kafkajs
#           create/produce/consume/commit/delete) and print "READY ..." (exit 0);
#           on timeout print the tail of the broker log and exit 1. If the broker
#           is already running, only the readiness check + smoke test run.
#   stop    SIGTERM, wait up to BUSBAR_KAFKA_STOP_TIMEOUT s (20), then SIGKILL
#   status  print running/stopped; exit 0 when running, 1 when stopped
#   reset   stop, then delete what this script put in the data dir
#
# Tests prefer BUSBAR_KAFKA_BROKERS: when it is set (e.g. "host:9092,host2:9092")
# they use that cluster and this script is not needed at all. Without it, tests
# run `kafka.sh start` and use 127.0.0.1:${BUSBAR_KAFKA_PORT:-9092}.
#
# Environment (all optional):
#   BUSBAR_KAFKA_HOME             jar cache root (default: <this dir>/.cache)
#   BUSBAR_KAFKA_DATA_DIR         data dir: KRaft logs, config, broker logs, pid
#                                 (default: <this dir>/.data)
#   BUSBAR_KAFKA_PORT             PLAINTEXT client listener port (default 9092)
#   BUSBAR_KAFKA_CONTROLLER_PORT  KRaft controller listener port (default 9093)
#   BUSBAR_KAFKA_SASL_PORT        SASL_PLAINTEXT client listener port, mechanism PLAIN
#                                 (default: PLAINTEXT port + 3, i.e. 9095); "off" = none.
#                                 For the tests of bad / good credentials: its one
#                                 user is BUSBAR_KAFKA_SASL_USER / _PASSWORD below.
#   BUSBAR_KAFKA_SASL_USER        the SASL/PLAIN test user (default "busbar")
#   BUSBAR_KAFKA_SASL_PASSWORD    its password (default "busbar-secret"; a test
#                                 credential of a local test broker, not a secret)
#   BUSBAR_KAFKA_PROXY_PORT       if set, add a PROXY listener advertised at
#                                 127.0.0.1:<this port> (for fault tests through a
#                                 TCP proxy that forwards to the listen port below)
#   BUSBAR_KAFKA_PROXY_LISTEN_PORT port the PROXY listener binds (default 9094)
#   BUSBAR_KAFKA_START_TIMEOUT    seconds to wait for readiness + smoke (default 90)
#   BUSBAR_KAFKA_STOP_TIMEOUT     seconds to wait for clean shutdown (default 20)
#   BUSBAR_KAFKA_PORT_FREE_WAIT   seconds `start` waits for a port still held (by
#                                 a broker just killed) before giving up (default 10)
#   BUSBAR_KAFKA_HEAP_OPTS        default "-Xms256m -Xmx512m"
#   BUSBAR_KAFKA_JVM_OPTS         extra JVM flags appended to the defaults
#   BUSBAR_KAFKAJS_FROM           dir to resolve kafkajs from for smoke.mjs
#                                 (default: normal resolution from the repo)
#   JAVA_HOME                     used if set, else `java` on PATH
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"

# ---- pinned versions -------------------------------------------------------
KAFKA_VERSION="4.1.1"
SCALA_BINARY_VERSION="2.13"
# Kafka 4.1.1 itself depends on log4j-api/-core 2.24.3 and slf4j-api 1.7.36; it
# does not bring the slf4j -> log4j2 binding, so add the slf4j 1.x one.
LOG4J_VERSION="2.24.3"
DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

# ---- layout ----------------------------------------------------------------
HOST="127.0.0.1"
PORT="${BUSBAR_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${BUSBAR_KAFKA_CONTROLLER_PORT:-9093}"
SASL_PORT="${BUSBAR_KAFKA_SASL_PORT:-$(( PORT + 3 ))}"
[[ "$SASL_PORT" == "off" ]] && SASL_PORT=""
SASL_USER="${BUSBAR_KAFKA_SASL_USER:-busbar}"
SASL_PASSWORD="${BUSBAR_KAFKA_SASL_PASSWORD:-busbar-secret}"
if [[ ! "$SASL_USER" =~ ^[A-Za-z0-9._-]+$ || "$SASL_PASSWORD" == *[\"\\\;]* ]]; then
  printf '[kafka.sh] ERROR: BUSBAR_KAFKA_SASL_USER must be [A-Za-z0-9._-]+ and the password must not hold a quote, backslash or ;\n' >&2
  exit 1
fi
PROXY_PORT="${BUSBAR_KAFKA_PROXY_PORT:-}"
PROXY_LISTEN_PORT="${BUSBAR_KAFKA_PROXY_LISTEN_PORT:-9094}"
START_TIMEOUT="${BUSBAR_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${BUSBAR_KAFKA_STOP_TIMEOUT:-20}"
PORT_FREE_WAIT="${BUSBAR_KAFKA_PORT_FREE_WAIT:-10}"
HEAP_OPTS="${BUSBAR_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"

CACHE_ROOT="${BUSBAR_KAFKA_HOME:-$SCRIPT_DIR/.cache}"
DIST_DIR="$CACHE_ROOT/kafka_${SCALA_BINARY_VERSION}-${KAFKA_VERSION}"
LIB_DIR="$DIST_DIR/libs"
FETCH_STAMP="$DIST_DIR/jars.txt"   # written last by fetch: the complete jar list

DATA_DIR="${BUSBAR_KAFKA_DATA_DIR:-$SCRIPT_DIR/.data}"
LOG_DIRS="$DATA_DIR/kraft-combined-logs"
CONF_DIR="$DATA_DIR/config"
BROKER_LOG_DIR="$DATA_DIR/logs"
SERVER_PROPERTIES="$CONF_DIR/server.properties"
LOG4J_CONF="$CONF_DIR/log4j2.xml"
TOOLS_LOG4J_CONF="$CONF_DIR/tools-log4j2.xml"
PID_FILE="$DATA_DIR/kafka.pid"
STDOUT_LOG="$BROKER_LOG_DIR/stdout.log"
SERVER_LOG="$BROKER_LOG_DIR/server.log"

log() { printf '[kafka.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

now() { date +%s.%N; }
elapsed_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---- java ------------------------------------------------------------------
java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    printf '%s\n' "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    command -v java
  else
    die "no java found (set JAVA_HOME or put a JDK 17+ on PATH)"
  fi
}

check_java() {
  local java version major
  java="$(java_bin)"
  version="$("$java" -version 2>&1 | awk -F'"' '/version/ { print $2; exit }')"
  major="${version%%.*}"
  [[ "$major" == "1" ]] && major="$(cut -d. -f2 <<<"$version")"
  [[ "$major" =~ ^[0-9]+$ ]] || die "cannot parse java version from '$java -version'"
  (( major >= 17 )) || die "Kafka $KAFKA_VERSION needs Java 17+, but $java is $version"
}

JVM_OPTS=(
  -server
  -XX:+UseG1GC                         # Kafka's recommended collector
  -XX:MaxGCPauseMillis=20              # same GC tuning as kafka-run-class.sh
  -XX:InitiatingHeapOccupancyPercent=35
  -XX:+ExplicitGCInvokesConcurrent
  -XX:MaxInlineLevel=15
  -Djava.awt.headless=true
)

# ---- fetch -----------------------------------------------------------------
cache_complete() {
  [[ -s "$FETCH_STAMP" ]] || return 1
  local jar
  while IFS= read -r jar; do
    [[ -z "$jar" || -s "$LIB_DIR/$jar" ]] || return 1
  done <"$FETCH_STAMP"
  [[ -s "$LIB_DIR/kafka_${SCALA_BINARY_VERSION}-${KAFKA_VERSION}.jar" ]]
}

write_pom() {
  cat >"$DIST_DIR/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by integration/brokers/kafka/kafka.sh: the runtime closure of the
     Kafka $KAFKA_VERSION broker, plus the slf4j -> log4j2 binding it needs. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>busbar.local</groupId>
  <artifactId>kafka-broker-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_BINARY_VERSION</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <!-- slf4j 1.x binding (Kafka $KAFKA_VERSION uses slf4j-api 1.7.36) -->
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
}

cmd_fetch() {
  if cache_complete; then
    log "jars cached in $LIB_DIR ($(wc -l <"$FETCH_STAMP") jars); no download"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found: needed once to fetch Kafka $KAFKA_VERSION from Maven Central"
  mkdir -p "$DIST_DIR"
  # The cache may be shared by several data dirs: one fetch at a time.
  if command -v flock >/dev/null 2>&1; then
    exec 8>"$DIST_DIR/.fetch.lock"
    flock -w 600 8 || die "timed out waiting for another fetch into $DIST_DIR"
    if cache_complete; then
      exec 8>&-
      log "jars cached in $LIB_DIR by a concurrent fetch"
      return 0
    fi
  fi
  local t0 tmp
  t0="$(now)"
  write_pom
  tmp="$DIST_DIR/libs.tmp.$$"
  rm -rf "$tmp"
  log "fetching org.apache.kafka:kafka_${SCALA_BINARY_VERSION}:${KAFKA_VERSION} + runtime deps with Maven ..."
  if ! mvn -B -q -f "$DIST_DIR/pom.xml" "$DEPENDENCY_PLUGIN:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$DIST_DIR/mvn.log" 2>&1; then
    tail -n 40 "$DIST_DIR/mvn.log" >&2 || true
    rm -rf "$tmp"
    die "maven fetch failed (full log: $DIST_DIR/mvn.log)"
  fi
  [[ -s "$tmp/kafka_${SCALA_BINARY_VERSION}-${KAFKA_VERSION}.jar" ]] || { rm -rf "$tmp"; die "maven did not produce kafka_${SCALA_BINARY_VERSION}-${KAFKA_VERSION}.jar"; }
  rm -rf "$LIB_DIR"
  mv "$tmp" "$LIB_DIR"
  (cd "$LIB_DIR" && ls -1 -- *.jar) >"$FETCH_STAMP.tmp"
  mv "$FETCH_STAMP.tmp" "$FETCH_STAMP"
  exec 8>&-
  log "fetched $(wc -l <"$FETCH_STAMP") jars ($(du -sh "$LIB_DIR" | cut -f1)) in $(elapsed_since "$t0")s into $LIB_DIR"
}

# ---- process helpers -------------------------------------------------------
# A pid is "ours" if it is alive (not a zombie) and is kafka.Kafka started with
# this data dir's server.properties.
is_our_broker() {
  local pid="$1" state
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  state="$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null || true)"
  [[ "$state" != "Z" ]] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$SERVER_PROPERTIES" || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "kafka.Kafka"
}

read_pid() { [[ -f "$PID_FILE" ]] && tr -dc '0-9' <"$PID_FILE" || true; }

running_pid() {
  local pid
  pid="$(read_pid)"
  if [[ -n "$pid" ]] && is_our_broker "$pid"; then
    printf '%s\n' "$pid"
    return 0
  fi
  return 1
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

print_log_tail() {
  local f
  for f in "$SERVER_LOG" "$STDOUT_LOG"; do
    if [[ -s "$f" ]]; then
      log "---- last 60 lines of $f ----"
      tail -n 60 "$f" >&2 || true
    fi
  done
}

# ---- config ----------------------------------------------------------------
write_configs() {
  mkdir -p "$CONF_DIR" "$BROKER_LOG_DIR" "$LOG_DIRS"

  local listeners advertised protomap proxy_comment="" sasl_comment="" sasl_config=""
  listeners="PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT"
  advertised="PLAINTEXT://$HOST:$PORT"
  protomap="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ -n "$SASL_PORT" ]]; then
    listeners+=",SASL_PLAINTEXT://$HOST:$SASL_PORT"
    advertised+=",SASL_PLAINTEXT://$HOST:$SASL_PORT"
    protomap+=",SASL_PLAINTEXT:SASL_PLAINTEXT"
    sasl_comment="# SASL_PLAINTEXT: SASL/PLAIN authentication, for the tests of good and bad
# credentials. Its users are the user_<name> entries of its JAAS line below.
"
    sasl_config="
############################ SASL/PLAIN (listener SASL_PLAINTEXT) ############################
# Only this listener authenticates; PLAINTEXT and CONTROLLER stay unauthenticated.
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER=\"$SASL_PASSWORD\";

# ACLs, for the tests of refused permissions: the unauthenticated principal of PLAINTEXT and
# CONTROLLER (User:ANONYMOUS) is a super user, and a resource without ACLs is open to everyone,
# so nothing changes until a test adds a DENY ACL for the SASL user (and removes it after).
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=true
"
  fi
  if [[ -n "$PROXY_PORT" ]]; then
    listeners+=",PROXY://$HOST:$PROXY_LISTEN_PORT"
    advertised+=",PROXY://$HOST:$PROXY_PORT"
    protomap+=",PROXY:PLAINTEXT"
    proxy_comment="# PROXY: for fault tests. Binds $HOST:$PROXY_LISTEN_PORT but is advertised as
# $HOST:$PROXY_PORT, where a TCP proxy forwards to it; clients that bootstrap
# through the proxy keep talking through it (metadata points at the proxy).
"
  fi

  cat >"$SERVER_PROPERTIES" <<EOF
# Generated by integration/brokers/kafka/kafka.sh on every start; edits are lost.
# Single-node Apache Kafka $KAFKA_VERSION in KRaft mode, tuned for tests.

############################ KRaft: one node, two roles ############################
# This JVM is both the broker and the only controller (no ZooKeeper in Kafka 4).
process.roles=broker,controller
node.id=1
# Static quorum of one voter (this node). Unlike a KIP-853 dynamic quorum
# (format --standalone), nothing port-specific is written into the log dir, so
# the ports may change between restarts on the same data.
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT

############################ Listeners ############################
# PLAINTEXT: clients and (unused, single node) inter-broker traffic.
# CONTROLLER: KRaft quorum traffic; never advertised to clients.
${proxy_comment}${sasl_comment}listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protomap
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER

############################ Storage ############################
log.dirs=$LOG_DIRS
# log.flush.* left at defaults: durability comes from the OS page cache (and,
# in a real cluster, replication), not from fsync per message.

############################ Topics ############################
# Off: Busbar's Kafka transport creates (and configures) its topics itself, and
# tests must notice when it does not, instead of a broker-side silent create.
auto.create.topics.enable=false
# Defaults for topics created without explicit settings.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1

############################ Internal topics: RF 1 ############################
# There is exactly one broker. With the default RF 3, __consumer_offsets could
# never be created, FindCoordinator would answer COORDINATOR_NOT_AVAILABLE
# forever and consumer groups would never find a coordinator.
offsets.topic.replication.factor=1
# __consumer_offsets is created on the first FindCoordinator; 1 partition
# (default 50) makes that creation and the coordinator load near-instant.
offsets.topic.num.partitions=1
# Same for transactions (__transaction_state).
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
# Same for share groups (__share_group_state), should a test use them.
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

############################ Consumer groups ############################
# No 3 s wait for more members before the first rebalance of a new group.
group.initial.rebalance.delay.ms=0
# Allow session timeouts down to 1 s (default min 6 s) so a test can let a
# killed consumer's partitions move to another member quickly.
group.min.session.timeout.ms=1000
$sasl_config
EOF

  cat >"$LOG4J_CONF" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by kafka.sh: broker logs go to $SERVER_LOG (INFO; noisy loggers WARN).
     shutdownHook="disable": log4j2's own JVM shutdown hook would otherwise stop
     logging while Kafka's shutdown (on SIGTERM) is still running. -->
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <RollingFile name="server" fileName="$SERVER_LOG" filePattern="$SERVER_LOG.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="20 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="org.apache.kafka.common.config.AbstractConfig" level="WARN"/>
    <Logger name="org.apache.kafka.common.utils.AppInfoParser" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
  </Loggers>
</Configuration>
EOF

  cat >"$TOOLS_LOG4J_CONF" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by kafka.sh: command-line tools (StorageTool) log WARN+ to stderr. -->
<Configuration status="WARN">
  <Appenders><Console name="stderr" target="SYSTEM_ERR"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers><Root level="WARN"><AppenderRef ref="stderr"/></Root></Loggers>
</Configuration>
EOF
}

# Kafka cluster ids are 16 random bytes, base64url without padding (22 chars);
# Uuid.randomUuid() also avoids ids starting with '-'.
new_cluster_id() {
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" != -* && ${#id} -eq 22 ]] && break
  done
  printf '%s\n' "$id"
}

format_if_needed() {
  if [[ -f "$LOG_DIRS/meta.properties" ]]; then
    log "log dir already formatted ($(grep -m1 '^cluster.id=' "$LOG_DIRS/meta.properties" || true)); keeping data"
    return 0
  fi
  local cluster_id t0
  cluster_id="$(new_cluster_id)"
  t0="$(now)"
  "$(java_bin)" -Xmx256m -Dlog4j2.configurationFile="$TOOLS_LOG4J_CONF" -cp "$LIB_DIR/*" \
    kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$SERVER_PROPERTIES" >&2 \
    || die "formatting $LOG_DIRS failed"
  log "formatted $LOG_DIRS (cluster.id=$cluster_id) in $(elapsed_since "$t0")s"
}

# ---- readiness -------------------------------------------------------------
# Runs smoke.mjs while watching the broker pid, so a crashed JVM fails fast
# instead of waiting for the timeout.
# $3 = "stop-on-failure": stop the broker we just launched if it never gets
# ready, so a failed start does not leave an orphan JVM behind.
wait_ready() {
  local pid="$1" t0="$2" on_failure="${3:-}" budget_ms smoke_pid rc=0
  command -v node >/dev/null 2>&1 || die "node not found: needed for the readiness/smoke check"
  budget_ms=$(awk -v a="$t0" -v b="$(now)" -v t="$START_TIMEOUT" 'BEGIN { r = (t - (b - a)) * 1000; if (r < 5000) r = 5000; printf "%d", r }')
  KAFKAJS_NO_PARTITIONER_WARNING=1 \
  BUSBAR_KAFKA_SMOKE_BROKERS="$HOST:$PORT" \
  BUSBAR_KAFKA_SMOKE_SASL_BROKERS="${SASL_PORT:+$HOST:$SASL_PORT}" \
  BUSBAR_KAFKA_SMOKE_SASL_USER="$SASL_USER" \
  BUSBAR_KAFKA_SMOKE_SASL_PASSWORD="$SASL_PASSWORD" \
  BUSBAR_KAFKA_SMOKE_TIMEOUT_MS="$budget_ms" \
    timeout --kill-after=5 $(( budget_ms / 1000 + 15 )) node "$SCRIPT_DIR/smoke.mjs" >&2 &
  smoke_pid=$!
  while kill -0 "$smoke_pid" 2>/dev/null; do
    if ! is_our_broker "$pid"; then
      kill "$smoke_pid" 2>/dev/null || true
      wait "$smoke_pid" 2>/dev/null || true
      rm -f "$PID_FILE"
      print_log_tail
      die "broker process $pid exited during startup"
    fi
    sleep 0.3
  done
  wait "$smoke_pid" || rc=$?
  if (( rc != 0 )); then
    print_log_tail
    if [[ "$on_failure" == "stop-on-failure" ]]; then
      cmd_stop
      die "broker not ready / smoke test failed within ${START_TIMEOUT}s (exit $rc); broker stopped, logs kept in $BROKER_LOG_DIR"
    fi
    die "broker not ready / smoke test failed within ${START_TIMEOUT}s (exit $rc); broker pid $pid left running (run '$0 stop')"
  fi
}

# ---- commands --------------------------------------------------------------
cmd_start() {
  local t0 pid java
  t0="$(now)"
  if pid="$(running_pid)"; then
    log "already running (pid $pid); re-checking readiness"
    port_open "$HOST" "$PORT" || log "port $HOST:$PORT not answering yet"
    wait_ready "$pid" "$t0"
    printf 'READY kafka %s at %s:%s%s (already running, pid %s; checked in %ss)\n' \
      "$KAFKA_VERSION" "$HOST" "$PORT" "${SASL_PORT:+, SASL/PLAIN at $HOST:$SASL_PORT}" "$pid" "$(elapsed_since "$t0")"
    return 0
  fi
  rm -f "$PID_FILE"

  # A broker that was just killed can still hold its ports for a moment: its main thread is a
  # zombie (so it no longer counts as running) while its other threads, which share the open
  # sockets, are still exiting. Give the ports up to PORT_FREE_WAIT seconds to close.
  local p waited_for_port="" deadline=$(( $(date +%s) + PORT_FREE_WAIT ))
  for p in "$PORT" "$CONTROLLER_PORT" ${SASL_PORT:+"$SASL_PORT"} ${PROXY_PORT:+"$PROXY_LISTEN_PORT"}; do
    while port_open "$HOST" "$p"; do
      [[ -n "${waited_for_port:-}" ]] || { log "$HOST:$p still held (a broker just killed?); waiting up to ${PORT_FREE_WAIT}s"; waited_for_port=1; }
      if (( $(date +%s) >= deadline )); then
        die "$HOST:$p is already in use by another process (not this script's broker for $DATA_DIR); free it, choose other BUSBAR_KAFKA_*PORT values, or set BUSBAR_KAFKA_BROKERS to use an existing cluster"
      fi
      sleep 0.2
    done
  done

  check_java
  cmd_fetch
  write_configs
  format_if_needed

  java="$(java_bin)"
  local t_launch
  t_launch="$(now)"
  # setsid: the broker gets its own session/process group, so it outlives the
  # shell (or test runner) that started it; `stop` ends it. The inner bash
  # records its own pid and then execs java, so the pid file holds java's pid.
  # shellcheck disable=SC2086
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    "$java" $HEAP_OPTS "${JVM_OPTS[@]}" ${BUSBAR_KAFKA_JVM_OPTS:-} \
    -Dlog4j2.configurationFile="$LOG4J_CONF" \
    -Dkafka.logs.dir="$BROKER_LOG_DIR" \
    -cp "$LIB_DIR/*" kafka.Kafka "$SERVER_PROPERTIES" \
    >"$STDOUT_LOG" 2>&1 </dev/null 8>&- 9>&- &

  local i
  for i in $(seq 1 50); do
    pid="$(read_pid)"
    [[ -n "$pid" ]] && break
    sleep 0.1
  done
  [[ -n "$pid" ]] || die "broker did not start (no pid file); see $STDOUT_LOG"
  log "started kafka.Kafka $KAFKA_VERSION (pid $pid) on PLAINTEXT://$HOST:$PORT, CONTROLLER://$HOST:$CONTROLLER_PORT${SASL_PORT:+, SASL_PLAINTEXT://$HOST:$SASL_PORT (PLAIN)}${PROXY_PORT:+, PROXY://$HOST:$PROXY_LISTEN_PORT advertised as $HOST:$PROXY_PORT}; logs: $SERVER_LOG"

  wait_ready "$pid" "$t0" stop-on-failure
  printf 'READY kafka %s at %s:%s%s (pid %s; started in %ss, JVM launch to ready %ss)\n' \
    "$KAFKA_VERSION" "$HOST" "$PORT" "${SASL_PORT:+, SASL/PLAIN at $HOST:$SASL_PORT}" "$pid" "$(elapsed_since "$t0")" "$(elapsed_since "$t_launch")"
}

cmd_stop() {
  local pid t0
  pid="$(read_pid)"
  if [[ -z "$pid" ]] || ! is_our_broker "$pid"; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  t0="$(now)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$(( $(date +%s) + STOP_TIMEOUT ))
  while is_our_broker "$pid" && (( $(date +%s) < deadline )); do
    sleep 0.2
  done
  if is_our_broker "$pid"; then
    log "no clean shutdown after ${STOP_TIMEOUT}s; sending SIGKILL to $pid"
    kill -KILL "$pid" 2>/dev/null || true
    while is_our_broker "$pid"; do sleep 0.1; done
  fi
  rm -f "$PID_FILE"
  log "stopped (pid $pid) in $(elapsed_since "$t0")s"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    if port_open "$HOST" "$PORT"; then
      echo "running (pid $pid, $HOST:$PORT answering, data $DATA_DIR)"
    else
      echo "running (pid $pid, $HOST:$PORT NOT answering yet, data $DATA_DIR)"
    fi
    return 0
  fi
  echo "stopped"
  return 1
}

cmd_reset() {
  cmd_stop
  # Delete only what this script creates, never the whole (possibly
  # user-chosen) BUSBAR_KAFKA_DATA_DIR.
  rm -rf -- "$LOG_DIRS" "$CONF_DIR" "$BROKER_LOG_DIR" "$PID_FILE" "$DATA_DIR/.kafka.sh.lock"
  rmdir -- "$DATA_DIR" 2>/dev/null || true
  log "reset: deleted broker data under $DATA_DIR"
}

# start/stop/reset/fetch of one data dir are serialised (e.g. several test
# workers calling `start` at once): the first starts the broker, the others
# then find it running and only re-check readiness.
take_lock() {
  command -v flock >/dev/null 2>&1 || return 0
  mkdir -p "$DATA_DIR"
  exec 9>"$DATA_DIR/.kafka.sh.lock"
  flock -w $(( START_TIMEOUT + 120 )) 9 || die "timed out waiting for another kafka.sh on $DATA_DIR"
}

case "${1:-}" in
  start) take_lock; cmd_start ;;
  stop) take_lock; cmd_stop ;;
  status) cmd_status ;;
  reset) take_lock; cmd_reset ;;
  fetch) take_lock; cmd_fetch ;;
  *)
    echo "usage: $0 {start|stop|status|reset|fetch}" >&2
    exit 2
    ;;
esac

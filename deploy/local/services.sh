#!/usr/bin/env bash
# Start, check and stop a single-node Apache Kafka (KRaft) and a Redis server on loopback, no Docker.
#
#   deploy/local/services.sh up|down|status|logs [all|kafka|redis|redis-cluster]
#
# Kafka is the real broker: its jars come from Maven Central (deploy/local/kafka-pom.xml, resolved
# once with `mvn dependency:copy-dependencies` into $STREAMER_CACHE, outside the repository) and run
# on the installed JDK (17+). Redis is Debian's redis-server, installed with apt-get when missing,
# run without persistence. `up` is idempotent and returns only once each service answers.
# `redis-cluster` is a Redis Cluster of three masters (no replicas) on three ports from
# REDIS_CLUSTER_PORT, made with `redis-cli --cluster create`. The TLS listeners use a test CA made
# once in $STREAMER_SERVICES_DIR/tls (ca.crt: trust it; other-ca.crt: a CA that signed nothing, for
# a client with the wrong one): a server certificate for 127.0.0.1 and localhost, and for Kafka a
# PKCS12 keystore made from it with the JDK's keytool (password streamer-tls); `all` is Kafka and Redis, and
# `down all` also stops a cluster that runs.
#
# Settings (environment):
#   STREAMER_CACHE          jar and tool cache                 (~/.cache/streamer)
#   STREAMER_SERVICES_DIR   data dirs, pid files and logs      ($STREAMER_CACHE/services)
#   KAFKA_PORT              broker listener                    (9092)
#   KAFKA_CONTROLLER_PORT   KRaft controller listener          (9093)
#   KAFKA_HEAP              JVM heap                           (-Xmx1g -Xms256m)
#   KAFKA_FRESH             1: a Kafka that is not running starts with an empty log dir (the
#                           tests' and benchmarks' topics are throwaway: a broker that reloads
#                           thousands of old partitions takes minutes to start)   (unset: keep)
#   KAFKA_SASL_PORT         also listen with SASL/PLAIN here    (unset: no SASL listener)
#   KAFKA_SASL_USERS        user:password list for SASL/PLAIN   (streamer:streamer-secret)
#   KAFKA_SSL_PORT          also listen with TLS here           (unset: no SSL listener)
#   REDIS_PORT              Redis port                         (6379)
#   REDIS_PASSWORD          if set, Redis requires it          (unset)
#   REDIS_TLS_PORT          Redis also listens with TLS here    (unset: no TLS port)
#   REDIS_CLUSTER_PORT      first of the cluster's 3 ports      (7000; bus ports 1000 higher)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${STREAMER_CACHE:-$HOME/.cache/streamer}"
RUN_DIR="${STREAMER_SERVICES_DIR:-$CACHE/services}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${KAFKA_HEAP:--Xmx1g -Xms256m}"
KAFKA_SASL_PORT="${KAFKA_SASL_PORT:-}"
KAFKA_SASL_USERS="${KAFKA_SASL_USERS:-streamer:streamer-secret}"
KAFKA_SSL_PORT="${KAFKA_SSL_PORT:-}"
KAFKA_FRESH="${KAFKA_FRESH:-}"
REDIS_TLS_PORT="${REDIS_TLS_PORT:-}"
REDIS_PORT="${REDIS_PORT:-6379}"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/kafka-pom.xml")"
KAFKA_LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
KAFKA_DIR="$RUN_DIR/kafka-$KAFKA_PORT"
REDIS_DIR="$RUN_DIR/redis-$REDIS_PORT"
REDIS_CLUSTER_PORT="${REDIS_CLUSTER_PORT:-7000}"
CLUSTER_PORTS=("$REDIS_CLUSTER_PORT" "$((REDIS_CLUSTER_PORT + 1))" "$((REDIS_CLUSTER_PORT + 2))")
CLUSTER_DIR="$RUN_DIR/redis-cluster-$REDIS_CLUSTER_PORT"
WAIT_S="${SERVICES_WAIT_S:-90}"
TLS_DIR="$RUN_DIR/tls"
TLS_PASS=streamer-tls

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Run a check every 0.25 s until it passes (status 0) or WAIT_S seconds are over (status 1).
wait_for() {
    local i
    for ((i = 0; i < WAIT_S * 4; i++)); do
        "$@" && return 0
        sleep 0.25
    done
    return 1
}

# A pid file names a live process that is still the service (not a reused pid after a reboot).
pid_alive() {
    [[ -f "$1" ]] || return 1
    local pid
    pid="$(cat "$1")"
    kill -0 "$pid" 2>/dev/null && grep -qaE "kafka\.Kafka|redis-server" "/proc/$pid/cmdline" 2>/dev/null
}

# ---------------------------------------------------------------------------------------- Kafka --

kafka_install() {
    [[ -f "$KAFKA_LIBS/.complete" ]] && return 0
    command -v java >/dev/null || { log "installing a Java runtime from Debian"; apt_install default-jre-headless; }
    local major
    major="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/ *java.specification.version = //p')"
    [[ "${major%%.*}" -ge 17 ]] || die "Kafka $KAFKA_VERSION needs Java 17+, found $major"
    command -v mvn >/dev/null || { log "installing maven"; apt_install maven; }
    log "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_LIBS"
    rm -rf "$KAFKA_LIBS" && mkdir -p "$KAFKA_LIBS"
    mvn -q -B -f "$HERE/kafka-pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" >"$CACHE/kafka-mvn.log" 2>&1 \
        || { tail -20 "$CACHE/kafka-mvn.log" >&2; die "maven could not resolve the Kafka jars"; }
    touch "$KAFKA_LIBS/.complete"
}

kafka_java() { java -cp "$KAFKA_LIBS/*" "$@"; }

# A test CA, a server certificate it signed (127.0.0.1, localhost) and a Kafka keystore; made once.
tls_material() {
    [[ -f "$TLS_DIR/kafka.keystore.p12" ]] && return 0
    log "making a test CA and server certificate in $TLS_DIR"
    rm -rf "$TLS_DIR.new" && mkdir -p "$TLS_DIR.new"
    (
        cd "$TLS_DIR.new"
        local ca
        for ca in ca other-ca; do
            openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=streamer test $ca" \
                -keyout "$ca.key" -out "$ca.crt" 2>/dev/null
        done
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key \
            -out server.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile server.ext -out server.crt 2>/dev/null
        openssl pkcs12 -export -in server.crt -inkey server.key -certfile ca.crt -name kafka \
            -passout "pass:$TLS_PASS" -out server.p12
        keytool -importkeystore -noprompt -srckeystore server.p12 -srcstoretype PKCS12 \
            -srcstorepass "$TLS_PASS" -destkeystore kafka.keystore.p12 -deststoretype PKCS12 \
            -deststorepass "$TLS_PASS" >/dev/null 2>&1
    ) || { rm -rf "$TLS_DIR.new"; die "making the test certificates failed (openssl, keytool)"; }
    rm -rf "$TLS_DIR" && mv "$TLS_DIR.new" "$TLS_DIR"
}

kafka_up() {
    if pid_alive "$KAFKA_DIR/kafka.pid" && port_open "$KAFKA_PORT"; then
        log "kafka already up on 127.0.0.1:$KAFKA_PORT"; return 0
    fi
    port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process (set KAFKA_PORT)"
    kafka_install
    if [[ "$KAFKA_FRESH" == 1 && -d "$KAFKA_DIR/data" ]]; then
        log "kafka starts with an empty log dir (KAFKA_FRESH=1)"
        rm -rf "$KAFKA_DIR/data"
    fi
    mkdir -p "$KAFKA_DIR/data"
    local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT" protocols="PLAINTEXT:PLAINTEXT" sasl=""
    if [[ -n "$KAFKA_SASL_PORT" ]]; then
        local users="" pair
        for pair in ${KAFKA_SASL_USERS//,/ }; do users+=" user_${pair%%:*}=\"${pair#*:}\""; done
        listeners+=",SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT"
        protocols+=",SASL_PLAINTEXT:SASL_PLAINTEXT"
        sasl="sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$users;"
    fi
    local tls=""
    if [[ -n "$KAFKA_SSL_PORT" ]]; then
        tls_material
        listeners+=",SSL://127.0.0.1:$KAFKA_SSL_PORT"
        protocols+=",SSL:SSL"
        tls="ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/kafka.keystore.p12
ssl.keystore.password=$TLS_PASS
ssl.key.password=$TLS_PASS"
    fi
    cat >"$KAFKA_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=$listeners,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
group.initial.rebalance.delay.ms=0
group.coordinator.append.linger.ms=0
group.consumer.min.session.timeout.ms=1000
group.classic.min.session.timeout.ms=1000
group.min.session.timeout.ms=1000
log.retention.hours=168
log.segment.bytes=67108864
$sasl
$tls
EOF
    cat >"$KAFKA_DIR/log4j2.yaml" <<EOF
Configuration:
  Appenders:
    File:
      name: file
      fileName: "$KAFKA_DIR/server.log"
      PatternLayout: { pattern: "[%d] %p %m (%c)%n" }
  Loggers:
    Root: { level: INFO, AppenderRef: [ { ref: file } ] }
    Logger:
      - { name: kafka, level: INFO }
      - { name: org.apache.kafka, level: WARN }
      - { name: kafka.request.logger, level: WARN }
EOF
    if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
        local cluster_id
        cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
        kafka_java -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.yaml" kafka.tools.StorageTool format \
            -t "$cluster_id" -c "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/format.log" 2>&1 \
            || { cat "$KAFKA_DIR/format.log" >&2; die "kafka storage format failed"; }
    fi
    # Readiness is read from the log: start it afresh, keeping the previous run's for debugging.
    [[ -f "$KAFKA_DIR/server.log" ]] && mv -f "$KAFKA_DIR/server.log" "$KAFKA_DIR/server.log.1"
    log "starting kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (logs: $KAFKA_DIR)"
    # shellcheck disable=SC2086
    nohup java $KAFKA_HEAP -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.yaml" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
        >"$KAFKA_DIR/stdout.log" 2>&1 </dev/null 9>&- &
    local pid=$!
    echo "$pid" >"$KAFKA_DIR/kafka.pid"
    local i
    for ((i = 0; i < WAIT_S * 4; i++)); do
        # Our own child: alive is enough (its command line is bash's until it has exec'd java).
        kill -0 "$pid" 2>/dev/null || { tail -30 "$KAFKA_DIR/stdout.log" "$KAFKA_DIR/server.log" >&2 || true; die "kafka exited during start"; }
        if port_open "$KAFKA_PORT" && grep -q "Kafka Server started" "$KAFKA_DIR/server.log" 2>/dev/null; then
            log "kafka up on 127.0.0.1:$KAFKA_PORT"; return 0
        fi
        sleep 0.25
    done
    die "kafka did not answer on 127.0.0.1:$KAFKA_PORT within ${WAIT_S}s (see $KAFKA_DIR/server.log)"
}

kafka_down() {
    stop_pid "$KAFKA_DIR/kafka.pid" kafka 30
}

# ---------------------------------------------------------------------------------------- Redis --

apt_install() {
    [[ "$(id -u)" == 0 ]] || die "$1 is missing; install it: sudo apt-get install -y $1"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1; then
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    fi
}

redis_bin() { command -v redis-server || echo /usr/bin/redis-server; }

redis_ping() {
    local auth=()
    [[ -n "${REDIS_PASSWORD:-}" ]] && auth=(--no-auth-warning -a "$REDIS_PASSWORD")
    [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "${auth[@]}" ping 2>/dev/null)" == PONG ]]
}

redis_up() {
    if pid_alive "$REDIS_DIR/redis.pid" && redis_ping; then
        log "redis already up on 127.0.0.1:$REDIS_PORT"; return 0
    fi
    port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by another process (set REDIS_PORT)"
    [[ -x "$(redis_bin)" ]] || { log "installing redis-server from Debian"; apt_install redis-server; }
    mkdir -p "$REDIS_DIR"
    local args=(--bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" --save "" --appendonly no
        --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log"
        --maxmemory-policy noeviction)
    [[ -n "${REDIS_PASSWORD:-}" ]] && args+=(--requirepass "$REDIS_PASSWORD")
    if [[ -n "$REDIS_TLS_PORT" ]]; then
        tls_material
        args+=(--tls-port "$REDIS_TLS_PORT" --tls-cert-file "$TLS_DIR/server.crt"
            --tls-key-file "$TLS_DIR/server.key" --tls-ca-cert-file "$TLS_DIR/ca.crt"
            --tls-auth-clients no)
    fi
    log "starting redis on 127.0.0.1:$REDIS_PORT (logs: $REDIS_DIR)"
    "$(redis_bin)" "${args[@]}" 9>&-  # the daemon must not inherit the lock
    wait_for redis_ping && { log "redis up on 127.0.0.1:$REDIS_PORT"; return 0; }
    die "redis did not answer on 127.0.0.1:$REDIS_PORT within ${WAIT_S}s (see $REDIS_DIR/redis.log)"
}

redis_down() {
    stop_pid "$REDIS_DIR/redis.pid" redis 10
}

# -------------------------------------------------------------------------------- Redis Cluster --

node_ping() { [[ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" == PONG ]]; }

cluster_ok() {
    local p
    for p in "${CLUSTER_PORTS[@]}"; do
        redis-cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
    done
}

cluster_up() {
    if cluster_ok; then log "redis cluster already up on 127.0.0.1:${CLUSTER_PORTS[*]}"; return 0; fi
    [[ -x "$(redis_bin)" ]] || { log "installing redis-server from Debian"; apt_install redis-server; }
    local p
    for p in "${CLUSTER_PORTS[@]}"; do
        if pid_alive "$CLUSTER_DIR/$p/redis.pid"; then continue; fi
        port_open "$p" && die "port $p is taken by another process (set REDIS_CLUSTER_PORT)"
        # A node that stopped starts again from its directory: its nodes.conf (its id and slots)
        # and, if it was shut down with SAVE, its data.
        mkdir -p "$CLUSTER_DIR/$p"
        "$(redis_bin)" --bind 127.0.0.1 --port "$p" --cluster-enabled yes \
            --cluster-port "$((p + 1000))" --cluster-config-file nodes.conf \
            --cluster-node-timeout 5000 --dir "$CLUSTER_DIR/$p" --save "" --appendonly no \
            --daemonize yes --pidfile "$CLUSTER_DIR/$p/redis.pid" --logfile "$CLUSTER_DIR/$p/redis.log" \
            --maxmemory-policy noeviction 9>&-
    done
    for p in "${CLUSTER_PORTS[@]}"; do
        wait_for node_ping "$p" || die "redis cluster node $p did not answer within ${WAIT_S}s (see $CLUSTER_DIR/$p/redis.log)"
    done
    if ! redis-cli -h 127.0.0.1 -p "${CLUSTER_PORTS[0]}" cluster info | grep -q '^cluster_slots_assigned:16384'; then
        log "creating a redis cluster of 3 masters on 127.0.0.1:${CLUSTER_PORTS[*]} (logs: $CLUSTER_DIR)"
        redis-cli --cluster create "${CLUSTER_PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 \
            --cluster-yes >"$CLUSTER_DIR/create.log" 2>&1 \
            || die "redis-cli --cluster create failed (see $CLUSTER_DIR/create.log)"
    fi
    wait_for cluster_ok && { log "redis cluster up on 127.0.0.1:${CLUSTER_PORTS[*]}"; return 0; }
    die "the redis cluster on 127.0.0.1:${CLUSTER_PORTS[*]} is not ok within ${WAIT_S}s (see $CLUSTER_DIR)"
}

cluster_down() {
    local p
    for p in "${CLUSTER_PORTS[@]}"; do
        [[ -f "$CLUSTER_DIR/$p/redis.pid" ]] || continue
        stop_pid "$CLUSTER_DIR/$p/redis.pid" "redis cluster node $p" 10
    done
    rm -rf "$CLUSTER_DIR"  # no persistence: a cluster made again starts empty
}

# --------------------------------------------------------------------------------------- common --

stop_pid() {
    local pidfile="$1" name="$2" grace="$3" pid i
    if ! pid_alive "$pidfile"; then
        log "$name is not running"; rm -f "$pidfile"; return 0
    fi
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 4; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "$name stopped"; return 0; }
        sleep 0.25
    done
    log "$name did not stop within ${grace}s, killing it"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

status() {
    if pid_alive "$KAFKA_DIR/kafka.pid" && port_open "$KAFKA_PORT"; then
        echo "kafka  up    127.0.0.1:$KAFKA_PORT  pid $(cat "$KAFKA_DIR/kafka.pid")  $KAFKA_DIR"
    else
        echo "kafka  down  127.0.0.1:$KAFKA_PORT"; rc=1
    fi
    if redis_ping; then
        echo "redis  up    127.0.0.1:$REDIS_PORT  $REDIS_DIR"
    else
        echo "redis  down  127.0.0.1:$REDIS_PORT"; rc=1
    fi
    if [[ "$what" == redis-cluster ]] || [[ -d "$CLUSTER_DIR" ]]; then
        if cluster_ok; then
            echo "redis-cluster  up    127.0.0.1:${CLUSTER_PORTS[*]}  $CLUSTER_DIR"
        else
            echo "redis-cluster  down  127.0.0.1:${CLUSTER_PORTS[*]}"; rc=1
        fi
    fi
}

cmd="${1:-}"
what="${2:-all}"
case "$what" in
all | kafka | redis | redis-cluster) ;;
*) die "unknown service '$what' (all, kafka, redis, redis-cluster)" ;;
esac
mkdir -p "$RUN_DIR"
# One start or stop at a time per services directory: two `up`s racing would start two brokers.
# (The servers are started with fd 9 closed, so they do not hold the lock after this script ends.)
exec 9>"$RUN_DIR/.lock"
flock -w 600 9 || die "another services.sh holds $RUN_DIR/.lock"
rc=0
case "$cmd" in
up)
    case "$what" in
    redis-cluster) cluster_up ;;
    *) [[ "$what" == kafka ]] || redis_up; [[ "$what" == redis ]] || kafka_up ;;
    esac
    ;;
down)
    case "$what" in
    redis-cluster) cluster_down ;;
    *)
        [[ "$what" == redis ]] || kafka_down
        [[ "$what" == kafka ]] || redis_down
        [[ "$what" != all ]] || [[ ! -d "$CLUSTER_DIR" ]] || cluster_down
        ;;
    esac
    ;;
status) status ;;
logs)
    [[ "$what" == redis ]] || { echo "== $KAFKA_DIR/server.log"; tail -n 50 "$KAFKA_DIR/server.log" 2>/dev/null || true; }
    [[ "$what" == kafka ]] || { echo "== $REDIS_DIR/redis.log"; tail -n 50 "$REDIS_DIR/redis.log" 2>/dev/null || true; }
    for p in "${CLUSTER_PORTS[@]}"; do
        [[ -f "$CLUSTER_DIR/$p/redis.log" ]] || continue
        echo "== $CLUSTER_DIR/$p/redis.log"; tail -n 20 "$CLUSTER_DIR/$p/redis.log"
    done
    ;;
install) kafka_install; [[ -x "$(redis_bin)" ]] || apt_install redis-server ;;
*) die "usage: $0 up|down|status|logs|install [all|kafka|redis|redis-cluster]" ;;
esac
exit "$rc"

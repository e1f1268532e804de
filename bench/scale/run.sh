#!/usr/bin/env bash
# Scale checks, side by side on each broker given (target scripts with start|stop|pid|uri|name):
#   idle:   N_CONN (10,000) idle connections with one channel each -> broker RSS per connection
#   queues: N_QUEUES (100,000) queues declared and bound to amq.direct -> wall time, RSS per queue
#   unacked: N_UNACKED (1,000,000) 1 KiB messages in a durable queue, taken by one consumer with
#           unlimited prefetch that never acks -> RSS; the consumer goes, they are requeued ->
#           RSS; then redelivered (prefetch 1000, acks) -> rate, against a drain of as many
#           fresh messages. Persistent messages, and transient ones with UNACKED_FLAGS=-persistent=false.
#           Not part of `all` (it takes minutes per broker).
#   busy:   S7 scaled up ten times: BUSY_QUEUES (10,000) queues, each with one consumer
#           (BUSY_CONNS (1,000) connections of 10 channels, prefetch 100, manual acks), and
#           BUSY_PRODUCERS (10) producers offering BUSY_RATE (10,000) msg/s each of 1 KiB for
#           BUSY_SECS (30 s) -> delivered/s, broker CPU per delivered message, RSS. Uses
#           amqp-perf (AMQP_PERF_BIN). Not part of `all`.
#   storm:  connections opened (AMQP handshake and a channel) and closed by STORM_PARALLEL (50)
#           workers for STORM_SECS (20 s) -> connections per second, p99 per connection, broker
#           CPU per connection.
#   conns:  N_BIG (100,000, capped by the fd limit) connections with a channel and a consumer
#           each, heartbeats on (CONN_HEARTBEAT, 60 s), spread over source addresses 127.1.x.y;
#           idle for CONN_SETTLE (120 s: two heartbeat intervals) -> RSS per connection, broker
#           CPU while idle, time to open them all; then one message published to a fanout
#           exchange must reach every consumer. Not part of `all`.
#
#   bench/scale/run.sh idle|queues|unacked|busy|storm|conns|all TARGET.sh [TARGET.sh ...]
#
# e.g. (from the repo root, Warren on port 5690 with a fresh data dir):
#   WARREN_BIN=$CARGO_TARGET_DIR/release/warren bash bench/scale/run.sh all \
#     bench/scale/warren.sh ../shared/amqp-perf/bench/targets/rabbitmq.sh \
#     ../shared/amqp-perf/bench/targets/rabbitmq4.sh
#
# Each broker is started fresh for each check (the target scripts wipe their data dirs),
# pinned to CPU 1 (BROKER_CPUS) as the target scripts do; the load tool runs on CPU 0
# (GEN_CPUS). The fd limit is raised to FD_LIMIT for this shell, so both the brokers it starts
# and the load tool inherit it. Output: one line per check and broker in $OUT/results.txt,
# the tool's log in $OUT/<check>-<broker>.log.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/warren-scale-out}
N_CONN=${N_CONN:-10000}
N_QUEUES=${N_QUEUES:-100000}
QUEUE_DEADLINE=${QUEUE_DEADLINE:-120s}
IDLE_SETTLE=${IDLE_SETTLE:-15s}
IDLE_FLAGS=${IDLE_FLAGS:-}     # extra flags for `scale idle`, e.g. "-warm 262144"
QUEUE_FLAGS=${QUEUE_FLAGS:-}   # extra flags for `scale queues`, e.g. "-nowait"
N_UNACKED=${N_UNACKED:-1000000}
UNACKED_FLAGS=${UNACKED_FLAGS:-} # extra flags for `scale unacked`, e.g. "-persistent=false"
N_BIG=${N_BIG:-100000}
CONN_SOURCES=${CONN_SOURCES:-$(((N_BIG + 19999) / 20000))}  # 127.1.x.y source addresses
CONN_HEARTBEAT=${CONN_HEARTBEAT:-60s}
CONN_SETTLE=${CONN_SETTLE:-120s}
CONN_DEADLINE=${CONN_DEADLINE:-600s}  # stop opening connections after this (RabbitMQ is slow)
CONN_FLAGS=${CONN_FLAGS:-}
BUSY_QUEUES=${BUSY_QUEUES:-10000}
BUSY_CONNS=${BUSY_CONNS:-1000}
BUSY_PRODUCERS=${BUSY_PRODUCERS:-10}
BUSY_RATE=${BUSY_RATE:-10000}
BUSY_SECS=${BUSY_SECS:-30}
STORM_PARALLEL=${STORM_PARALLEL:-50}
STORM_SECS=${STORM_SECS:-20}
AMQP_PERF_BIN=${AMQP_PERF_BIN:-$HERE/../../target/amqp-perf/release/amqp-perf}
GEN_CPUS=${GEN_CPUS:-0}
FD_LIMIT=${FD_LIMIT:-65536}
TOOL=${SCALE_TOOL:-$OUT/scale}

what=${1:-}
case "$what" in idle | queues | unacked | busy | storm | conns | all) shift ;; *)
  echo "usage: $0 idle|queues|unacked|busy|storm|conns|all TARGET.sh [TARGET.sh ...]" >&2; exit 2 ;;
esac
[ $# -gt 0 ] || { echo "$0: no target scripts given" >&2; exit 2; }

mkdir -p "$OUT"
if [ ! -x "$TOOL" ] || [ "$HERE/main.go" -nt "$TOOL" ] || [ "$HERE/storm.go" -nt "$TOOL" ]; then
  (cd "$HERE" && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=${GOCACHE:-$OUT/go-cache} \
    go build -o "$TOOL" main.go storm.go)
fi

# Both sides need one fd per connection, plus headroom. Raising the hard limit needs
# CAP_SYS_RESOURCE; without it the soft limit goes up to the hard one.
[ "$what" != conns ] || [ "$FD_LIMIT" -gt $((N_BIG + 1000)) ] || FD_LIMIT=$((N_BIG + 1000))
ulimit -Hn "$FD_LIMIT" 2>/dev/null || true
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] || [ "$hard" -ge "$FD_LIMIT" ] || FD_LIMIT=$hard
ulimit -n "$FD_LIMIT"
[ "$FD_LIMIT" -gt $((N_CONN + 100)) ] ||
  echo "$0: warning: fd limit $FD_LIMIT leaves no room for $N_CONN connections" >&2
if [ "$what" = conns ] && [ "$FD_LIMIT" -le $((N_BIG + 200)) ]; then
  echo "$0: the fd limit is $FD_LIMIT (hard); running $((FD_LIMIT - 300)) connections instead of $N_BIG" >&2
  N_BIG=$((FD_LIMIT - 300))
fi

# S7 ten times over through amqp-perf; prints a `result` line from its JSON summary.
busy() { # uri pid
  [ -x "$AMQP_PERF_BIN" ] || { echo "no amqp-perf at $AMQP_PERF_BIN: build it with" \
    "cargo build --release --manifest-path ../shared/amqp-perf/Cargo.toml --target-dir target/amqp-perf" >&2; return 1; }
  local perf_out="$OUT/busy-perf.out"
  nice -n -10 taskset -c "$GEN_CPUS" "$AMQP_PERF_BIN" -H "$1" --monitor-pid "$2" \
    -z $((BUSY_SECS + 5)) --warmup 5 -x "$BUSY_PRODUCERS" -r "$BUSY_RATE" \
    -y "$BUSY_CONNS" -Y $((BUSY_QUEUES / BUSY_CONNS)) --queues "$BUSY_QUEUES" \
    -s 1024 -q 100 -u scale-busy >"$perf_out" || return 1
  tail -n 1 "$perf_out" | python3 -c '
import json, sys
d = json.load(sys.stdin)
b = d.get("broker_proc") or {}
cons, pub = d.get("consume_rate", 0), d.get("publish_rate", 0)
cpu = b.get("cpu_avg_pct", 0)
per = cpu / 100 * 1e6 / cons if cons else float("nan")
rss = int(b.get("rss_max_kb", 0)) // 1024
errors = d.get("errors")
print(f"result check=busy offered={pub:.0f}/s delivered={cons:.0f}/s cpu={cpu}% "
      f"cpu_us_per_delivered={per:.2f} rss_max_mb={rss} errors={errors}")'
}

run_check() { # check target
  local check=$1 target=$2 name pid uri log
  name=$(bash "$target" name)
  log="$OUT/$check-$name.log"
  bash "$target" stop >/dev/null 2>&1 || true
  bash "$target" start
  pid=$(bash "$target" pid)
  uri=$(bash "$target" uri)
  sleep "${START_SETTLE:-5}"
  echo "== $check on $name (pid $pid, $(bash "$target" version 2>/dev/null | tail -1)," \
    "host load $(cut -d' ' -f1-3 /proc/loadavg))" | tee "$log"
  local rc=0
  case "$check" in
    idle) taskset -c "$GEN_CPUS" "$TOOL" idle -uri "$uri" -pid "$pid" -n "$N_CONN" \
            -settle "$IDLE_SETTLE" $IDLE_FLAGS >>"$log.out" 2>>"$log" || rc=$? ;;
    conns) taskset -c "$GEN_CPUS" "$TOOL" idle -uri "$uri" -pid "$pid" -n "$N_BIG" -consume \
            -heartbeat "$CONN_HEARTBEAT" -sources "$CONN_SOURCES" \
            -deadline "$CONN_DEADLINE" -settle "$CONN_SETTLE" -parallel 64 $CONN_FLAGS \
            >>"$log.out" 2>>"$log" || rc=$? ;;
    queues) taskset -c "$GEN_CPUS" "$TOOL" queues -uri "$uri" -pid "$pid" -n "$N_QUEUES" \
            -deadline "$QUEUE_DEADLINE" $QUEUE_FLAGS >>"$log.out" 2>>"$log" || rc=$? ;;
    storm) taskset -c "$GEN_CPUS" "$TOOL" storm -uri "$uri" -pid "$pid" -parallel "$STORM_PARALLEL" \
            -duration "${STORM_SECS}s" >>"$log.out" 2>>"$log" || rc=$? ;;
    busy) busy "$uri" "$pid" >>"$log.out" 2>>"$log" || rc=$? ;;
    unacked) taskset -c "$GEN_CPUS" "$TOOL" unacked -uri "$uri" -pid "$pid" -n "$N_UNACKED" \
            $UNACKED_FLAGS >>"$log.out" 2>>"$log" || rc=$? ;;
  esac
  cat "$log" | tail -n +2
  if [ -s "$log.out" ]; then
    echo "broker=$name $(grep '^result' "$log.out" | tail -1 | cut -d' ' -f2-)" \
      "load_after=$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$OUT/results.txt"
  else
    echo "broker=$name test=$check failed rc=$rc" | tee -a "$OUT/results.txt"
  fi
  rm -f "$log.out"
  bash "$target" stop >/dev/null 2>&1 || true
}

for check in idle queues unacked busy storm conns; do
  [ "$what" = "$check" ] || { [ "$what" = all ] && [ "$check" != unacked ] && [ "$check" != busy ] && [ "$check" != storm ] && [ "$check" != conns ]; } || continue
  for t in "$@"; do run_check "$check" "$t"; done
done

#!/usr/bin/env bash
# Three-node clusters side by side (issue 14, docs/benchmarks.md): Warren (warren.conf's
# cluster_formation) against RabbitMQ 4.0.5 (the trixie chroot's, three nodes joined with
# join_cluster, as ../shared/docs/clustering.md's anchor), quorum queues with 3 replicas,
# 1 KiB persistent messages with confirms:
#   one   1 queue, 1 producer (1,000 in flight), 1 consumer (qos 100, multi-ack every 10)
#   ten   10 queues, 10 producers (100 in flight each), 10 consumers (same)
# All nodes of a cluster pinned to CPU 1, amqp-perf on CPU 0 against the first node;
# 10 s measured after 2 s of warm-up; RSS of every node after the runs. amqp-perf's whole
# output (per-second lines, then the JSON summary) is kept in $OUT/TARGET-SCENARIO-REP.txt.
#   bench/cluster3.sh REPS [WARREN_BIN]     (WARREN_BIN: target/release/warren)
# TARGETS="warren" (or "rabbitmq") runs one side only (for A/B runs of Warren builds);
# SCENARIOS="one" (or "ten") one scenario.
# Needs the chroot of ../shared/amqp-perf/bench/targets/rabbitmq4.sh and amqp-perf built
# (target/amqp-perf/release/amqp-perf). Run it on a quiet machine: nothing else on the CPUs.
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
REPS=${1:-1}
BIN=${2:-$HERE/target/release/warren}
PERF=${PERF:-$HERE/target/amqp-perf/release/amqp-perf}
R4=$HERE/../shared/amqp-perf/bench/targets/rabbitmq4.sh
OUT=${OUT:-/tmp/cluster3}
mkdir -p "$OUT"
COMMON="-z 10 --warmup 2 -s 1024 -f persistent --durable --queue-arg x-queue-type=quorum -q 100 -A 10"
declare -A SCEN=(
  [one]="-x 1 -y 1 -c 1000 -u c3-one"
  [ten]="-x 10 -y 10 --queues 10 -c 100 -u c3-ten"
)

field() { grep -o "\"$1\":[0-9.]*" | head -1 | cut -d: -f2; }
p99() { grep -o '"confirm_latency_us":{[^}]*' | grep -o '"p99":[0-9.]*' | cut -d: -f2; }

report() { # target scenario json rss...
  local t=$1 s=$2 j=$3; shift 3
  echo "$t $s confirmed/s=$(echo "$j" | field confirm_rate) consumed/s=$(echo "$j" | field consume_rate) p99_confirm_us=$(echo "$j" | p99) rss_kb=$*"
}

rmq_env() { echo "RMQ4_PORT=$((5680 + $1)) RMQ4_NODE=q$1@localhost RMQ4_BASE=/tmp/q$1"; }
rmq() { local n=$1; shift; env $(rmq_env "$n") BROKER_CPUS=1 "$R4" "$@"; }

rabbit_up() {
  for n in 1 2 3; do rmq $n start >/dev/null 2>&1 || { echo "rabbitmq q$n did not start" >&2; return 1; }; done
  for n in 2 3; do
    rmq $n ctl stop_app >/dev/null && rmq $n ctl join_cluster q1@localhost >/dev/null && rmq $n ctl start_app >/dev/null ||
      { echo "q$n did not join" >&2; return 1; }
  done
}
rabbit_down() { for n in 1 2 3; do rmq $n stop >/dev/null 2>&1; done; }
rabbit_rss() { for n in 1 2 3; do ps -o rss= -p "$(rmq $n pid)" | tr -d ' '; done | paste -sd/; }

WPIDS=()
warren_up() {
  rm -rf "$OUT"/w[0-9]*
  local secret=$OUT/cookie; echo "warren bench cluster secret" > "$secret"
  for n in 1 2 3; do
    { for m in 1 2 3; do echo "cluster_formation.classic_config.nodes.$m = warren@127.0.0.1:$((26100 + m))"; done
      echo "cluster.node_name = warren@127.0.0.1:$((26100 + n))"
      echo "cluster.secret_file = $secret"; } > "$OUT/w$n.conf"
    nice -n -10 taskset -c 1 "$BIN" --config "$OUT/w$n.conf" --listen 127.0.0.1:$((5690 + n)) \
      --mgmt-listen 127.0.0.1:0 --prometheus-listen 127.0.0.1:0 --data-dir "$OUT/w$n" --log-level warn >"$OUT/w$n.log" 2>&1 &
    WPIDS+=($!)
  done
  for n in 1 2 3; do
    for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$((5690 + n))) 2>/dev/null && break; sleep 0.1; done
  done
}
warren_down() { kill "${WPIDS[@]}" 2>/dev/null; wait "${WPIDS[@]}" 2>/dev/null; WPIDS=(); }
warren_rss() { for p in "${WPIDS[@]}"; do ps -o rss= -p "$p" | tr -d ' '; done | paste -sd/; }

TARGETS=${TARGETS:-rabbitmq warren}
for r in $(seq 1 "$REPS"); do
  for s in ${SCENARIOS:-one ten}; do
    if [[ " $TARGETS " == *" rabbitmq "* ]]; then
      rabbit_up || { rabbit_down; exit 1; }
      taskset -c 0 "$PERF" -H amqp://guest:guest@127.0.0.1:5681/%2f $COMMON ${SCEN[$s]} > "$OUT/rabbitmq4-$s-$r.txt" 2>/dev/null
      j=$(tail -1 "$OUT/rabbitmq4-$s-$r.txt")
      echo "$j" > "$OUT/rabbitmq4-$s-$r.json"
      report rabbitmq4-3n "$s" "$j" "$(rabbit_rss)"
      rabbit_down
    fi
    if [[ " $TARGETS " == *" warren "* ]]; then
      warren_up
      taskset -c 0 "$PERF" -H amqp://guest:guest@127.0.0.1:5691/%2f $COMMON ${SCEN[$s]} > "$OUT/warren-$s-$r.txt" 2>/dev/null
      j=$(tail -1 "$OUT/warren-$s-$r.txt")
      echo "$j" > "$OUT/warren-$s-$r.json"
      report warren-3n "$s" "$j" "$(warren_rss)"
      warren_down
    fi
  done
done

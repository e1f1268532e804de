#!/usr/bin/env bash
# ab-cpu.sh REPS BIN...: broker CPU % at a fixed offered rate (S1's shape at 600k msg/s, S5's at 100k msg/s into the fanout), interleaved
set -u
REPS=$1; shift
PERF=${AMQP_PERF_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/amqp-perf/release/amqp-perf}
T="-z 12 --warmup 2"
declare -A S=(
  [S1r]="$T -x 1 -y 1 -s 16 -a -u perf-s1 -r 600000"
  [S5r]="$T -x 1 -y 10 --queues 10 -u perf-s5 -e perf-fanout -t fanout -s 256 -a -r 100000"
)
for sc in S1r S5r; do
 for r in $(seq 1 $REPS); do
  for bin in "$@"; do
   rm -rf /tmp/ab-data; nice -n -10 taskset -c 1 $bin --listen 127.0.0.1:5699 --mgmt-listen 127.0.0.1:0 --prometheus-listen 127.0.0.1:0 --data-dir /tmp/ab-data --log-level warn >/dev/null 2>&1 &
   pid=$!
   for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/5699) 2>/dev/null && break; sleep 0.1; done
   out=$(nice -n -10 taskset -c 0 $PERF -H amqp://guest:guest@127.0.0.1:5699/%2f --monitor-pid $pid ${S[$sc]} 2>/dev/null | tail -1)
   echo "$out" | python3 -c "
import json,sys
d=json.load(sys.stdin); b=d.get('broker_proc') or {}
print('$sc rep$r $(basename $bin) pub=%.0f cons=%.0f cpu=%s%%' % (d.get('publish_rate',0), d.get('consume_rate',0), b.get('cpu_avg_pct')))"
   kill $pid; wait $pid 2>/dev/null
  done
 done
done

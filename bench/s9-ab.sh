#!/usr/bin/env bash
# s9-ab.sh REPS BIN...: S9 (1 KiB at RATE, default 1,000 msg/s, qos 100) per binary, interleaved; p50/p99/max latency, broker CPU, other load
REPS=$1; shift
PERF=${AMQP_PERF_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/amqp-perf/release/amqp-perf}
for r in $(seq 1 $REPS); do
 for bin in "$@"; do
   rm -rf /tmp/ab-data; nice -n -10 taskset -c 1 $bin --listen 127.0.0.1:5699 --mgmt-listen 127.0.0.1:0 --prometheus-listen 127.0.0.1:0 --data-dir /tmp/ab-data --log-level warn >/dev/null 2>&1 &
   pid=$!
   for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/5699) 2>/dev/null && break; sleep 0.1; done
   out=$(nice -n -10 taskset -c 0 $PERF -H amqp://guest:guest@127.0.0.1:5699/%2f --monitor-pid $pid -z 12 --warmup 2 -x 1 -y 1 -s 1024 -q 100 -r ${RATE:-1000} -u perf-s9 2>/dev/null | tail -1)
   echo "$out" | python3 -c "
import json,sys
d=json.load(sys.stdin); b=d.get('broker_proc') or {}; l=d.get('latency_us',{}); h=d.get('host_cpu') or {}
print('rep$r $(basename $bin) p50=%s p99=%s max=%s cpu=%s%% other=%s' % (l.get('p50'), l.get('p99'), l.get('max'), b.get('cpu_avg_pct'), h.get('other_pct')))"
   kill $pid; wait $pid 2>/dev/null
 done
done

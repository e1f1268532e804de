#!/usr/bin/env bash
# ab.sh REPS "SCENS" BIN...   prints publish/consume rate per run, interleaved
set -u
REPS=$1; SCENS=$2; shift 2
PERF=${AMQP_PERF_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/amqp-perf/release/amqp-perf}
T="-z 10 --warmup 2"
declare -A S=(
  [S1]="$T -x 1 -y 1 -s 16 -a -u perf-s1"
  [S2]="$T -x 1 -y 1 -s 1024 -a -u perf-s2"
  [S3]="$T -x 1 -y 1 -s 1024 -q 100 -A 10 -u perf-s3"
  [S4]="$T -x 1 -y 1 -s 1024 -q 100 -A 10 --durable -f persistent -c 1000 -u perf-s4"
  [S5]="$T -x 1 -y 10 --queues 10 -u perf-s5 -e perf-fanout -t fanout -s 256 -a"
  [S6]="$T -x 1 -y 1 -s 16 -a -u perf-s6 -e perf-topic -t topic -k stock.{i}.nyse --binding-key stock.{i}.* --bindings 100"
)
for sc in $SCENS; do
 for r in $(seq 1 $REPS); do
  for bin in "$@"; do
   rm -rf /tmp/ab-data; nice -n -10 taskset -c 1 $bin --listen 127.0.0.1:5699 --mgmt-listen 127.0.0.1:0 --prometheus-listen 127.0.0.1:0 --data-dir /tmp/ab-data --log-level warn >/dev/null 2>&1 &
   pid=$!
   for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/5699) 2>/dev/null && break; sleep 0.1; done
   out=$(taskset -c 0 $PERF -H amqp://guest:guest@127.0.0.1:5699/%2f ${S[$sc]} 2>/dev/null | tail -1)
   pr=$(echo "$out" | grep -o '"publish_rate":[0-9.]*' | tail -1 | cut -d: -f2)
   cr=$(echo "$out" | grep -o '"consume_rate":[0-9.]*' | tail -1 | cut -d: -f2)
   other=$(ps -eo pcpu,comm --sort=-pcpu | awk 'NR>1 && $2!~/warren|amqp-perf|ps/ {s+=$1} END{print s}')
   echo "$sc rep$r $(basename $bin) pub=$pr cons=$cr other=$other"
   kill $pid; wait $pid 2>/dev/null
  done
 done
done

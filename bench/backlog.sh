#!/usr/bin/env bash
# The big-backlog check of the durability issue: N persistent 1 KiB messages (default
# 10,000,000) published into one durable queue with no consumer, the broker's RSS read, the
# broker stopped and started again, and the backlog drained.
#
#   bench/backlog.sh [N]        (needs ../shared/amqp-perf built; AMQP_PERF_BIN overrides)
#   TARGET=../shared/amqp-perf/bench/targets/rabbitmq4.sh bench/backlog.sh [N]
#
# Uses bench/targets/warren.sh (port 5675, data in /tmp/warren-perf) unless TARGET names
# another target script; for another broker the restart step is skipped (its target script
# starts with an empty data directory). Broker on CPU 1, generator on CPU 0. Needs ~1.1 KB of
# disk per message. SKIP_DRAIN=1 stops another broker after the fill.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
N=${1:-10000000}
PERF=${AMQP_PERF_BIN:-/work/amqp-perf-target/release/amqp-perf}
T=${TARGET:-$HERE/targets/warren.sh}
URI=$($T uri)
Q=backlog
rss() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$($T pid)/status"; }
gen() { taskset -c 0 "$PERF" -H "$URI" -u "$Q" --durable --keep -s 1024 "$@" 2>&1 | tail -1; }
rate() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(int(d.get('$1') or 0))" "$2"; }

$T stop >/dev/null 2>&1 || true
$T start
echo "filling $N messages..."
out=$(gen -x 1 -y 0 -C "$N" -f persistent)
if [ "$($T name)" != warren ]; then
  echo "fill: $(rate publish_rate "$out") msg/s; broker RSS with the backlog: $(rss) MB"
  [ -n "${SKIP_DRAIN:-}" ] && { $T stop; exit 0; }
  out=$(gen -x 0 -y 1 -D "$N" -q 1000 -A 100 --predeclared --monitor-pid "$($T pid)")
  echo "drain: $(rate consume_rate "$out") msg/s; RSS max during drain: $(python3 -c "import json,sys; print(int(json.loads(sys.argv[1])['broker_proc']['rss_max_kb'])//1024)" "$out") MB"
  $T stop
  exit 0
fi
echo "fill: $(rate publish_rate "$out") msg/s; broker RSS with the backlog: $(rss) MB; disk: $(du -sh /tmp/warren-perf/data | cut -f1)"

pid=$($T pid); kill -TERM "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
# Start again on the same data directory (warren.sh start would wipe it).
BIN=${WARREN_BIN:-$HERE/../target/release/warren}
start=$(date +%s.%N)
nice -n -10 taskset -c 1 "$BIN" --listen 127.0.0.1:5675 --mgmt-listen 127.0.0.1:0 \
  --data-dir /tmp/warren-perf/data --log-level warn > /tmp/warren-perf/warren.log 2>&1 &
echo $! > /tmp/warren-perf/warren.pid
until (echo > /dev/tcp/127.0.0.1/5675) 2>/dev/null; do sleep 0.05; done
echo "restart: accepting after $(python3 -c "import time; print(round(time.time()-$start,2))") s; RSS $(rss) MB"

echo "draining..."
out=$(gen -x 0 -y 1 -D "$N" -q 1000 -A 100 --predeclared --monitor-pid "$($T pid)")
echo "drain: $(rate consume_rate "$out") msg/s; RSS max during drain: $(python3 -c "import json,sys; print(int(json.loads(sys.argv[1])['broker_proc']['rss_max_kb'])//1024)" "$out") MB; disk after: $(du -sh /tmp/warren-perf/data | cut -f1)"
$T stop

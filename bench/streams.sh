#!/usr/bin/env bash
# Issue 17's streams benchmark, side by side: N 1 KiB messages published with confirms into a
# stream, then ten consumers each replaying all N from `first`, over RabbitMQ's stream
# protocol and over AMQP 0-9-1, with the broker's RSS sampled throughout.
#
#   bench/streams.sh [N] [TARGET.sh...]
#
# Default N = 1,000,000; default targets: Warren (bench/targets/warren.sh, stream port 5676)
# and RabbitMQ 4.0.5 (../shared/amqp-perf/bench/targets/rabbitmq4.sh with its rabbitmq_stream
# plugin, stream port 5552). Broker on CPU 1, load tools on CPU 0, a fresh broker per
# protocol. Publishing over 0-9-1 uses amqp-perf (AMQP_PERF_BIN), everything else
# tools/stream-perf (STREAM_PERF_BIN; built if missing). The stream protocol is measured with
# two clients: rabbitmq-stream-client (`stream`), and stream-perf's own frames (`stream-raw`:
# nothing decoded, so the client's core is not what sets the pace). PROTOCOLS (default
# "stream stream-raw amqp") picks among them. Results: one JSON line per phase in
# $OUT (default target/streams-bench.jsonl) and a table on stdout.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
N=${1:-1000000}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("$HERE/targets/warren.sh" "$ROOT/../shared/amqp-perf/bench/targets/rabbitmq4.sh")
PERF=${AMQP_PERF_BIN:-$ROOT/target/amqp-perf/release/amqp-perf}
SP=${STREAM_PERF_BIN:-$ROOT/target/release/stream-perf}
OUT=${OUT:-$ROOT/target/streams-bench.jsonl}
CONSUMERS=${CONSUMERS:-10}
[ -x "$SP" ] || (cd "$ROOT" && cargo build --release -p stream-perf)
[ -x "$PERF" ] || { echo "amqp-perf not found at $PERF (build ../shared/amqp-perf, or set AMQP_PERF_BIN)" >&2; exit 1; }
: > "$OUT"

stream_port() { if [ "$($1 name)" = warren ]; then echo "${WARREN_PERF_STREAM_PORT:-5676}"; else echo 5552; fi; }
sp() { taskset -c 0 "$SP" "$@" | tee -a "$OUT"; }
# The broker's CPU seconds so far (user + system).
cpu_s() { awk '{sub(/.*\) /, ""); print ($12 + $13) / 100}' "/proc/$1/stat"; }

for T in "${TARGETS[@]}"; do
  name=$($T name)
  export RMQ4_PLUGINS="rabbitmq_stream" RMQ_PLUGINS="rabbitmq_stream"
  for proto in ${PROTOCOLS:-stream stream-raw amqp}; do
    $T stop >/dev/null 2>&1 || true
    $T start >/dev/null
    pid=$($T pid); uri=$($T uri); port=$(stream_port "$T")
    case $proto in
      stream-raw) client=(--protocol stream --client raw) ;;
      *) client=(--protocol "$proto") ;;
    esac
    common=("${client[@]}" --uri "$uri" --stream-port "$port" --stream "bench-$proto" --monitor-pid "$pid")
    echo "== $name over $proto: publishing $N"
    if [ "$proto" != amqp ]; then
      sp "${common[@]}" --label "$name" publish --count "$N" --size 1024 --window 10000 2>/dev/null
    else
      c0=$(cpu_s "$pid")
      taskset -c 0 "$PERF" -H "$uri" -u "bench-$proto" --durable --keep --queue-arg x-queue-type=stream \
        -x 1 -y 0 -s 1024 -c 1000 -C "$N" --monitor-pid "$pid" 2>/dev/null | tail -1 > "$OUT.tmp"
      c1=$(cpu_s "$pid")
      python3 - "$OUT.tmp" "$name" "$N" "$c0" "$c1" <<'PY' | tee -a "$OUT"
import json, sys
d = json.load(open(sys.argv[1])); name, n = sys.argv[2], int(sys.argv[3])
cpu = float(sys.argv[5]) - float(sys.argv[4])
print(json.dumps({"label": name, "phase": "published", "protocol": "amqp", "messages": n,
    "msg_per_s": round(d["publish_rate"]), "rss_peak_mb": round(d["broker_proc"]["rss_max_kb"] / 1024, 1),
    "broker_cpu_s": round(cpu, 2), "broker_cpu_us_per_msg": round(cpu * 1e6 / n, 1)}))
PY
    fi
    echo "== $name over $proto: $CONSUMERS consumers replaying $N each"
    sp "${common[@]}" --label "$name" replay --count "$N" --consumers "$CONSUMERS" 2>/dev/null
    $T stop >/dev/null 2>&1 || true
  done
done

echo
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| broker | protocol | phase | msg/s | broker CPU µs/msg | broker RSS peak (MB) |")
print("|---|---|---|---:|---:|---:|")
for r in rows:
    print(f"| {r['label']} | {r['protocol']} | {r['phase']} | {r['msg_per_s']:,.0f} | {r.get('broker_cpu_us_per_msg')} | {r.get('rss_peak_mb', 0)} |")
PY

#!/usr/bin/env bash
# Target control script for ../shared/amqp-perf/bench/suite.sh: a Warren broker on port 5675
# with a fresh data directory per start.
#   warren.sh start|stop|pid|uri|name|version
# The stream protocol listens on WARREN_PERF_STREAM_PORT (default 5676).
# BROKER_CPUS (default "1") is the CPU list the broker is pinned to; BROKER_NICE (default -10).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${WARREN_BIN:-$ROOT/target/release/warren}
BASE=${WARREN_PERF_BASE:-/tmp/warren-perf}
PORT=${WARREN_PERF_PORT:-5675}
STREAM_PORT=${WARREN_PERF_STREAM_PORT:-5676}   # RabbitMQ's stream protocol
CPUS=${BROKER_CPUS:-1}
NICE=${BROKER_NICE:--10}

case "${1:-}" in
  name) echo warren ;;
  uri) echo "amqp://guest:guest@127.0.0.1:$PORT/%2f" ;;
  version) "$BIN" --version | awk '{print $2}' ;;
  pid) cat "$BASE/warren.pid" ;;
  start)
    [ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p warren)
    rm -rf "$BASE/data"; mkdir -p "$BASE"
    nice -n "$NICE" taskset -c "$CPUS" "$BIN" --listen "127.0.0.1:$PORT" --mgmt-listen 127.0.0.1:0 \
      --stream-listen "127.0.0.1:$STREAM_PORT" --data-dir "$BASE/data" --log-level warn > "$BASE/warren.log" 2>&1 &
    echo $! > "$BASE/warren.pid"
    for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && exit 0; sleep 0.1; done
    echo "warren did not start; see $BASE/warren.log" >&2; exit 1
    ;;
  stop)
    if [ -s "$BASE/warren.pid" ]; then
      pid=$(cat "$BASE/warren.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$BASE/warren.pid"
    fi
    ;;
  *) echo "usage: $0 start|stop|pid|uri|name|version" >&2; exit 2 ;;
esac

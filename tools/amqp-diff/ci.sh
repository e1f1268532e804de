#!/usr/bin/env bash
# Differential test of Warren against a private RabbitMQ node, for CI.
#
#   tools/amqp-diff/ci.sh [WARREN_BINARY]
#
# Starts RabbitMQ (Debian's rabbitmq-server must already be installed) on a free port with its
# own data dir, starts Warren on another free port, runs amqp-diff for DIFF_DURATION (default
# 120s) from a fixed first seed with tools/amqp-diff/allowlist.txt, stops both, and exits
# non-zero if a divergence that is not in the allow-list was found (its minimal reproduction is
# in $DIFF_OUT, default target/amqp-diff-ci).
#
# Environment: WARREN (binary, if not given as the argument; default target/release/warren),
# AMQP_DIFF (tester binary; default: target/release/amqp-diff, built if needed), DIFF_SEED (default 1),
# DIFF_DURATION (default 120s), DIFF_OUT, RABBITMQ_SBIN (default /usr/lib/rabbitmq/bin).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WARREN=${1:-${WARREN:-$ROOT/target/release/warren}}
SEED=${DIFF_SEED:-1}
DURATION=${DIFF_DURATION:-120s}
OUT=${DIFF_OUT:-$ROOT/target/amqp-diff-ci}
SBIN=${RABBITMQ_SBIN:-/usr/lib/rabbitmq/bin}

[ -x "$WARREN" ] || { echo "ci.sh: no Warren binary at $WARREN (build it, or pass its path)" >&2; exit 2; }
[ -x "$SBIN/rabbitmq-server" ] || { echo "ci.sh: rabbitmq-server not found in $SBIN" >&2; exit 2; }

if [ -z "${AMQP_DIFF:-}" ]; then
  # A no-op after CI's `cargo build --release --workspace`.
  (cd "$ROOT" && cargo build --quiet --release -p amqp-diff)
  AMQP_DIFF=${CARGO_TARGET_DIR:-$ROOT/target}/release/amqp-diff
fi

# A port nobody listens on (away from 5672-5674 and from the dist ports, port + 20000).
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
       ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 20000))") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  echo "ci.sh: no free port" >&2
  exit 2
}

TMP=$(mktemp -d /tmp/amqp-diff-ci.XXXXXX)
RMQ_PORT=$(free_port)
WARREN_PORT=$(free_port)
while [ "$WARREN_PORT" = "$RMQ_PORT" ]; do WARREN_PORT=$(free_port); done
NODE="amqpdiff$$@localhost"
CTL_MIN=$((35800 + RANDOM % 2000))

export HOME=${HOME:-/root}
export RABBITMQ_NODENAME=$NODE
export RABBITMQ_NODE_PORT=$RMQ_PORT
export RABBITMQ_DIST_PORT=$((RMQ_PORT + 20000))
export RABBITMQ_MNESIA_BASE=$TMP/rmq/mnesia
export RABBITMQ_LOG_BASE=$TMP/rmq/log
export RABBITMQ_ENABLED_PLUGINS_FILE=$TMP/rmq/enabled_plugins
export RABBITMQ_CONFIG_FILE=$TMP/rmq/rabbitmq.conf
export RABBITMQ_PID_FILE=$TMP/rmq/node.pid
export RABBITMQ_CTL_DIST_PORT_MIN=$CTL_MIN
export RABBITMQ_CTL_DIST_PORT_MAX=$((CTL_MIN + 10))
mkdir -p "$TMP/rmq/log" "$TMP/warren"
echo '[].' > "$RABBITMQ_ENABLED_PLUGINS_FILE"
printf 'listeners.tcp.default = %s\n' "$RMQ_PORT" > "$RABBITMQ_CONFIG_FILE"

ctl() { "$SBIN/rabbitmqctl" -n "$NODE" "$@"; }
WARREN_PID=
cleanup() {
  local rc=$?
  if [ -n "$WARREN_PID" ]; then kill "$WARREN_PID" 2>/dev/null || true; wait "$WARREN_PID" 2>/dev/null || true; fi
  if [ -s "$RABBITMQ_PID_FILE" ]; then
    local pid
    pid=$(cat "$RABBITMQ_PID_FILE")
    ctl stop >/dev/null 2>&1 || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill "$pid" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ -d "$TMP/rmq/log" ]; then
    echo "ci.sh: logs kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT

echo "ci.sh: RabbitMQ ($NODE) on port $RMQ_PORT, Warren on port $WARREN_PORT" >&2
(cd "$TMP/rmq" && "$SBIN/rabbitmq-server" -detached)
for _ in $(seq 1 120); do
  [ -s "$RABBITMQ_PID_FILE" ] && ctl await_startup >/dev/null 2>&1 && break
  sleep 0.5
done
ctl await_startup >/dev/null
echo "ci.sh: RabbitMQ $(ctl version 2>/dev/null || echo '?') is up" >&2

"$WARREN" --listen "127.0.0.1:$WARREN_PORT" --mgmt-listen 127.0.0.1:0 --data-dir "$TMP/warren" \
  > "$TMP/warren.log" 2>&1 &
WARREN_PID=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$WARREN_PORT") 2>/dev/null && break
  kill -0 "$WARREN_PID" 2>/dev/null || { cat "$TMP/warren.log" >&2; exit 2; }
  sleep 0.1
done

mkdir -p "$OUT"
set +e
"$AMQP_DIFF" run \
  --a "amqp://guest:guest@127.0.0.1:$RMQ_PORT/%2f" \
  --b "amqp://guest:guest@127.0.0.1:$WARREN_PORT/%2f" \
  --seed "$SEED" --duration "$DURATION" \
  --allowlist "$ROOT/tools/amqp-diff/allowlist.txt" \
  --out "$OUT"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  echo "ci.sh: amqp-diff found divergences not in the allow-list (exit $rc); reproductions in $OUT" >&2
fi
exit "$rc"

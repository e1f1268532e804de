#!/usr/bin/env bash
# Python's rstream (RabbitMQ's stream protocol client) smoke test against a running broker's
# stream port, in the style of ../shared/conformance: a result line per check in
# $CONFORMANCE_RESULTS/rstream.txt, and "N passed, N failed" as the last line.
# rstream is installed into a venv under $CONFORMANCE_CACHE (pip, PyPI) if missing.
# env: STREAM_HOST (127.0.0.1), STREAM_PORT (5552), STREAM_USER/STREAM_PASS (guest),
#      CONFORMANCE_RESULTS, CONFORMANCE_CACHE.
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
: "${CONFORMANCE_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/warren-conformance}"
: "${CONFORMANCE_RESULTS:=/tmp/conformance-results}"
mkdir -p "$CONFORMANCE_RESULTS" "$CONFORMANCE_CACHE"
RESULTS="$CONFORMANCE_RESULTS/rstream.txt"
RAW_LOG="$CONFORMANCE_RESULTS/rstream.log"
: > "$RESULTS"; : > "$RAW_LOG"
VENV="$CONFORMANCE_CACHE/rstream-venv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import rstream' 2>/dev/null; then
  if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q "rstream==1.1.1"; } >>"$RAW_LOG" 2>&1; then
    echo "[rstream] cannot install rstream (no network or pip?), see $RAW_LOG"
    echo "0 passed, 0 failed"; exit 2
  fi
fi
echo "[rstream] broker: ${STREAM_HOST:-127.0.0.1}:${STREAM_PORT:-5552}; results -> $RESULTS"
timeout -k 5 300 "$VENV/bin/python" "$HERE/rstream_smoke.py" > "$RESULTS.tmp" 2>>"$RAW_LOG"
sort "$RESULTS.tmp" > "$RESULTS"; rm -f "$RESULTS.tmp"
p=$(awk -F'\t' '$2=="pass"' "$RESULTS" | wc -l)
f=$(awk -F'\t' '$2=="fail"' "$RESULTS" | wc -l)
if [ "$f" -gt 0 ]; then echo "[rstream] failed:"; awk -F'\t' '$2=="fail"{print "  " $1}' "$RESULTS"; tail -30 "$RAW_LOG"; fi
echo "$p passed, $f failed"

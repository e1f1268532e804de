#!/usr/bin/env bash
# Warren for the scale checks: bench/targets/warren.sh on port 5690 with its own data dir, so
# it never meets the perf suite's broker (5675). Same interface: start|stop|pid|uri|name|version.
HERE=$(cd "$(dirname "$0")" && pwd)
export WARREN_PERF_PORT=${WARREN_SCALE_PORT:-5690}
export WARREN_PERF_BASE=${WARREN_SCALE_BASE:-/tmp/warren-scale}
exec bash "$HERE/../targets/warren.sh" "$@"

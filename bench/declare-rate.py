#!/usr/bin/env python3
"""declare-rate.py URI N [PRE]: how fast one client declares, binds and deletes durable queues,
one at a time (each waits for its answer, as a client does without nowait).

With PRE (default 0), PRE durable queues are declared first (untimed) so the broker already
holds that many definitions; then N durable queues are declared, each bound to amq.direct,
and deleted, timed per phase. Prints one JSON line: the rates per second and the p50/p99 of
one answer in milliseconds. Uses pika (Debian's python3-pika).

Run it against each broker in turn on a quiet machine, e.g.:
    bench/targets/warren.sh start; bench/declare-rate.py "$(bench/targets/warren.sh uri)" 2000 10000
"""
import json
import sys
import time

import pika


def timed(n, f):
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        f(i)
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    lat.sort()
    return {
        "per_s": round(n / total, 1),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 3),
        "p99_ms": round(lat[min(len(lat) - 1, len(lat) * 99 // 100)] * 1000, 3),
    }


def main():
    uri, n = sys.argv[1], int(sys.argv[2])
    pre = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    conn = pika.BlockingConnection(pika.URLParameters(uri))
    ch = conn.channel()
    for i in range(pre):
        ch.queue_declare(f"dr-pre-{i}", durable=True)
    out = {"n": n, "pre": pre}
    out["declare"] = timed(n, lambda i: ch.queue_declare(f"dr-{i}", durable=True))
    out["bind"] = timed(n, lambda i: ch.queue_bind(f"dr-{i}", "amq.direct", routing_key=f"k{i}"))
    out["delete"] = timed(n, lambda i: ch.queue_delete(f"dr-{i}"))
    for i in range(pre):
        ch.queue_delete(f"dr-pre-{i}")
    conn.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

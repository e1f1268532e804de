#!/usr/bin/env python3
# Usage: python3 tests/hand/half_open.py 10000 <amqp port of a running warren> <handshake timeout s>
# (start warren with handshake_timeout = 5000 in its config file for a quick run).
# By hand: 10,000 connections that stop half-way through the AMQP handshake against the real
# warren binary, while a pika client measures publish->deliver round trips. Separate
# processes, so neither side needs more than 10,000 descriptors.
import socket, time, sys, threading, statistics, pika, select
N = int(sys.argv[1]); PORT = int(sys.argv[2]); TIMEOUT = float(sys.argv[3])
HDR = b"AMQP\x00\x00\x09\x01"
conn = pika.BlockingConnection(pika.ConnectionParameters(port=PORT))
ch = conn.channel(); ch.queue_declare("probe")
def rtts(n):
    out = []
    for i in range(n):
        t = time.perf_counter()
        ch.basic_publish("", "probe", b"x%d" % i)
        while True:
            m = ch.basic_get("probe", auto_ack=True)
            if m[0] is not None: break
        out.append(time.perf_counter() - t)
    return out
def p99(v): v = sorted(v); return v[min(len(v)-1, len(v)*99//100)]
quiet = rtts(500)
socks = []
t0 = time.time()
for i in range(N):
    s = socket.create_connection(("127.0.0.1", PORT))
    if i % 3 >= 1: s.sendall(HDR)
    socks.append(s)
opened = time.time() - t0
attacked = rtts(500)
# every one closed by the server after the handshake timeout
deadline = time.time() + TIMEOUT + 60
poll = select.poll()
byfd = {}
for s in socks:
    poll.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
    byfd[s.fileno()] = s
open_ = set(byfd)
while open_ and time.time() < deadline:
    for fd, ev in poll.poll(500):
        try: d = byfd[fd].recv(4096)
        except OSError: d = b""
        if d == b"":
            open_.discard(fd); poll.unregister(fd)
after = rtts(200)
print(f"{N} half-open connections opened in {opened:.1f}s; still open after timeout+60s: {len(open_)}")
print(f"p99 quiet {p99(quiet)*1000:.2f} ms, while {N} half-open {p99(attacked)*1000:.2f} ms, after {p99(after)*1000:.2f} ms")

"""Smoke test of Python's rstream (RabbitMQ's stream protocol client) against Warren.

Each check prints `name<TAB>pass|fail` on stdout (the conformance result format); details go
to stderr. env: STREAM_HOST, STREAM_PORT, STREAM_USER, STREAM_PASS, STREAM_VHOST.
"""
import asyncio
import os
import sys
import time
import traceback
import uuid

from rstream import (
    AMQPMessage,
    CompressionType,
    Consumer,
    ConsumerOffsetSpecification,
    OffsetType,
    Producer,
    amqp_decoder,
)
from rstream.exceptions import StreamDoesNotExist

HOST = os.environ.get("STREAM_HOST", "127.0.0.1")
PORT = int(os.environ.get("STREAM_PORT", "5552"))
USER = os.environ.get("STREAM_USER", "guest")
PASS = os.environ.get("STREAM_PASS", "guest")
VHOST = os.environ.get("STREAM_VHOST", "/")
KW = dict(host=HOST, port=PORT, username=USER, password=PASS, vhost=VHOST)


async def consume(stream, spec, n, decoder=None, name=None, timeout=10):
    """Reads n messages from spec; returns [(offset, message)]."""
    got = []
    done = asyncio.Event()

    async def on_message(msg, ctx):
        got.append((ctx.offset, msg))
        if len(got) >= n:
            done.set()

    async with Consumer(**KW) as c:
        await c.start()
        await c.subscribe(stream, on_message, offset_specification=spec, decoder=decoder,
                          subscriber_name=name)
        await asyncio.wait_for(done.wait(), timeout)
    return got[:n]


async def check_publish_confirm_and_first(stream):
    confirmed = []

    async def on_confirm(c):
        if c.is_confirmed:
            confirmed.append(c.message_id)

    async with Producer(**KW) as p:
        await p.create_stream(stream, exists_ok=True)
        for i in range(20):
            await p.send(stream, AMQPMessage(body=f"m{i}".encode()), on_publish_confirm=on_confirm)
        await p.send_batch(stream, [AMQPMessage(body=f"b{i}".encode()) for i in range(5)])
        await p.send_wait(stream, AMQPMessage(body=b"last"))
        for _ in range(100):
            if len(confirmed) == 20:
                break
            await asyncio.sleep(0.05)
    got = await consume(stream, ConsumerOffsetSpecification(OffsetType.FIRST), 26, decoder=amqp_decoder)
    bodies = [bytes(m.body) if not isinstance(m.body, list) else b"".join(m.body) for _, m in got]
    assert [o for o, _ in got] == list(range(26)), [o for o, _ in got]
    # send() buffers, send_batch() and send_wait() do not: compare without the order.
    want = {f"m{i}".encode() for i in range(20)} | {f"b{i}".encode() for i in range(5)} | {b"last"}
    assert set(bodies) == want and len(bodies) == 26, bodies
    assert len(confirmed) == 20, confirmed


async def check_offset_and_timestamp(stream):
    async with Producer(**KW) as p:
        await p.create_stream(stream, exists_ok=True)
        await p.send_batch(stream, [AMQPMessage(body=f"a{i}".encode()) for i in range(10)])
        await p.send_wait(stream, AMQPMessage(body=b"a-end"))
        await asyncio.sleep(0.1)
        between = int(time.time() * 1000)
        await asyncio.sleep(0.1)
        await p.send_wait(stream, AMQPMessage(body=b"after"))
    got = await consume(stream, ConsumerOffsetSpecification(OffsetType.OFFSET, 5), 2, decoder=amqp_decoder)
    assert [o for o, _ in got] == [5, 6], got
    got = await consume(stream, ConsumerOffsetSpecification(OffsetType.TIMESTAMP, between), 1, decoder=amqp_decoder)
    assert got[0][0] == 11, got


async def check_raw_bytes_round_trip(stream):
    # rstream publishes plain bytes as they are (no AMQP 1.0 encoding): they come back as they went.
    async with Producer(**KW) as p:
        await p.create_stream(stream, exists_ok=True)
        await p.send_wait(stream, b"\x00raw bytes\xff")
    got = await consume(stream, ConsumerOffsetSpecification(OffsetType.FIRST), 1)
    assert got[0][1] == b"\x00raw bytes\xff", got


async def check_stored_offset(stream):
    async with Producer(**KW) as p:
        await p.create_stream(stream, exists_ok=True)
        await p.send_wait(stream, AMQPMessage(body=b"x"))
    async with Consumer(**KW) as c:
        await c.start()
        await c.store_offset(stream, "py-reader", 42)
        for _ in range(50):
            try:
                if await c.query_offset(stream, "py-reader") == 42:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("stored offset not read back")


async def check_deduplication(stream):
    # Publishing ids 1..5, then 3..7 again under the same publisher name: 3..5 are dropped.
    for ids in (range(1, 6), range(3, 8)):
        async with Producer(**KW) as p:
            await p.create_stream(stream, exists_ok=True)
            for i in ids:
                m = AMQPMessage(body=f"d{i}".encode())
                m.publishing_id = i
                await p.send_wait(stream, m, publisher_name="py-writer")
    got = await consume(stream, ConsumerOffsetSpecification(OffsetType.FIRST), 7, decoder=amqp_decoder)
    bodies = [b"".join(m.body) if isinstance(m.body, list) else bytes(m.body) for _, m in got]
    assert bodies == [f"d{i}".encode() for i in range(1, 8)], bodies


async def check_sub_entry_batch(stream):
    confirmed = asyncio.Event()

    async def on_confirm(c):
        confirmed.set()

    async with Producer(**KW) as p:
        await p.create_stream(stream, exists_ok=True)
        await p.send_sub_entry(stream, [AMQPMessage(body=f"s{i}".encode()) for i in range(4)],
                               compression_type=CompressionType.No, on_publish_confirm=on_confirm)
        await asyncio.wait_for(confirmed.wait(), 10)
    got = await consume(stream, ConsumerOffsetSpecification(OffsetType.FIRST), 4, decoder=amqp_decoder)
    assert [o for o, _ in got] == [0, 1, 2, 3], got


async def check_gzip_sub_entry_batch(stream):
    confirmed = asyncio.Event()

    async def on_confirm(c):
        if c.is_confirmed:
            confirmed.set()

    async with Producer(**KW) as p:
        await p.create_stream(stream, exists_ok=True)
        await p.send_sub_entry(stream, [AMQPMessage(body=f"z{i}".encode() * 50) for i in range(5)],
                               compression_type=CompressionType.Gzip, on_publish_confirm=on_confirm)
        await asyncio.wait_for(confirmed.wait(), 10)
        await p.send_wait(stream, AMQPMessage(body=b"after"))
    got = await consume(stream, ConsumerOffsetSpecification(OffsetType.FIRST), 6, decoder=amqp_decoder)
    bodies = [b"".join(m.body) if isinstance(m.body, list) else bytes(m.body) for _, m in got]
    assert [o for o, _ in got] == list(range(6)), got
    assert bodies == [f"z{i}".encode() * 50 for i in range(5)] + [b"after"], bodies


async def check_missing_stream(stream):
    async with Producer(**KW) as p:
        try:
            await p.delete_stream(stream + "-missing", missing_ok=False)
        except StreamDoesNotExist:
            return
    raise AssertionError("deleting a missing stream did not fail with StreamDoesNotExist")


async def check_delete(stream):
    async with Producer(**KW) as p:
        await p.create_stream(stream, exists_ok=True)
        assert await p.stream_exists(stream)
        await p.delete_stream(stream)
        assert not await p.stream_exists(stream)


CHECKS = [
    check_publish_confirm_and_first,
    check_offset_and_timestamp,
    check_raw_bytes_round_trip,
    check_stored_offset,
    check_deduplication,
    check_sub_entry_batch,
    check_gzip_sub_entry_batch,
    check_missing_stream,
    check_delete,
]


async def main():
    failed = 0
    for check in CHECKS:
        name = check.__name__[len("check_"):]
        stream = f"rstream-{name}-{uuid.uuid4().hex[:8]}"
        try:
            await asyncio.wait_for(check(stream), 30)
            print(f"{name}\tpass", flush=True)
        except Exception:
            failed += 1
            print(f"{name}\tfail", flush=True)
            traceback.print_exc()
    return failed


if __name__ == "__main__":
    sys.exit(1 if asyncio.run(main()) else 0)

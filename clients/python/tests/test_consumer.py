"""The asyncio consumer against a running outboxd: order and dedupe,
resume with since and epoch, topics, revocation, expiry, a refused token,
in-band refresh."""
import asyncio
import time

import psycopg2
import pytest

from outboxd import disconnect, emit
from outboxd.consumer import Consumer, Revoked, TokenRefused, token_exp
from outboxd.tokens import mint_token


def commit(database_url, fn):
    conn = psycopg2.connect(database_url)
    try:
        with conn:
            return fn(conn)
    finally:
        conn.close()


def emit_n(database_url, user, n, topic="task_event"):
    return commit(database_url, lambda c: [emit(c, topic, {"n": i}, users=[user]) for i in range(n)])


async def take(consumer, n, timeout=15):
    got = []

    async def run():
        async for ev in consumer:
            got.append(ev)
            if len(got) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return got


def welcomed(consumer):
    """An asyncio.Event set at the consumer's first open."""
    opened = asyncio.Event()
    previous = consumer.on_state

    def on_state(state, info):
        if previous:
            previous(state, info)
        if state == "open":
            opened.set()

    consumer.on_state = on_state
    return opened


def test_events_in_order_then_resume_with_since(outboxd_url, secret, database_url):
    async def main():
        tok = mint_token(secret, "py-order", [])
        c = Consumer(outboxd_url, tok, since=None)
        opened = welcomed(c)
        task = asyncio.ensure_future(take(c, 5))
        await asyncio.wait_for(opened.wait(), 10)
        emit_n(database_url, "py-order", 5)
        got = await task
        seqs = [e["seq"] for e in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        assert [e["data"]["n"] for e in got] == list(range(5))
        assert all(e["type"] == "task_event" and e["id"] > 0 and e["timestamp"] for e in got)
        # A new consumer from the third event's seq gets exactly the last two.
        again = Consumer(outboxd_url, tok, since=seqs[2], epoch=c.epoch)
        rest = await take(again, 2)
        assert [e["seq"] for e in rest] == seqs[3:]
    asyncio.run(main())


def test_topics_filter(outboxd_url, secret, database_url):
    async def main():
        c = Consumer(outboxd_url, mint_token(secret, "py-topics", []), since=None, topics=["efectivo_event"])
        opened = welcomed(c)
        task = asyncio.ensure_future(take(c, 1))
        await asyncio.wait_for(opened.wait(), 10)
        emit_n(database_url, "py-topics", 3, topic="task_event")
        emit_n(database_url, "py-topics", 1, topic="efectivo_event")
        got = await task
        assert [e["type"] for e in got] == ["efectivo_event"]
    asyncio.run(main())


def test_another_epoch_asks_for_a_resync(outboxd_url, secret, database_url):
    async def main():
        resyncs = []
        c = Consumer(outboxd_url, mint_token(secret, "py-epoch", []), since=1, epoch="not-this-history",
                     on_resync=lambda oldest, reason: resyncs.append(reason))
        task = asyncio.ensure_future(take(c, 1))
        opened = welcomed(c)
        await asyncio.wait_for(opened.wait(), 10)
        emit_n(database_url, "py-epoch", 1)
        got = await task
        assert resyncs == ["epoch"] and got[0]["data"] == {"n": 0}  # live from the head, nothing replayed
    asyncio.run(main())


def test_revoked_with_no_new_token_raises(outboxd_url, secret, database_url):
    async def main():
        tokens = [mint_token(secret, "py-revoked", [])]
        c = Consumer(outboxd_url, lambda: tokens.pop() if tokens else None, since=None)
        opened = welcomed(c)
        task = asyncio.ensure_future(take(c, 100))
        await asyncio.wait_for(opened.wait(), 10)
        emit_n(database_url, "py-revoked", 2)
        commit(database_url, lambda conn: disconnect(conn, ["py-revoked"], "role changed"))
        with pytest.raises(Revoked, match="role changed"):
            await task
        assert c.last_seq is not None and c.last_seq >= 2  # every event before the cut arrived first
    asyncio.run(main())


def test_a_static_token_that_expires_raises(outboxd_url, secret):
    async def main():
        c = Consumer(outboxd_url, mint_token(secret, "py-exp", [], ttl=1), refresh_before=0)
        with pytest.raises(TokenRefused, match="4001"):
            await take(c, 1, timeout=20)
    asyncio.run(main())


def test_a_refused_token_raises(outboxd_url):
    async def main():
        c = Consumer(outboxd_url, "not-a-jwt")
        with pytest.raises(TokenRefused, match="401"):
            await take(c, 1)
    asyncio.run(main())


def test_refresh_in_band_keeps_the_session(outboxd_url, secret, database_url):
    async def main():
        opens = []
        c = Consumer(outboxd_url, lambda: mint_token(secret, "py-refresh", [], ttl=3), refresh_before=2,
                     on_state=lambda s, info: opens.append(s) if s == "open" else None)
        first = mint_token(secret, "py-refresh", [], ttl=3)
        task = asyncio.ensure_future(take(c, 1, timeout=30))
        while not opens:
            await asyncio.sleep(0.05)
        # Past the first token's exp (the server would close with 4001 then):
        # the session is still the first one.
        while time.time() < token_exp(first) + 1.5:
            await asyncio.sleep(0.1)
        emit_n(database_url, "py-refresh", 1)
        got = await task
        assert got[0]["data"] == {"n": 0} and opens == ["open"]
    asyncio.run(main())


def test_bad_arguments():
    with pytest.raises(ValueError, match="ws://"):
        Consumer("http://127.0.0.1/ws/connect", "t")
    with pytest.raises(ValueError, match="since"):
        Consumer("ws://127.0.0.1/ws/connect", "t", since=-1)

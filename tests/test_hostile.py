"""Hostile input and overload, each provoked for real against a running replica.

Every request with a reply subject gets exactly one reply (counted per request on our own
inbox, not trusted to the client library); no input stalls the replica, makes it answer
or log more than a bounded excerpt, or makes it publish where it should not.
"""

from __future__ import annotations

import logging
import time

import anyio
import msgspec
import pytest
from processes import actor_serve
from support import Inbox, Probe, body, request_on, srv_stats

from actorbus import (
    Client,
    DeadlineExceeded,
    HandlerError,
    Settings,
    Unavailable,
    serve,
)
from actorbus.bus import MSGPACK, Keypair, Keystore, connect, sign_request, verify_reply
from actorbus.bus.subjects import call_subject, nonce_subject
from actorbus.bus.wire import NonceNote, sign_announcement
from actorbus.cli import EXIT_CODES


def unsigned(key: str = "") -> dict[str, str]:
    """Headers shaped like a request's, with a signature that cannot verify."""
    return {
        "Actor-Key": key or Keypair.generate().address,
        "Actor-Time": str(int(time.time() * 1000)),
        "Actor-Nonce": "00" * 16,
        "Actor-Signature": "00" * 64,
    }


def actor_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == f"actorbus.actor.{name}"]


async def test_a_huge_unsigned_key_is_refused_at_once(settings: Settings, name: str) -> None:
    """Decoding an address is quadratic in its length: a 200,000-character Actor-Key (the
    header limit raised so it reaches that check) once blocked the loop for ~13 s."""
    roomy = msgspec.structs.replace(settings, max_headers=1 << 20)
    async with (
        serve(Probe(), name=name, settings=roomy),
        Client(settings=settings) as client,
        connect(settings.url) as nc,
    ):
        subject = call_subject(name, "forward")
        started = time.monotonic()
        msg = await nc.request(subject, b"", headers=unsigned("5" * 200_000), timeout=5)
        assert time.monotonic() - started < 2.0  # milliseconds here; ~13 s when quadratic
        meta = verify_reply(msg.headers, msg.data, "00" * 16)
        assert (meta.status, meta.error) == (401, "malformed header Actor-Key")
        assert len(msg.data) < 200
        started = time.monotonic()
        assert await client.call(name, "forward", "still here") == "still here"
        assert time.monotonic() - started < 1.0
    async with serve(Probe(), name=name, settings=settings), connect(settings.url) as nc:
        msg = await nc.request(subject, b"", headers=unsigned("5" * 20_000), timeout=5)
        assert (msg.headers or {})["Actor-Status"] == "413"  # default header limit: 8 KiB
        assert "headers are" in (msg.headers or {})["Actor-Error"]


@pytest.mark.parametrize(
    ("content_type", "argument", "quoted"),
    [
        (None, "k" * 700_000, "'kkkk"),
        # Once: no reply at all (the name, quoted in full, made the reply too large to send).
        (MSGPACK, "\x01\x1b[31m" * 50_000, "'\\x01\\x1b[31m"),
    ],
    ids=["json-700k-name", "msgpack-control-bytes"],
)
async def test_a_huge_argument_name_is_quoted_as_a_short_excerpt(
    settings: Settings,
    name: str,
    caplog: pytest.LogCaptureFixture,
    content_type: str | None,
    argument: str,
    quoted: str,
) -> None:
    caplog.set_level(logging.INFO)
    codec = msgspec.msgpack if content_type else msgspec.json
    payload = codec.encode({"kwargs": {argument: 1}})
    async with serve(Probe(), name=name, settings=settings), connect(settings.url) as nc:
        subject = call_subject(name, "forward")
        reply = nc.new_inbox()
        headers = sign_request(
            Keypair.generate(),
            subject,
            reply,
            payload,
            content_type=content_type or "application/json",
        )
        msg = await request_on(nc, subject, payload, headers, reply, 5)
        meta = verify_reply(msg.headers, msg.data, headers["Actor-Nonce"])
        assert meta.status == 400
        assert meta.error.isprintable() and len(meta.error) <= 201
        assert len(msg.data) < 300
        error = codec.decode(msg.data)["error"]
        assert error.isprintable() and quoted in error
        assert f"({len(argument)} characters)" in error
    lines = actor_lines(caplog, name)
    assert lines and all(r.getMessage().isprintable() for r in lines)
    assert sum(len(r.getMessage()) for r in lines) < 1000


async def test_requests_without_a_reply_subject_are_dropped_quietly(
    settings: Settings, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody can hear the answer, so they are never verified, only counted."""
    caplog.set_level(logging.INFO)
    async with (
        serve(Probe(), name=name, settings=settings),
        Client(settings=settings) as client,
        connect(settings.url) as nc,
    ):
        for _ in range(4_000):
            await nc.publish(call_subject(name, "forward"), b"x", headers=unsigned())
        await nc.flush()

        for _ in range(100):  # the replica reads them in its own time: poll its stats
            if (await srv_stats(nc, name))["forward"]["data"]["dropped"] == 4_000:
                break
            await anyio.sleep(0.05)
        else:
            pytest.fail("the dropped requests were not all counted within 5 s")
        assert await client.call(name, "forward", "ok") == "ok"
    assert not actor_lines(caplog, name)
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.name == "actorbus.policy" for r in noisy)  # "no policy yet", once


async def test_a_flood_of_bad_signatures_is_answered_counted_and_summarized(
    settings: Settings, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve(Probe(), name=name, settings=settings), connect(settings.url) as nc:
        async with Inbox(nc) as inbox:
            for _ in range(3_000):
                await inbox.send(call_subject(name, "forward"), b"{}", unsigned())
            await inbox.wait()
            statuses = inbox.statuses()  # exactly one reply each
        assert set(statuses) <= {401, 503}  # 503: shed, unverified, when the reader lags
        stats = (await srv_stats(nc, name))["forward"]
        assert stats["num_requests"] == 3_000
        assert stats["data"]["status"] == {str(s): statuses.count(s) for s in sorted(set(statuses))}
    lines = [r.getMessage() for r in actor_lines(caplog, name)]
    refusals = [line for line in lines if "-> 401" in line or "-> 503" in line]
    assert 0 < len(refusals) <= 10  # the first few per status, not 3,000
    summary = [line for line in lines if "held back" in line]
    assert summary and "401 x" in summary[-1]


async def burst(
    settings: Settings, name: str, sleep: float, timeouts: list[float], wait: float
) -> list[int]:
    """Send one signed call to ``slow(sleep)`` per entry of ``timeouts`` (its Actor-Timeout)
    at once; returns each one's status, having checked each got exactly one reply and
    that the replica answers a fresh call within a second afterwards."""
    key = Keypair.generate()
    async with (
        serve(Probe(), name=name, settings=settings),
        Client(settings=settings) as client,
        connect(settings.url) as nc,
        Inbox(nc) as inbox,
    ):
        subject = call_subject(name, "slow")
        payload = body(sleep)
        for timeout in timeouts:
            await inbox.send(
                subject,
                payload,
                lambda reply, t=timeout: sign_request(key, subject, reply, payload, timeout=t),
            )
        await inbox.wait(timeout=wait)
        statuses = inbox.statuses()
        started = time.monotonic()
        assert await client.call(name, "forward", "after") == "after"
        assert time.monotonic() - started < 1.0
    return statuses


async def test_calls_expiring_as_they_are_handed_to_a_worker_are_answered(
    settings: Settings, name: str
) -> None:
    """Half of 2,000 quick calls give themselves 1 ms, so many expire between the queue
    waking an idle worker and that worker taking the call. Once, the deadline sweeper took
    such a call, then crashed on the queue's count (and the workers on an empty queue):
    the replica went down and every call it held went unanswered."""
    statuses = await burst(settings, name, 0.01, [0.001, 0.05] * 1_000, wait=10)
    assert set(statuses) <= {200, 408, 503}


async def test_every_call_of_a_burst_is_answered_once(settings: Settings, name: str) -> None:
    """1,500 concurrent calls to a 0.4 s handler that may take 1.5 s each: 64 run at once,
    1,024 wait, the rest are refused, and each gets exactly one answer."""
    statuses = await burst(settings, name, 0.4, [1.5] * 1_500, wait=15)
    assert set(statuses) <= {200, 408, 503}
    assert statuses.count(200) >= 64 and statuses.count(503) > 0


async def test_replies_go_only_to_inboxes(settings: Settings, name: str) -> None:
    key = Keypair.generate()
    victim = f"actor.{name}v.add_user"
    async with (
        serve(Probe(), name=name, settings=settings),
        connect(settings.url) as nc,
    ):
        spy = await nc.subscribe(victim)
        subject = call_subject(name, "forward")
        payload = body("hi")
        await nc.publish(
            subject, payload, reply=victim, headers=sign_request(key, subject, victim, payload)
        )
        await nc.publish(f"$SRV.INFO.{name}", b"", reply=victim)  # the service API too
        await nc.flush()
        with pytest.raises(TimeoutError):
            await spy.next_msg(timeout=0.5)
        assert (await srv_stats(nc, name))["forward"]["data"]["dropped"] == 1


async def test_a_result_over_the_max_payload_is_a_500(settings: Settings, name: str) -> None:
    """Once, publishing it raised in the worker and took the replica down."""
    async with serve(Probe(), name=name, settings=settings), Client(settings=settings) as client:
        limit = client.nc.max_payload
        with pytest.raises(HandlerError, match="over the reply limit") as info:
            await client.call(name, "big", limit)
        assert info.value.error_id
        assert len(await client.call(name, "big", limit - 2048)) == limit - 2048
        assert await client.call(name, "forward", "alive") == "alive"


async def test_calls_a_stopping_replica_cannot_finish_get_a_503(
    settings: Settings, name: str
) -> None:
    quick = msgspec.structs.replace(settings, drain_timeout=0.3)
    key = Keypair.generate()
    async with connect(settings.url) as nc, Inbox(nc) as inbox:
        async with serve(Probe(), name=name, settings=quick):
            subject = call_subject(name, "slow")
            for _ in range(3):
                await inbox.send(
                    subject, body(30), lambda reply: sign_request(key, subject, reply, body(30))
                )
            await nc.flush()
            await anyio.sleep(0.2)  # accepted and running
        await inbox.wait(timeout=5)
        assert inbox.statuses() == [503, 503, 503]
        errors = {(m[0].headers or {})["Actor-Error"] for m in inbox.replies.values()}
        assert errors == {"shutting down: the call could not finish in time"}


async def test_a_stuck_sync_handler_gives_its_slot_back(settings: Settings, name: str) -> None:
    """A sync handler past its deadline: 408 at once, the worker slot free, the thread
    counted as stuck; with every thread stuck, sync calls are refused and the replica
    reports that it must be restarted."""
    tight = msgspec.structs.replace(settings, max_in_flight=2, stuck_timeout=0.3)
    async with (
        serve(Probe(), name=name, settings=tight) as host,
        Client(settings=settings) as client,
    ):
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await client.request(name, "blocking", [1.5], timeout=0.4)
            assert time.monotonic() - started < 1.2  # the 408 comes before the thread ends
        assert await client.call(name, "add", 1, 2) == 3  # async calls still run
        with pytest.raises(Unavailable, match="stuck"):
            await client.call(name, "forward", "sync")
        with anyio.fail_after(2):
            await host.failed.wait()
        assert "2 sync handler threads (blocking) are stuck" in host.failure
        stats = (await srv_stats(client.nc, name))["_other"]
        assert stats["data"]["stuck_threads"] == 2
        await anyio.sleep(1.2)  # the threads end by themselves here: the slots come back
        assert host.pipeline.threads.stuck == 0
        assert await client.call(name, "forward", "back") == "back"


async def test_forged_nonce_announcements_are_ignored(settings: Settings, name: str) -> None:
    """Anyone on the bus can publish on the nonce subject; only the actor's seed counts."""
    now = int(time.time() * 1000)
    notes = [NonceNote(Keypair.generate().address, f"{i:032x}", now) for i in range(5_000)]
    forged = msgspec.msgpack.encode(notes)
    async with serve(Probe(), name=name, settings=settings) as host, connect(settings.url) as nc:
        book = host.pipeline.guard.book
        before = len(book)
        subject = nonce_subject(name)
        await nc.publish(subject, forged)  # unsigned
        stranger = sign_announcement(Keypair.generate(), subject, forged, "x" * 16)
        await nc.publish(subject, forged, headers=stranger)
        actor_key = Keystore(settings.home).load(name)
        posing = dict(stranger, **{"Actor-Key": actor_key.address})  # its address, not its seed
        await nc.publish(subject, forged, headers=posing)
        # Made with the actor's own key, but from the far future: never acceptable anyway.
        future = msgspec.msgpack.encode([NonceNote(actor_key.address, "ab" * 16, now + 10**9)])
        await nc.publish(
            subject, future, headers=sign_announcement(actor_key, subject, future, "y")
        )
        await nc.flush()
        await anyio.sleep(0.3)
        assert len(book) == before


def test_a_replica_with_every_thread_stuck_exits_to_be_restarted(
    settings: Settings, name: str
) -> None:
    """`actor serve` drains and exits with the code of a 503 (12), promptly: Python would
    otherwise wait for the stuck thread forever at exit."""
    env = {
        "ACTOR_NATS_URL": settings.url,
        "ACTOR_HOME": str(settings.home),
        "ACTOR_MAX_IN_FLIGHT": "1",
        "ACTOR_STUCK_TIMEOUT": "0.3",
        "ACTOR_DRAIN_TIMEOUT": "1",
    }

    async def stick() -> None:
        async with Client(settings=settings) as client:
            with pytest.raises(DeadlineExceeded):
                await client.request(name, "blocking", [30], timeout=0.3)

    with actor_serve(name, env, target="tests/support.py:Probe") as process:
        anyio.run(stick)
        started = time.monotonic()
        assert process.wait(10) == EXIT_CODES[503]
        assert time.monotonic() - started < 5

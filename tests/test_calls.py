"""Signed calls end to end: the happy path and every status code, each by its real cause."""

from __future__ import annotations

import threading
import time

import anyio
import msgspec
import pytest
from support import Probe, body, envelope, impostor, raw

from actorbus import (
    Actor,
    BadReply,
    BadRequest,
    Client,
    DeadlineExceeded,
    Forbidden,
    HandlerError,
    NotFound,
    PayloadTooLarge,
    Settings,
    Unavailable,
    endpoint,
    serve,
)
from actorbus.bus import MSGPACK, Keypair, Keystore, connect, public_key_to_address
from actorbus.bus.subjects import call_subject
from actorbus.bus.wire import relay_reply, request_signing_bytes, sign_relayed
from actorbus.host.actor import collect_functions


async def test_call_and_proxy(settings: Settings, name: str) -> None:
    async with (
        serve(Probe(), name=name, settings=settings) as host,
        Client(settings=settings) as client,
    ):
        assert await client.call(name, "forward", "hi") == "hi"
        assert await client.call(name, "add", 2, 3, scale=10) == 50
        assert await client.actor(name).add(1, b=2) == 3
        assert await client.request(name, "add", [4, 5], content_type=MSGPACK) == 9
        info = await client.call(name, "info")
        assert info["address"] == host.address
        assert "hidden" not in info["fns"]
        assert "forward" in info["fns"]
        schema = await client.call(name, "schema")
        assert schema["add"]["params"]["required"] == ["a", "b"]
        assert schema["add"]["params"]["properties"]["a"] == {"type": "integer"}


async def test_sync_handlers_run_off_the_event_loop(settings: Settings, name: str) -> None:
    """Two blocking 0.3 s calls finish together, and the loop keeps answering meanwhile."""
    async with serve(Probe(), name=name, settings=settings), Client(settings=settings) as client:
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(client.call, name, "blocking", 0.3)
            await anyio.sleep(0.05)
            assert await client.call(name, "forward", "still here") == "still here"
            assert time.monotonic() - started < 0.3
        assert time.monotonic() - started < 0.55


async def test_an_inline_handler_runs_on_the_event_loop(
    settings: Settings, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A def handler runs in a worker thread unless it says it is quick (inline=True):
    then on the loop, and one that holds the loop too long is logged."""
    loop_thread = threading.current_thread().name  # serve() runs on this test's loop
    async with serve(Probe(), name=name, settings=settings), Client(settings=settings) as client:
        assert await client.call(name, "thread") != loop_thread
        assert await client.call(name, "inline_thread") == loop_thread
        assert "held the event loop" not in caplog.text
        assert await client.call(name, "inline_thread", 0.08) == loop_thread
    assert "inline_thread is inline but held the event loop" in caplog.text


def test_inline_is_for_def_handlers() -> None:
    class Wrong(Actor):
        @endpoint(inline=True)
        async def quick(self) -> None: ...

    with pytest.raises(TypeError, match="inline=True is for def handlers"):
        collect_functions(Wrong())


@pytest.mark.parametrize("header", ["Actor-Key", "Actor-Time", "Actor-Nonce", "Actor-Signature"])
async def test_missing_header_is_401(settings: Settings, name: str, header: str) -> None:
    key = Keypair.generate()
    async with serve(Probe(), name=name, settings=settings), connect(settings.url) as nc:
        status, reply, _ = await raw(nc, key, name, "forward", body("x"), drop=(header,))
        assert status == 401
        assert header in reply["error"]
        assert reply["code"] == 401
        assert reply["id"]


async def test_unsigned_request_to_unknown_function_is_still_401(
    settings: Settings, name: str
) -> None:
    async with serve(Probe(), name=name, settings=settings), connect(settings.url) as nc:
        msg = await nc.request(call_subject(name, "nope"), b"garbage{", timeout=5)
        assert msg.headers is not None
        assert msg.headers["Actor-Status"] == "401"


async def test_tampering_is_401(settings: Settings, name: str) -> None:
    key = Keypair.generate()
    payload = body("pay 1")
    async with serve(Probe(), name=name, settings=settings), connect(settings.url) as nc:
        good, reply = envelope(nc, key, name, "forward", payload, timeout=5)
        sig = bytearray.fromhex(good["Actor-Signature"])
        sig[10] ^= 0x01
        flipped_sig = dict(good, **{"Actor-Signature": sig.hex()})
        status, answer, _ = await raw(
            nc, key, name, "forward", payload, headers=flipped_sig, reply=reply
        )
        assert (status, answer["error"]) == (401, "bad signature")
        flipped_body = payload.replace(b"1", b"9")
        status, _, _ = await raw(nc, key, name, "forward", flipped_body, headers=good, reply=reply)
        assert status == 401
        # The signature binds the subject: the same envelope on another function fails.
        status, _, _ = await raw(nc, key, name, "add", payload, headers=good, reply=reply)
        assert status == 401
        # Someone else's address with this signature fails too.
        other = dict(good, **{"Actor-Key": Keypair.generate().address})
        status, _, _ = await raw(nc, key, name, "forward", payload, headers=other, reply=reply)
        assert status == 401
        # The content type and the deadline are signed: a relay can neither re-decode the
        # body nor shorten the caller's deadline.
        for changed in ({"Content-Type": "application/msgpack"}, {"Actor-Timeout": "0.001"}):
            status, _, _ = await raw(
                nc, key, name, "forward", payload, headers=good | changed, reply=reply
            )
            assert status == 401
        # And the reply subject: the envelope sent with another inbox is refused.
        status, answer, _ = await raw(nc, key, name, "forward", payload, headers=good)
        assert (status, answer["error"]) == (401, "bad signature")


@pytest.mark.parametrize(("offset_s", "word"), [(-31, "stale"), (31, "future")])
async def test_time_outside_the_window_is_401(
    settings: Settings, name: str, offset_s: int, word: str
) -> None:
    key = Keypair.generate()
    payload = body("x")
    async with serve(Probe(), name=name, settings=settings), connect(settings.url) as nc:
        when = int((time.time() + offset_s) * 1000)
        headers, reply = envelope(nc, key, name, "forward", payload, time_ms=when)
        status, answer, _ = await raw(
            nc, key, name, "forward", payload, headers=headers, reply=reply
        )
        assert status == 401
        assert word in answer["error"]


async def test_small_order_key_is_401(settings: Settings, name: str) -> None:
    weak = public_key_to_address(bytes(32))
    subject = call_subject(name, "forward")
    payload = body("x")
    nonce = "ab" * 16
    now = str(int(time.time() * 1000))
    headers = {
        "Actor-Key": weak,
        "Actor-Time": now,
        "Actor-Nonce": nonce,
        # With a small-order key, an all-zero-ish signature can "verify" in lax libraries.
        "Actor-Signature": ("01" + "00" * 31) + ("00" * 32),
    }
    assert request_signing_bytes(subject, "_INBOX.x", now, nonce, payload)  # a forger's
    async with serve(Probe(), name=name, settings=settings), connect(settings.url) as nc:
        status, reply, _ = await raw(
            nc, Keypair.generate(), name, "forward", payload, headers=headers
        )
        assert status == 401
        assert "weak public key" in reply["error"]


async def test_replay_to_the_same_replica_is_401(settings: Settings, name: str) -> None:
    key = Keypair.generate()
    payload = body("once")
    async with serve(Probe(), name=name, settings=settings), connect(settings.url) as nc:
        headers, reply = envelope(nc, key, name, "forward", payload)
        sent = {"headers": headers, "reply": reply}
        assert (await raw(nc, key, name, "forward", payload, **sent))[0] == 200
        status, answer, _ = await raw(nc, key, name, "forward", payload, **sent)
        assert (status, answer["error"]) == (401, "replayed nonce")


async def test_replay_to_other_running_replicas_is_401(settings: Settings, name: str) -> None:
    """Both replicas are up before the first call, so the live announcement must work."""
    key = Keypair.generate()
    async with (
        serve(Probe(), name=name, settings=settings) as a,
        serve(Probe(), name=name, settings=settings) as b,
        connect(settings.url) as nc,
    ):
        for i in range(60):  # the race this guards against was rare: give it room
            payload = body(f"call {i}")
            headers, reply = envelope(nc, key, name, "forward", payload)
            sent = {"headers": headers, "reply": reply}
            assert (await raw(nc, key, name, "forward", payload, **sent))[0] == 200
            for _ in range(6):  # the queue group spreads these over both replicas
                status, _, _ = await raw(nc, key, name, "forward", payload, **sent)
                assert status == 401
        served = [h.pipeline.stats["forward"].num_requests for h in (a, b)]
        assert all(n > 0 for n in served), served


async def test_a_relayed_envelope_raced_to_two_replicas_runs_once(
    settings: Settings, name: str
) -> None:
    """Issue 30: an unchanged envelope sent to two replicas at once, inside the nonce
    announcement's delay, ran on both (44 answers of 200 for 40 calls). Whoever carries a
    caller's end-to-end envelope (a gateway relaying it) could do so; a relayed envelope
    is claimed on JetStream before it runs, so one replica runs it and the other answers
    401."""
    key = Keypair.generate()
    probes = Probe(), Probe()
    calls = 40
    async with (
        serve(probes[0], name=name, settings=settings) as a,
        serve(probes[1], name=name, settings=settings) as b,
        connect(settings.url) as nc,
    ):
        replies = await nc.subscribe(relay_reply("gw", "*"))
        subject = call_subject(name, "slow")
        for _ in range(calls):
            payload = body(0.0)
            headers = sign_relayed(key, subject, payload, gateway="gw")
            reply = relay_reply("gw", headers["Actor-Nonce"])
            for _ in range(2):  # both at once: the queue group spreads them
                await nc.publish(subject, payload, reply=reply, headers=headers)
        statuses: dict[str, list[int]] = {}
        for _ in range(2 * calls):
            msg = await replies.next_msg(timeout=5)
            statuses.setdefault(msg.subject, []).append(int((msg.headers or {})["Actor-Status"]))
        assert all(sorted(got) == [200, 401] for got in statuses.values()), statuses
        assert probes[0].runs + probes[1].runs == calls
        served = [h.pipeline.stats["slow"].num_requests for h in (a, b)]
        assert all(n > 0 for n in served), served


async def test_replay_to_a_restarted_replica_is_401(settings: Settings, name: str) -> None:
    key = Keypair.generate()
    payload = body("before restart")
    async with connect(settings.url) as nc:
        headers, reply = envelope(nc, key, name, "forward", payload)
        sent = {"headers": headers, "reply": reply}
        async with serve(Probe(), name=name, settings=settings):
            assert (await raw(nc, key, name, "forward", payload, **sent))[0] == 200
        async with serve(Probe(), name=name, settings=settings):
            status, answer, _ = await raw(nc, key, name, "forward", payload, **sent)
            assert (status, answer["error"]) == (401, "replayed nonce")


async def test_unknown_function_is_404(settings: Settings, name: str) -> None:
    async with serve(Probe(), name=name, settings=settings), Client(settings=settings) as client:
        with pytest.raises(NotFound, match="no function 'nope'") as info:
            await client.call(name, "nope")
        assert info.value.error_id
        with pytest.raises(NotFound):
            await client.call(name, "hidden")  # expose=False
        with pytest.raises(NotFound):
            await client.call(name, "_deny_all")  # private


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1,), {}, "missing required argument 'b'"),
        ((1, 2, 3), {}, "at most 2 positional"),
        (("x", 2), {}, "argument 'a': Expected `int`, got `str`"),
        ((1, 2), {"bogus": 1}, "unexpected keyword argument 'bogus'"),
        ((1,), {"a": 1}, "multiple values for argument 'a'"),
        ((1, 2), {"scale": "big"}, "argument 'scale'"),
    ],
)
async def test_bad_arguments_are_400(
    settings: Settings,
    name: str,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    message: str,
) -> None:
    async with serve(Probe(), name=name, settings=settings), Client(settings=settings) as client:
        with pytest.raises(BadRequest) as info:
            await client.request(name, "add", args, kwargs)
        assert message in info.value.message


async def test_malformed_body_is_400(settings: Settings, name: str) -> None:
    key = Keypair.generate()
    async with serve(Probe(), name=name, settings=settings), connect(settings.url) as nc:
        for payload in (b"{not json", b'{"args": 5}', b'{"args": [], "extra": 1}', b"[1,2]"):
            status, reply, _ = await raw(nc, key, name, "forward", payload)
            assert status == 400, payload
            assert "malformed body" in reply["error"]


async def test_too_many_arguments_is_400(settings: Settings, name: str) -> None:
    small = msgspec.structs.replace(settings, max_args=4)
    async with serve(Probe(), name=name, settings=small), Client(settings=settings) as client:
        with pytest.raises(BadRequest, match="too many arguments"):
            await client.call(name, "forward", *range(5))


async def test_slow_handler_is_408(settings: Settings, name: str) -> None:
    """The handler is cancelled at its deadline and its worker goes on (one worker here)."""
    one = msgspec.structs.replace(settings, max_in_flight=1)
    async with serve(Probe(), name=name, settings=one), Client(settings=settings) as client:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded, match="slow did not finish within its deadline"):
                await client.request(name, "slow", [5.0], timeout=0.3)
            assert time.monotonic() - started < 1
            assert await client.call(name, "forward", "next") == "next"


async def test_call_queued_past_its_deadline_never_runs(settings: Settings, name: str) -> None:
    one = msgspec.structs.replace(settings, max_in_flight=1)
    probe = Probe()
    async with serve(probe, name=name, settings=one), Client(settings=settings) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call, name, "slow", 0.6)
            await anyio.sleep(0.1)  # let the first call take the only slot
            with pytest.raises(DeadlineExceeded, match="before the call could run"):
                await client.request(name, "slow", [0.0], timeout=0.3)
        assert probe.runs == 1


async def test_raising_handler_is_500_without_details(
    settings: Settings, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(Probe(), name=name, settings=settings), Client(settings=settings) as client:
        with pytest.raises(HandlerError) as info:
            await client.call(name, "boom")
        error = info.value
        assert error.error_id
        assert "shadow" not in str(error)
        assert "Traceback" not in str(error)
        with pytest.raises(HandlerError, match="not serializable"):
            await client.call(name, "unserializable")
    logged = next(r.getMessage() for r in caplog.records if error.error_id in r.getMessage())
    assert "in boom" in logged and "RuntimeError: secret internal detail" in logged, logged


class Parser(Actor):
    """Raises with what the caller sent in its message (as ``int(text)`` does)."""

    @endpoint
    async def parse(self, text: str) -> int:
        return int(text)


async def test_a_handler_error_logs_its_traceback_and_only_an_excerpt_of_the_message(
    settings: Settings, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 21: a handler's exception message went into the logs whole, with whatever the
    caller put in it. Now the traceback is whole and the message one escaped line of at
    most 200 characters."""
    sent = "x" * 300 + "-the-rest-of-a-secret\nforged log line"
    async with serve(Parser(), name=name, settings=settings), Client(settings=settings) as client:
        with pytest.raises(HandlerError) as info:
            await client.call(name, "parse", sent)
    logged = next(r.getMessage() for r in caplog.records if info.value.error_id in r.getMessage())
    assert "in parse\n    return int(text)" in logged, logged
    assert "ValueError: invalid literal for int() with base 10: 'xxx" in logged, logged
    assert "the-rest-of-a-secret" not in logged and "forged log line" not in logged


async def test_blacklist_hook_is_403(settings: Settings, name: str) -> None:
    async with serve(Probe(), name=name, settings=settings), Client(settings=settings) as client:
        with pytest.raises(Forbidden, match="may not"):
            await client.call(name, "guarded")


async def test_overload_is_503(settings: Settings, name: str) -> None:
    tight = msgspec.structs.replace(settings, max_in_flight=1, max_queue=1)
    async with serve(Probe(), name=name, settings=tight), Client(settings=settings) as client:
        outcomes: list[str] = []

        async def one() -> None:
            try:
                await client.call(name, "slow", 0.4)
                outcomes.append("ok")
            except Unavailable as exc:
                assert "overloaded" in exc.message
                outcomes.append("503")

        async with anyio.create_task_group() as tg:
            for _ in range(4):  # one runs, one waits in the queue, two are turned away
                tg.start_soon(one)
                await anyio.sleep(0.05)
        assert sorted(outcomes) == ["503", "503", "ok", "ok"]


async def test_priority_decides_who_runs_next(settings: Settings, name: str) -> None:
    one = msgspec.structs.replace(settings, max_in_flight=1)
    probe = Probe()
    async with serve(probe, name=name, settings=one), Client(settings=settings) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call, name, "ranked", 0, 0.3)  # occupies the only slot
            await anyio.sleep(0.1)
            for rank in (1, 5, 3):
                tg.start_soon(client.call, name, "ranked", rank)
                await anyio.sleep(0.02)
        assert probe.ranks == [0, 5, 3, 1]


async def test_oversize_body_is_413(settings: Settings, name: str) -> None:
    small = msgspec.structs.replace(settings, max_body=1024)
    async with serve(Probe(), name=name, settings=small), Client(settings=settings) as client:
        with pytest.raises(PayloadTooLarge, match="limit is 1024"):
            await client.call(name, "forward", "x" * 2000)
        assert await client.call(name, "forward", "x" * 500) == "x" * 500


async def test_no_replica_is_503(settings: Settings, name: str) -> None:
    async with Client(settings=settings) as client:
        with pytest.raises(Unavailable, match="no actor is serving"):
            await client.call(name, "forward")


async def test_a_reply_from_an_impostor_is_refused(settings: Settings, name: str) -> None:
    """Someone on the bus answers in the actor's name with their own key: BadReply."""
    async with (
        connect(settings.url) as nc,
        serve(Probe(), name=name, settings=settings) as real,
        impostor(nc, name, "forward") as forger,
        Client(settings=settings) as client,
    ):
        outcomes = set()
        for _ in range(12):
            try:
                outcomes.add(await client.call(name, "forward", "hi"))
            except BadReply as exc:
                assert "not a registered key" in exc.message
                outcomes.add("refused")
        # Never the forged result; the impostor answers every call, usually first.
        assert "pwned" not in outcomes and "refused" in outcomes, outcomes
        assert outcomes <= {"hi", "refused"}
        assert real.address != forger.address


async def test_two_replicas_share_the_load(settings: Settings, name: str) -> None:
    async with (
        serve(Probe(), name=name, settings=settings) as a,
        serve(Probe(), name=name, settings=settings) as b,
        Client(settings=settings) as client,
    ):
        assert a.address == b.address  # one actor, one key
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(client.call, name, "forward", str(i))
        served = [h.pipeline.stats["forward"].num_requests for h in (a, b)]
        assert sum(served) == 40 and min(served) > 0, served
        assert len(await client.entries(name)) == 2


async def test_the_caller_is_the_keystore_default(settings: Settings, name: str) -> None:
    async with serve(Probe(), name=name, settings=settings), Client(settings=settings) as client:
        await client.call(name, "forward")
        assert client.key.address == Keystore(settings.home).load("default").address

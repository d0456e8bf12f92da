"""Streamed replies: a generator function's items reach the caller as verified chunks, in
order; an error midway ends the stream with its status; leaving early stops the
generator; a slow reader keeps the actor from running ahead; a forged, reordered or
dropped chunk is caught before it is yielded."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from support import env_of, raw

from actorbus import Actor, BadReply, BadRequest, Client, HandlerError, Keystore, Settings, serve
from actorbus.bus import connect, sign_request
from actorbus.bus.chunks import H_STREAM, sign_chunk
from actorbus.bus.subjects import call_subject
from actorbus.bus.wire import sign_reply


class Talker(Actor):
    def __init__(self) -> None:
        self.produced = 0
        self.closed = anyio.Event()

    async def count(self, n: int, delay: float = 0.0) -> AsyncIterator[int]:
        """0, 1, ... n-1."""
        try:
            for i in range(n):
                self.produced += 1
                yield i
                if delay:
                    await anyio.sleep(delay)
        finally:
            self.closed.set()

    def words(self, text: str) -> Iterator[str]:
        yield from text.split()

    async def broken(self) -> AsyncIterator[int]:
        yield 0
        yield 1
        raise RuntimeError("the secret detail")


async def drain(chunks: AsyncIterator[Any], into: list[Any]) -> None:
    async for x in chunks:
        into.append(x)


async def test_chunks_arrive_in_order_and_verified(settings: Settings, name: str) -> None:
    async with serve(Talker(), name=name, settings=settings), Client(settings=settings) as c:
        assert [x async for x in c.stream(name, "count", 5)] == [0, 1, 2, 3, 4]
        assert [x async for x in c.actor(name).words("a streamed reply")] == [
            "a",
            "streamed",
            "reply",
        ]
        assert [x async for x in c.stream(name, "count", 0)] == []
        schema = (await c.call(name, "schema"))["count"]
        assert schema["stream"] is True and schema["returns"] == {"type": "integer"}
        with pytest.raises(BadRequest, match="streams its reply"):
            await c.call(name, "count", 3)  # a plain call cannot take a stream


async def test_an_error_midway_ends_the_stream_with_its_status(
    settings: Settings, name: str
) -> None:
    async with serve(Talker(), name=name, settings=settings), Client(settings=settings) as c:
        seen: list[int] = []
        with pytest.raises(HandlerError) as raised:
            await drain(c.stream(name, "broken"), seen)
        assert seen == [0, 1]
        assert raised.value.error_id and "secret" not in str(raised.value)


async def test_leaving_early_stops_the_generator(settings: Settings, name: str) -> None:
    talker = Talker()
    async with serve(talker, name=name, settings=settings), Client(settings=settings) as c:
        async for x in c.stream(name, "count", 1_000_000, _window=4):
            if x == 2:
                break
        with anyio.fail_after(2):
            await talker.closed.wait()  # its `finally` ran
        assert talker.produced < 20


async def test_a_slow_reader_holds_the_actor_back(settings: Settings, name: str) -> None:
    """Memory stays bounded: the actor runs at most the window ahead of the reader."""
    talker = Talker()
    async with serve(talker, name=name, settings=settings), Client(settings=settings) as c:
        taken = 0
        async for _ in c.stream(name, "count", 10_000, _window=8):
            taken += 1
            if taken == 3:
                await anyio.sleep(0.5)  # time enough to run far ahead, if it could
                assert talker.produced <= 3 + 8 + 1, talker.produced
            if taken == 100:
                break
        assert talker.produced <= 100 + 8 + 1


async def _fake_stream(
    settings: Settings, name: str, chunks: list[tuple[int, bytes, bytes]], signer: str
) -> None:
    """Answer one streaming call on ``name/count`` with chunks (seq, signed body, sent
    body) as given, signed with key ``signer`` (the actor's own: what a compromised path
    could replay, reorder or alter)."""
    key = Keystore(settings.home).load(signer, create=True)
    async with connect(settings.url) as nc:
        done = anyio.Event()

        async def answer(msg: Any) -> None:
            nonce = msg.headers["Actor-Nonce"]
            for seq, signed, sent in chunks:
                await nc.publish(msg.reply, sent, headers=sign_chunk(key, nonce, seq, signed))
            end = sign_reply(key, nonce, 200, b"null", chunks=len(chunks))
            await nc.publish(msg.reply, b"null", headers=end)
            done.set()

        sub = await nc.subscribe(call_subject(name, "count"), cb=answer)
        try:
            with anyio.fail_after(5):
                await done.wait()
        finally:
            await sub.unsubscribe()


@pytest.mark.parametrize(
    ("chunks", "signer", "problem", "yielded"),
    [
        ([(0, b"0", b"0"), (2, b"2", b"2")], "", "came where 1 was due", [0]),  # dropped
        ([(1, b"1", b"1"), (0, b"0", b"0")], "", "came where 0 was due", []),  # reordered
        ([(0, b"0", b"0"), (0, b"0", b"0")], "", "came where 1 was due", [0]),  # repeated
        ([(0, b"0", b"0"), (1, b"1", b"666")], "", "unverifiable chunk 1", [0]),  # altered
        ([(0, b"0", b"0")], "stranger", "not a key of", []),  # another key
    ],
)
async def test_a_bad_chunk_raises_and_is_never_yielded(
    settings: Settings,
    name: str,
    chunks: list[tuple[int, bytes, bytes]],
    signer: str,
    problem: str,
    yielded: list[int],
) -> None:
    async with Client(settings=settings) as c:
        async with serve(Talker(), name=name, settings=settings):
            await c.known(name)  # the client knows the actor's address; its replica goes
        seen: list[Any] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_fake_stream, settings, name, chunks, signer or name)
            await anyio.sleep(0.2)
            with pytest.raises(BadReply, match=problem):
                await drain(c.stream(name, "count", 2, _timeout=5), seen)
            tg.cancel_scope.cancel()
        assert seen == yielded  # what came out before the bad chunk, and only that


async def test_a_protocol_only_caller_reads_a_stream(settings: Settings, name: str) -> None:
    """With nothing but PROTOCOL.md: Actor-Stream on the request, chunks then the end."""
    async with serve(Talker(), name=name, settings=settings), connect(settings.url) as nc:
        key = Keystore(settings.home).load("caller", create=True)
        body = json.dumps({"args": [3]}).encode()
        inbox = nc.new_inbox()
        headers = sign_request(key, call_subject(name, "count"), inbox, body)
        headers[H_STREAM] = "16"
        sub = await nc.subscribe(inbox)
        await nc.publish(call_subject(name, "count"), body, reply=inbox, headers=headers)
        got = [await sub.next_msg(timeout=5) for _ in range(4)]
        assert [m.headers.get("Actor-Chunk") for m in got] == ["0", "1", "2", None]
        assert got[3].headers["Actor-Status"] == "200" and got[3].headers["Actor-Chunks"] == "3"
        status, _, _ = await raw(nc, key, name, "count", body)
        assert status == 400  # without Actor-Stream


async def test_the_cli_prints_chunks_as_they_come(settings: Settings, name: str) -> None:
    async with serve(Talker(), name=name, settings=settings):
        command = [
            sys.executable,
            "-m",
            "actorbus.cli",
            "call",
            f"{name}/words",
            "a streamed reply",
        ]
        done = await anyio.run_process(command, env={**os.environ, **env_of(settings)})
        assert done.stdout.decode().splitlines() == ['"a"', '"streamed"', '"reply"']
        done = await anyio.run_process([*command, "--raw"], env={**os.environ, **env_of(settings)})
        assert done.stdout.decode() == "astreamedreply\n"

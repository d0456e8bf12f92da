"""Both ends of a streamed reply (PROTOCOL.md §4a).

The replica's (:func:`stream_reply`): a generator function's items go out as signed
chunks, never more than the caller's window ahead of what it has read; the generator is
paused (not advanced) while the caller is behind, and closed (its ``finally`` runs) when
the caller cancels, the deadline passes or it raises. The end of the stream is the call's
one reply, sent by the pipeline like any other.

The caller's (:func:`read_stream`): every chunk is checked (signer, index, signature over
the request's nonce) before it is yielded, so a forged, reordered, repeated or dropped
chunk raises :class:`BadReply` and never comes out; credit goes back as chunks are read;
leaving the loop early cancels the stream on the actor's side.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import nats.errors

from ..bus import (
    ActorError,
    BadReply,
    Keypair,
    Msg,
    NoResponders,
    ReplyTimeout,
    Unauthorized,
    publish,
    verify_reply,
)
from ..bus.chunks import H_CHUNK, H_STREAM, sign_control, verify_chunk, verify_control
from ..bus.subjects import call_subject
from ..bus.wire import H_CHUNKS, H_KEY, JSON, codec_for
from .answers import Reply

if TYPE_CHECKING:
    from .actor import Call, Function
    from .client import Client
    from .replies import Replies
    from .threads import SyncRunner

__all__ = ["read_stream", "stream_reply"]

log = logging.getLogger("actorbus.runtime")

_END = object()


class _Steering:
    """What the caller said on the control subject: chunks read, or cancel."""

    def __init__(self, call: Call, forwarders: Callable[[], frozenset[str] | set[str]]) -> None:
        self.call = call
        self._forwarders = forwarders
        self.read = 0
        self.cancelled = False
        self.changed = anyio.Event()

    def may_steer(self, key: str) -> bool:
        """The request's signer, or a trusted forwarder (a gateway relaying the stream)."""
        meta = self.call.meta
        return key == (meta.key if meta is not None else self.call.caller) or (
            key in self._forwarders()
        )

    async def on_message(self, msg: Msg) -> None:
        call = self.call
        try:
            credit = verify_control(msg.headers, call.nonce, self.may_steer)
        except Unauthorized as exc:
            log.debug("%s: stream control refused: %s", self.call.fn, exc.message)
            return
        if credit is None:
            self.cancelled = True
        else:
            self.read = max(self.read, min(credit, call.chunks or 0))
        self.changed.set()

    async def wait_for_room(self) -> None:
        """Until the caller may take one more chunk, or cancelled."""
        call = self.call
        assert call.window is not None and call.chunks is not None
        while not self.cancelled and call.chunks - self.read >= call.window:
            self.changed = anyio.Event()
            await self.changed.wait()


async def stream_reply(
    replies: Replies,
    threads: SyncRunner,
    function: Function,
    call: Call,
    forwarders: Callable[[], frozenset[str] | set[str]],
) -> None:
    """Send ``call``'s generator's items as chunks; returns when it is exhausted or the
    caller cancelled; raises what the generator raises. ``forwarders()``: the keys the
    policy trusts to steer a stream they relay, besides the request's signer."""
    nc = replies.nc
    control = nc.new_inbox()
    steering = _Steering(call, forwarders)
    subscription = await nc.subscribe(control, cb=steering.on_message)
    call.chunks = 0
    items = _items(function, call, threads)
    try:
        while True:
            await steering.wait_for_room()
            if steering.cancelled:
                return
            item = await anext(items, _END)
            if item is _END:
                return
            await replies.chunk(call, item, control)
    finally:
        with anyio.CancelScope(shield=True):
            await items.aclose()  # runs the generator's `finally`
            await subscription.unsubscribe()


async def _items(function: Function, call: Call, threads: SyncRunner) -> AsyncGenerator[Any]:
    """The function's items: an async generator's on the loop, a sync generator's each
    from a worker thread (with the call's context)."""
    produced = function.method(*call.args, **call.kwargs)
    if function.is_async:
        try:
            async for item in produced:
                yield item
        finally:
            await produced.aclose()
        return
    generator: Iterator[Any] = produced
    try:
        while True:
            item = await threads.run(call.fn, partial(next, generator, _END))
            if item is _END:
                return
            yield item
    finally:
        # A generator still running in its thread (past its deadline) cannot be closed.
        with contextlib.suppress(ValueError):
            generator.close()  # type: ignore[attr-defined]


async def read_stream(
    client: Client,
    name: str,
    fn: str,
    body: bytes,
    headers: dict[str, str],
    *,
    steer: Keypair,
    window: int,
    timeout: float,
) -> AsyncGenerator[Any]:
    """The verified chunks of ``name/fn`` for the request ``body`` with ``headers`` as
    signed (by ``client.key`` or anyone; ``Actor-Stream`` is set here to ``window``);
    ``steer`` signs the credit and the cancel (the request's signer, or a trusted
    forwarder). Raises the stream's error (its end's status), :class:`ReplyTimeout` past
    ``timeout`` (for the whole stream), :class:`NoResponders`, or :class:`BadReply` for a
    chunk or end that does not check out."""
    nc = client.nc
    subject = call_subject(name, fn)
    headers = {**headers, H_STREAM: str(window)}
    nonce = headers["Actor-Nonce"]
    content_type = headers.get("Content-Type", JSON)
    codec = codec_for(content_type)
    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox)
    deadline = time.monotonic() + timeout
    seq, signer, control, ended = 0, "", "", False
    try:
        await publish(nc, subject, body, headers, reply=inbox)
        while True:
            try:
                msg = await subscription.next_msg(timeout=max(deadline - time.monotonic(), 0.001))
            except nats.errors.TimeoutError:
                raise ReplyTimeout(
                    f"the stream of {subject} did not end within {timeout:g}s"
                ) from None
            got = dict(msg.headers or {})
            if got.get("Status") == "503" and not msg.data:
                raise NoResponders(f"no actor is serving {subject}")
            if H_CHUNK in got:
                if not signer:
                    signer = got.get(H_KEY, "")
                    if not await client.signs_for(name, signer):
                        raise BadReply(f"a chunk signed by {signer[:48]!r}, not a key of {name!r}")
                verify_chunk(got, msg.data, nonce, seq, signer)
                seq += 1
                control = msg.reply
                yield codec.decode_any(msg.data)
                if control and seq % max(window // 2, 1) == 0:
                    await publish(nc, control, b"", sign_control(steer, nonce, seq))
                continue
            ended = True
            chunks = seq if (seq or H_CHUNKS in got) else None
            meta = verify_reply(got, msg.data, nonce, chunks=chunks)
            if not await client.signs_for(name, meta.key):
                raise BadReply(f"a stream ended by {meta.key}, not a registered key of {name!r}")
            if signer and meta.key != signer:
                raise BadReply("a stream ended by another key than its chunks'")
            Reply(meta, msg.data, got).result()  # raises the stream's error, if it ended in one
            return
    finally:
        with anyio.CancelScope(shield=True):
            if not ended and control:  # the caller left early: stop the generator there
                with contextlib.suppress(ActorError):
                    await publish(nc, control, b"", sign_control(steer, nonce, None))
            # Left early, this runs when the generator is collected: maybe as the client
            # closes (draining), when there is nothing left to unsubscribe from.
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()

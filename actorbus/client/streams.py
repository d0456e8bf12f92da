"""The caller's end of a streamed reply (PROTOCOL.md §4a): :func:`read_stream`.

Every chunk is checked (signer, index, signature over the request's nonce) before it is
yielded, so a forged, reordered, repeated or dropped chunk raises :class:`BadReply` and
never comes out; credit goes back as chunks are read; leaving the loop early cancels the
stream on the actor's side. The replica's end is :mod:`actorbus.host.streams`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import anyio
import nats.errors

from ..bus import (
    NATS,
    ActorError,
    BadReply,
    NoResponders,
    ReplyTimeout,
    Signer,
    publish,
    verify_reply,
)
from ..bus.chunks import H_CHUNK, H_STREAM, sign_control, verify_chunk
from ..bus.requests import HeadersFor
from ..bus.subjects import call_subject
from ..bus.tracing import current_trace, spans
from ..bus.wire import H_CHUNKS, H_KEY, JSON, codec_for
from .answers import Reply

__all__ = ["SignsFor", "read_stream"]

SignsFor = Callable[[str, str], Awaitable[bool]]
"""Whether an address (second) may sign for an actor (first): :meth:`Client.signs_for`."""


async def read_stream(
    nc: NATS,
    signs_for: SignsFor,
    name: str,
    fn: str,
    body: bytes,
    headers: HeadersFor,
    *,
    steer: Signer,
    reply: str = "",
    window: int,
    timeout: float,
) -> AsyncGenerator[Any]:
    """The verified chunks of ``name/fn`` for the request ``body`` with the headers that
    ``headers`` build for its reply subject (a fresh inbox, or ``reply`` if the request was
    signed for it elsewhere: a relay; ``Actor-Stream`` is set here to ``window``), read on
    ``nc``; each signer is checked with ``signs_for``; ``steer`` signs the credit and the
    cancel (the request's signer, or a trusted forwarder). Raises the stream's error (its end's
    status), :class:`ReplyTimeout` past ``timeout`` (for the whole stream),
    :class:`NoResponders`, or :class:`BadReply` for a chunk or end that does not check
    out."""
    subject = call_subject(name, fn)
    inbox = reply or nc.new_inbox()
    recorder = spans()
    span = recorder.start(f"{name}/{fn}", "client", current_trace()) if recorder else None
    trace = recorder.headers(span) if recorder else current_trace()
    sent = {**headers(inbox), H_STREAM: str(window), **trace}  # the trace: unsigned
    nonce = sent["Actor-Nonce"]
    codec = codec_for(sent.get("Content-Type", JSON))
    subscription = await nc.subscribe(inbox)
    deadline = time.monotonic() + timeout
    seq, signer, control, ended = 0, "", "", False
    try:
        await publish(nc, subject, body, sent, reply=inbox)
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
                    if not await signs_for(name, signer):
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
            if not await signs_for(name, meta.key):
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
            if span is not None:
                span.end()

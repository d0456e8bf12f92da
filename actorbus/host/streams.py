"""The replica's end of a streamed reply (PROTOCOL.md §4a): :func:`stream_reply`.

A generator function's items go out as signed chunks, never more than the caller's window
ahead of what it has read; the generator is paused (not advanced) while the caller is
behind, and closed (its ``finally`` runs) when the caller cancels, the deadline passes or
it raises. The end of the stream is the call's one reply, sent by the pipeline like any
other. The caller's end is :mod:`actorbus.client.streams`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Iterator
from functools import partial
from typing import Any

import anyio

from ..bus import Msg, Unauthorized
from ..bus.chunks import verify_control
from .actor import Call, Function
from .replies import Replies
from .threads import SyncRunner

__all__ = ["stream_reply"]

log = logging.getLogger("actorbus.host")

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
    from a worker thread (with the call's context), or on the loop if it is inline."""
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
            if function.options.inline:
                item = next(generator, _END)
            else:
                item = await threads.run(call.fn, partial(next, generator, _END))
            if item is _END:
                return
            yield item
    finally:
        # A generator still running in its thread (past its deadline) cannot be closed.
        with contextlib.suppress(ValueError):
            generator.close()  # type: ignore[attr-defined]

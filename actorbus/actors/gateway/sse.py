"""A streaming function over HTTP: its verified chunks as server-sent events (PROTOCOL.md
§11), `event: chunk` with one item as JSON each, then `event: end` with the status (and
the error, if the stream failed midway). A refusal before the first chunk is a plain HTTP
error like any call's; a web caller that goes away, or stops reading for ``stall``
seconds (its connection is then closed), cancels the stream on the actor."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio
import msgspec
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from ...bus import ActorError

__all__ = ["sse_response"]

_END = object()
_encode = msgspec.json.Encoder().encode


async def sse_response(chunks: AsyncGenerator[Any], stall: float) -> StreamingResponse:
    """The response for a stream's ``chunks`` (:func:`read_stream`'s); raises the
    stream's :class:`ActorError` if it fails before its first chunk. Its request's shares
    are held until it has ended (:mod:`.shares`)."""
    try:
        first = await anext(chunks, _END)
    except BaseException:
        await chunks.aclose()
        raise
    return _EventStream(_events(first, chunks), chunks, stall)


class _EventStream(StreamingResponse):
    """Server-sent events whose every write must go out within ``stall`` seconds."""

    def __init__(
        self,
        events: AsyncIterator[bytes],
        chunks: AsyncGenerator[Any],
        stall: float,
    ) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._chunks = chunks
        self._stall = stall

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def bounded(message: Message) -> None:
            with anyio.fail_after(self._stall):
                await send(message)

        try:
            await super().__call__(scope, receive, bounded)
        except TimeoutError:
            return  # the reader stopped reading: its connection is closed, unfinished
        finally:
            with anyio.CancelScope(shield=True):
                await self._chunks.aclose()


async def _events(first: Any, chunks: AsyncGenerator[Any]) -> AsyncIterator[bytes]:
    try:
        item = first
        while item is not _END:
            yield b"event: chunk\ndata: " + _encode(item) + b"\n\n"
            item = await anext(chunks, _END)
        yield b'event: end\ndata: {"status":200}\n\n'
    except ActorError as exc:
        end = {"status": exc.status, "error": exc.message, "id": exc.error_id or ""}
        yield b"event: end\ndata: " + _encode(end) + b"\n\n"
    finally:
        await chunks.aclose()

"""A streaming function over HTTP: its verified chunks as server-sent events (PROTOCOL.md
§11), `event: chunk` with one item as JSON each, then `event: end` with the status (and
the error, if the stream failed midway). A refusal before the first chunk is a plain HTTP
error like any call's; a web caller that goes away cancels the stream on the actor."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec
from starlette.responses import StreamingResponse

from ...bus import ActorError

__all__ = ["sse_response"]

_END = object()
_encode = msgspec.json.Encoder().encode


async def sse_response(chunks: AsyncGenerator[Any]) -> StreamingResponse:
    """The response for a stream's ``chunks`` (:func:`read_stream`'s); raises the
    stream's :class:`ActorError` if it fails before its first chunk."""
    try:
        first = await anext(chunks, _END)
    except BaseException:
        await chunks.aclose()
        raise
    return StreamingResponse(
        _events(first, chunks),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


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

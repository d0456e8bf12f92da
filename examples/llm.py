"""A stand-in for a served model that streams its tokens:

actor up examples/llm.py:Llm
actor call llm/generate "tell me a story" --raw
curl -N 'localhost:8080/llm/generate?prompt=hi'     # once the public role may call it
"""

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from msgspec import Meta

from actorbus import Actor, endpoint


class Llm(Actor):
    """Streams a reply one token at a time, as a language model does."""

    name = "llm"

    @endpoint(idempotent=True)  # callable by GET (curl -N '.../llm/generate?prompt=hi')
    async def generate(
        self, prompt: str, delay: Annotated[float, Meta(ge=0, le=1)] = 0.05
    ) -> AsyncIterator[str]:
        """The reply to ``prompt``, a word at a time, ``delay`` seconds apart."""
        for word in f"You said: {prompt}. That is all I know.".split():
            yield word + " "
            await anyio.sleep(delay)

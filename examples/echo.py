"""An example actor: ``actor up examples/echo.py:Echo`` then ``actor call echo/forward hi``."""

from typing import Annotated

import anyio
from msgspec import Meta

from actorbus import Actor, endpoint


class Echo(Actor):
    """Echoes what it is sent."""

    name = "echo"

    @endpoint(idempotent=True)  # safe to repeat: retried on a lost reply, callable by GET
    def forward(self, message: str = "hello") -> str:
        """Return ``message`` unchanged."""
        return message

    @endpoint(idempotent=True)
    async def add(self, a: float, b: float) -> float:
        """The sum of two numbers."""
        return a + b

    async def sleep(self, seconds: Annotated[float, Meta(ge=0)]) -> float:
        """Sleep, then return how long (for trying deadlines)."""
        await anyio.sleep(seconds)
        return seconds

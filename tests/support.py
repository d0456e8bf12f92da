"""Helpers shared by the tests: a probe actor and raw (hand-built) signed requests."""

from __future__ import annotations

import time
from typing import Any

import anyio
import msgspec

from actorbus import Actor, Call, endpoint
from actorbus.bus import NATS, Keypair, Msg, sign_request, verify_reply
from actorbus.bus.subjects import call_subject


class Probe(Actor):
    """An actor whose functions provoke every outcome."""

    def __init__(self) -> None:
        self.runs = 0
        self.ranks: list[int] = []

    def forward(self, message: str = "hello") -> str:
        return message

    async def add(self, a: int, b: int, *, scale: int = 1) -> int:
        return (a + b) * scale

    async def slow(self, seconds: float) -> float:
        self.runs += 1
        await anyio.sleep(seconds)
        return seconds

    def blocking(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    async def boom(self) -> None:
        raise RuntimeError("secret internal detail /etc/shadow")

    async def unserializable(self) -> Any:
        return object()

    @endpoint(blacklist="_deny_all")
    async def guarded(self) -> str:
        return "never"

    def _deny_all(self, call: Call) -> tuple[bool, str]:
        return True, f"{call.caller[:6]} may not"

    @endpoint(priority="_by_arg")
    async def ranked(self, rank: int, seconds: float = 0.0) -> int:
        self.ranks.append(rank)
        await anyio.sleep(seconds)
        return rank

    def _by_arg(self, call: Call) -> float:
        return float(call.args[0]) if call.args else 0.0

    @endpoint(expose=False)
    def hidden(self) -> str:
        return "not served"


def body(*args: Any, **kwargs: Any) -> bytes:
    return msgspec.json.encode({"args": list(args), "kwargs": kwargs})


async def raw(
    nc: NATS,
    key: Keypair,
    name: str,
    fn: str,
    payload: bytes,
    *,
    headers: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
    timeout: float = 5.0,
) -> tuple[int, Any, Msg]:
    """Send a hand-built request; returns (status, decoded body, reply), reply verified."""
    subject = call_subject(name, fn)
    if headers is None:
        headers = sign_request(key, subject, payload)
    headers = {k: v for k, v in headers.items() if k not in drop}
    msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
    meta = verify_reply(msg.headers, msg.data, headers.get("Actor-Nonce", ""))
    return meta.status, msgspec.json.decode(msg.data), msg

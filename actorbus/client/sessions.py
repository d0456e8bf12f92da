"""The caller's side of sessions (PROTOCOL.md §4b): which session a key holds with an
actor, when one is opened, and when to stop asking.

A key's first call to an actor is signed. From its second call on, its calls to that
actor go in a session: one signed handshake (``_session``), then an HMAC-SHA256 per call
and per reply in place of two ed25519 signatures, which is what a call costs most on
both sides. A one-off call (``actor call``) so never pays for a handshake, and a key that
calls an actor again pays for one once per session (renewed at 3/4 of its life). An actor
that takes no sessions (the policy actor, node control), or a handshake that fails in
any way, makes that key sign its calls to that actor for a minute before it asks again:
a session is a saving, never a condition of a call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
import msgspec
import nacl.public

from ..bus import ActorError, Signer
from ..bus.lru import LRU
from ..bus.sessions import SessionGrant, open_grant, session_seal
from ..bus.wire import Seal

__all__ = ["Handshake", "Session", "SessionBook"]

NO_SESSIONS_SECONDS: Final = 60.0
"""How long a key signs each call to an actor that refused it a session."""
_KEPT: Final = 4096
"""(key, actor) pairs a book remembers; past that, the least recently used is dropped
(a gateway signs for one key per web client)."""
_CALLED_ONCE: Final = "called once"


class Session(msgspec.Struct, frozen=True):
    """A session a key holds with one actor."""

    ticket: str
    key: bytes
    renew: float
    """Monotonic seconds after which the next call opens a new session (3/4 of its life)."""

    @property
    def seal(self) -> Seal:
        return session_seal(self.key, self.ticket)


Handshake = Callable[[str, Signer, list[Any], float], Awaitable[Any]]
"""The result of one call of ``_session`` on an actor (first), signed by a key (second),
with arguments (third) within a timeout (fourth)."""


class SessionBook:
    """The sessions of the keys one process calls with, per (key, actor)."""

    def __init__(self, handshake: Handshake, ttl: float) -> None:
        self.ttl = ttl
        self._handshake = handshake
        self._held: LRU[tuple[str, str], Session | float | str] = LRU(_KEPT)
        """Per (key address, actor): its session, until when it signs (monotonic), or
        that it called once."""
        self._opening: LRU[tuple[str, str], anyio.Lock] = LRU(_KEPT)

    def held(self, name: str, key: Signer) -> Session | float | str | None:
        """What the book holds for ``key``'s calls to ``name`` (for tests and tools)."""
        return self._held.get((key.address, name))

    async def session(self, name: str, key: Signer, timeout: float) -> Session | None:
        """The session ``key`` calls ``name`` in, opened now (one signed handshake within
        ``timeout``) from its second call on, or when the one it holds nears its end;
        ``None``: sign this call. Never raises for a failed handshake (the call is
        signed instead); cancellation passes through."""
        pair = (key.address, name)
        held = self._held.get(pair)
        now = time.monotonic()
        if isinstance(held, Session) and held.renew > now:
            return held
        if held is None:
            self._held[pair] = _CALLED_ONCE
            return None
        if isinstance(held, float) and held > now:
            return None
        async with self._opening.setdefault(pair, anyio.Lock()):  # one handshake at a time
            again = self._held.get(pair)
            if again is not held and isinstance(again, Session):
                return again
            exchange = nacl.public.PrivateKey.generate()
            args = [bytes(exchange.public_key).hex(), self.ttl]
            try:
                result = await self._handshake(name, key, args, timeout)
                grant = msgspec.convert(result, SessionGrant)
                session_key = open_grant(grant, exchange)
            except (ActorError, msgspec.ValidationError):
                # No _session (it signs), refused, or no answer in time: sign for a while.
                self._held[pair] = time.monotonic() + NO_SESSIONS_SECONDS
                return None
            renew = time.monotonic() + 0.75 * max(0.0, grant.expires / 1000 - time.time())
            session = self._held[pair] = Session(grant.ticket, session_key, renew)
            return session

    def forget(self, name: str, key: Signer) -> None:
        """Drop ``key``'s session with ``name`` (refused: expired, or the actor's key
        changed); its next call opens another."""
        self._held[key.address, name] = _CALLED_ONCE

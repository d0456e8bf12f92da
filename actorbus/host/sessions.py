"""The replica's side of sessions (PROTOCOL.md §4b): the ``_session`` handshake, and the
check of each session call in place of a signature check.

A session is opened by a signed call and belongs to the key that signed it: every call
made in it is decided by the policy as that key's, on the policy the replica holds at that
moment, so a role change or a revocation applies to live sessions as soon as the replica's
policy view has it. Nothing of a session is kept here: any replica derives its key from
the ticket the call carries.
"""

from __future__ import annotations

from ..bus import BadRequest, Keypair, RequestMeta, Unauthorized
from ..bus.sessions import DEFAULT_SESSION_TTL, SESSION_FN, SessionGrant, SessionSecret
from .actor import Call, EndpointOptions, Function, current_call

__all__ = ["Sessions"]


class Sessions:
    """Grants and checks the sessions of one actor (the same in each of its replicas)."""

    def __init__(self, key: Keypair, name: str, *, enabled: bool) -> None:
        self.enabled = enabled
        self._secret = SessionSecret(key, name)
        self.function = Function(SESSION_FN, self.open, EndpointOptions())

    async def open(self, exchange_key: str, ttl: float = DEFAULT_SESSION_TTL) -> SessionGrant:
        """A session for the calling key: a ticket, and its key sealed to the caller's
        X25519 ``exchange_key`` (hex); it lasts ``ttl`` seconds (at most an hour)."""
        call = current_call()
        if call.session_key is not None or call.forwarder:
            raise BadRequest("a session is opened by a call its own key signs")
        return self._secret.grant(call.caller, exchange_key, ttl)

    def authenticate(
        self, call: Call, subject: str, reply: str, headers: dict[str, str], body: bytes
    ) -> RequestMeta:
        """Check a session call (its ticket, expiry and MAC) and note its session key on
        ``call``, so its reply is authenticated with it; raises :class:`Unauthorized`."""
        if not self.enabled:
            raise Unauthorized("this actor takes no sessions: sign each call")
        meta, call.session_key = self._secret.verify(subject, reply, headers, body)
        return meta

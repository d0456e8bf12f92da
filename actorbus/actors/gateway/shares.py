"""What each request holds of a gateway replica, from its arrival until the reader has
taken its response (not until the app has handed the response over: an answer left
unread held its slot with no share counting it, issue 30), whatever the route.

- **A slot** of the replica's ``gateway_max_concurrency`` (503 beyond), if its network (an
  IPv4 /24, an IPv6 /64) holds fewer of them than are still free (503 otherwise): one
  network alone may take half the slots, k of them leave a (k+1)th of the slots free for
  others, so a few addresses, each within its client's share, cannot take the gateway
  (issue 30: 40 addresses x 32 slow calls did). Loopback addresses count as any other (a proxy
  on this machine is one client and one network: see README).
- **Room for its body** in the replica's ``gateway_max_bodies`` bytes (503 beyond), its
  network holding no more of them than are still free: a body is counted at its
  ``Content-Length`` (a chunked one at ``max_body``) until the answer is taken, so many
  large calls at once cannot hold the replica's memory (issue 30: 1,000 calls of 900 KB
  at once, 941 MiB).
- **Its client's share** (:mod:`.fairness`), taken before anything is read or checked: a
  bearer token the policy lists counts as its key; any other request as the address it
  comes from (an IPv6 /64 counts as one), so a slow body, a page of the docs or a call
  whose caller signs with a key of its own (a commune body, a bittensor hotkey, an OIDC
  login: keys anyone can make) all count against the address it sent them from. The
  route adds the share of the key it calls as when that is another client
  (:meth:`Held.add`).

The route finds what its request holds in the scope (:func:`held`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ...bus import RateLimited
from .context import Context
from .errors import error_json
from .guard import WRITTEN, client_group, client_network

__all__ = ["Held", "Shares", "held"]

_HELD = "actorbus.held"


class Held:
    """What one request holds: given back once its response is written."""

    def __init__(self, address: str, who: str) -> None:
        self.address = address
        """The address it comes from (:func:`.guard.client_group`'s)."""
        self.who = who
        """The client it was counted as when it arrived."""
        self._leaves: list[Callable[[], None]] = []

    def add(self, leave: Callable[[], None]) -> None:
        """Give back ``leave`` (a share's end) with the rest."""
        self._leaves.append(leave)

    def release(self) -> None:
        for leave in self._leaves:
            leave()
        self._leaves.clear()


def held(request: Request) -> Held:
    """What ``request`` holds (it passed :class:`Shares`)."""
    return cast(Held, request.scope[_HELD])


def _refusal(status: int, message: str, retry_after: str) -> Response:
    return Response(
        error_json(status, message),
        status_code=status,
        media_type="application/json",
        headers={"Retry-After": retry_after},
    )


class Shares:
    """Pure ASGI middleware taking a request's slot and its client's share (see the
    module), so a refusal costs no request object."""

    def __init__(self, app: ASGIApp, *, gateway: Context) -> None:
        self.app = app
        self.gateway = gateway
        self.max_concurrency = gateway.settings.gateway_max_concurrency
        self.max_bodies = gateway.settings.gateway_max_bodies
        self.active = 0
        self.bodies = 0
        """Bytes of the bodies of the requests held."""
        self._networks: dict[str, tuple[int, int]] = {}
        """Requests held, and the bytes of their bodies, by network."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client_group(client[0] if client else "")
        network = client_network(address)
        holding, bodies = self._networks.get(network, (0, 0))
        body = self._body(scope)
        if self.active >= self.max_concurrency:
            refusal = "the gateway is at its limit of requests at once"
        elif holding >= self.max_concurrency - self.active:
            refusal = f"your network holds {holding} of this gateway's requests: try again"
        elif self.bodies + body > self.max_bodies:
            refusal = "the gateway holds its limit of request bodies at once: try again"
        elif bodies + body > self.max_bodies - self.bodies:
            refusal = f"your network holds {bodies} bytes of this gateway's requests: try again"
        else:
            refusal = ""
        if refusal:
            await _refusal(503, refusal, "1")(scope, receive, send)
            return
        who = self._holder(scope) or f"address:{address}"
        try:
            leave = self.gateway.fairness.enter(who)
        except RateLimited as exc:
            await _refusal(429, exc.message, f"{exc.retry_after:g}")(scope, receive, send)
            return
        mine = scope[_HELD] = Held(address, who)
        mine.add(leave)
        self.active += 1
        self.bodies += body
        self._networks[network] = (holding + 1, bodies + body)
        written: Callable[[], Awaitable[None]] | None = (
            scope.get("extensions", {}).get(WRITTEN, {}).get("wait")
        )
        try:
            await self.app(scope, receive, send)
            if written is not None:
                await written()
        finally:
            self.active -= 1
            self.bodies -= body
            left, left_bodies = self._networks.pop(network)
            if left > 1:
                self._networks[network] = (left - 1, left_bodies - body)
            mine.release()

    def _body(self, scope: Scope) -> int:
        """Bytes ``scope``'s body is counted at: its ``Content-Length`` (up to
        ``max_body``: a larger one is refused unread), ``max_body`` if it is chunked."""
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                return min(int(value), self.gateway.max_body)
            if name == b"transfer-encoding":
                return self.gateway.max_body
        return 0

    def _holder(self, scope: Scope) -> str:
        """The key a bearer token the policy lists signs as, else ``""``."""
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = value.decode("latin-1")
                return self.gateway.identities.token_holder(token, self.gateway.policy())
        return ""

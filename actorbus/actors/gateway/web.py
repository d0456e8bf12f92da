"""What a browser may make of the gateway: which requests it takes from a web page, and
what its responses may be, whatever an actor answers.

- **Host**: only names it is meant to be reached by (``localhost``, an IP literal, the
  address it is bound to, and ``gateway_hosts``): a page that rebinds its own DNS name to
  this machine gets 421, so it cannot reach a gateway on localhost or an intranet.
- **CSRF**: a POST must say ``Content-Type: application/json`` (or MessagePack): a form or
  ``text/plain`` body, which a page may send anywhere without asking, is 415. A GET calls
  only functions marked ``idempotent`` (:mod:`.app`).
- **Responses are the gateway's**: an actor's reply goes out as JSON or MessagePack, and
  anything else as ``application/octet-stream`` with ``Content-Disposition: attachment``
  (never a page on this origin); a status outside 2xx, 4xx and 5xx with a body (a 1xx,
  a redirect, 204) is a 502. Every response says ``nosniff``, may not be framed, and has
  a Content-Security-Policy: ``default-src 'none'`` for data, and for the dashboard and
  the API docs one that names exactly their inline code (by hash) and the pinned Swagger
  UI files (with Subresource Integrity).
"""

from __future__ import annotations

import base64
import hashlib
import http
import ipaddress
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...bus.wire import JSON, MSGPACK
from .errors import DATA_POLICY, SECURITY_HEADERS, error_json

__all__ = ["PASSED_STATUSES", "WebSafety", "page", "reply_response"]

_HERE = Path(__file__).parent
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain"})
_BODY_TYPES = (JSON, MSGPACK)

PASSED_STATUSES = frozenset(
    s.value
    for s in http.HTTPStatus
    if 200 <= s < 600 and not 300 <= s < 400 and s not in (204, 205)
)
"""Statuses an actor's reply may carry to HTTP; any other is 502."""


def reply_response(
    status: int, content_type: str, body: bytes, headers: dict[str, str]
) -> Response:
    """The HTTP response for an actor's reply (its status checked by the caller)."""
    if content_type in _BODY_TYPES:
        return Response(body, status_code=status, media_type=content_type, headers=headers)
    headers = {**headers, "Content-Disposition": "attachment"}
    return Response(
        body, status_code=status, media_type="application/octet-stream", headers=headers
    )


def page(filename: str, external: str = "") -> Callable[[Request], Awaitable[Response]]:
    """The route serving ``filename`` (beside this module) with a CSP allowing exactly its
    inline scripts and styles, and ``external``, an origin its pinned files come from."""
    text = (_HERE / filename).read_text()
    scripts = " ".join(_hashes(text, "script")) or "'none'"
    styles = " ".join(_hashes(text, "style"))
    extra = f" {external}" if external else ""
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {scripts}{extra}",
            f"style-src {styles}{extra} 'unsafe-inline'" if external else f"style-src {styles}",
            "img-src 'self' data:",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )

    async def serve(request: Request) -> Response:
        return HTMLResponse(text, headers={"Content-Security-Policy": policy})

    return serve


def _hashes(text: str, tag: str) -> list[str]:
    """The CSP hash source of each inline ``<tag>`` block of ``text``."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)
    return [
        f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks
    ]


class WebSafety:
    """Refuses what a web page must not make the gateway do (a foreign Host: 421; a POST
    without a JSON or MessagePack body: 415) and adds the headers every response has."""

    def __init__(self, app: ASGIApp, *, hosts: str, bound: str) -> None:
        self.app = app
        names = {h.strip().lower() for h in hosts.split(",") if h.strip()}
        self.any_host = "*" in names
        self.names = frozenset(names | _LOCAL_NAMES | {bound.lower().strip("[]")})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal = self._refusal(scope["method"], headers)

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                found = MutableHeaders(raw=message["headers"])
                for name, value in SECURITY_HEADERS:
                    found.raw.append((name, value))
                if "content-security-policy" not in found:
                    found.raw.append((b"content-security-policy", DATA_POLICY.encode()))
            await send(message)

        if refusal is None:
            await self.app(scope, receive, secured)
            return
        status, message = refusal
        response = Response(error_json(status, message), status, media_type=JSON)
        await response(scope, receive, secured)

    def _refusal(self, method: str, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.any_host and not self._known(host):
            return 421, "this gateway is not served under that Host name"
        if method == "POST":
            kind = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip()
            if kind.lower() not in _BODY_TYPES:
                return 415, f"POST a body of Content-Type {JSON} (or {MSGPACK})"
        return None

    def _known(self, host: str) -> bool:
        name = host.lower()
        if name.startswith("["):  # [v6]:port
            name = name[1 : name.find("]")] if "]" in name else name
        else:
            name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        if name in self.names:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True  # an address is no DNS name: nothing to rebind

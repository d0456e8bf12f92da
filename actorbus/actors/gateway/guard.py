"""What a connection to the gateway may do before it is a request: limits enforced where
the bytes arrive, in the HTTP protocol itself, so nothing unbounded is buffered or held.

- **Connections**: at most ``gateway_max_connections`` open,
  ``gateway_max_connections_per_ip`` from one client address (an IPv6 /64 counts as one),
  and from one network (an IPv4 /24) no more than are still free; beyond any, a 503 and
  a close, before a byte is read.
- **The request head** (request line and headers): counted as it arrives; past
  ``gateway_max_headers`` bytes or ``gateway_max_header_count`` headers, a 431 and a close
  (the parser never holds more than the limit plus one read). The whole head must arrive
  within ``gateway_header_timeout`` of the connection opening or its next request
  beginning (a 408 and a close; a connection that sent nothing is closed), so a
  connection that sends nothing or drips its headers is not held.
- **Idle**: a keep-alive connection is closed after ``gateway_idle_timeout`` between
  requests.
- **Framing**: ``Transfer-Encoding`` other than exactly ``chunked`` is refused (400), as
  are protocol upgrades (the gateway serves no WebSocket); chunk lines and trailers
  beyond a head's worth and an eighth of the body are 431 (the parser holds a trailer
  until it ends), and at most 16 requests may be pipelined ahead of their answers (each
  is parsed and held).
- **Between requests**: whatever arrives (blank lines, more of a body already answered)
  does not hold a connection open: the next head must be complete in time, as above.
- **Answers left unread, in all**: the bytes a connection's reader has not taken sit in
  its write buffer; past ``gateway_max_unread`` bytes across every connection whose
  reader is behind, the ones that fell behind first are reset until the rest fits
  (:class:`Backlog`).
- **Closing**: a connection closed with a response still unsent (a reader that stopped
  reading) is aborted after ``gateway_header_timeout``, not held until it reads.
- **Stalled readers**: a connection whose reader stops taking a response (the gateway's
  writes wait for it) is reset after ``gateway_stall_timeout``, whatever route answers:
  an answer left unread, with one more request behind it, held a request slot and the
  connection for good (issue 30). A response is done when the reader has taken it, not
  when the app has handed it over: until the connection's buffer is back under its low
  mark, the next request is neither read nor started (the app's last write only fills
  the buffer, and the request behind it then held a slot that no share counted), and
  :data:`WRITTEN` lets the app wait for that moment to give back what the request held.

It is uvicorn's httptools protocol with these checks in its parser callbacks (uvicorn
takes a protocol class as its ``http`` option); tests/test_gateway_guard.py holds it to
each limit with raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import socket
import struct
from typing import Any, Protocol, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import DATA_POLICY, SECURITY_HEADERS, error_json

__all__ = [
    "WRITTEN",
    "Admission",
    "Backlog",
    "HeadLimits",
    "client_group",
    "client_network",
    "guarded_protocol",
]


def client_group(host: str) -> str:
    """The address a client is counted as: an IPv4 address itself, an IPv6 address its
    /64 (one subscriber's usual allocation), anything else as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def client_network(address: str) -> str:
    """The network of a client (:func:`client_group`'s address, so an IPv4 one is in
    dotted form): an IPv4 /24 (an IPv6 client is its /64 already)."""
    if ":" in address:
        return address
    head, dot, _ = address.rpartition(".")
    return f"{head}.0/24" if dot else address


class Admission:
    """Open connections of one server, in all, by client address, and by network: one
    network (:func:`client_network`) holds no more connections than are still free, so
    a few networks cannot take them all whatever their number of addresses (issue 30: 58
    addresses of one /24, each under its own cap, held all 4,096)."""

    def __init__(self, max_connections: int, max_per_client: int) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.total = 0
        self._by_client: dict[str, int] = {}
        self._by_network: dict[str, int] = {}

    def enter(self, client: str) -> str:
        """Count a new connection from ``client``; or say why it is refused."""
        free = self.max_connections - self.total
        if free <= 0:
            return f"the gateway holds its limit of {self.max_connections} connections"
        held = self._by_client.get(client, 0)
        if held >= self.max_per_client:
            return f"your address holds its limit of {self.max_per_client} connections"
        network = client_network(client)
        near = self._by_network.get(network, 0)
        if near >= free:
            return f"your network holds {near} connections, as many as are still free"
        self.total += 1
        self._by_client[client] = held + 1
        self._by_network[network] = near + 1
        return ""

    def leave(self, client: str) -> None:
        self.total -= 1
        for table, key in ((self._by_client, client), (self._by_network, client_network(client))):
            held = table.pop(key) - 1
            if held:
                table[key] = held


class _Behind(Protocol):
    """A connection whose reader is behind."""

    network: str
    """Its client's network (:func:`client_network`)."""

    def unsent(self) -> int:
        """Bytes written to it that its reader has not taken (its write buffer)."""

    def reset(self) -> None:
        """Drop it, and what it holds."""


class Backlog:
    """What the connections whose readers are behind hold, in all and by network.

    A network that holds an eighth of ``limit`` starts no new request until it holds less
    (503 before its body is read). Past ``limit`` in all, connections are reset until the
    rest is under 7/8 of it: from the network that holds the most first (of two as heavy,
    the one that fell behind last), and within it the one that fell behind first. A
    reader that takes what it is sent is not behind for long; one on a slow link is, and
    the networks that hold more than it does lose theirs first.

    Issue 30: each of 1,000 connections asked for eight 900 KB answers and read none; each
    held one, 967 MiB in all, and the gateway's legitimate callers got 67.5% of their
    calls. The stall timeout bounds how long one is held, not how many are: this bounds
    the sum, and what one network asks for while it holds its share.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.share = limit // 8
        """Bytes one network may hold before it starts no new request."""
        self._behind: dict[_Behind, int] = {}
        """In the order they fell behind: the bytes each held then (it only drains until
        it catches up, so their sum bounds what they hold)."""
        self._by_network: dict[str, int] = {}
        self._total = 0

    def full(self, network: str) -> bool:
        """Whether ``network`` holds its share: it may start no new request."""
        return self._by_network.get(network, 0) >= self.share

    def behind(self, connection: _Behind) -> None:
        """``connection``'s reader fell behind (its writes are paused)."""
        self.caught_up(connection)
        held = connection.unsent()
        self._behind[connection] = held
        self._by_network[connection.network] = self._by_network.get(connection.network, 0) + held
        self._total += held
        if self._total > self.limit:
            self._shed()

    def caught_up(self, connection: _Behind) -> None:
        """``connection``'s reader took what it held, or it is gone."""
        held = self._behind.pop(connection, None)
        if held is None:
            return
        self._total -= held
        left = self._by_network.pop(connection.network) - held
        if left > 0:
            self._by_network[connection.network] = left

    def _shed(self) -> None:
        self._behind = {c: c.unsent() for c in self._behind}  # what they hold now
        self._total = sum(self._behind.values())
        networks: dict[str, list[_Behind]] = {}
        for connection in self._behind:
            networks.setdefault(connection.network, []).append(connection)
        sums = {net: sum(self._behind[c] for c in held) for net, held in networks.items()}
        # The heaviest first; of two as heavy, the one that fell behind last.
        arrived = {net: i for i, net in enumerate(networks)}
        heaviest = [(-total, -arrived[net], net) for net, total in sums.items()]
        heapq.heapify(heaviest)
        # Down to 7/8 of the bound: the next shedding is an eighth of it away, so its
        # cost (a pass over every connection behind) is spread over that many arrivals.
        while self._total > self.limit - self.share and heaviest:
            _, _, net = heapq.heappop(heaviest)
            first = networks[net].pop(0)
            held = self._behind.pop(first)
            self._total -= held
            sums[net] -= held
            first.reset()
            if networks[net]:
                heapq.heappush(heaviest, (-sums[net], -arrived[net], net))
        self._by_network = {net: total for net, total in sums.items() if total > 0}


class HeadLimits:
    """What a request head may be, and how long it may take; and how long a response may
    wait for its reader."""

    def __init__(
        self, *, max_bytes: int, max_count: int, timeout: float, stall: float = 30.0
    ) -> None:
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.timeout = timeout
        self.stall = stall
        """Seconds a response's writes may wait for the reader to take what was sent."""


class _Refuse(Exception):
    """Raised in a parser callback to stop parsing; the protocol answers ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_REASONS[503] = b"Service Unavailable"


_NO_UPGRADES = "protocol upgrades are not served here"


class _ClosingAborts:
    """A connection's transport whose ``close`` becomes a reset when what it has left to
    send is not taken within ``grace`` seconds: asyncio would otherwise hold the
    connection (and its buffer) until the reader reads again, which a stalled one never
    does."""

    def __init__(
        self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, grace: float
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._grace = grace
        self._abort_timer: asyncio.TimerHandle | None = None
        self._lost = False
        self._aborted = False

    def close(self) -> None:
        self._transport.close()
        if self._abort_timer is None and not self._lost:
            self._abort_timer = self._loop.call_later(self._grace, self.abort)

    def write(self, data: bytes) -> None:
        """Send ``data``, unless the connection was reset (requests read before it was
        still finish, and their answers go nowhere)."""
        if not self._aborted:
            self._transport.write(data)

    def abort(self) -> None:
        """Reset the connection: what the kernel still holds for it is dropped too."""
        self._aborted = True
        if self._lost:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()

    def lost(self) -> None:
        self._lost = True
        if self._abort_timer is not None:
            self._abort_timer.cancel()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


WRITTEN = "actorbus.written"
"""The ASGI scope extension a guarded connection gives each request: ``{"wait": f}``,
where ``await f()`` returns once the connection's reader has taken what was written to
it (down to the transport's low mark), or the connection is gone (a stalled reader's is
reset after :attr:`HeadLimits.stall`, so the wait is bounded)."""

_MAX_PIPELINED = 16
"""Requests a connection may send ahead of their answers (each parsed one is held)."""


def _framing(limits: HeadLimits, body: int) -> int:
    """Bytes of chunk lines and trailers a request may send beside ``body`` bytes of body:
    a head's worth, and an eighth of the body (no client frames more than that)."""
    return 2 * limits.max_bytes + body // 8


def _over(limit: int) -> str:
    return f"the request head is over the limit of {limit} bytes"


def guarded_protocol(
    admission: Admission, limits: HeadLimits, backlog: Backlog
) -> type[asyncio.Protocol]:
    """The protocol class for one server: its connections share ``admission`` and
    ``backlog``."""

    class Guarded(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._group = ""
            self.network = ""
            self._admitted = False
            self._head_bytes = 0
            """Bytes received while the request head is not complete."""
            self._head_count = 0
            self._head_done = False
            self._after_head = 0
            """Bytes received since the head was complete (body, its framing, trailers)."""
            self._body = 0
            """Bytes of body the parser delivered."""
            self._head_timer: asyncio.TimerHandle | None = None
            self._stall_timer: asyncio.TimerHandle | None = None
            self._held_back = False
            """A response was complete while its writes were paused: the next request
            waits for the reader to take it."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._closing = _ClosingAborts(
                cast(asyncio.Transport, transport), self.loop, limits.timeout
            )
            super().connection_made(cast(asyncio.Transport, self._closing))
            self._group = client_group(self.client[0] if self.client else "")
            self.network = client_network(self._group)
            refusal = admission.enter(self._group)
            if refusal:
                self._answer(503, refusal, retry_after=True)
                return
            self._admitted = True
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            if self._stall_timer is not None:
                self._stall_timer.cancel()
            backlog.caught_up(self)
            self._closing.lost()
            if self._admitted:
                self._admitted = False
                admission.leave(self._group)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._admitted or self.transport.is_closing():
                return
            self._unset_keepalive_if_required()
            if self._head_done:
                self._after_head += len(data)
            else:
                self._head_bytes += len(data)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self._answer(400, _NO_UPGRADES)
                return
            except httptools.HttpParserError as exc:
                cause = exc.__context__
                if isinstance(cause, _Refuse):
                    self._answer(cause.status, cause.message, retry_after=cause.status == 503)
                else:
                    self._answer(400, "malformed HTTP request")
                return
            if not self._head_done and self._head_bytes > limits.max_bytes:
                self._answer(431, _over(limits.max_bytes))
            elif self._head_done and self._after_head - self._body > _framing(limits, self._body):
                self._answer(431, "the request's chunk lines and trailers are over the limit")
            elif self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                # Between requests (or past a response, with the request still sending):
                # whatever arrives, the next head must be complete in time.
                self._arm_head_timer()

        def pause_writing(self) -> None:
            """The reader is behind: it has :attr:`HeadLimits.stall` to catch up."""
            super().pause_writing()
            if self._stall_timer is None:
                self._stall_timer = self.loop.call_later(limits.stall, self._stalled)
            backlog.behind(self)

        def resume_writing(self) -> None:
            super().resume_writing()
            backlog.caught_up(self)
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None
            if self._held_back:
                self._held_back = False
                super().on_response_complete()

        def on_response_complete(self) -> None:
            """The app wrote its last byte of a response: read (and start) the next
            request only once the reader has taken it."""
            if self.flow.write_paused and not self.transport.is_closing():
                self.flow.pause_reading()
                self._held_back = True
                return
            super().on_response_complete()

        def _stalled(self) -> None:
            self._stall_timer = None
            self.reset()

        def unsent(self) -> int:
            return self.transport.get_write_buffer_size()

        def reset(self) -> None:
            self._closing.abort()

        # -- parser callbacks ---------------------------------------------------------

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_count = 0
            if self._head_timer is None:  # a keep-alive connection's next request
                self._arm_head_timer()

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_count += 1
            if self._head_count > limits.max_count:
                raise _Refuse(431, f"the request has over {limits.max_count} headers")
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm_head_timer()
            self._head_done = True
            if len(self.pipeline) >= _MAX_PIPELINED:
                raise _Refuse(400, f"over {_MAX_PIPELINED} requests pipelined unanswered")
            if backlog.full(self.network):
                raise _Refuse(503, "your network holds its share of answers not yet read")
            size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
            if size > limits.max_bytes:
                raise _Refuse(
                    431, f"the request head is over the limit of {limits.max_bytes} bytes"
                )
            for name, value in self.headers:
                if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
                    raise _Refuse(400, "Transfer-Encoding must be chunked, or absent")
            if self.parser.should_upgrade():
                raise _Refuse(400, _NO_UPGRADES)
            self.scope["extensions"] = {WRITTEN: {"wait": self.flow.drain}}
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            self._body += len(body)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._head_bytes = self._after_head = self._body = 0
            self._head_done = False

        # -- helpers ------------------------------------------------------------------

        def _arm_head_timer(self) -> None:
            self._head_timer = self.loop.call_later(limits.timeout, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self._head_bytes and not self._head_done:
                self._answer(408, f"request head not received within {limits.timeout:g}s")
            else:  # sent nothing, or only more of a request already answered
                self.transport.close()

        def _answer(self, status: int, message: str, *, retry_after: bool = False) -> None:
            """Answer ``status`` with the gateway's error body and close (a refusal
            before the app, or instead of it); while a response is under way (a pipelined
            request refused), only close."""
            self._disarm_head_timer()
            if self.cycle is not None and not self.cycle.response_complete:
                self.transport.close()
                return
            body = error_json(status, message)
            head = [
                b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
                b"content-type: application/json",
                b"content-length: %d" % len(body),
                *(b"%s: %s" % pair for pair in SECURITY_HEADERS),
                b"content-security-policy: " + DATA_POLICY.encode(),
                b"connection: close",
            ]
            if retry_after:
                head.append(b"retry-after: 1")
            self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
            self.transport.close()

    return Guarded

"""The gateway's connections, attacked with raw sockets as a web attacker would, against
`actor up -d`'s gateway (a process of its own): an unfinished header block, too many
headers, connections that send nothing or drip, idle keep-alives, a connection flood
from one address, and framing tricks. Each worked before the gateway read its requests
through its guard (actorbus/actors/gateway/guard.py)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from cluster import free_port
from up import Bus, embedded

pytestmark = pytest.mark.timeout(120)

PER_ADDRESS = 16
HEAD_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.0


class Gateway:
    def __init__(self, bus: Bus, port: int) -> None:
        self.bus = bus
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        """A raw connection from ``source`` (any 127/8 address is this machine)."""
        sock = socket.create_connection(
            ("127.0.0.1", self.port), timeout=10, source_address=(source, 0)
        )
        return sock


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port = free_port()
    limits = {
        "ACTOR_GATEWAY_PORT": str(port),
        "ACTOR_GATEWAY_MAX_CONNECTIONS_PER_IP": str(PER_ADDRESS),
        "ACTOR_GATEWAY_HEADER_TIMEOUT": str(HEAD_TIMEOUT),
        "ACTOR_GATEWAY_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
    }
    with embedded(tmp_path_factory.mktemp("guard"), **limits) as bus:
        yield Gateway(bus, port)


def answer(sock: socket.socket, limit: float = 10.0) -> bytes:
    """What the server sends until it closes the connection (at most ``limit`` s)."""
    sock.settimeout(limit)
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data


def error_of(response: bytes) -> dict[str, object]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    error: dict[str, object] = json.loads(body)
    assert set(error) == {"error", "code", "id"}
    return error


def health(gateway: Gateway, source: str = "127.0.0.1") -> int:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10) as client:
        return client.get(f"{gateway.url}/health").status_code


def test_an_endless_header_block_is_refused_while_it_arrives(gateway: Gateway) -> None:
    """Before: the parser buffered the block (1.26 GiB in 4 s) and the 431 came only
    once the headers were complete."""
    with gateway.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: ")
        sent = 0
        try:
            while sent < 8 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = answer(sock)
    assert response.startswith(b"HTTP/1.1 431 "), response[:200]
    assert error_of(response)["code"] == 431
    assert sent < 4 * 1024 * 1024  # refused long before the attacker was done


def test_too_many_headers_are_refused(gateway: Gateway) -> None:
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(150))
    with gateway.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
        response = answer(sock)
    assert response.startswith(b"HTTP/1.1 431 ")
    assert "headers" in str(error_of(response)["error"])


def test_a_silent_connection_is_closed(gateway: Gateway) -> None:
    with gateway.connect() as sock:
        started = time.monotonic()
        assert answer(sock, 10) == b""
        assert time.monotonic() - started < HEAD_TIMEOUT + 2


def test_a_dripped_head_gets_408(gateway: Gateway) -> None:
    """Slowloris: a byte of header every quarter second never completes the head."""
    with gateway.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        started = time.monotonic()
        try:
            for _ in range(40):
                sock.sendall(b"X")
                time.sleep(0.25)
                if time.monotonic() - started > HEAD_TIMEOUT + 2:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = answer(sock)
    assert response.startswith(b"HTTP/1.1 408 "), response[:200]
    assert time.monotonic() - started < HEAD_TIMEOUT + 3


def test_an_idle_keep_alive_connection_is_closed(gateway: Gateway) -> None:
    with gateway.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        started = time.monotonic()
        response = answer(sock, 10)
    assert response.startswith(b"HTTP/1.1 200 ")
    assert time.monotonic() - started < IDLE_TIMEOUT + 2


def test_one_address_holds_its_share_of_connections(gateway: Gateway) -> None:
    """Connections held from one address beyond its share get 503 and a close; another
    address is served meanwhile."""
    with ExitStack() as held:
        for _ in range(PER_ADDRESS):
            held.enter_context(gateway.connect("127.0.0.7"))
        with gateway.connect("127.0.0.7") as sock:
            response = answer(sock)
        assert response.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1" in response.lower()
        assert "your address" in str(error_of(response)["error"])
        assert health(gateway, "127.0.0.8") == 200
    # Released: the address is served again (the gateway noticed the closes).
    deadline = time.monotonic() + 5
    while health(gateway, "127.0.0.7") != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding: identity, chunked\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Upgrade: websocket\r\nConnection: upgrade\r\n",
    ],
)
def test_framing_tricks_are_refused(gateway: Gateway, framing: bytes) -> None:
    with gateway.connect() as sock:
        sock.sendall(
            b"POST /echo/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n" + framing + b"\r\n0\r\n\r\n"
        )
        response = answer(sock)
    assert response.startswith(b"HTTP/1.1 400 "), response[:200]
    assert error_of(response)["code"] == 400


def test_the_gateway_serves_on_after_every_attack(gateway: Gateway, tmp_path: Path) -> None:
    assert health(gateway) == 200

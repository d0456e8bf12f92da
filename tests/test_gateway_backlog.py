"""Issue 30's last gateway holes: answers left unread, and bodies, in all. Each of 1,000 connections
asked for 900 KB answers and read none; the gateway held one for each until its stall
timeout, 967 MiB in all, and its legitimate callers got 67.5% of their calls. Against
`actor up -d`'s gateway (a process of its own) with UNREAD bytes for readers that are
behind, attackers on raw sockets from loopback networks of their own (127.0.X.0/24), the
legitimate client httpx from 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress

import httpx
import pytest
from up import web_node

pytestmark = pytest.mark.timeout(120)

UNREAD = 3 * 1024 * 1024
"""Bytes the gateway holds, in all, for readers that are behind; a network holds an
eighth of it before it starts no new request."""
ANSWER = 300_000
"""An answer larger than what the kernel takes of it for a reader that reads nothing
(with a small receive buffer and segment size): most of it stays in the gateway."""
BODIES = 16 * 1024 * 1024
"""Bytes of request bodies the gateway holds at once."""
STALL = 20.0
"""Longer than any test here: what is reset before it, the bound reset."""


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    limits = {
        "ACTOR_GATEWAY_MAX_UNREAD": str(UNREAD),
        "ACTOR_GATEWAY_MAX_BODIES": str(BODIES),
        "ACTOR_GATEWAY_STALL_TIMEOUT": str(STALL),
    }
    with web_node(tmp_path_factory.mktemp("backlog"), **limits) as (bus, port):
        bus.actor("policy", "config", "--floor", "100000")  # the actor's quota is not tested
        yield port


def unread(port: int, source: str) -> socket.socket:
    """A connection from ``source`` that asks for an ANSWER-sized echo and reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    body = json.dumps({"args": ["x" * ANSWER]}).encode()
    head = b"POST /echo/forward HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with suppress(OSError):  # refused (503) while it sends: it holds nothing
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return sock


def answer(sock: socket.socket, limit: float = 1.0) -> bytes:
    """What ``sock`` receives until the gateway closes or resets it, or ``limit`` s pass."""
    sock.settimeout(limit)
    data = b""
    with suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def legit_calls(port: int, count: int = 30) -> float:
    """The share of ``count`` calls (one at a time) the client at 127.0.0.1 gets through."""
    ok = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        for i in range(count):
            with suppress(httpx.TransportError):
                ok += http.get("/echo/forward", params={"message": str(i)}).status_code == 200
            time.sleep(0.02)
    return ok / count


def test_a_network_that_holds_its_share_starts_no_request(port: int) -> None:
    """A network whose readers hold an eighth of UNREAD gets a 503 (retry later) for its
    next request, before its body is read, whichever of its addresses asks; another
    network is served."""
    with ExitStack() as held:
        for i in range(2):
            held.enter_context(unread(port, f"127.0.60.{1 + i}"))
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), 10, ("127.0.60.9", 0)) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            refused = answer(sock, 5.0)
        assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
        assert b"retry-after: 1" in refused.lower()
        assert legit_calls(port, 5) == 1


def test_answers_left_unread_are_bounded_in_all(port: int) -> None:
    """Past UNREAD bytes in all, connections are reset at once (long before their stall
    timeout), from the networks that hold the most, and in each the first to fall behind:
    16 networks each leave two answers unread. A slow reader in a network of its own,
    behind before them all, keeps its answer; the client is served."""
    with ExitStack() as held:
        slow_reader = held.enter_context(unread(port, "127.0.40.1"))
        time.sleep(0.3)
        attack = []
        for network in range(70, 86):
            for i in range(2):
                attack.append(held.enter_context(unread(port, f"127.0.{network}.{1 + i}")))
                time.sleep(0.03)
        cut = [sock for sock in attack if len(answer(sock, 0.2)) < ANSWER]
        assert len(cut) >= 4, len(cut)
        assert len(answer(slow_reader)) > ANSWER
        assert legit_calls(port) >= 0.9


def test_large_bodies_at_once_are_bounded(port: int) -> None:
    """1,000 calls of 900 KB at once held 941 MiB of the gateway (each body read, sent
    and answered, a few copies of each). A body counts at its Content-Length from its
    request's arrival until its answer is taken, and one network holds no more of BODIES
    than is still free: 12 bodies of 900 KB from one network, each sent slowly, and the
    last few get a 503 before a byte of theirs is read; another network is served."""
    declared = 900_000
    head = (
        b"POST /echo/forward HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n{" % declared
    )
    with ExitStack() as held:
        slow = []
        for i in range(12):
            source = (f"127.0.91.{1 + i}", 0)
            sock = held.enter_context(socket.create_connection(("127.0.0.1", port), 10, source))
            sock.sendall(head)
            slow.append(sock)
            time.sleep(0.05)
        answers = [answer(sock, 0.5) for sock in slow]
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert 1 <= len(refused) <= 12 - (BODIES // 2) // declared, [a[:40] for a in answers]
        assert all(b"request" in a for a in refused)
        assert legit_calls(port, 5) == 1

"""Issue 30's gateway holes: the limits assumed one address is one client. Against `actor up
-d`'s gateway (a process of its own), with attackers on raw sockets and httpx from
loopback addresses of their own (any 127/8 address is this machine: 127.0.31.0/24 is
another network to the gateway than the legitimate client's 127.0.0.0/24). Each attack
runs while a legitimate client calls; it must get >= 90% of its calls through (before:
none of them)."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress

import httpx
import pytest
from up import Bus, web_node

from actorbus import Keypair

pytestmark = pytest.mark.timeout(120)

SLOTS = 24
"""The gateway's requests at once (``gateway_max_concurrency``)."""
CONNECTIONS = 128
"""The gateway's connections at once (``gateway_max_connections``)."""
SHARE = 8
"""A client's requests at once."""
PER_ADDRESS = 16
STALL = 5.0
SLOW = 3.0
"""Seconds of a slow call."""
LEGIT = "127.0.0.1"


class Gateway:
    def __init__(self, bus: Bus, port: int) -> None:
        self.bus = bus
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def connect(self, source: str, *, small: bool = False) -> socket.socket:
        """A raw connection from ``source``; ``small``: with a small receive buffer and
        segment size, so an answer of a few hundred KB the reader does not take is held
        in the gateway's own buffer (with loopback's 64 KB segments the kernel would
        take up to 4 MB of it first)."""
        sock = socket.socket()
        if small:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.port))
        return sock

    def client(self, source: str) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source)
        return httpx.Client(transport=transport, base_url=self.url, timeout=10)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    limits = {
        "ACTOR_GATEWAY_MAX_CONCURRENCY": str(SLOTS),
        "ACTOR_GATEWAY_MAX_CONNECTIONS": str(CONNECTIONS),
        "ACTOR_GATEWAY_CLIENT_CONCURRENCY": str(SHARE),
        "ACTOR_GATEWAY_MAX_CONNECTIONS_PER_IP": str(PER_ADDRESS),
        "ACTOR_GATEWAY_STALL_TIMEOUT": str(STALL),
    }
    with web_node(tmp_path_factory.mktemp("shares"), **limits) as (bus, port):
        bus.actor("policy", "config", "--floor", "100000")  # the actor's quota is not tested
        yield Gateway(bus, port)


def post(path: str, body: bytes, headers: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"%sContent-Length: %d\r\n\r\n%s" % (path.encode(), headers, len(body), body)
    )


def legit_calls(gateway: Gateway, count: int = 30, source: str = LEGIT) -> float:
    """The share of ``count`` calls (one at a time, a few a second) a well-behaved client
    gets through."""
    ok = 0
    with gateway.client(source) as http:
        for i in range(count):
            with suppress(httpx.TransportError):
                response = http.get("/echo/forward", params={"message": str(i)})
                ok += response.status_code == 200
            time.sleep(0.02)
    return ok / count


@pytest.fixture(autouse=True)
def _released(gateway: Gateway) -> Iterator[None]:
    """Whatever a test held is released before the next one begins: the test closes its
    connections, and the slow calls it started (which the gateway sees through) end."""
    started = time.monotonic()
    yield
    time.sleep(max(0.0, started + SLOW + 0.2 - time.monotonic()))
    assert legit_calls(gateway, 3, "127.0.0.99") == 1


def during(gateway: Gateway, held: ExitStack, attack: list[socket.socket]) -> float:
    """What :func:`legit_calls` gets while the connections of ``attack`` are held (they
    are closed with ``held``)."""
    for sock in attack:
        held.enter_context(sock)
    time.sleep(0.5)
    return legit_calls(gateway)


def unread(
    gateway: Gateway, source: str, then: bytes = b"", count: int = PER_ADDRESS
) -> list[socket.socket]:
    """``count`` connections from ``source`` that each ask for an answer larger than the socket
    buffers, send ``then`` behind it on the same connection, and read nothing."""
    big = post("/echo/forward", json.dumps({"args": ["x" * 300_000]}).encode())
    opened = []
    for _ in range(count):
        sock = gateway.connect(source, small=True)
        opened.append(sock)
        with suppress(OSError):
            sock.sendall(big + then)
        time.sleep(0.03)  # one after another: none is refused for its share meanwhile
    return opened


def test_an_unread_answer_starts_no_request_behind_it(gateway: Gateway) -> None:
    """Before: the app's last write of an answer only filled the connection's buffer, the
    request pipelined behind it started at once, and its answer waited for the reader
    with a request slot that no client's share counted: 2 addresses x 16 such
    connections held the gateway's slots and the legitimate client got none of its 30
    calls (until the stall timeout reset them). Now the next request is read only once the
    reader has taken the answer, and the answer holds its client's share until then."""
    small = post("/echo/forward", b'{"args": ["behind"]}')

    with ExitStack() as held:
        attack = [s for a in ("127.0.31.1", "127.0.31.2") for s in unread(gateway, a, small)]
        assert during(gateway, held, attack) >= 0.9


def test_every_route_holds_its_share_until_its_answer_is_taken(gateway: Gateway) -> None:
    """Before: a call's share was given back before its answer was written, and /health
    and /openapi.json took none, so a client could hold any number of unread answers.
    Now an address with SHARE answers unread has no request left: 429 on every route,
    until the gateway resets those connections; another address is served."""
    with ExitStack() as held:
        for sock in unread(gateway, "127.0.0.41", count=SHARE):
            held.enter_context(sock)
        time.sleep(0.5)
        with gateway.client("127.0.0.41") as http:
            for path in ("/health", "/openapi.json", "/echo/forward?message=x"):
                assert http.get(path).status_code == 429, path
        with gateway.client("127.0.0.42") as http:
            assert http.get("/health").status_code == 200


def commune(key: Keypair, target: str, args: list[object]) -> bytes:
    data = json.dumps({"target": target, "args": args, "kwargs": {}, "timestamp": time.time()})
    body = {"data": data, "signature": key.sign(data.encode()).hex(), "address": key.address}
    return json.dumps(body).encode()


def btauth(key: Keypair, receiver: str, path: str, body: bytes) -> bytes:
    """bittensor's btauth/1 headers for ``body``, signed by ``key`` (ed25519)."""
    nonce = str(time.time_ns())
    signed = "\n".join(
        (
            "btauth/1",
            "ed25519",
            "POST",
            path,
            hashlib.sha256(body).hexdigest(),
            nonce,
            key.address,
            receiver,
        )
    )
    headers = {
        "Version": "1",
        "Hotkey": key.address,
        "Receiver": receiver,
        "Nonce": nonce,
        "Crypto": "ed25519",
        "Signature": "0x" + key.sign(signed.encode()).hex(),
    }
    return b"".join(
        b"X-Bittensor-%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items()
    )


def test_keys_anyone_can_make_count_against_their_address(gateway: Gateway) -> None:
    """Before: a commune body or a bittensor hotkey was counted by its key alone, and
    keys cost nothing: from one address, 2 x SHARE slow calls under fresh keys got no
    429 at all, and from 2 addresses they took every slot (the legitimate client got none
    of its 30 calls). Now they count against the address they come from too."""
    with gateway.client(LEGIT) as http:
        receiver = http.get("/health").json()["address"]
    attack = []
    for source in ("127.0.32.1", "127.0.32.2"):
        for i in range(PER_ADDRESS):
            key = Keypair.generate()
            if i % 2:
                request = post("/echo/sleep", commune(key, "echo/sleep", [SLOW]))
            else:
                body = json.dumps({"args": [SLOW]}).encode()
                request = post("/echo/sleep", body, btauth(key, receiver, "/echo/sleep", body))
            sock = gateway.connect(source)
            attack.append(sock)
            sock.sendall(request)
    with ExitStack() as held:
        assert during(gateway, held, attack) >= 0.9
        # Each address had SHARE calls at most; the others were refused at once.
        statuses = [status_of(sock) for sock in attack]
    refused = statuses.count(429) + statuses.count(503)
    assert refused >= 2 * (PER_ADDRESS - SHARE), statuses


def status_of(sock: socket.socket) -> int:
    """The status of the answer on ``sock`` (0: none, or the connection was closed)."""
    try:
        return int(sock.recv(12)[9:12] or 0)
    except OSError:
        return 0


SLOW_BODY = (
    b"POST /echo/forward HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n{"
)


@pytest.mark.parametrize("kind", ["slow calls", "slow bodies"])
def test_a_few_addresses_cannot_take_the_gateway(gateway: Gateway, kind: str) -> None:
    """Before: addresses each within their share held every slot of the gateway between
    them (6 addresses x SHARE slow calls, or bodies that never finish, which held a slot
    before any share was counted), and the legitimate client got none of its 30 calls.
    Now a network (an IPv4 /24) holds no more of the slots than are still free."""
    slow = post("/echo/sleep", json.dumps({"args": [SLOW]}).encode())
    attack = []
    for address in range(1, 7):
        for _ in range(SHARE):
            sock = gateway.connect(f"127.0.33.{address}")
            attack.append(sock)
            sock.sendall(slow if kind == "slow calls" else SLOW_BODY)
    with ExitStack() as held:
        assert during(gateway, held, attack) >= 0.9


def test_a_few_addresses_cannot_take_the_gateways_connections(gateway: Gateway) -> None:
    """The second attacker: 58 addresses, each under its own cap, held every connection the
    gateway takes (4,300 slowloris connections against 4,096) and the legitimate client
    got 17.5% of its calls. Now a network holds no more connections than are still
    free: here 8 addresses x PER_ADDRESS connections of one /24 try to hold all
    CONNECTIONS."""
    attack = []
    for address in range(1, 9):
        for _ in range(PER_ADDRESS):
            with suppress(OSError):
                attack.append(gateway.connect(f"127.0.35.{address}"))
    with ExitStack() as held:
        assert during(gateway, held, attack) >= 0.9

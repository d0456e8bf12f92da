"""The gateway attacked as a web attacker would, against `actor up -d`'s gateway (a process
of its own). With raw sockets: an unfinished header block, too many headers, connections
that send nothing or drip, idle keep-alives, a connection flood from one address,
framing tricks (each worked before the gateway read its requests through its guard,
actorbus/actors/gateway/guard.py). With httpx, as a web page would: a rebound Host name,
forms and text bodies, GET of a function with effects, and responses a browser would
sniff or frame (actorbus/actors/gateway/web.py)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx
import pytest
from cluster import free_port
from up import Bus, web_node

pytestmark = pytest.mark.timeout(120)

PER_ADDRESS = 16
HEAD_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.0
SHARE = 8
STALL = 1.0


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
    limits = {
        "ACTOR_GATEWAY_MAX_CONNECTIONS_PER_IP": str(PER_ADDRESS),
        "ACTOR_GATEWAY_HEADER_TIMEOUT": str(HEAD_TIMEOUT),
        "ACTOR_GATEWAY_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
        "ACTOR_GATEWAY_CLIENT_CONCURRENCY": str(SHARE),
        "ACTOR_GATEWAY_STALL_TIMEOUT": str(STALL),
    }
    with web_node(tmp_path_factory.mktemp("guard"), **limits) as (bus, port):
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


def endless(sock: socket.socket, start: bytes) -> tuple[int, bytes]:
    """Send ``start``, then a header value that never ends (up to 8 MiB, until the gateway
    stops taking it); how much of it went, and what the gateway answered."""
    sock.sendall(start)
    sent = 0
    with suppress(BrokenPipeError, ConnectionResetError):
        while sent < 8 * 1024 * 1024:
            sock.sendall(b"a" * 65536)
            sent += 65536
    return sent, answer(sock)


def error_of(response: bytes) -> dict[str, object]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    for header in (b"x-content-type-options: nosniff", b"x-frame-options: deny"):
        assert header in head.lower()
    assert b"content-security-policy: default-src 'none'" in head.lower()
    error: dict[str, object] = json.loads(body)
    assert set(error) == {"error", "code", "id"}
    return error


def health(gateway: Gateway, source: str = "127.0.0.1") -> int:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10) as client:
        return client.get(f"{gateway.url}/health").status_code


def test_an_answer_left_unread_does_not_hold_its_connection(gateway: Gateway) -> None:
    """Issue 30: ask for answers larger than the socket buffers and read none of them: the
    gateway's writes waited to drain with no timer, so the connection and a request slot
    were held for good (one still at 300 s; 5 addresses x 220 such connections and a
    legitimate client got 0 of 125 calls). Now a reader that takes nothing for the stall
    timeout loses its connection: what it reads afterwards is cut short."""
    body = json.dumps({"args": ["x" * 700_000]}).encode()
    request = (
        b"POST /echo/forward HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    count = 10  # 7 MB of answers: more than the kernel buffers on both sides (4 MB)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.9", 0))
        sock.settimeout(20)
        sock.connect(("127.0.0.1", gateway.port))

        def send() -> None:
            with suppress(OSError):  # the gateway may reset it while this still sends
                sock.sendall(request * count)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        time.sleep(STALL + 4)
        taken = answer(sock, 5.0)
        sender.join(10)
    assert len(taken) < count * len(body), len(taken)
    assert health(gateway, "127.0.0.9") == 200


def test_an_endless_header_block_is_refused_while_it_arrives(gateway: Gateway) -> None:
    """Before: the parser buffered the block (1.26 GiB in 4 s) and the 431 came only
    once the headers were complete."""
    with gateway.connect() as sock:
        sent, response = endless(sock, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: ")
    assert response.startswith(b"HTTP/1.1 431 "), response[:200]
    assert error_of(response)["code"] == 431
    assert sent < 4 * 1024 * 1024  # refused long before the attacker was done


def test_an_endless_trailer_is_refused_while_it_arrives(gateway: Gateway) -> None:
    """The second attacker's find: trailers come after the head, where nothing counted
    them, and the parser held each until it ended (+400 MiB from 100 connections)."""
    with gateway.connect() as sock:
        sent, response = endless(
            sock,
            b"POST /echo/forward HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: ",
        )
    # A 431, or (the app already reading the request's body) the connection closed:
    # either way, long before the attacker was done.
    assert response == b"" or response.startswith(b"HTTP/1.1 431 "), response[:200]
    assert sent < 4 * 1024 * 1024


def test_pipelining_is_bounded(gateway: Gateway) -> None:
    """The second attacker's find: every pipelined request in what was read was parsed
    and held (20 connections took the gateway to 2.6 GiB). Past 16 ahead of their
    answers, the connection is closed."""
    one = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with gateway.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(one * 5000)
        started = time.monotonic()
        response = answer(sock)  # until the gateway closes it
    assert response.count(b"HTTP/1.1 200 ") <= 17
    assert time.monotonic() - started < 5
    assert health(gateway) == 200


@pytest.mark.parametrize(
    ("request_head", "drip"),
    [
        # more of a body the gateway already answered (a 405: a GET with a body)
        (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000\r\n\r\n", b" "),
        # blank lines between requests (the parser skips them)
        (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"\r\n"),
    ],
)
def test_dripping_after_an_answer_does_not_hold_a_connection(
    gateway: Gateway, request_head: bytes, drip: bytes
) -> None:
    """The second attacker's find: a byte every few seconds after a response kept the
    connection open for good (each byte put off the idle timer)."""
    with gateway.connect() as sock:
        sock.sendall(request_head)
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < HEAD_TIMEOUT + IDLE_TIMEOUT + 4:
            try:
                sock.sendall(drip)
                sock.settimeout(0.3)
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
    assert closed


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


def web(gateway: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, timeout=10)


def test_a_rebound_host_name_is_refused(gateway: Gateway) -> None:
    """DNS rebinding: a page at evil.example points its name at 127.0.0.1 and calls the
    gateway as its own origin; the Host header still says evil.example."""
    with web(gateway) as http:
        for host in ("evil.example", f"evil.example:{gateway.port}"):
            refused = http.get("/health", headers={"Host": host})
            assert refused.status_code == 421 and error_of_response(refused)["code"] == 421
        refused = http.post("/echo/forward", json={"args": ["x"]}, headers={"Host": "evil.example"})
        assert refused.status_code == 421
        for host in (f"localhost:{gateway.port}", f"127.0.0.1:{gateway.port}", "[::1]"):
            assert http.get("/health", headers={"Host": host}).status_code == 200
        # No redirect is built from the Host header (it was: /health/ -> evil.example).
        slash = http.get("/health/", headers={"Host": f"localhost:{gateway.port}"})
        assert slash.status_code == 404 and "location" not in slash.headers


def test_a_web_page_cannot_post_a_call(gateway: Gateway) -> None:
    """A form or text/plain body (or none) is what a page may send anywhere without a
    preflight: it is refused before any call, whatever the body says."""
    body = '{"args": ["csrf"]}'
    with web(gateway) as http:
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            refused = http.post("/echo/forward", content=body, headers={"Content-Type": kind})
            assert refused.status_code == 415, kind
        assert http.post("/echo/forward").status_code == 415  # no body, no type
        called = http.post(
            "/echo/forward", content=body, headers={"Content-Type": "application/json"}
        )
        assert (called.status_code, called.json()) == (200, "csrf")


def test_get_calls_only_functions_safe_to_repeat(gateway: Gateway) -> None:
    with web(gateway) as http:
        refused = http.get("/echo/sleep", params={"seconds": 0})
        assert refused.status_code == 405 and "idempotent" in error_of_response(refused)["error"]
        assert http.get("/echo/forward", params={"message": "hi"}).json() == "hi"
        paths = http.get("/openapi.json").json()["paths"]
        assert "get" in paths["/echo/forward"] and "get" not in paths["/echo/sleep"]


def test_every_response_is_the_gateways(gateway: Gateway) -> None:
    """nosniff, no framing and a CSP on every response; the pages' CSP names exactly
    their inline code; Swagger UI is pinned with Subresource Integrity; no banner."""
    with web(gateway) as http:
        answers = [
            http.get("/"),
            http.get("/docs"),
            http.get("/openapi.json"),
            http.get("/echo/forward", params={"message": "<script>"}),
            http.get("/nope/nope"),
        ]
        for response in answers:
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
            assert "server" not in response.headers
        dashboard, docs = answers[0], answers[1]
        policy = dashboard.headers["content-security-policy"]
        assert (
            "'sha256-" in policy
            and "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
        )
        assert 'integrity="sha384-' in docs.text and "@5.35.0/" in docs.text
        assert answers[2].headers["content-security-policy"].startswith("default-src 'none'")


def error_of_response(response: httpx.Response) -> dict[str, object]:
    error: dict[str, object] = response.json()
    assert set(error) == {"error", "code", "id"} and error["code"] == response.status_code
    return error


def test_deep_nesting_is_a_400_and_no_traceback(gateway: Gateway) -> None:
    """Before: a RecursionError, a 500 text/plain and ~5 KB of traceback into the logs
    per 1.2 KB request."""
    log = gateway.bus.settings.home / "node.log"
    before = log.read_text()
    deep = "[" * 5000 + "]" * 5000
    with web(gateway) as http:
        answers = [
            http.get("/echo/add", params={"a": "[" * 2000 + "]" * 2000, "b": 1}),
            http.post("/echo/forward", json={"data": deep, "signature": "00", "address": "x"}),
            http.post(
                "/echo/forward",
                content='{"data": ' + deep + ', "signature": "00", "address": "x"}',
                headers={"Content-Type": "application/json"},
            ),
            http.post(
                "/api/v0/job",
                content='{"work": "echo/add", "slices": ' + deep + "}",
                headers={"Content-Type": "application/json"},
            ),
        ]
        for response in answers:
            assert response.status_code == 400, response.text[:200]
            assert "nests deeper" in str(error_of_response(response)["error"])
        assert http.get("/echo/add", params={"a": 1, "b": 2}).json() == 3
    time.sleep(0.5)  # what the gateway logged has reached the node's log
    assert "Traceback" not in log.read_text()[len(before) :]


def test_unrouted_requests_get_the_one_error_shape(gateway: Gateway) -> None:
    with web(gateway) as http:
        for method, path, status in (("GET", "/nope", 404), ("PUT", "/echo/forward", 405)):
            response = http.request(method, path)
            assert response.status_code == status
            assert error_of_response(response)["code"] == status


def test_a_forwarded_for_header_is_nobodys_address(gateway: Gateway) -> None:
    """The second attacker's find: uvicorn took X-Forwarded-For from loopback, so a
    local caller could pass for any address (its share, its anonymous jobs). Here one
    address holds its whole share of calls; another, naming it, still has its own."""
    body = b'{"args": [3]}'
    sleep = (
        b"POST /echo/sleep HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with ExitStack() as held:
        for _ in range(SHARE):
            sock = held.enter_context(gateway.connect("127.0.0.62"))
            sock.sendall(sleep)
        time.sleep(0.5)
        spoofed = {"X-Forwarded-For": "127.0.0.62", "X-Real-IP": "127.0.0.62"}
        transport = httpx.HTTPTransport(local_address="127.0.0.61")
        with httpx.Client(transport=transport, base_url=gateway.url, timeout=10) as http:
            assert http.get("/echo/forward", params={"message": "x"}, headers=spoofed).json() == "x"
        transport = httpx.HTTPTransport(local_address="127.0.0.62")
        with httpx.Client(transport=transport, base_url=gateway.url, timeout=10) as http:
            assert http.get("/echo/forward", params={"message": "x"}).status_code == 429


def test_a_busy_gateway_port_is_said_in_one_line(tmp_path: Path) -> None:
    """Issue 21: `actor up -d` exited 0 listing `gateway 0` while the gateway had died of
    "Address already in use" (a ~100-line traceback in node.log only)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bus = Bus(tmp_path / "home", ACTOR_NATS_PORT=str(free_port()), ACTOR_GATEWAY_PORT=str(port))
        try:
            done = bus.run("up", "-d", "examples/echo.py:Echo")
            assert done.returncode == 0, done.stderr  # the node runs without its gateway
            assert (
                f"gateway did not start: error 503 the gateway cannot listen on 127.0.0.1:{port}"
                in done.stderr
            )
            assert "│ gateway" not in done.stderr
            assert "Traceback" not in (bus.settings.home / "node.log").read_text()
        finally:
            bus.run("down")


def test_the_gateway_serves_on_after_every_attack(gateway: Gateway) -> None:
    """... and wrote no traceback for any of them (the second attacker found one per
    closed keep-alive connection)."""
    assert health(gateway) == 200
    time.sleep(HEAD_TIMEOUT + 1)  # a closed connection's reset grace has passed
    assert "Traceback" not in (gateway.bus.settings.home / "node.log").read_text()

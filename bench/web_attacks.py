"""Web attackers for bench/gateway.py, each bounded in count and time, from loopback
addresses of their own (any 127/8 address is this machine, so each attacker address is a
client of its own to the gateway, as on the internet):

- **slowloris**: ``--slowloris N``: N connections that each send a request line and then
  a header byte every 2 s, never finishing the head; one the gateway closes is opened
  again, so N stay held (50 per address);
- **stalled SSE readers**: ``--stalled N``: N streams of bench/endless that read the
  response head and then nothing (20 per address), opened again when closed;
- **header flood**: ``--flood N``: N connections each streaming an endless header block
  as fast as they can, opened again when refused;

and issue 30's, calling bench30 (bench/gateway.py serves it), each held to the end of
the run (or opened again once answered):

- **unread answers**: ``--unread N``: N connections (220 per address) that each ask for a
  200 KB echo, pipeline one more call behind it and read nothing (a small receive buffer
  and segment size, so the answer stays in the gateway's buffers);
- **hoarded answers**: ``--hoard N``: N connections (16 per address, 250 per network)
  that each ask for a 900 KB echo and read nothing: what the gateway holds for them in
  all;
- **slow calls**: ``--slow N``: N anonymous calls of bench/sleep (32 per address: each
  address within its share);
- **commune keys**: ``--commune N``: N slow calls, each a commune body signed by a fresh
  key (220 per address);
- **slow bodies**: ``--bodies N``: N requests whose body never finishes (256 per address).

    python bench/web_attacks.py PORT SECONDS [--slowloris N] [--stalled N] [--flood N]
                                [--unread N] [--hoard N] [--slow N] [--commune N]
                                [--bodies N]

It prints a line once all are started, then, at the end, how many it held on average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from actorbus import Keypair

Attacker = Callable[[int, str, float, list[int]], Coroutine[Any, Any, None]]

_RECONNECT_PAUSE = 0.05


async def _connect(
    port: int, source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError:
        await asyncio.sleep(_RECONNECT_PAUSE)
        return None


async def _connections(
    port: int, source: str, until: float, held: list[int]
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Connections from ``source``, one after another until ``until``, each counted in
    ``held`` while open (closed when the next is asked for)."""
    while time.monotonic() < until:
        if (pair := await _connect(port, source)) is None:
            continue
        held[0] += 1
        try:
            yield pair
        finally:
            held[0] -= 1
            pair[1].close()


async def slowloris(port: int, source: str, until: float, held: list[int]) -> None:
    """A head that never ends: a header byte every 2 s; opened again once closed."""
    async for reader, writer in _connections(port, source, until, held):
        try:
            writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
            while time.monotonic() < until:
                writer.write(b"X")
                await writer.drain()
                try:
                    if not await asyncio.wait_for(reader.read(4096), 2.0):
                        break  # closed (after a 408)
                except TimeoutError:
                    continue
        except OSError:
            pass


async def stalled(port: int, source: str, until: float, held: list[int]) -> None:
    """A stream whose head is read, then nothing: held to the end (a phase is shorter
    than the gateway's stall timeout)."""
    async for reader, writer in _connections(port, source, until, held):
        try:
            writer.write(
                f"GET /bench/endless?size=60000 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
            )
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(max(0.0, until - time.monotonic()))
        except (OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(_RECONNECT_PAUSE)


async def flood(port: int, source: str, until: float, held: list[int]) -> None:
    """An endless header block, as fast as it goes; opened again once refused."""
    chunk = b"a" * 65536
    async for _, writer in _connections(port, source, until, held):
        try:
            writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX: ".encode())
            while time.monotonic() < until:
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass


def _post(port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _hold(
    port: int, source: str, until: float, held: list[int], request: Callable[[], bytes]
) -> None:
    """Send ``request()`` on a connection from ``source`` and hold it until it is
    answered or closed (read at most 64 KB: the answer's head), or the run ends; again."""
    async for reader, writer in _connections(port, source, until, held):
        try:
            writer.write(request())
            await asyncio.wait_for(reader.read(65536), max(0.0, until - time.monotonic()))
        except (OSError, TimeoutError):
            pass
        await asyncio.sleep(_RECONNECT_PAUSE)


async def _unread(port: int, source: str, until: float, held: list[int], request: bytes) -> None:
    """Send ``request`` and read nothing, until the run ends (a run is shorter than the
    gateway's stall timeout): a small receive buffer and segment size, so the answer
    stays in the gateway's buffers; again if the gateway closes it."""
    while time.monotonic() < until:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        sock.setblocking(False)
        held[0] += 1
        try:
            sock.bind((source, 0))
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            await asyncio.get_running_loop().sock_sendall(sock, request)
            await asyncio.sleep(max(0.0, until - time.monotonic()))
        except OSError:
            await asyncio.sleep(_RECONNECT_PAUSE)
        finally:
            held[0] -= 1
            sock.close()


async def unread(port: int, source: str, until: float, held: list[int]) -> None:
    """A 200 KB answer left unread with a call behind it."""
    big = _post(port, "/bench30/echo", json.dumps({"args": ["x" * 200_000]}).encode())
    small = _post(port, "/bench30/echo", b'{"args": ["behind"]}')
    await _unread(port, source, until, held, big + small)


async def hoard(port: int, source: str, until: float, held: list[int]) -> None:
    """A 900 KB answer left unread: many are what the gateway holds in all (issue 30's
    second attacker: 1,000 connections, 967 MiB)."""
    big = _post(port, "/bench30/echo", json.dumps({"args": ["x" * 900_000]}).encode())
    await _unread(port, source, until, held, big)


async def slow(port: int, source: str, until: float, held: list[int]) -> None:
    """Anonymous slow calls, one after another."""
    body = json.dumps({"args": [max(0.0, until - time.monotonic())]}).encode()
    await _hold(port, source, until, held, lambda: _post(port, "/bench30/sleep", body))


async def commune(port: int, source: str, until: float, held: list[int]) -> None:
    """Slow calls, each a commune body signed by a fresh key."""

    def request() -> bytes:
        key = Keypair.generate()
        data = json.dumps(
            {
                "target": "bench30/sleep",
                "args": [max(0.0, until - time.monotonic())],
                "kwargs": {},
                "timestamp": time.time(),
            }
        )
        signed = {"data": data, "signature": key.sign(data.encode()).hex(), "address": key.address}
        return _post(port, "/bench30/sleep", json.dumps(signed).encode())

    await _hold(port, source, until, held, request)


async def bodies(port: int, source: str, until: float, held: list[int]) -> None:
    """A request whose body never finishes."""
    head = _post(port, "/bench30/echo", b"")[: -len(b"0\r\n\r\n")] + b"100\r\n\r\n{"
    await _hold(port, source, until, held, lambda: head)


async def attack(port: int, seconds: float, counts: dict[str, int]) -> None:
    until = time.monotonic() + seconds
    held = [0]
    # each kind: its attacker, its first network (127.0.<net>.0/24), its connections per
    # address, and per network (then the next network's addresses)
    one = 1 << 20
    kinds: dict[str, tuple[Attacker, int, int, int]] = {
        "slowloris": (slowloris, 2, 50, one),
        "stalled": (stalled, 3, 20, one),
        "flood": (flood, 4, 10, one),
        "unread": (unread, 6, 220, one),
        "slow": (slow, 7, 32, one),
        "commune": (commune, 8, 220, one),
        "bodies": (bodies, 9, 256, one),
        "hoard": (hoard, 10, 16, 250),
    }
    tasks = []
    for kind, count in counts.items():
        run, net, per_address, per_network = kinds[kind]
        for i in range(count):
            network, index = divmod(i, per_network)
            source = f"127.0.{net + network}.{1 + index // per_address}"
            tasks.append(run(port, source, until, held))
    samples: list[int] = []

    async def sample() -> None:
        await asyncio.sleep(min(2.0, seconds / 4))  # once they are up
        while time.monotonic() < until:
            samples.append(held[0])
            await asyncio.sleep(0.5)

    print("started", flush=True)
    await asyncio.gather(sample(), *tasks)
    print(json.dumps({"held": sum(samples) / max(len(samples), 1)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--slowloris", type=int, default=0)
    parser.add_argument("--stalled", type=int, default=0)
    parser.add_argument("--flood", type=int, default=0)
    for kind in ("unread", "hoard", "slow", "commune", "bodies"):
        parser.add_argument(f"--{kind}", type=int, default=0)
    args = parser.parse_args()
    kinds = ("slowloris", "stalled", "flood", "unread", "hoard", "slow", "commune", "bodies")
    counts = {kind: getattr(args, kind) for kind in kinds}
    asyncio.run(attack(args.port, args.seconds, counts))


if __name__ == "__main__":
    main()

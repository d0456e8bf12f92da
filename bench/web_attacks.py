"""Web attackers for bench/gateway.py, each bounded in count and time, from loopback
addresses of their own (any 127/8 address is this machine, so each attacker address is a
client of its own to the gateway, as on the internet):

- **slowloris**: ``--slowloris N``: N connections that each send a request line and then
  a header byte every 2 s, never finishing the head; one the gateway closes is opened
  again, so N stay held (50 per address);
- **stalled SSE readers**: ``--stalled N``: N streams of bench/endless that read the
  response head and then nothing (20 per address), opened again when closed;
- **header flood**: ``--flood N``: N connections each streaming an endless header block
  as fast as they can, opened again when refused.

    python bench/web_attacks.py PORT SECONDS [--slowloris N] [--stalled N] [--flood N]

It prints a line once all are started, then, at the end, how many it held on average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

_RECONNECT_PAUSE = 0.05


async def _connect(
    port: int, source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError:
        await asyncio.sleep(_RECONNECT_PAUSE)
        return None


async def slowloris(port: int, source: str, until: float, held: list[int]) -> None:
    """A head that never ends: a header byte every 2 s; opened again once closed."""
    while time.monotonic() < until:
        if (pair := await _connect(port, source)) is None:
            continue
        reader, writer = pair
        held[0] += 1
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
        finally:
            held[0] -= 1
            writer.close()


async def stalled(port: int, source: str, until: float, held: list[int]) -> None:
    """A stream whose head is read, then nothing: held to the end (a phase is shorter
    than the gateway's stall timeout)."""
    while time.monotonic() < until:
        if (pair := await _connect(port, source)) is None:
            continue
        reader, writer = pair
        held[0] += 1
        try:
            writer.write(
                f"GET /bench/endless?size=60000 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
            )
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(max(0.0, until - time.monotonic()))
        except (OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(_RECONNECT_PAUSE)
        finally:
            held[0] -= 1
            writer.close()


async def flood(port: int, source: str, until: float, held: list[int]) -> None:
    """An endless header block, as fast as it goes; opened again once refused."""
    chunk = b"a" * 65536
    while time.monotonic() < until:
        if (pair := await _connect(port, source)) is None:
            continue
        _, writer = pair
        held[0] += 1
        try:
            writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX: ".encode())
            while time.monotonic() < until:
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            held[0] -= 1
            writer.close()


async def attack(port: int, seconds: float, counts: dict[str, int]) -> None:
    until = time.monotonic() + seconds
    held = [0]
    kinds = {"slowloris": (slowloris, 2, 50), "stalled": (stalled, 3, 20), "flood": (flood, 4, 10)}
    tasks = []
    for kind, count in counts.items():
        run, net, per_address = kinds[kind]
        for i in range(count):
            tasks.append(run(port, f"127.0.{net}.{1 + i // per_address}", until, held))
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
    args = parser.parse_args()
    counts = {"slowloris": args.slowloris, "stalled": args.stalled, "flood": args.flood}
    asyncio.run(attack(args.port, args.seconds, counts))


if __name__ == "__main__":
    main()

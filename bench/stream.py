"""A streamed reply vs the same items as separate calls, in one run.

    python bench/stream.py [--items 10000] [--repeat 3] [--window 64]

(calls) 10,000 signed calls of `one(i)`, one at a time and with 64 in flight;
(stream) one call of `many(10000)` whose items come as 10,000 verified chunks;
then the time to the first chunk of a stream vs a plain call's latency (median of 200);
then the actor's memory (RSS) while a reader of 64 KiB chunks stalls for 2 s, against
its RSS before: the window (64 chunks, 4 MiB) bounds what it may run ahead.
The actor runs in its own process (`actor serve`) on an embedded nats-server; the caller
here verifies every reply and chunk. Target: stream >= 5x the calls' items/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import psutil
from calls import start

from actorbus import Actor, Client, Settings
from actorbus.bus import EmbeddedServer

HERE = Path(__file__).resolve()


class Streamer(Actor):
    name = "streamer"

    async def one(self, i: int) -> int:
        return i

    async def many(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def blobs(self, n: int, size: int) -> AsyncIterator[str]:
        for _ in range(n):
            yield "x" * size


async def calls(settings: Settings, items: int, concurrency: int) -> float:
    async with Client(settings=settings) as client:
        left = iter(range(items))

        async def worker() -> None:
            for i in left:
                assert await client.call("streamer", "one", i) == i

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return items / (time.perf_counter() - started)


async def stream(settings: Settings, items: int, window: int) -> float:
    async with Client(settings=settings) as client:
        started = time.perf_counter()
        n = 0
        async for i in client.stream("streamer", "many", items, _window=window, _timeout=120):
            assert i == n
            n += 1
        assert n == items
        return items / (time.perf_counter() - started)


async def first_chunk(settings: Settings, window: int, repeat: int = 200) -> tuple[float, float]:
    """Median ms to a plain call's reply, and to a stream's first chunk."""
    plain, first = [], []
    async with Client(settings=settings) as client:
        for _ in range(repeat):
            started = time.perf_counter()
            await client.call("streamer", "one", 1)
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            async with aclosing(client.stream("streamer", "many", 1, _window=window)) as chunks:
                async for _ in chunks:
                    first.append(time.perf_counter() - started)
    return statistics.median(plain) * 1e3, statistics.median(first) * 1e3


async def stalled_reader(settings: Settings, pid: int, window: int) -> tuple[float, float]:
    """The actor's RSS in MiB before a stream of 100,000 chunks of 64 KiB (6 GiB if it
    ran ahead) and after its reader took one chunk and stalled for 2 s."""
    process = psutil.Process(pid)
    before = process.memory_info().rss / 2**20
    async with Client(settings=settings) as client:
        chunks = client.stream("streamer", "blobs", 100_000, 65_536, _window=window, _timeout=60)
        async with aclosing(chunks):
            async for _ in chunks:
                await asyncio.sleep(2)
                break
        stalled = process.memory_info().rss / 2**20
    return before, stalled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="actorbus-bench-stream-")
    with EmbeddedServer(Path(home) / "nats") as server:
        env = dict(os.environ, ACTOR_NATS_URL=server.url, ACTOR_HOME=home)
        serve = [sys.executable, "-m", "actorbus.cli", "--log-level", "WARNING", "serve"]
        actor = start([*serve, f"{HERE}:Streamer"], env)
        settings = Settings(home=Path(home), nats_url=server.url, handler_timeout=120)
        try:
            results: dict[str, list[float]] = {"calls c=1": [], "calls c=64": [], "stream": []}
            for _ in range(args.repeat):
                results["calls c=1"].append(asyncio.run(calls(settings, args.items, 1)))
                results["calls c=64"].append(asyncio.run(calls(settings, args.items, 64)))
                results["stream"].append(asyncio.run(stream(settings, args.items, args.window)))
            rates = {k: statistics.median(v) for k, v in results.items()}
            for label, rate in rates.items():
                print(f"{label:11}: {rate:8.0f} items/s (median of {args.repeat})", flush=True)
            print(
                f"stream/calls c=1 = {rates['stream'] / rates['calls c=1']:.1f}x, "
                f"stream/calls c=64 = {rates['stream'] / rates['calls c=64']:.1f}x "
                f"(target >= 5x; {args.items} items, window {args.window})"
            )
            plain, first = asyncio.run(first_chunk(settings, args.window))
            print(
                f"first chunk {first:.2f} ms vs a plain call {plain:.2f} ms "
                f"({first / plain:.2f}x; median of 200)"
            )
            before, stalled = asyncio.run(stalled_reader(settings, actor.pid, args.window))
            print(
                f"actor RSS {before:.0f} MiB before, {stalled:.0f} MiB with a reader stalled "
                f"2 s on a stream of 100,000 x 64 KiB (+{stalled - before:.0f} MiB)"
            )
        finally:
            actor.terminate()
            actor.wait(30)


if __name__ == "__main__":
    main()

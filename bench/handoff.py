"""What a sync (``def``) handler's call costs to hand to a thread, by way of hand-off.

    python bench/handoff.py [--calls 20000] [--concurrency 64] [--repeat 5]

A replica runs a ``def`` handler off the event loop, so a slow one cannot stall every
other call. This measures, in one process on the replica's loop (uvloop when installed),
the CPU per call of an echo handler reached through:

- ``anyio``: ``anyio.to_thread.run_sync`` with a capacity limiter (the hand-off before
  issue 28);
- ``executor``: ``loop.run_in_executor`` on a ``ThreadPoolExecutor``;
- ``pool``: :class:`actorbus.host.threads.SyncRunner`, the replica's own pool (since
  issue 28: one wake-up of the loop hands back every result finished meanwhile);
- ``inline``: the handler called on the loop (``@endpoint(inline=True)``: no hand-off).

and, for each, the loop's worst lag while one call sleeps 0.2 s in its handler (what a
slow handler does to every other call: near 0 off the loop, the whole 0.2 s inline).
A cell is the median of ``--repeat`` runs, the variants measured in turn in each run.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import anyio.to_thread

from actorbus.host.threads import SyncRunner

Handoff = Callable[[Callable[[], Any]], Awaitable[Any]]


def echo(value: int) -> int:
    return value


async def run(handoff: Handoff, calls: int, concurrency: int) -> float:
    """CPU µs per call of ``calls`` echo calls made ``concurrency`` at a time."""
    left = calls

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            mine = left
            assert await handoff(partial(echo, mine)) == mine

    started = time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(caller)
    return (time.process_time() - started) / calls * 1e6


async def lag(handoff: Handoff) -> float:
    """The loop's worst lag (ms) while a handler sleeps 0.2 s."""
    worst = 0.0

    async def ticker(stop: anyio.Event) -> None:
        nonlocal worst
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - before - 0.001)

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker, stop)
        await anyio.sleep(0.01)
        await handoff(partial(time.sleep, 0.2))
        stop.set()
    return worst * 1e3


def handoffs(concurrency: int) -> dict[str, Handoff]:
    limiter = anyio.CapacityLimiter(concurrency)
    executor = concurrent.futures.ThreadPoolExecutor(concurrency)
    runner = SyncRunner(concurrency, 60.0)

    async def via_anyio(fn: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=limiter)

    async def via_executor(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    async def via_pool(fn: Callable[[], Any]) -> Any:
        return await runner.run("echo", fn)

    async def inline(fn: Callable[[], Any]) -> Any:
        return fn()

    return {"anyio": via_anyio, "executor": via_executor, "pool": via_pool, "inline": inline}


async def main(args: argparse.Namespace) -> None:
    ways = handoffs(args.concurrency)
    costs: dict[str, list[float]] = {name: [] for name in ways}
    lags: dict[str, list[float]] = {name: [] for name in ways}
    for handoff in ways.values():  # warm up: threads started, code paths taken
        await run(handoff, 2000, args.concurrency)
    for _ in range(args.repeat):
        for name, handoff in ways.items():
            costs[name].append(await run(handoff, args.calls, args.concurrency))
            lags[name].append(await lag(handoff))
    print(f"{'hand-off':10} {'us/call':>8} {'/inline':>8} {'lag ms':>8}")
    inline = statistics.median(costs["inline"])
    for name in ways:
        cost = statistics.median(costs[name])
        print(f"{name:10} {cost:8.1f} {cost / inline:8.2f} {statistics.median(lags[name]):8.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    arguments = parser.parse_args()
    if os.environ.get("ACTOR_UVLOOP") != "0":
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))

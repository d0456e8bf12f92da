"""Slices/s of an open job vs the same calls made directly, in one run.

    python bench/jobs.py [--slices 20000] [--concurrency 16] [--repeat 3]

Against an embedded nats-server, one echo actor replica (bench/calls.py's ``BenchEcho``)
and one jobs actor replica, each its own process (`actor serve`), no policy:

- direct: this process calls ``bench/echo`` SLICES times, CONCURRENCY calls at a time;
- job: this process submits a job of SLICES slices of the same call (in batches of 5000,
  with ``concurrency`` CONCURRENCY), closes it and waits for its last result; the jobs
  actor runs each slice as a delegated call and stores each result on JetStream.

It prints, per run and as medians: both rates, their ratio (target >= 0.5), the time to
queue the slices, the time from ``close`` to the last result, and the CPU milliseconds
each process spent per call or slice (this one, the echo actor, the jobs actor, the
nats-server): on a small machine they share the cores, so that is where a gap comes
from. Every run is bounded: a job that does not finish in 10 minutes fails the bench.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import psutil

from actorbus import Client, Settings
from actorbus.bus import EmbeddedServer

HERE = Path(__file__).resolve().parent
BATCH = 5000
JOB_LIMIT = 600.0


def serve(env: dict[str, str], target: str, name: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "actorbus.cli",
            "--log-level",
            "WARNING",
            "serve",
            target,
            "--name",
            name,
        ],
        env=env,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    if not process.stdout.readline().startswith(b"actorbus-ready "):
        raise SystemExit(f"{target} did not start")
    return process


async def direct(client: Client, slices: int, concurrency: int) -> float:
    """Calls/s of ``slices`` calls, ``concurrency`` at a time."""
    left = slices

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await client.call("bench", "echo", "x")

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(caller)
    return slices / (time.perf_counter() - started)


async def job(client: Client, slices: int, concurrency: int) -> tuple[float, float, float]:
    """(slices/s from submit to the last result, seconds to queue, seconds close -> last)."""
    work = [["x"]] * slices
    started = time.perf_counter()
    handle = await client.submit("bench/echo", work[:BATCH], concurrency=concurrency)
    for first in range(BATCH, slices, BATCH):
        await handle.add(work[first : first + BATCH])
    queued = time.perf_counter()
    await handle.close()
    closed = time.perf_counter()
    with anyio.fail_after(JOB_LIMIT):
        final = await handle.wait(poll=0.05)
    ended = time.perf_counter()
    if (final["done"], final["failed"]) != (slices, 0):
        raise SystemExit(f"the job lost slices: {final}")
    return slices / (ended - started), queued - started, ended - closed


class CPU:
    """CPU seconds of some processes, read before and after a phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.processes = {label: psutil.Process(pid) for label, pid in pids.items()}

    def read(self) -> dict[str, float]:
        return {label: sum(p.cpu_times()[:2]) for label, p in self.processes.items()}

    @staticmethod
    def per_item(before: dict[str, float], after: dict[str, float], items: int) -> str:
        return "  ".join(f"{k} {(after[k] - before[k]) / items * 1e3:.2f}" for k in before)


async def run(url: str, home: Path, args: argparse.Namespace, cpu: CPU) -> None:
    settings = Settings(home=home, nats_url=url, call_timeout=30)
    async with Client(settings=settings) as client:
        await direct(client, 500, args.concurrency)  # warm up
        rows = []
        for i in range(args.repeat):
            start = cpu.read()
            rate = await direct(client, args.slices, args.concurrency)
            middle = cpu.read()
            job_rate, queue_s, tail_s = await job(client, args.slices, args.concurrency)
            end = cpu.read()
            rows.append((rate, job_rate, queue_s, tail_s))
            print(
                f"run {i + 1}: direct {rate:7.0f}/s   job {job_rate:7.0f}/s   "
                f"ratio {job_rate / rate:.2f}   queueing {queue_s:5.2f}s   "
                f"close->last {tail_s:5.2f}s\n"
                f"  CPU ms per call:  {CPU.per_item(start, middle, args.slices)}\n"
                f"  CPU ms per slice: {CPU.per_item(middle, end, args.slices)}",
                flush=True,
            )
    rate, job_rate, queue_s, tail_s = (statistics.median(c) for c in zip(*rows, strict=True))
    print(
        f"\nmedian of {args.repeat}: {args.slices} slices at concurrency {args.concurrency}: "
        f"direct {rate:.0f}/s, job {job_rate:.0f}/s, ratio {job_rate / rate:.2f} "
        f"(target >= 0.5); queueing {queue_s:.2f}s; close -> last result {tail_s:.2f}s; "
        f"{os.cpu_count()} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="actorbus-bench-"))
    with EmbeddedServer(home / "nats") as server:
        env = dict(os.environ, ACTOR_NATS_URL=server.url, ACTOR_HOME=str(home))
        processes = [
            serve(env, f"{HERE / 'calls.py'}:BenchEcho", "bench"),
            serve(env, "actorbus.actors.jobs:Jobs", "jobs"),
        ]
        pids = {
            "bench": os.getpid(),
            "echo": processes[0].pid,
            "jobs": processes[1].pid,
            "nats": server.pid or 0,
        }
        try:
            anyio.run(run, server.url, home, args, CPU(pids))
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)


if __name__ == "__main__":
    main()

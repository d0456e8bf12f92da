"""What running actors costs: memory per replica, time to come up, time to recover.

    python bench/ops.py [--repeat 3] [--replicas 4]

Three figures, each with a baseline measured in the same run (medians over --repeat):

1. idle RSS of each replica process (`actor up -d` with --replicas echo replicas), against
   a bare Python interpreter and a minimal nats-py responder (targets: < 60 MB; Ray's idle
   worker is ~755 MiB);
2. time from `actor up -d` (fresh $ACTOR_HOME, the embedded nats-server on 127.0.0.1:4222)
   to the first call answered, polled from a client already running here, against the time
   a minimal nats-py responder process takes from start to first answer (target < 2 s);
3. time from kill -9 of a replica to its replacement answering (the caller asks that
   replica's instance directly), against the same responder baseline (target < 2 s).

It needs 127.0.0.1:4222 free (it starts and stops its own embedded server there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import psutil

from actorbus import ActorError, Client, Settings
from actorbus.bus import EmbeddedServer, nats_answers

ROOT = Path(__file__).resolve().parent.parent
ACTOR = [sys.executable, "-m", "actorbus.cli"]
RESPONDER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def echo(msg): await msg.respond(msg.data)
    await nc.subscribe("bench.echo", cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def baseline_rss(url: str) -> tuple[int, int]:
    """RSS of a bare interpreter and of a minimal nats-py responder, both idle."""
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    responder = subprocess.Popen(
        [sys.executable, "-c", RESPONDER, url], stdout=subprocess.PIPE, text=True
    )
    assert responder.stdout is not None
    responder.stdout.readline()
    time.sleep(1.0)
    try:
        return rss(bare.pid), rss(responder.pid)
    finally:
        for p in (bare, responder):
            p.kill()
            p.wait()


async def responder_start(url: str) -> float:
    """Seconds from starting a minimal nats-py responder process to its first answer."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", RESPONDER, url)
    nc = await nats.connect(url)
    try:
        while True:
            try:
                await nc.request("bench.echo", b"x", timeout=0.05)
                return time.perf_counter() - started
            except nats.errors.Error:
                await asyncio.sleep(0.005)
    finally:
        await nc.close()
        process.kill()
        await process.wait()


def actor(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*ACTOR, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode:
        raise SystemExit(f"actor {' '.join(args)} failed: {done.stderr}")
    return done.stdout


async def first_answer(env: dict[str, str], settings: Settings, timeout: float = 60) -> float:
    """Seconds from `actor up -d` to the first call of echo/forward answered."""
    started = time.perf_counter()
    up = await asyncio.create_subprocess_exec(
        *ACTOR,
        "up",
        "-d",
        "examples/echo.py:Echo",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        while time.perf_counter() - started < timeout:
            if await nats_answers(settings.url, timeout=0.05):
                try:
                    async with Client(settings=settings) as client:
                        while time.perf_counter() - started < timeout:
                            try:
                                await client.request("echo", "forward", ["x"], timeout=0.2)
                                return time.perf_counter() - started
                            except ActorError:  # not up yet: keep asking
                                await asyncio.sleep(0.005)
                except ActorError:
                    pass  # its NATS went away between the probe and the connection
            await asyncio.sleep(0.005)
        raise SystemExit("no answer within 60 s")
    finally:
        await up.wait()


async def replacement(env: dict[str, str], settings: Settings) -> float:
    """Seconds from kill -9 of echo's replica 0 to a new replica 0 answering."""
    rows = json.loads(actor(env, "ps", "--json"))
    victim = next(r for r in rows if r["actor"] == "echo" and r["replica"] == 0)
    async with Client(settings=settings) as client:
        os.kill(victim["pid"], signal.SIGKILL)
        killed = time.perf_counter()
        while time.perf_counter() - killed < 30:
            entries = [
                e for e in await client.entries("echo") if e.replica == 0 and e.pid != victim["pid"]
            ]
            if entries:
                service = f"$SRV.PING.echo.{entries[0].instance}"
                try:
                    await client.nc.request(service, b"", timeout=0.2)
                    return time.perf_counter() - killed
                except nats.errors.Error:
                    pass
            await asyncio.sleep(0.01)
    raise SystemExit("no replacement within 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=4)
    args = parser.parse_args()
    if asyncio.run(nats_answers("nats://127.0.0.1:4222")):
        raise SystemExit("something answers on 127.0.0.1:4222: this bench needs it free")
    with tempfile.TemporaryDirectory() as scratch:
        with EmbeddedServer(Path(scratch) / "base") as server:
            bare, responder = baseline_rss(server.url)
            starts = [asyncio.run(responder_start(server.url)) for _ in range(args.repeat)]
        base_start = statistics.median(starts)
        ups, kills, rss_replicas = [], [], []
        for run in range(args.repeat):
            home = Path(scratch) / f"home{run}"
            env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "ACTOR_NATS_URL")}
            env["ACTOR_HOME"] = str(home)
            settings = Settings(home=home)
            try:
                ups.append(asyncio.run(first_answer(env, settings)))
                actor(env, "scale", "echo", str(args.replicas))
                time.sleep(2.0)  # idle
                rows = json.loads(actor(env, "ps", "--json"))
                rss_replicas += [rss(r["pid"]) for r in rows if r["actor"] == "echo"]
                kills.append(asyncio.run(replacement(env, settings)))
            finally:
                actor(env, "down")
        up_s, kill_s, replica = (statistics.median(v) for v in (ups, kills, rss_replicas))
    print(
        f"baseline: bare python {mib(bare)}, nats-py responder {mib(responder)}; "
        f"responder start to first answer {base_start:.2f} s"
    )
    print(
        f"idle RSS per replica: median {mib(replica)} (max {mib(max(rss_replicas))}, "
        f"{len(rss_replicas)} replicas) = {replica / responder:.2f}x the responder "
        f"[target < 60 MB: {'met' if replica < 60e6 else 'MISSED'}]"
    )
    runs = ", ".join(f"{u:.2f}" for u in ups)
    print(
        f"`actor up -d` to first answer: median {up_s:.2f} s (runs {runs}) "
        f"= {up_s / base_start:.1f}x the responder start [target < 2 s: "
        f"{'met' if up_s < 2 else 'MISSED'}]"
    )
    print(
        f"kill -9 to replacement answering: median {kill_s:.2f} s (runs "
        f"{', '.join(f'{k:.2f}' for k in kills)}) = {kill_s / base_start:.1f}x the responder "
        f"start [target < 2 s: {'met' if kill_s < 2 else 'MISSED'}]"
    )


if __name__ == "__main__":
    main()

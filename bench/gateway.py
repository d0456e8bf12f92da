"""Calls/s and p99 of HTTP calls through the gateway against signed NATS calls to the same
actor, and what web attackers leave of it, in one run.

    python bench/gateway.py [--seconds 3] [--repeat 3] [--concurrency 1,16,64]
                            [--attack-seconds 8]

Capacity (target: the gateway at >= 0.5 of direct calls/s at concurrency 64):

Processes: an embedded nats-server, the policy actor, one replica of the echo actor of
bench/calls.py and one gateway replica (each `actor serve`), and the load generator,
started from this script as a process of its own so it shares no event loop with anything
it measures:

(a) direct: actorbus ``Client`` calls over NATS (signs each request, verifies each reply);
(b) http: ``POST /bench/echo`` to the gateway over keep-alive HTTP/1.1 connections, one per
    caller, anonymous (the gateway signs as itself and verifies the reply);
(c) token: the same with ``Authorization: Bearer`` (the gateway signs as the token's key).

The public role may call the actor and the quota floor is raised, so no call is refused;
every reply must be a 200 or the run stops. This gateway replica lets one client have
every request (``ACTOR_GATEWAY_CLIENT_*`` raised): the load generator is one client.

Under attack, against a second gateway replica with the default limits (targets: >= 99%
of normal calls succeed, their p99 <= 3x unloaded; RSS under a header flood < +50 MiB):
16 normal callers from 8 addresses of their own POST /bench/echo (80 calls a second each at
most) for --attack-seconds, first alone, then while bench/web_attacks.py holds 1,000
slowloris connections and 200 stalled readers of a server-sent events stream (each from
addresses of their own); then
the gateway's RSS (sampled every 0.1 s) while 50 connections stream endless header
blocks. Every cell is bounded in time and count; figures are medians over --repeat runs.
The machine is shared: read the ratios.

Issue 30 (the limits assumed one address is one client), against the same replica
(target: >= 90% of normal calls succeed under each; the gateway's RSS after each; with
--issue-30, only these): the 16 normal callers while, each from addresses of their own,
5 x 220 connections leave a 200 KB answer unread with a call behind it, 1,000 leave a
900 KB answer unread (the gateway holds at most ``ACTOR_GATEWAY_MAX_UNREAD`` for them in
all), 40 addresses x 32 slow calls (each address within its share), 5 x 220 slow calls as
commune bodies of fresh keys, and 5 x 256 bodies that never finish (bench/web_attacks.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from calls import BenchEcho, percentile  # the same echo actor as bench/calls.py

from actorbus import Client, Settings
from actorbus.bus import EmbeddedServer

HERE = Path(__file__).resolve()
ATTACKS = [sys.executable, str(HERE.parent / "web_attacks.py")]
ACTOR = [sys.executable, "-m", "actorbus.cli", "--log-level", "WARNING"]
MAX_CALLS_PER_CELL = 200_000
NORMAL_RATE = 80.0
"""Calls a second of one normal caller under attack (:func:`normal_caller`)."""
BODY = b'{"args":["x"],"kwargs":{}}'


# -- the load generator, run as `python bench/gateway.py --load MODE TARGET CONC SECONDS` ----


async def http_caller(
    port: int, deadline: float, budget: list[int], latencies: list[float], token: str
) -> None:
    """One keep-alive HTTP/1.1 connection, one request at a time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (
        f"POST /bench/echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            if status != b"200":
                raise SystemExit(f"HTTP {status.decode()}: {body[:200]!r}")
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def nats_caller(
    client: Client, deadline: float, budget: list[int], latencies: list[float]
) -> None:
    while time.perf_counter() < deadline and budget[0] > 0:
        budget[0] -= 1
        started = time.perf_counter()
        await client.call("bench", "echo", "x")
        latencies.append(time.perf_counter() - started)


async def normal_caller(
    port: int, source: str, deadline: float, outcomes: dict[str, int], latencies: list[float]
) -> None:
    """A well-behaved web client: one keep-alive connection from ``source``, a call at a
    time, :data:`NORMAL_RATE` calls a second at most (two share an address: well within
    the gateway's 200 a second per address; unpaced, a faster gateway had them refused
    429 for being too fast); whatever is not a 200 (or a broken connection) is counted as
    failed."""
    request = (
        f"POST /bench/echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    writer: asyncio.StreamWriter | None = None
    due = time.perf_counter()
    while time.perf_counter() < deadline and sum(outcomes.values()) < MAX_CALLS_PER_CELL:
        due += 1 / NORMAL_RATE
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(source, 0)
                )
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = next(
                int(line[15:])
                for line in head.split(b"\r\n")
                if line[:15].lower() == b"content-length:"
            )
            await reader.readexactly(length)
            status = head[9:12].decode()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, StopIteration) as exc:
            status = type(exc).__name__
            if writer is not None:
                writer.close()
            writer = None
        outcomes[status] = outcomes.get(status, 0) + 1
        if status == "200":
            latencies.append(time.perf_counter() - started)
    if writer is not None:
        writer.close()


async def load(mode: str, target: str, concurrency: int, seconds: float, token: str) -> None:
    latencies: list[float] = []
    if mode == "normal":  # under attack: callers from 8 addresses, every outcome counted
        outcomes: dict[str, int] = {}
        deadline = time.perf_counter() + seconds
        await asyncio.gather(
            *(
                normal_caller(int(target), f"127.0.5.{1 + i % 8}", deadline, outcomes, latencies)
                for i in range(concurrency)
            )
        )
        print(json.dumps({"outcomes": outcomes, "latencies": latencies}))
        return
    budget = [MAX_CALLS_PER_CELL]
    client: Client | None = None
    if mode == "direct":
        client = await Client(settings=Settings.from_env(nats_url=target)).__aenter__()
        await client.call("bench", "echo", "warm")
    started = time.perf_counter()
    deadline = started + seconds
    if client is not None:
        callers = [nats_caller(client, deadline, budget, latencies) for _ in range(concurrency)]
    else:
        port = int(target)
        callers = [
            http_caller(port, deadline, budget, latencies, token) for _ in range(concurrency)
        ]
    await asyncio.gather(*callers)
    elapsed = time.perf_counter() - started
    if client is not None:
        await client.__aexit__(None, None, None)
    print(json.dumps({"rate": len(latencies) / elapsed, "latencies": latencies}))


def run_load(
    mode: str, target: str, concurrency: int, seconds: float, env: dict[str, str], token: str
) -> dict[str, Any]:
    """One load generator's run, in a process of its own; what it printed."""
    command = [sys.executable, str(HERE), "--load", mode, target, str(concurrency), str(seconds)]
    done = subprocess.run(
        command,
        env={**env, "BENCH_TOKEN": token},
        capture_output=True,
        timeout=seconds + 60,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"load {mode} failed: {done.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def under_attack(port: int, pid: int, seconds: float, repeat: int, env: dict[str, str]) -> None:
    """Normal calls alone and while slowloris and stalled readers are held; then the
    gateway's RSS under a header flood (see the module's docstring)."""
    rows: dict[str, list[float]] = {}
    for _ in range(repeat):
        alone = run_load("normal", str(port), 16, seconds, env, "")
        attack = ["--slowloris", "1000", "--stalled", "200"]
        loaded, held = attacked_load(port, seconds, seconds + 5, env, attack)
        for label, run in (("alone", alone), ("attacked", loaded)):
            outcomes: dict[str, int] = run["outcomes"]
            total = sum(outcomes.values())
            rows.setdefault(f"{label} ok", []).append(outcomes.get("200", 0) / max(total, 1))
            rows.setdefault(f"{label} p99", []).append(percentile(run["latencies"], 0.99) * 1e3)
            rows.setdefault(f"{label} calls", []).append(total)
            failed = {k: v for k, v in outcomes.items() if k != "200"}
            print(
                f"  {label:8}: {total} calls, {outcomes.get('200', 0) / max(total, 1):.2%} ok, "
                f"p99 {rows[f'{label} p99'][-1]:.1f} ms"
                + (f", failed {failed}" if failed else "")
                + (f" (attackers held {held:.0f} connections)" if label == "attacked" else ""),
                flush=True,
            )
    median = {k: statistics.median(v) for k, v in rows.items()}
    p99_ratio = statistics.median(
        a / b for a, b in zip(rows["attacked p99"], rows["alone p99"], strict=True)
    )
    print(
        f"under 1,000 slowloris and 200 stalled readers: {median['attacked ok']:.2%} of normal "
        f"calls succeed (target >= 99%), p99 {median['attacked p99']:.1f} ms vs "
        f"{median['alone p99']:.1f} ms alone: {p99_ratio:.2f}x (target <= 3x)"
    )
    gateway = psutil.Process(pid)
    before = statistics.median(gateway.memory_info().rss for _ in range(5))
    flooders = subprocess.Popen(
        [*ATTACKS, str(port), str(seconds), "--flood", "50"],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert flooders.stdout is not None
    flooders.stdout.readline()
    peak = before
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, gateway.memory_info().rss)
        time.sleep(0.1)
    flooders.wait(60)
    print(
        f"gateway RSS {before / 2**20:.0f} MiB before a 50-connection header flood, peak "
        f"{peak / 2**20:.0f} MiB during it: +{(peak - before) / 2**20:.1f} MiB (target < +50)"
    )


ATTACKED = "bench30"
"""The actor issue 30's attackers call (bench/web_attacks.py)."""
ISSUE_30 = {
    "unread": ("unread 200 KB answers", 5 * 220),
    "hoard": ("1,000 unread 900 KB answers", 1000),
    "slow": ("40 x 32 slow calls", 40 * 32),
    "commune": ("commune calls, fresh keys", 5 * 220),
    "bodies": ("bodies never finished", 5 * 256),
}


def attacked_load(
    port: int, seconds: float, attack_seconds: float, env: dict[str, str], attack: list[str]
) -> tuple[dict[str, Any], float]:
    """16 normal callers' run of ``seconds`` while bench/web_attacks.py runs ``attack``
    (for ``attack_seconds``, all connected first), and the connections it held."""
    attackers = subprocess.Popen(
        [*ATTACKS, str(port), str(attack_seconds), *attack], stdout=subprocess.PIPE, env=env
    )
    assert attackers.stdout is not None
    attackers.stdout.readline()
    time.sleep(3.0)  # all connected
    run = run_load("normal", str(port), 16, seconds, env, "")
    held = float(json.loads(attackers.stdout.readline() or b'{"held": 0}')["held"])
    attackers.wait(60)
    return run, held


def _sample_peak(process: psutil.Process, peak: list[int], done: threading.Event) -> None:
    """``peak[0]``: the largest RSS of ``process`` seen every 0.1 s until ``done``."""
    while not done.wait(0.1):
        peak[0] = max(peak[0], process.memory_info().rss)


def issue_30(port: int, pid: int, seconds: float, env: dict[str, str]) -> None:
    """Normal calls under each of issue 30's attacks, and the gateway's RSS after it."""
    gateway = psutil.Process(pid)
    for kind, (label, count) in ISSUE_30.items():
        peak = [gateway.memory_info().rss]
        done = threading.Event()
        sampler = threading.Thread(target=_sample_peak, args=(gateway, peak, done))
        sampler.start()
        try:
            run, held = attacked_load(port, seconds, seconds + 6, env, [f"--{kind}", str(count)])
        finally:
            done.set()
            sampler.join()
        outcomes: dict[str, int] = run["outcomes"]
        total = sum(outcomes.values())
        failed = {k: v for k, v in outcomes.items() if k != "200"}
        print(
            f"under {label}: {outcomes.get('200', 0) / max(total, 1):.2%} of {total} normal "
            f"calls succeed (target >= 90%), attackers held {held:.0f}, gateway RSS peak "
            f"{peak[0] / 2**20:.0f} MiB, after {gateway.memory_info().rss / 2**20:.0f} MiB"
            + (f", failed {failed}" if failed else ""),
            flush=True,
        )


# -- the set-up -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*ACTOR, "serve", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def prepare(settings: Settings, ports: list[int]) -> str:
    """Wait for the policy, actor and gateways; open the actor to the public, raise the
    quota floor; returns a bearer token."""
    async with Client(settings=settings) as admin:
        for _ in range(300):
            names = {e.name for e in await admin.entries()}
            if {settings.policy, "bench", "gateway", ATTACKED} <= names:
                break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit(f"actors did not come up: {sorted(names)}")
        await admin.call(settings.policy, "set_role", "public", ["bench/*", f"{ATTACKED}/*"])
        await admin.call(settings.policy, "set_config", floor=10_000_000)
        for entry in await admin.entries("gateway"):  # commune bodies: as `actor up` does
            await admin.call(settings.policy, "add_forwarder", entry.address)
        token: str = (await admin.call(settings.policy, "issue_token", "bench", "user"))["token"]
    for port in ports:
        await _serving(port)
    return token


async def _serving(port: int) -> None:
    """Wait until the gateway on ``port`` answers a call (it sees policy changes through
    its watch)."""
    for _ in range(100):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /bench/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
            )
            head = await reader.readuntil(b"\r\n\r\n")
            writer.close()
            if head[9:12] == b"200":
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"the gateway on port {port} did not answer 200")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--attack-seconds", type=float, default=8.0, help="per cell (default 8)")
    parser.add_argument("--issue-30", action="store_true", help="only issue 30's attacks")
    parser.add_argument("--load", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        mode, target, concurrency, seconds = args.load
        token = os.environ.get("BENCH_TOKEN", "") if mode == "token" else ""
        asyncio.run(load(mode, target, int(concurrency), float(seconds), token))
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    home = Path(tempfile.mkdtemp(prefix="actorbus-bench-"))
    port = free_port()
    with EmbeddedServer(home / "nats") as server:
        env = dict(
            os.environ,
            ACTOR_NATS_URL=server.url,
            ACTOR_HOME=str(home),
            ACTOR_GATEWAY_PORT=str(port),
        )
        settings = Settings(nats_url=server.url, home=home)
        attack_port = free_port()
        defended = {**env, "ACTOR_GATEWAY_PORT": str(attack_port)}
        one_client = {
            "ACTOR_GATEWAY_CLIENT_CONCURRENCY": "4096",
            "ACTOR_GATEWAY_CLIENT_RATE": "1e9",
        }
        processes = [
            serve(env, "actorbus.actors.policy:Policy", "--name", settings.policy),
            serve(env, f"{HERE.parent / 'calls.py'}:{BenchEcho.__name__}"),
            serve({**env, **one_client}, "actorbus.actors.gateway:Gateway"),
            serve(defended, "actorbus.actors.gateway:Gateway"),
            # issue 30's attackers call an actor of their own, with room for all their
            # calls: the gateway is what is measured, not this replica's queue
            serve(
                {**env, "ACTOR_MAX_IN_FLIGHT": "4096", "ACTOR_MAX_QUEUE": "4096"},
                f"{HERE.parent / 'calls.py'}:{BenchEcho.__name__}",
                "--name",
                ATTACKED,
            ),
        ]
        try:
            token = asyncio.run(prepare(settings, [port, attack_port]))
            if args.issue_30:
                issue_30(attack_port, processes[3].pid, args.attack_seconds, env)
                return
            targets = {"direct": server.url, "http": str(port), "token": str(port)}
            results: dict[tuple[str, int], float] = {}
            print(f"{'mode':7} {'conc':>5} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
            for concurrency in levels:
                for mode, target in targets.items():
                    run_load(mode, target, 4, 0.3, env, token)  # warm up
                    runs = [
                        (r["rate"], r["latencies"])
                        for r in (
                            run_load(mode, target, concurrency, args.seconds, env, token)
                            for _ in range(args.repeat)
                        )
                    ]
                    rate = statistics.median(r for r, _ in runs)
                    p50 = statistics.median(percentile(lat, 0.50) for _, lat in runs) * 1e3
                    p99 = statistics.median(percentile(lat, 0.99) for _, lat in runs) * 1e3
                    results[mode, concurrency] = rate
                    print(f"{mode:7} {concurrency:5} {rate:9.0f} {p50:8.2f} {p99:8.2f}", flush=True)
            print()
            for concurrency in levels:
                direct = results["direct", concurrency]
                print(
                    f"concurrency {concurrency:3}: http/direct = "
                    f"{results['http', concurrency] / direct:.2f}   token/direct = "
                    f"{results['token', concurrency] / direct:.2f}"
                )
            print("\nunder attack (the second gateway replica, default limits):")
            under_attack(attack_port, processes[3].pid, args.attack_seconds, args.repeat, env)
            print("\nissue 30 (the same replica):")
            issue_30(attack_port, processes[3].pid, args.attack_seconds, env)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(30)


if __name__ == "__main__":
    main()

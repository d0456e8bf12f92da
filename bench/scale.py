"""Costs that grow with what exists, as curves over 100x sizes, in one run (issue 29).

    python bench/scale.py [--users 100,1000,100000] [--keys 40,400,4000]
                          [--reads 100,1000,10000] [--actors 6,20,60]
                          [--soak 600] [--behind 1024,4096,16384]
                          [--replicas 1,4,16]

Against an embedded nats-server, the policy actor and an echo actor (bench/calls.py's
``BenchEcho``), each a process of its own, and this process as the callers:

1. registry reads: READS reads of the echo actor's entries: reads/s, and the JetStream
   consumers on the registry after them against before (target: +0).
2. the policy's size: users added in bulk up to each of USERS (adds/s; the policy actor
   still running), then at that size a user's calls (p50/p99 of 2,000 signed calls, 16 at
   a time), a new replica's start (``actor serve`` until it answers) and its RSS, and
   ``user ls`` paging through every user (targets: p99 and start within 1.5x of the
   smallest size; 100,000 users added in under 60 s).
3. one change and the active keys: KEYS keys each call the echo actor once (each borrows a
   quota lease there) and once more (the policy actor's CPU for those calls alone), then
   one other key's stake changes and each key calls again: the policy actor's CPU from the
   change to the last call (target: under 50 ms at 4,000 keys). The quota window is an
   hour, so no window's end (where each key borrows for the next) falls in the phase.
4. the gateway's OpenAPI document: ACTORS echo actors served (in this process), then an
   anonymous ``GET /openapi.json`` at a gateway: its size as JSON and gzipped, the first
   request's time and the median of 20 after it.
5. the gateway under load: with the largest ACTORS served, 16 anonymous HTTP callers call
   them in turn (and every tenth request is ``/openapi.json``) for SOAK seconds: requests,
   answers by status, and the registry's consumers before and after (target: 60 actors,
   600 s, no answer but 200 and 429, consumers +0).
6. the gateway's bound on unread answers (``guard.Backlog``, in this process): BEHIND
   connections from 200 networks fall behind one after another, each holding 900 KB, then
   64 KiB: the time per connection falling behind (past the bound, connections are reset
   from the heaviest networks; target: flat in BEHIND).
7. replicas following the policy: REPLICAS replicas of one echo actor (processes of
   their own) start, a user calls them, then its role loses them: JetStream's consumers
   (of every stream) with the replicas running against before (target: +0, issue 30: each
   held one of the policy bucket, which a host could fill), and the time from the change
   until 4 calls per replica in a row are refused (the change reached them all).

Every phase is bounded in count and time. The machine is shared: read the curves' shapes
and the ratios, not single figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import anyio
import httpx
import psutil

from actorbus import Client, Forbidden, Settings
from actorbus import serve as serve_actor
from actorbus.actors.gateway.guard import Backlog
from actorbus.bus import NATS, EmbeddedServer, Keypair, connect, sign_request, verify_reply
from actorbus.bus.requests import request
from actorbus.bus.subjects import call_subject

HERE = Path(__file__).resolve().parent
BODY = b'{"args":["x"],"kwargs":{}}'
PHASE_LIMIT = 300.0
"""Seconds any one phase may take."""


def serve(env: dict[str, str], target: str, name: str) -> tuple[subprocess.Popen[bytes], float]:
    """``actor serve TARGET --name NAME``, and the seconds until it said it was ready."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "actorbus.cli", "--log-level", "WARNING", "serve"]
    process = subprocess.Popen([*command, target, "--name", name], env=env, stdout=subprocess.PIPE)
    assert process.stdout is not None
    if not process.stdout.readline().startswith(b"actorbus-ready "):
        raise SystemExit(f"{target} did not start")
    return process, time.perf_counter() - started


def cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def registry_reads(client: Client, counts: list[int]) -> None:
    js = client.nc.jetstream()
    print("\n1. registry reads            reads   reads/s   consumers before -> after")
    for count in counts:
        before = (await js.stream_info("KV_actor_registry")).state.consumer_count
        started = time.perf_counter()
        with anyio.fail_after(PHASE_LIMIT):
            for _ in range(count):
                assert await client.entries("bench")
        rate = count / (time.perf_counter() - started)
        after = (await js.stream_info("KV_actor_registry")).state.consumer_count
        print(f"                           {count:7d}  {rate:8.0f}   {before:7d} -> {after}")


async def signed_call(nc: NATS, key: Keypair) -> float:
    """One signed call of bench/echo as ``key``: its latency (s)."""
    subject = call_subject("bench", "echo")
    sent: dict[str, str] = {}

    def headers(reply: str) -> dict[str, str]:
        sent.update(sign_request(key, subject, reply, BODY))
        return sent

    started = time.perf_counter()
    msg = await request(nc, subject, BODY, headers, 30)
    status = verify_reply(msg.headers, msg.data, sent["Actor-Nonce"]).status
    assert status == 200, (status, msg.data[:200])
    return time.perf_counter() - started


async def calls(url: str, keys: list[Keypair], concurrency: int = 16) -> list[float]:
    """The sorted latencies (s) of one signed call as each of ``keys``, ``concurrency`` at
    a time."""
    latencies: list[float] = []
    limit = anyio.Semaphore(concurrency)

    async def one(key: Keypair) -> None:
        async with limit:
            latencies.append(await signed_call(nc, key))

    async with connect(url) as nc:
        with anyio.fail_after(PHASE_LIMIT):
            async with anyio.create_task_group() as tg:
                for key in keys:
                    tg.start_soon(one, key)
    return sorted(latencies)


async def policy_size(
    client: Client, settings: Settings, env: dict[str, str], sizes: list[int], policy_pid: int
) -> None:
    user = Keypair.generate()
    await client.add_users({user.address: "user"})
    print(
        "\n2. policy size    users  add/s   policy  calls p50 ms  p99 ms   replica start s"
        "  RSS MB   user ls s"
    )
    added = 1
    firsts: tuple[float, float] | None = None
    for size in sizes:
        batch = {Keypair.generate().address: "user" for _ in range(size - added)}
        started = time.perf_counter()
        with anyio.fail_after(PHASE_LIMIT):
            await client.add_users(batch)
        rate = len(batch) / max(time.perf_counter() - started, 1e-9)
        added = size
        alive = "alive" if psutil.Process(policy_pid).is_running() else "DEAD"
        latencies = await calls(settings.url, [user] * 2000)
        p50 = statistics.median(latencies) * 1e3
        p99 = latencies[int(len(latencies) * 0.99)] * 1e3
        replica, start = serve(env, f"{HERE / 'calls.py'}:BenchEcho", f"start{size}")
        try:
            async with Client(user, settings=settings) as caller:
                assert await caller.call(f"start{size}", "echo", "x") == "x"
            rss = psutil.Process(replica.pid).memory_info().rss / 2**20
        finally:
            replica.terminate()
            replica.wait(30)
        started = time.perf_counter()
        listed = 0
        with anyio.fail_after(PHASE_LIMIT):
            async for page in client.pages(settings.policy, "users"):
                listed += len(page)
        listing = time.perf_counter() - started
        assert listed == size, (listed, size)
        firsts = firsts or (p99, start)
        print(
            f"                {size:7d}  {rate:5.0f}   {alive:6}  {p50:12.2f}  {p99:6.2f}"
            f"   {start:15.2f}  {rss:6.0f}   {listing:9.2f}"
        )
    assert firsts is not None
    print(
        f"   at {sizes[-1]} users against {sizes[0]}: p99 x{p99 / firsts[0]:.2f}, "
        f"start x{start / firsts[1]:.2f}"
    )


async def one_change(
    client: Client, settings: Settings, counts: list[int], policy_pid: int
) -> None:
    print(
        "\n3. one change    active keys   policy actor CPU ms: the keys' calls alone, "
        "a change and the same calls"
    )
    other = Keypair.generate()
    for count in counts:
        keys = [Keypair.generate() for _ in range(count)]
        await client.add_users({k.address: "user" for k in keys})
        await calls(settings.url, keys, 32)  # each key holds a lease now
        before = cpu(policy_pid)
        await calls(settings.url, keys, 32)
        alone = cpu(policy_pid) - before
        before = cpu(policy_pid)
        await client.call(settings.policy, "set_stake", other.address, 1000.0)
        await anyio.sleep(0.5)  # the change reaches the replica
        await calls(settings.url, keys, 32)
        spent = cpu(policy_pid) - before
        print(f"                {count:11d}   {alone * 1e3:8.0f}   {spent * 1e3:8.0f}")


async def openapi_size(
    client: Client, settings: Settings, port: int, counts: list[int], soak: float
) -> None:
    sys.path.insert(0, str(HERE))
    from calls import BenchEcho  # bench/calls.py's

    await client.call(settings.policy, "set_role", "public", ["api*/*"])
    print("\n4. openapi.json  actors   KB    gzip KB   first ms   then ms (median of 20)")
    served = 0
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient() as http:
        url = f"http://127.0.0.1:{port}/openapi.json"
        for count in counts:
            for n in range(served, count):
                await stack.enter_async_context(
                    serve_actor(BenchEcho(), name=f"api{n}", settings=settings)
                )
            served = count
            await anyio.sleep(2.5)  # the gateway's registry cache
            started = time.perf_counter()
            first = await http.get(url, headers={"Accept-Encoding": "identity"})
            first_ms = (time.perf_counter() - started) * 1e3
            times = []
            for _ in range(20):
                started = time.perf_counter()
                zipped = await http.get(url)
                times.append((time.perf_counter() - started) * 1e3)
            shown = sum(p.startswith("/api") for p in first.json()["paths"])
            assert shown >= count, (shown, count)
            size = int(zipped.headers.get("content-length", "0"))
            print(
                f"                {count:6d}  {len(first.content) / 1024:5.0f}   {size / 1024:7.0f}"
                f"   {first_ms:8.1f}   {statistics.median(times):7.1f}"
            )
        if soak:
            await gateway_soak(client, http, f"http://127.0.0.1:{port}", served, soak)


async def gateway_soak(
    client: Client, http: httpx.AsyncClient, base: str, actors: int, seconds: float
) -> None:
    js = client.nc.jetstream()
    before = (await js.stream_info("KV_actor_registry")).state.consumer_count
    statuses: Counter[str] = Counter()
    said: dict[str, str] = {}
    """The first answer of each status but 200."""
    body = {"args": ["x"]}

    async def caller(n: int) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            n += 1
            try:
                if n % 10 == 0:
                    answer = await http.get(f"{base}/openapi.json", timeout=30)
                else:
                    answer = await http.post(f"{base}/api{n % actors}/echo", json=body, timeout=30)
                statuses[str(answer.status_code)] += 1
                if answer.status_code != 200:
                    said.setdefault(str(answer.status_code), answer.text[:160])
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1

    with anyio.fail_after(seconds + 60):
        async with anyio.create_task_group() as tg:
            for n in range(16):
                tg.start_soon(caller, n * 7)
    after = (await js.stream_info("KV_actor_registry")).state.consumer_count
    errors = sum(count for status, count in statuses.items() if status not in ("200", "429"))
    print(
        f"\n5. gateway soak  {actors} actors, {seconds:.0f} s, 16 callers: "
        f"{sum(statuses.values())} requests, {dict(sorted(statuses.items()))}, "
        f"errors {errors}, registry consumers {before} -> {after}"
    )
    for status, text in sorted(said.items()):
        print(f"   first {status}: {text}")


async def run(
    server: EmbeddedServer, home: Path, env: dict[str, str], args: argparse.Namespace, pid: int
) -> None:
    settings = Settings(home=home, nats_url=server.url, call_timeout=60)
    async with Client(settings=settings) as client:
        # Users may call the echo actors, and fast enough that no call here is a 429.
        await client.call(settings.policy, "set_role", "user", ["bench/*", "start*/*"])
        # A window of an hour: no window's end (each key borrows anew) falls in a phase.
        await client.call(settings.policy, "set_config", window=args.window, floor=1e9)
        await registry_reads(client, [int(n) for n in args.reads.split(",")])
        users = [int(n) for n in args.users.split(",")]
        await policy_size(client, settings, env, users, pid)
        await one_change(client, settings, [int(n) for n in args.keys.split(",")], pid)
        actors = [int(n) for n in args.actors.split(",")]
        await openapi_size(client, settings, args.gateway_port, actors, args.soak)
        await replicas_follow(client, settings, env, [int(n) for n in args.replicas.split(",")])


async def replicas_follow(
    client: Client, settings: Settings, env: dict[str, str], counts: list[int]
) -> None:
    """Phase 7: consumers held by ``counts`` replicas, and a change's way to them all."""
    js = client.nc.jetstream()
    print("\n7. replicas following   replicas   consumers before -> with them   change -> refused")
    key = Keypair.generate()
    await client.call(settings.policy, "add_user", key.address, "user")
    async with Client(key, settings=settings) as caller:
        for count in counts:
            name = f"start{count}"
            before = sum(s.state.consumer_count for s in await js.streams_info())
            replicas = [serve(env, f"{HERE / 'calls.py'}:BenchEcho", name)[0] for _ in range(count)]
            try:
                with anyio.fail_after(PHASE_LIMIT):
                    for _ in range(4 * count):
                        assert await caller.call(name, "echo", "x") == "x"
                    held = sum(s.state.consumer_count for s in await js.streams_info())
                    changed = time.perf_counter()
                    await client.call(settings.policy, "set_role", "user", ["bench/*"])
                    refused = 0
                    while refused < 4 * count:
                        try:
                            await caller.call(name, "echo", "x")
                            refused = 0
                        except Forbidden:
                            refused += 1
                    took = (time.perf_counter() - changed) * 1000
            finally:
                await client.call(settings.policy, "set_role", "user", ["bench/*", "start*/*"])
                for process in replicas:
                    process.terminate()
                    process.wait(30)
            row = f"{count:7d}   {before:7d} -> {held:<10d}   {took:7.0f} ms"
            print(" " * 23 + row)


class _Behind:
    def __init__(self, network: str, size: int) -> None:
        self.network = network
        self.size = size

    def unsent(self) -> int:
        return self.size

    def reset(self) -> None:
        self.size = 0


def backlog_cost(counts: list[int]) -> None:
    """Phase 6: microseconds per connection falling behind, at each of ``counts``."""
    for size in (900_000, 64 * 1024):
        for count in counts:
            runs = []
            for _ in range(5):
                backlog = Backlog(256 * 1024 * 1024)
                behind = [_Behind(f"10.{i % 200}.0.0/24", size) for i in range(count)]
                started = time.perf_counter()
                for connection in behind:
                    backlog.behind(connection)
                runs.append((time.perf_counter() - started) / count * 1e6)
            reset = sum(c.size == 0 for c in behind)
            print(
                f"backlog: {count} behind of {size // 1024} KiB each: "
                f"{statistics.median(runs):.1f} us per one falling behind, {reset} reset",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", default="100,1000,10000")
    parser.add_argument("--users", default="1000,10000,100000")
    parser.add_argument("--keys", default="40,400,4000")
    parser.add_argument("--actors", default="6,20,60")
    parser.add_argument("--soak", type=float, default=600.0, help="seconds (0: none)")
    parser.add_argument("--window", type=float, default=3600.0, help="the quota window (s)")
    parser.add_argument("--gateway-port", type=int, default=18480)
    parser.add_argument("--behind", default="1024,4096,16384")
    parser.add_argument("--replicas", default="1,4,16")
    args = parser.parse_args()
    backlog_cost([int(n) for n in args.behind.split(",")])
    home = Path(tempfile.mkdtemp(prefix="actorbus-scale-"))
    with EmbeddedServer(home / "nats") as server:
        env = dict(os.environ, ACTOR_NATS_URL=server.url, ACTOR_HOME=str(home))
        policy, _ = serve(env, "actorbus.actors.policy:Policy", "policy")
        echo, _ = serve(env, f"{HERE / 'calls.py'}:BenchEcho", "bench")
        # The load generator is one web client: let it have every request.
        port = str(args.gateway_port)
        gateway_env = dict(env, ACTOR_GATEWAY_PORT=port, ACTOR_GATEWAY_CLIENT_RATE="1e9")
        gateway, _ = serve(gateway_env, "actorbus.actors.gateway:Gateway", "gateway")
        try:
            anyio.run(run, server, home, env, args, policy.pid)
        finally:
            for process in (gateway, echo, policy):
                process.terminate()
                process.wait(30)


if __name__ == "__main__":
    main()

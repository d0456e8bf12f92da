"""Calls/s on a 3-node NATS cluster: through one node vs spread over three, the time
from a node's kill to full throughput again, and a quota lease's cost on R3, in one run.

    python bench/cluster.py [--seconds 3] [--repeat 3] [--concurrency 64]

(one) 3 replicas of bench/calls.py's actor and the load generator, all on node 0;
(spread) one replica per node, the generator's callers spread over the three nodes;
(kill) the spread setup under load; node 2 is killed -9 after 2 s. Throughput is counted
per 250 ms; "back" is the first moment after the kill from which three buckets in a row
reach 90% of the median before it. Failed calls are counted (each has a 2 s timeout), and
when the last one failed.

(lease) two policy replicas; `lease` (a compare-and-set on its counter, replicated 3 ways)
vs `user2role` (a read in memory), as bench/policy.py measures them on one server.

The replicas run `actor serve` with their own NATS URL (one node each: a replica whose
node dies reconnects to another it learnt of). Everything shares this machine's cores, so
"spread" shows what the routes cost here, not what more machines would add.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
import nats.errors
from calls import HERE as CALLS
from calls import load_options, start
from policy import configure, print_lease_cost

from actorbus import Settings
from actorbus.bus import ActorError, Keypair, sign_request, verify_reply
from actorbus.bus.requests import request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster import Cluster  # the tests' cluster harness

SUBJECT = "actor.bench.echo"
BODY = b'{"args":["x"],"kwargs":{}}'
BUCKET = 0.25
MAX_CALLS = 500_000


async def run_load(
    urls: list[str], concurrency: int, seconds: float, kill: tuple[float, Cluster, int] | None
) -> tuple[list[float], list[float]]:
    """Completion times (seconds since the start) of signed calls from ``concurrency``
    callers spread over connections to ``urls``, and the times of failed calls; with
    ``kill`` = (at, cluster, node), that node is killed -9 at ``at`` seconds."""
    key = Keypair.generate()

    async def quiet(exc: Exception) -> None:  # a killed node's EOF: the client reconnects
        pass

    connections = [
        await nats.connect(servers=[url], max_reconnect_attempts=-1, error_cb=quiet) for url in urls
    ]
    done: list[float] = []
    failed: list[float] = []
    budget = MAX_CALLS
    started = time.perf_counter()
    deadline = started + seconds

    async def caller(nc: nats.NATS) -> None:
        nonlocal budget
        while time.perf_counter() < deadline and budget > 0:
            budget -= 1
            sent: dict[str, str] = {}

            def headers(reply: str, sent: dict[str, str] = sent) -> dict[str, str]:
                sent.update(sign_request(key, SUBJECT, reply, BODY))
                return sent

            try:
                msg = await request(nc, SUBJECT, BODY, headers, 2)
                assert verify_reply(msg.headers, msg.data, sent["Actor-Nonce"]).status == 200
                done.append(time.perf_counter() - started)
            except (ActorError, nats.errors.Error, TimeoutError, AssertionError):
                failed.append(time.perf_counter() - started)
                await asyncio.sleep(0.01)

    async def killer() -> None:
        if kill is not None:
            at, cluster, node = kill
            await asyncio.sleep(at)
            await asyncio.to_thread(cluster.kill, node)

    await asyncio.gather(
        killer(), *(caller(connections[i % len(connections)]) for i in range(concurrency))
    )
    for nc in connections:
        await nc.close()
    return done, failed


def replicas(cluster: Cluster, nodes: list[int], home: str) -> list[object]:
    serve = [sys.executable, "-m", "actorbus.cli", "--log-level", "WARNING", "serve"]
    env = dict(os.environ, ACTOR_HOME=home, ACTOR_POLICY="nopolicy", ACTOR_JS_REPLICAS="3")
    return [
        start([*serve, f"{CALLS}:BenchEcho"], dict(env, ACTOR_NATS_URL=cluster.url_of(node)))
        for node in nodes
    ]


def stop(processes: list[object]) -> None:
    for process in processes:
        process.terminate()  # type: ignore[attr-defined]
    for process in processes:
        process.wait(30)  # type: ignore[attr-defined]


def rate(cluster: Cluster, args: argparse.Namespace, placed: list[int], home: str) -> float:
    processes = replicas(cluster, placed, home)
    try:
        urls = [cluster.url_of(node) for node in sorted(set(placed))]
        asyncio.run(run_load(urls, 4, 0.5, None))  # warm up
        rates = []
        for _ in range(args.repeat):
            done, _ = asyncio.run(run_load(urls, args.concurrency, args.seconds, None))
            rates.append(len(done) / args.seconds)
        return statistics.median(rates)
    finally:
        stop(processes)


def recovery(cluster: Cluster, args: argparse.Namespace, home: str) -> None:
    processes = replicas(cluster, [0, 1, 2], home)
    try:
        urls = [cluster.url_of(node) for node in range(3)]
        asyncio.run(run_load(urls, 4, 0.5, None))
        seconds, at = 8.0, 2.0
        done, failed = asyncio.run(run_load(urls, args.concurrency, seconds, (at, cluster, 2)))
    finally:
        stop(processes)
    buckets = [0] * int(seconds / BUCKET + 1)
    for t in done:
        buckets[int(t / BUCKET)] += 1
    rates = [n / BUCKET for n in buckets]
    kill_bucket = int(at / BUCKET)
    before = statistics.median(rates[1:kill_bucket])  # the first bucket is the ramp-up
    back = next(
        (
            i
            for i in range(kill_bucket, len(rates) - 3)
            if all(r >= 0.9 * before for r in rates[i : i + 3])
        ),
        None,
    )
    trace = " ".join(f"{r:.0f}" for r in rates[kill_bucket - 2 : kill_bucket + 12])
    print(f"kill: {before:.0f} calls/s before; per 250 ms from 0.5 s before the kill: {trace}")
    if back is None:
        print(f"kill: throughput did not come back to 90% within {seconds - at:.0f} s")
    else:
        print(f"kill: back to 90% of it {(back - kill_bucket) * BUCKET:.2f} s after the kill")
    last = f", the last {max(failed) - at:.2f} s after the kill" if failed else ""
    print(f"kill: {len(failed)} failed calls of {len(done) + len(failed)}{last}")


def lease(cluster: Cluster, home: str) -> None:
    serve = [sys.executable, "-m", "actorbus.cli", "--log-level", "WARNING", "serve"]
    env = dict(os.environ, ACTOR_HOME=home, ACTOR_POLICY="policy", ACTOR_JS_REPLICAS="3")
    policies = [
        start(
            [*serve, "actorbus.actors.policy:Policy", "--name", "policy"],
            dict(env, ACTOR_NATS_URL=cluster.url_of(node)),
        )
        for node in (0, 1)
    ]
    try:
        settings = Settings(home=Path(home), nats_url=cluster.url, policy="policy", js_replicas=3)
        caller = Keypair.generate()
        asyncio.run(configure(settings, caller))
        print_lease_cost(settings, caller.address, "3-node cluster, R3, 2 policy replicas")
    finally:
        stop(policies)


def main() -> None:
    args = load_options(__doc__).parse_args()
    root = Path(tempfile.mkdtemp(prefix="actorbus-bench-cluster-"))
    home = str(root / "home")
    cluster = Cluster(root)
    cluster.start()
    try:
        asyncio.run(cluster.wait_for_jetstream())
        one = rate(cluster, args, [0, 0, 0], home)
        spread = rate(cluster, args, [0, 1, 2], home)
        print(
            f"one node: {one:.0f} calls/s; spread over 3 nodes: {spread:.0f} calls/s; "
            f"spread/one = {spread / one:.2f} (concurrency {args.concurrency}, "
            f"median of {args.repeat} x {args.seconds:g} s)",
            flush=True,
        )
        lease(cluster, home)
        recovery(cluster, args, home)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()

"""Signed calls/s with the policy on vs off through one replica, the decision cost, and
the cost of a quota lease (a compare-and-set on its counter in JetStream).

    python bench/policy.py [--seconds 3] [--repeat 3] [--concurrency 64]

Off: the actor runs with a policy name no policy actor serves (calls are not checked).
On: a policy actor runs; the caller has a role that allows the call and a stake whose
quota is never reached, so every call pays the decision and the quota bookkeeping (leases
borrowed from the policy actor). Both use bench/calls.py's load generator and actor.
Lease: milliseconds per `lease` call to the policy actor (each writes the key's counter)
vs a `user2role` call (a read of the policy in memory), one at a time; the difference is
what a lease costs a host once per borrowed slice of a budget.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from calls import HERE as CALLS
from calls import load, load_options, percentile, start

from actorbus import Client, Keypair, Settings
from actorbus.bus import EmbeddedServer
from actorbus.host.policy import PolicyState


def decision_cost() -> tuple[float, float]:
    """Microseconds per decision: memoized (the hot path) and computed."""
    state = PolicyState()
    state.apply("role.bench", b'{"allow":["bench/*","other/*"],"deny":["bench/secret"]}')
    keys = [Keypair.generate().address for _ in range(1000)]
    for key in keys:
        state.apply(f"user.{key}", b'"bench"')
    n = 200_000
    started = time.perf_counter()
    for i in range(n):
        state.decide(keys[i % 1000], "bench", "echo")
    memo = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    for i in range(n):
        state._decide(keys[i % 1000], "bench", "echo", frozenset(), frozenset(), False)
    fresh = (time.perf_counter() - started) / n * 1e6
    return memo, fresh


async def lease_cost(settings: Settings, key: str, calls: int = 300) -> tuple[float, float]:
    """Median milliseconds of a `lease` of ``key``'s budget and of a `user2role` call, by
    an admin, one at a time, ``calls`` of each, interleaved."""
    times: dict[str, list[float]] = {"lease": [], "user2role": []}
    async with Client(settings=settings) as admin:
        for _ in range(calls):
            for fn, args in (("lease", [key, 1]), ("user2role", [])):
                started = time.perf_counter()
                await admin.request(settings.policy, fn, args)
                times[fn].append(time.perf_counter() - started)
    return statistics.median(times["lease"]) * 1e3, statistics.median(times["user2role"]) * 1e3


def print_lease_cost(settings: Settings, key: str, where: str) -> None:
    lease, read = asyncio.run(lease_cost(settings, key))
    print(
        f"lease {lease:.2f} ms vs user2role {read:.2f} ms ({where}, median of 300): "
        f"a lease costs {lease - read:.2f} ms more, {lease / read:.2f}x",
        flush=True,
    )


async def configure(settings: Settings, caller: Keypair) -> None:
    async with Client(settings=settings) as admin:
        await admin.call(settings.policy, "set_role", "bench", ["bench/*"], [], 1.0)
        await admin.call(settings.policy, "add_user", caller.address, "bench")
        await admin.call(settings.policy, "set_stake", caller.address, 1e9)


def main() -> None:
    args = load_options(__doc__).parse_args()
    memo, fresh = decision_cost()
    print(f"decision: {memo:.2f} us memoized, {fresh:.2f} us computed")
    home = tempfile.mkdtemp(prefix="actorbus-bench-policy-")
    caller = Keypair.generate()
    serve = [sys.executable, "-m", "actorbus.cli", "--log-level", "WARNING", "serve"]
    with EmbeddedServer(Path(home) / "nats") as server:
        env = dict(os.environ, ACTOR_NATS_URL=server.url, ACTOR_HOME=home)
        rates = {}
        for label, policy in (("off", "nopolicy"), ("on", "policy")):
            env["ACTOR_POLICY"] = policy
            started = []
            if label == "on":
                started.append(
                    start([*serve, "actorbus.actors.policy:Policy", "--name", policy], env)
                )
                settings = Settings(home=Path(home), nats_url=server.url, policy=policy)
                asyncio.run(configure(settings, caller))
                print_lease_cost(settings, caller.address, "one server, R1")
            started.append(start([*serve, f"{CALLS}:BenchEcho"], env))
            try:
                asyncio.run(load(server.url, 4, 0.5, "signed", caller))  # warm up, first lease
                runs = [
                    asyncio.run(load(server.url, args.concurrency, args.seconds, "signed", caller))
                    for _ in range(args.repeat)
                ]
            finally:
                for process in reversed(started):
                    process.terminate()
                    process.wait(30)
            rate = statistics.median(r for r, _ in runs)
            p99 = statistics.median(percentile(lat, 0.99) for _, lat in runs) * 1e3
            rates[label] = rate
            print(
                f"policy {label:3}: {rate:7.0f} calls/s  p99 {p99:6.2f} ms  "
                f"(concurrency {args.concurrency}, median of {args.repeat})",
                flush=True,
            )
        print(f"on/off = {rates['on'] / rates['off']:.2f}")


if __name__ == "__main__":
    main()

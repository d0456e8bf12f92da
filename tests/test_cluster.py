"""actorbus beyond one server: a 3-node JetStream cluster losing nodes and its JetStream
quorum (degraded mode), and idempotent calls retried through lost replicas."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from cluster import Cluster, raw_route
from nodes import up
from processes import actor_serve
from support import Probe, env_of, eventually

from actorbus import (
    BadReply,
    Client,
    Keypair,
    NoSuchActor,
    RateLimited,
    ReplyTimeout,
    Settings,
    Unavailable,
    serve,
)
from actorbus.actors.policy import Policy
from actorbus.bus import Bucket, connect

PROBE = "tests/support.py:Probe"


def on(cluster: Cluster, settings: Settings, node: int | None = None) -> Settings:
    """``settings`` on the cluster (one node's URL, or all of them), R3 buckets and streams."""
    url = cluster.url if node is None else cluster.url_of(node)
    return msgspec.structs.replace(settings, nats_url=url, js_replicas=3)


async def test_calls_go_on_through_a_node_kill(
    cluster: Cluster, settings: Settings, name: str
) -> None:
    """Under load from clients on every node, to replicas on every node, node 0 is killed:
    idempotent calls see no failure; other calls fail only if they were in flight (at
    most one per caller), and never after the clients have reconnected."""
    await cluster.wait_for_jetstream()
    nodes = [on(cluster, settings, node=i) for i in range(3)]
    failures: dict[str, list[float]] = {"same": [], "add": []}
    done = 0
    killed_at = 0.0

    async def caller(client: Client, fn: str, i: int) -> None:
        nonlocal done, killed_at
        for n in range(40):
            try:
                args = [n, 0.02] if fn == "same" else [n, 1]
                await client.request(name, fn, args, timeout=6)
            except (Unavailable, ReplyTimeout):
                failures[fn].append(time.monotonic() - killed_at)
            done += 1
            if done == 60 and not killed_at:
                killed_at = time.monotonic()
                cluster.kill(0)

    async with (
        serve(Probe(), name=name, settings=nodes[0]),
        serve(Probe(), name=name, settings=nodes[1]),
        serve(Probe(), name=name, settings=nodes[2]),
        Client(settings=nodes[0]) as c0,
        Client(settings=nodes[1]) as c1,
        Client(settings=nodes[2]) as c2,
    ):
        assert await c0.call(name, "add", 1, 2) == 3
        async with anyio.create_task_group() as tg:
            for i, client in enumerate([c0, c1, c2] * 2):
                tg.start_soon(caller, client, "same" if i < 3 else "add", i)
    assert done == 240
    assert failures["same"] == [], failures
    assert len(failures["add"]) <= 3, failures  # one in flight per caller, at most


async def test_calls_go_on_without_a_jetstream_quorum(
    cluster: Cluster, settings: Settings, name: str, tmp_path: Path
) -> None:
    """Kill two of three nodes: JetStream (registry, policy bucket) is gone, core NATS on
    the last node still routes, and calls keep working, from a client that knew the actor
    and from one that never saw it, under the policy the replicas had cached."""
    await cluster.wait_for_jetstream()
    last = on(cluster, settings, node=2)  # everyone on the node that stays
    member = Keypair.generate()
    async with (
        serve(Policy(), name=last.policy, settings=last),
        serve(Probe(), name=name, settings=last),
        Client(settings=last) as admin,
        Client(member, settings=last) as old,
    ):
        await admin.call(last.policy, "set_role", "member", [f"{name}/*"])
        await admin.call(last.policy, "add_user", member.address, "member")

        async def known() -> None:  # the probe holds the member's records from now on
            assert await old.call(name, "add", 1, 2) == 3

        await eventually(known)
        cluster.kill(0)
        cluster.kill(1)
        for _ in range(20):
            assert await old.call(name, "add", 2, 3) == 5
        async with Client(member, settings=last) as new:
            assert await new.call(name, "add", 3, 4) == 7
            assert await new.call(name, "same", "degraded") == "degraded"
        # A replica can even start now (no registry, no replay window: it says so), and
        # a caller finds it through $SRV.INFO; but it never saw the policy, so it refuses
        # calls (a signed 503) rather than let them through unchecked. (A caller that
        # trusts the policy does not even count it: the policy never bound its name.)
        elsewhere = msgspec.structs.replace(last, home=tmp_path / "elsewhere")
        async with (
            serve(Probe(), name=f"{name}late", settings=last),
            Client(member, settings=elsewhere) as fresh,
            Client(member, settings=last) as trusting,
        ):
            with pytest.raises(Unavailable, match="policy cannot be read"):
                await fresh.call(f"{name}late", "add", 5, 5)
            with pytest.raises(BadReply, match="not a registered key"):
                await trusting.call(f"{name}late", "add", 5, 5)
        stranger = Keypair.generate()
        async with Client(stranger, settings=last) as other:
            with pytest.raises(Exception, match="may not call"):
                await other.call(name, "add", 1, 1)  # the cached policy still refuses


async def test_idempotent_calls_see_no_failure_when_a_replica_is_killed(
    settings: Settings, name: str
) -> None:
    env = env_of(settings)
    failures: list[BaseException] = []
    done = 0
    warmed = anyio.Event()
    with (
        actor_serve(name, env, "tests/support.py:Probe") as first,
        actor_serve(name, env, "tests/support.py:Probe"),
    ):
        async with Client(settings=settings) as client:

            async def caller() -> None:
                nonlocal done
                for i in range(60):
                    try:
                        assert await client.request(name, "same", [i, 0.02], timeout=3) == i
                    except Exception as exc:  # counted, then asserted
                        failures.append(exc)
                    done += 1
                    if done == 40:
                        warmed.set()

            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(caller)
                await warmed.wait()
                os.kill(first.pid, signal.SIGKILL)  # some calls are in its hands
    assert done == 240 and failures == [], failures[:3]


async def test_only_idempotent_calls_are_tried_again(settings: Settings, name: str) -> None:
    """A replica that stops reading (SIGSTOP) loses the requests it is sent: an idempotent
    call tries three times within its deadline, any other call once."""
    seen: list[str] = []
    with actor_serve(name, env_of(settings), "tests/support.py:Probe") as replica:
        async with Client(settings=settings) as client, connect(settings.url) as nc:
            assert await client.call(name, "same", 1) == 1  # it knows `same` is idempotent

            async def count(msg: Any) -> None:
                seen.append(msg.subject.rsplit(".", 1)[1])

            await nc.subscribe(f"actor.{name}.*", cb=count)  # no queue group: sees all
            await nc.flush()
            os.kill(replica.pid, signal.SIGSTOP)
            try:
                with pytest.raises(ReplyTimeout):
                    await client.request(name, "same", ["x"], timeout=1.5)
                with pytest.raises(ReplyTimeout):
                    await client.request(name, "add", [1, 2], timeout=1.5)
            finally:
                os.kill(replica.pid, signal.SIGCONT)
    assert (seen.count("same"), seen.count("add")) == (3, 1)


async def test_any_call_is_sent_again_while_no_replica_takes_it(
    settings: Settings, name: str
) -> None:
    """No responders means not delivered: even a call that is not idempotent is sent again
    while its actor's replica restarts, within a bounded wait (2 s); past it, 503."""
    async with Client(settings=settings) as client:
        async with serve(Probe(), name=name, settings=settings):
            assert await client.call(name, "add", 1, 2) == 3
        back = anyio.Event()

        async def restart_later() -> None:
            await anyio.sleep(0.5)
            async with serve(Probe(), name=name, settings=settings):
                await back.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(restart_later)
            started = time.monotonic()
            assert await client.call(name, "add", 2, 3) == 5  # sent while none served it
            assert time.monotonic() - started >= 0.5
            back.set()
        started = time.monotonic()
        with pytest.raises(Unavailable, match="no actor is serving"):
            await client.call(name, "add", 3, 4)
        assert 1.0 < time.monotonic() - started < 3.0


async def test_two_supervisors_on_two_nodes_of_the_cluster(
    cluster: Cluster, nodes: Any, name: str
) -> None:
    """Each supervisor on its own NATS node; either one sees and controls both, reads
    the other's logs, and a NATS node's loss leaves its supervisor reconnected, serving."""
    await cluster.wait_for_jetstream()
    a = await nodes("a", url=cluster.url_of(0), ACTOR_JS_REPLICAS="3")
    b = await nodes("b", url=cluster.url_of(1), ACTOR_JS_REPLICAS="3")
    await up(a, PROBE, "--name", f"{name}a", "--no-gateway")
    admin = {"ACTOR_HOME": str(a.home)}  # a's key: it started the policy, its first admin
    await a.lets_host(b)  # as the auth callout would ask of a joining home
    await up(b, PROBE, "--name", f"{name}b", "--no-gateway")
    for node in (a, b):
        actors = {(r["node"], r["actor"]) for r in await node.ps(**admin)}
        assert {f"{name}a", f"{name}b"} <= {actor for _, actor in actors}
        assert len({n for n, _ in actors}) == 2
    await b.actor("call", f"{name}b/say", "hello from b", **admin)
    _, out, _ = await a.actor("logs", f"{name}b", "--tail", "20")
    assert "hello from b" in out
    before = {r["pid"] for r in await a.ps(**admin) if r["actor"] == f"{name}b"}
    await a.actor("restart", f"{name}b", **admin)  # b's replica, from node a
    after = {r["pid"] for r in await b.ps(**admin) if r["actor"] == f"{name}b"}
    assert after and not after & before
    cluster.kill(0)  # node a's NATS server
    on_2 = msgspec.structs.replace(a.settings, nats_url=cluster.url_of(2))
    async with Client(settings=on_2) as client:
        # Its replica is routable again once it has reconnected through the auth callout,
        # whose policy actor lost the same server: under load that takes longer than a
        # client's 2 s of resending on no responders (the flake of issue 21), so wait.
        async def a_answers() -> None:
            try:
                answer = await client.request(f"{name}a", "same", ["still here"], timeout=5)
            except (Unavailable, ReplyTimeout, NoSuchActor) as exc:
                # NoSuchActor: its registry entry ran out while it could not renew it
                raise AssertionError(exc.message) from None
            assert answer == "still here"

        await eventually(a_answers, timeout=20)

    async def a_is_back() -> None:  # its supervisor reconnected to another NATS node
        rows = await b.ps(**admin)
        assert any(r["actor"] == f"{name}a" and r["state"] == "running" for r in rows)

    took = await eventually(a_is_back, timeout=30)
    print(f"node a's supervisor answered again {took:.1f}s after its NATS node died")
    _, _, err = await b.actor("kill", f"{name}a", **admin)
    assert "stopped" in err
    assert not any(r["actor"] == f"{name}a" for r in await b.ps(**admin))


async def test_a_quota_holds_across_nodes_through_a_policy_replica_kill(
    cluster: Cluster, settings: Settings, name: str
) -> None:
    """Two policy replicas (processes on nodes 0 and 1) lend from counters in JetStream:
    a key's budget holds within 10% over three replicas on three nodes, and when a policy
    replica is killed -9 mid-window and started again, nothing is lent twice."""
    await cluster.wait_for_jetstream()
    window, budget = 6.0, 60
    here = [
        msgspec.structs.replace(on(cluster, settings, i), quota_window=window) for i in range(3)
    ]
    caller = Keypair.generate()
    served: dict[int, int] = {}  # successes by window index

    async def fire(clients: list[Client], count: int) -> None:
        async def one(i: int) -> None:
            try:
                await clients[i % 3].call(name, "add", i, 1)
            except RateLimited:
                return
            index = int(time.time() // window)
            served[index] = served.get(index, 0) + 1

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)

    def policy_on(node: int) -> Any:
        env = env_of(here[node], ACTOR_QUOTA_WINDOW=str(window), ACTOR_JS_REPLICAS="3")
        return actor_serve(here[node].policy, env, "actorbus.actors.policy:Policy")

    with policy_on(0) as first, policy_on(1):
        async with (
            serve(Probe(), name=name, settings=here[0]),
            serve(Probe(), name=name, settings=here[1]),
            serve(Probe(), name=name, settings=here[2]),
            Client(settings=here[0]) as admin,
            Client(caller, settings=here[0]) as c0,
            Client(caller, settings=here[1]) as c1,
            Client(caller, settings=here[2]) as c2,
        ):
            await admin.call(here[0].policy, "set_role", "metered", [f"{name}/*"], [], 1.0)
            await admin.call(here[0].policy, "add_user", caller.address, "metered")
            await admin.call(here[0].policy, "set_stake", caller.address, budget * 60 / window)
            await eventually(lambda: c0.call(name, "add", 0, 0))
            clients = [c0, c1, c2]

            await anyio.sleep(window - time.time() % window + 0.05)  # a fresh window
            index = int(time.time() // window)
            await fire(clients, 3 * budget)
            assert int(time.time() // window) == index  # all in one window
            assert budget * 0.9 <= served[index] <= budget * 1.1, served

            await anyio.sleep(window - time.time() % window + 0.05)
            index = int(time.time() // window)
            await fire(clients, budget // 2)
            os.kill(first.pid, signal.SIGKILL)  # mid-window, with leases on its books
            await fire(clients, budget)  # the other replica lends what is left
            with policy_on(0):  # the killed one is back: it reads the same counters
                await fire(clients, 2 * budget)
                assert int(time.time() // window) == index, "the test ran past its window"
                assert budget * 0.9 <= served[index] <= budget * 1.1, served


async def test_start_up_waits_for_jetstream(cluster: Cluster, nodes: Any, name: str) -> None:
    """`actor up` on a cluster without a JetStream quorum waits, says so, and starts once
    the quorum is back; what cannot wait longer fails in one line, without a traceback."""
    await cluster.wait_for_jetstream()
    cluster.kill(0)
    cluster.kill(1)
    node = await nodes("a", url=cluster.url_of(2), ACTOR_JS_REPLICAS="3")
    code, _, err = await node.actor(
        "serve", "actorbus.actors.policy:Policy", check=False, ACTOR_START_WAIT="1"
    )
    assert code == 12, err
    assert "JetStream was not ready within 1 s" in err and "Traceback" not in err, err
    async with anyio.create_task_group() as tg:
        tg.start_soon(up, node, PROBE, "--name", name, "--no-gateway")

        async def waiting() -> None:
            assert "JetStream is not ready" in _read(node.home / "node.log")

        await eventually(waiting, timeout=20)
        cluster.start(0)
        cluster.start(1)
    assert "JetStream is ready" in _read(node.home / "node.log")
    rows = await node.ps()
    assert any(r["actor"] == name and r["state"] == "running" for r in rows), rows


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def test_a_policy_change_right_after_a_node_kill_succeeds(
    cluster: Cluster, settings: Settings
) -> None:
    """Kill the node that leads the policy bucket's stream: the next change waits out the
    election (within its timeout) instead of failing. The policy actor and the admin are
    on another node, so only JetStream's leader is lost, not their connections."""
    await cluster.wait_for_jetstream()
    async with connect(cluster.url) as nc:
        await Bucket.open(nc, settings.policy_bucket, ttl=None, replicas=3)
        info = await nc.jetstream().stream_info(f"KV_{settings.policy_bucket}")
    assert info.cluster is not None and info.cluster.leader
    leader = int(info.cluster.leader.removeprefix("n"))
    here = on(cluster, settings, node=(leader + 1) % 3)
    async with serve(Policy(), name=here.policy, settings=here), Client(settings=here) as admin:
        await admin.call(here.policy, "set_role", "before", ["a/*"])
        cluster.kill(leader)
        role = await admin.request(here.policy, "set_role", ["after", ["b/*"]], timeout=15)
        assert role == {"after": {"allow": ["b/*"], "deny": [], "stake2rate": 1.0}}
        assert "after" in await admin.request(here.policy, "roles", timeout=15)


def test_a_route_without_the_password_is_refused(cluster: Cluster) -> None:
    """Issue 30: a route connection without credentials was taken, and heard every
    request and private reply. The cluster's routes take a password now."""
    said = raw_route(cluster.cluster_ports[0])
    assert b"Authorization Violation" in said and b"PONG" not in said, said

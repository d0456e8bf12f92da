"""Service discovery: $SRV (nats micro) answers, and the registry follows replicas."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import anyio
import msgspec
import pytest
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats
from processes import actor_serve
from support import Probe, eventually

from actorbus import Client, Settings, serve
from actorbus.actors.policy import Policy
from actorbus.bus import connect
from actorbus.bus.records import open_record
from actorbus.client import Registry
from actorbus.client.discovery import from_service_info

ROOT = Path(__file__).resolve().parent.parent


async def test_srv_ping_info_stats(settings: Settings, name: str) -> None:
    async with (
        serve(Probe(), name=name, settings=settings) as host,
        Client(settings=settings) as client,
        connect(settings.url) as nc,
    ):
        await client.call(name, "forward", "x")
        await client.call(name, "forward", "y")
        subject = host.name
        ping = ServicePing.from_dict(json.loads((await nc.request(f"$SRV.PING.{subject}")).data))
        assert ping.id == host.instance
        assert ping.metadata["address"] == host.address

        raw_info = json.loads((await nc.request(f"$SRV.INFO.{subject}.{host.instance}")).data)
        info = ServiceInfo.from_dict(raw_info)  # nats.micro's own parser accepts it
        record = open_record(
            "actor_registry", f"{name}.{host.instance}", info.metadata.pop("record").encode()
        )
        assert record.by == host.address  # the replica's registry entry, signed (PROTOCOL §7)
        assert info.metadata == {"actor": name, "address": host.address, "node": host.entry.node}
        endpoints = {e.name: e for e in info.endpoints}
        assert endpoints["add"].subject == f"actor.{name}.add"
        assert endpoints["add"].queue_group == f"actor.{name}"
        schema = json.loads(endpoints["add"].metadata["schema"])
        assert schema["params"]["required"] == ["a", "b"]
        assert all(isinstance(e["metadata"], dict) for e in raw_info["endpoints"])  # never null

        stats = ServiceStats.from_dict(json.loads((await nc.request(f"$SRV.STATS.{subject}")).data))
        forward = next(e for e in stats.endpoints if e.name == "forward")
        assert forward.num_requests == 2
        assert forward.num_errors == 0
        assert forward.average_processing_time > 0


async def test_srv_info_shows_a_binding_made_after_the_start(settings: Settings, name: str) -> None:
    """A replica started before its policy is bound later; its $SRV.INFO record shows the
    binding then, or callers that trust the policy would never count it there, which is
    where they find it without JetStream (seen as a 502 in test_cluster's degraded mode
    when the replica's policy view was not loaded yet at its start)."""
    async with (
        serve(Probe(), name=name, settings=settings) as host,  # first: no policy to claim from
        serve(Policy(), name=settings.policy, settings=settings),
        Client(settings=settings) as client,
    ):

        async def counted() -> None:
            known = await from_service_info(client.nc, name, 10.0, client.vouching)
            assert client.vouching.trusted is not None
            assert host.address in known.addresses

        await eventually(counted)


async def test_srv_all_sees_every_replica(settings: Settings, name: str) -> None:
    async with (
        serve(Probe(), name=name, settings=settings) as a,
        serve(Probe(), name=name, settings=settings) as b,
        connect(settings.url) as nc,
    ):
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
        seen = set()
        with anyio.move_on_after(2):
            async for msg in sub.messages:
                seen.add(json.loads(msg.data)["id"])
                if len(seen) == 2:
                    break
        assert seen == {a.instance, b.instance}


async def test_dotted_names_are_served_and_kept_apart(settings: Settings) -> None:
    async with (
        serve(Probe(), name="team.echo", settings=settings),
        serve(Probe(), name="team", settings=settings),
        Client(settings=settings) as client,
    ):
        assert await client.call("team.echo", "forward", "dotted") == "dotted"
        assert [e.name for e in await client.entries("team")] == ["team"]
        assert [e.name for e in await client.entries("team.echo")] == ["team.echo"]


async def test_registry_lists_replicas_and_forgets_stopped_ones(
    settings: Settings, name: str
) -> None:
    async with Client(settings=settings) as client:
        async with serve(Probe(), name=name, settings=settings) as host:
            (entry,) = await client.entries(name)
            assert (entry.address, entry.pid, entry.instance) == (
                host.address,
                os.getpid(),
                host.instance,
            )
            assert "forward" in entry.fns
            assert "info" in entry.fns
        assert await client.entries(name) == []  # a graceful stop leaves at once


@pytest.mark.timeout(60)
def test_a_killed_replica_expires_from_the_registry(settings: Settings, name: str) -> None:
    """SIGKILL leaves no chance to deregister: the heartbeat's TTL must remove it."""
    env = {
        "ACTOR_NATS_URL": settings.url,
        "ACTOR_HOME": str(settings.home),
        "ACTOR_REGISTRY_TTL": str(settings.registry_ttl),
    }

    async def entries() -> int:
        async with Client(settings=settings) as client:
            return len(await client.entries(name))

    with actor_serve(name, env) as process:
        assert anyio.run(entries) == 1
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed = time.monotonic()
        while anyio.run(entries):
            assert time.monotonic() - killed < settings.registry_ttl + 5
            time.sleep(0.2)
        assert time.monotonic() - killed <= settings.registry_ttl + 1


async def test_heartbeats_follow_the_registry_buckets_own_ttl(settings: Settings) -> None:
    """A replica configured with a longer TTL than the bucket was made with would see its
    entry expire between heartbeats: it follows the bucket's TTL instead."""
    async with connect(settings.url) as nc:
        await Registry.open(nc, settings)  # made by now, by someone
        longer = await Registry.open(nc, msgspec.structs.replace(settings, registry_ttl=10_000.0))
        made = (await nc.jetstream().stream_info("KV_actor_registry")).config.max_age
        assert longer.ttl == made < 10_000

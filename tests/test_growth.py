"""Costs that grow with the work, not with what exists (issue 29): each test is a curve
that broke the system before, checked at a size where it broke."""

from __future__ import annotations

import secrets

from support import Probe

from actorbus import Client, Settings, serve
from actorbus.bus import Bucket, connect


async def test_registry_reads_make_nothing_on_the_server(settings: Settings, name: str) -> None:
    """Each registry read made a JetStream consumer that stayed five minutes: at ~3 reads a
    second the account's 1,000 consumers ran out and the whole bus stopped (issue 29).
    Now 300 reads, by name and of everything, leave the consumer count where it was."""
    async with serve(Probe(), name=name, settings=settings), Client(settings=settings) as client:
        js = client.nc.jetstream()
        before = (await js.stream_info("KV_actor_registry")).state.consumer_count
        for _ in range(150):
            assert [e.name for e in await client.entries(name)] == [name]
            assert name in {e.name for e in await client.entries()}
        after = (await js.stream_info("KV_actor_registry")).state.consumer_count
    assert after == before


async def test_a_bucket_read_pages_through_every_key(nats_url: str) -> None:
    """A read answers in batches of 256 entries: 600 keys come whole, deleted ones not, and
    a filter takes only its keys."""
    async with connect(nats_url) as nc:
        bucket = await Bucket.open(nc, f"grow{secrets.token_hex(4)}", ttl=None)
        for i in range(600):
            await bucket.put(f"k.{i:04d}", b"%d" % i)
        await bucket.delete("k.0007")
        found = dict(await bucket.items())
        assert len(found) == 599 and "k.0007" not in found and found["k.0599"] == b"599"
        assert sorted(await bucket.items("k.0010")) == [("k.0010", b"10")]

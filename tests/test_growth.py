"""Costs that grow with the work, not with what exists (issue 29): each test is a curve
that broke the system before, checked at a size where it broke."""

from __future__ import annotations

import json
import os
import secrets
import stat
import sys
from pathlib import Path

import anyio
import msgspec
import pytest
from support import Probe, env_of, eventually

from actorbus import Client, Forbidden, Settings, Unavailable, serve
from actorbus.actors.policy import Policy
from actorbus.actors.policy.keeper import RecordKeeper
from actorbus.bus import Bucket, Keypair, connect
from actorbus.bus.records import sign_record


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


async def test_a_followed_bucket_makes_no_consumer_and_misses_nothing_silently(
    nats_url: str,
) -> None:
    """Issue 30: a host followed the policy with a consumer whose deliver subject a replica
    could choose, and consumers aimed where something listens never went away. The
    bucket's stream now republishes each change, which followers hear by a plain
    subscription: changes come in order and no consumer is made. A follower that heard
    fewer changes than the stream stored says so (its reader reads the bucket again), as
    does one of a bucket that republishes nothing."""
    name = f"grow{secrets.token_hex(4)}"
    async with connect(nats_url) as nc:
        bucket = await Bucket.open(nc, name, ttl=None, followed=True)
        js = nc.jetstream()
        async with bucket.changes(verify=0.3) as changes:
            await bucket.put("a", b"1")
            await bucket.delete("a")
            await bucket.put("b.c", b"2")
            seen = [await anext(changes) for _ in range(3)]
            assert [(c.key, c.value) for c in seen] == [("a", b"1"), ("a", None), ("b.c", b"2")]
            assert (await js.stream_info(bucket.stream)).state.consumer_count == 0
            config = (await js.stream_info(bucket.stream)).config
            await js.update_stream(config.evolve(republish=None))  # one change not heard
            await bucket.put("lost", b"3")
            await js.update_stream(config)
            with (
                anyio.fail_after(5),
                pytest.raises(Unavailable, match="1 of its changes never came"),
            ):
                await anext(changes)
        plain = await Bucket.open(nc, name + "p", ttl=None)
        async with plain.changes() as changes:
            with pytest.raises(Unavailable, match="does not publish its changes"):
                await anext(changes)


async def test_the_policy_keeps_its_records_whatever_their_number(
    nats_url: str, tmp_path: Path
) -> None:
    """The policy actor keeps every record it signs on disk, to put back what someone
    writes over. It rewrote a snapshot of them all in a thread iterating the dict the loop
    added to: past ~10,000 records it crashed ("dictionary changed size during
    iteration"). Now 40,000 records noted at full speed are all kept, the next keeper
    reads them back, and a key written many times costs one line, not many."""
    key = Keypair.generate()
    path = tmp_path / "records"
    async with connect(nats_url) as nc:
        bucket = await Bucket.open(nc, f"grow{secrets.token_hex(4)}", ttl=None)
        records = {
            f"user.{i}": sign_record(key, bucket.name, f"user.{i}", b'"r"') for i in range(40_000)
        }
        async with RecordKeeper(bucket, key.address, path) as keeper:
            for n, (k, record) in enumerate(records.items()):
                keeper.note(k, record)
                if n % 5000 == 0:
                    await anyio.sleep(0.01)  # let the thread write while more come
            versions = [sign_record(key, bucket.name, "user.0", b'"v%d"' % v) for v in range(2)]
            for n in range(2000):
                keeper.note("user.0", versions[n % 2])
        async with RecordKeeper(bucket, key.address, path) as again:
            for k in ("user.1", "user.20000", "user.39999"):
                assert await again.kept(k) == records[k]
            assert await again.kept("user.0") == versions[1]
            assert await again.kept("user.40000") is None
        assert path.stat().st_size < 2 * sum(len(r) + 12 for r in records.values()) + (1 << 20)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_the_kept_records_are_compacted(nats_url: str, tmp_path: Path) -> None:
    """Rewriting one key 10,000 times leaves a log of about one line, not 10,000."""
    key = Keypair.generate()
    path = tmp_path / "records"
    async with connect(nats_url) as nc:
        bucket = await Bucket.open(nc, f"grow{secrets.token_hex(4)}", ttl=None)
        versions = [sign_record(key, bucket.name, "user.x", b'"v%d"' % v) for v in range(2)]
        async with RecordKeeper(bucket, key.address, path) as keeper:
            for n in range(10_000):
                keeper.note("user.x", versions[n % 2])
        assert path.stat().st_size < (1 << 20) + 2 * 300  # 10,000 lines are 2 MB
        async with RecordKeeper(bucket, key.address, path) as again:
            assert await again.kept("user.x") == versions[1]


async def test_a_snapshot_of_the_old_keeper_is_read(nats_url: str, tmp_path: Path) -> None:
    """A home kept by the keeper before issue 29 holds one JSON object: it is read and
    turned into lines."""
    key = Keypair.generate()
    path = tmp_path / "records"
    async with connect(nats_url) as nc:
        bucket = await Bucket.open(nc, f"grow{secrets.token_hex(4)}", ttl=None)
        record = sign_record(key, bucket.name, "admin.a", b"1")
        path.write_bytes(msgspec.json.encode({"admin.a": record.decode()}))
        async with RecordKeeper(bucket, key.address, path) as keeper:
            assert await keeper.kept("admin.a") == record
        assert path.read_bytes() == b"admin.a\t" + record + b"\n"


async def test_a_change_to_one_key_costs_that_keys_lease_only(
    settings: Settings, name: str
) -> None:
    """Before, any change of the policy had every active key on every host hand back its
    quota lease and borrow another: two writes at the policy actor per active key, per
    change (4,000 active keys: 2.6 s of its CPU for one stake). Now a key whose rate a
    change leaves alone keeps its lease; the key whose stake changed hands its back."""
    settings = msgspec.structs.replace(settings, quota_window=60.0)
    steady, changed, newcomer = Keypair.generate(), Keypair.generate(), Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings) as policy,
        serve(Probe(), name=name, settings=settings) as host,
        Client(settings=settings) as admin,
        Client(steady, settings=settings) as a,
        Client(changed, settings=settings) as b,
    ):
        await admin.call(settings.policy, "set_role", "metered", [f"{name}/*"], [], 1.0)
        for key in (steady, changed):
            await admin.call(settings.policy, "add_user", key.address, "metered")
            await admin.call(settings.policy, "set_stake", key.address, 6000)  # 100 a minute

        async def both_call() -> None:
            assert await a.call(name, "forward", "a") == "a"
            assert await b.call(name, "forward", "b") == "b"

        await eventually(both_call)  # each holds a lease of 10 on this host now
        released = policy.pipeline.stats["release"]
        before = released.num_requests
        await admin.call(settings.policy, "add_user", newcomer.address, "metered")
        await admin.call(settings.policy, "set_stake", changed.address, 9000)

        async def seen() -> None:  # the changes reach the host in order
            assert host.pipeline.policy.state.stakes.get(changed.address) == 9000

        await eventually(seen)
        for _ in range(3):
            assert await a.call(name, "forward", "a") == "a"
        assert released.num_requests == before  # the steady key kept its lease
        assert await b.call(name, "forward", "b") == "b"
        assert released.num_requests == before + 1  # the changed key handed its back


async def test_lists_page_past_what_one_reply_holds(settings: Settings) -> None:
    """`user ls` failed past ~17,000 users: one reply of 2 MB, over the server's max
    payload (a 500). Now 20,000 users, added in bulk, come a page of 1,000 at a time, in
    order, to the Python client and the CLI alike."""
    users = {Keypair.generate().address: "user" for _ in range(20_000)}
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        Client(settings=settings) as admin,
    ):
        assert await admin.add_users(users) == 20_000
        pages = [page async for page in admin.pages(settings.policy, "users")]
        assert {len(page) for page in pages[:-1]} == {1000} and len(pages) == 20
        listed = {key: role for page in pages for key, role in page.items()}
        assert listed == users and list(listed) == sorted(users)
        some = await admin.call(settings.policy, "role2users", "user", limit=5)
        assert some == sorted(users)[:5]
        command = ["policy", "user", "ls", "--limit", "1500", "--after", some[-1]]
        shown = await anyio.run_process(
            [sys.executable, "-m", "actorbus.cli", *command],
            env={**os.environ, **env_of(settings)},
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        assert list(json.loads(shown.stdout)) == sorted(users)[5:1505]


async def test_a_replica_holds_the_records_of_the_keys_that_call_it(
    settings: Settings, name: str
) -> None:
    """Every process held the whole policy, and checked one signature per record at its
    start: 0.3 s with 10 users, 3.0 s with 42,000. Now a replica reads the records every
    decision needs at once, and a key's own when that key first calls it: with 3,000
    users it holds the two that called, each decided by its role, and a change to one of
    them applies at once."""
    users = {Keypair.generate().address: "user" for _ in range(3_000)}
    caller, other = Keypair.generate(), Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        Client(settings=settings) as admin,
    ):
        await admin.call(settings.policy, "set_role", "reader", [f"{name}/info"])
        await admin.add_users({**users, caller.address: "user", other.address: "reader"})
        async with (
            serve(Probe(), name=name, settings=settings) as host,
            Client(caller, settings=settings) as a,
            Client(other, settings=settings) as b,
        ):
            assert await a.call(name, "forward", "a") == "a"
            with pytest.raises(Forbidden, match="role 'reader' may not"):
                await b.call(name, "forward", "b")
            state = host.pipeline.policy.state
            assert set(state.users) == {caller.address, other.address}
            await admin.call(settings.policy, "add_user", other.address, "user")

            async def promoted() -> None:
                assert await b.call(name, "forward", "b") == "b"

            await eventually(promoted, timeout=2)
            assert len(state.users) == 2  # the 3,000 others were never read here


async def test_the_audit_trail_pages_back_from_its_end(settings: Settings) -> None:
    """The audit log was read whole through a consumer for its last hundred records. Now a
    page is one read from the stream's end, and ``before`` goes further back: 30 changes
    read 10 at a time come back in order, each record once, and nothing is left on the
    server."""
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        Client(settings=settings) as admin,
    ):
        for n in range(30):
            await admin.call(settings.policy, "set_role", f"r{n:02d}", [])
        js = admin.nc.jetstream()
        consumers = (await js.stream_info("ACTOR_POLICY_AUDIT")).state.consumer_count
        roles: list[str] = []
        before = 0
        for _ in range(3):
            page = await admin.call(settings.policy, "log", 10, before)
            assert len(page) == 10 and [r["seq"] for r in page] == sorted(r["seq"] for r in page)
            roles = [r["args"]["role"] for r in page] + roles
            before = page[0]["seq"]
        assert roles == [f"r{n:02d}" for n in range(30)]
        assert (await js.stream_info("ACTOR_POLICY_AUDIT")).state.consumer_count == consumers

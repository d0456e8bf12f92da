"""Signed state (PROTOCOL.md §5): on a NATS that lets anyone write (the test server has no
authorization, like a misconfigured or shared one), what actorbus trusts cannot be forged.
Each attack is a plain nats-py connection writing JetStream directly."""

from __future__ import annotations

import logging

import msgspec
import nats
import pytest
from support import Probe, eventually

from actorbus import Client, Forbidden, Keypair, Settings, Unavailable, serve
from actorbus.actors.policy import Policy
from actorbus.bus import BadReply, Gone
from actorbus.bus.records import sign_record

pytestmark = pytest.mark.timeout(60)


async def test_a_written_admin_entry_makes_no_admin(
    settings: Settings, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    attacker = Keypair.generate()
    forger = Keypair.generate()  # a record signed, but not by the policy's key
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings),
        Client(settings=settings) as admin,
        Client(attacker, settings=settings) as client,
    ):
        nc = await nats.connect(settings.url)
        kv = await nc.jetstream().key_value(settings.policy_bucket)
        await kv.put(f"admin.{attacker.address}", b"1")
        key = f"user.{attacker.address}"
        await kv.put(key, sign_record(forger, settings.policy_bucket, key, b'"user"'))
        first = admin.key.address
        await kv.delete(f"admin.{first}")  # a bare delete: no record of the policy's
        await nc.close()

        async def reported() -> None:
            warned = caplog.text
            assert f"ignoring admin.{attacker.address}" in warned
            assert f"ignoring user.{attacker.address}: signed by {forger.address}" in warned
            assert f"ignoring admin.{first}: deleted without a signed record" in warned

        caplog.set_level(logging.WARNING)
        await eventually(reported)
        with pytest.raises(Forbidden):
            await client.call(settings.policy, "add_user", attacker.address)
        with pytest.raises(Forbidden):
            await client.call(name, "forward", "hi")  # still public
        assert attacker.address not in await admin.call(settings.policy, "admins")
        assert await admin.call(name, "forward", "still admin") == "still admin"


async def test_a_bucket_made_first_by_an_attacker_is_not_its_policy(
    settings: Settings, name: str
) -> None:
    attacker = Keypair.generate()
    nc = await nats.connect(settings.url)
    kv = await nc.jetstream().create_key_value(bucket=settings.policy_bucket, history=1)
    await kv.put(f"admin.{attacker.address}", b"1")
    await kv.put("config", b'{"window": 60, "floor": 1000000}')
    await nc.close()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings),
        Client(settings=settings) as admin,
        Client(attacker, settings=settings) as client,
    ):
        assert await admin.call(settings.policy, "admins") == [admin.key.address]
        assert (await admin.call(settings.policy, "config"))["floor"] == 60.0
        with pytest.raises(Forbidden):
            await client.call(name, "forward", "hi")


async def test_a_vanished_policy_fails_closed_and_is_not_made_again(
    settings: Settings, name: str
) -> None:
    """Deleting the bucket does not open the actors, and a restarted policy actor does
    not seed a fresh policy (with a new first admin) over what was lost."""
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        Client(settings=settings) as admin,
    ):
        await admin.call(settings.policy, "admins")
        async with serve(Probe(), name=name, settings=settings):  # claims its name
            pass
    async with serve(Probe(), name=name, settings=settings), Client(settings=settings) as client:
        assert await client.call(name, "forward", "checked") == "checked"
        nc = await nats.connect(settings.url)
        await nc.jetstream().delete_key_value(settings.policy_bucket)
        await nc.close()

        async def closed() -> None:
            try:
                await client.call(name, "forward", "unchecked?")
            except Unavailable as exc:
                assert "is gone" in exc.message
            else:
                raise AssertionError("a call was let through without its policy")

        await eventually(closed, timeout=10)
    # A replica started now (same home, so it knows the policy's key) stays closed too;
    # its name's binding gone with the bucket, callers do not count it either.
    async with serve(Probe(), name=name, settings=settings), Client(settings=settings) as client:
        with pytest.raises((Unavailable, BadReply)):
            await client.call(name, "forward", "unchecked?")
    with pytest.raises(BaseExceptionGroup) as refused:
        async with serve(Policy(), name=settings.policy, settings=settings):
            pass
    assert refused.group_contains(Gone, match="is gone, and this policy actor made it", depth=None)


async def test_policy_records_are_signed_by_the_policy(settings: Settings) -> None:
    async with (
        serve(Policy(), name=settings.policy, settings=settings) as policy,
        Client(settings=settings) as admin,
    ):
        await admin.call(settings.policy, "set_stake", admin.key.address, 5.0)
        nc = await nats.connect(settings.url)
        kv = await nc.jetstream().key_value(settings.policy_bucket)
        stored = msgspec.json.decode((await kv.get(f"stake.{admin.key.address}")).value)
        await nc.close()
        assert stored["v"] == 5.0 and stored["by"] == policy.entry.address

"""Signed state (PROTOCOL.md §5): on a NATS that lets anyone write (the test server has no
authorization, like a misconfigured or shared one), what actorbus trusts cannot be forged.
Each attack is a plain nats-py connection writing JetStream directly."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.js.errors
import pytest
from nodes import up
from support import Probe, eventually

from actorbus import Client, Forbidden, Keypair, Settings, Unavailable, serve
from actorbus.actors.policy import Policy
from actorbus.bus import BadReply, Gone, sign_reply
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


async def test_an_old_record_put_back_undoes_nothing(settings: Settings, name: str) -> None:
    """Issue 30: a policy record carried no version, so one the policy had signed once
    counted again when put back: an old ``user.<k>`` record gave a removed user its role
    back (403 became 200), and it survived a restart of the policy actor. Now the record
    put back is older than the removal the hosts saw: the caller stays refused, the
    policy actor writes its removal back, and does so again when it starts after a replay
    made while it was down (a replica started after it refuses too)."""
    member = Keypair.generate()
    key = f"user.{member.address}"
    async with Client(settings=settings) as admin:
        async with serve(Policy(), name=settings.policy, settings=settings):
            await admin.call(settings.policy, "set_role", "member", [f"{name}/*"])
            await admin.call(settings.policy, "add_user", member.address, "member")
            async with (
                serve(Probe(), name=name, settings=settings),
                Client(member, settings=settings, session=False) as caller,
            ):
                await eventually(lambda: _calls(caller, name))
                nc = await nats.connect(settings.url)  # the attacker: it reads the bucket
                kv = await nc.jetstream().key_value(settings.policy_bucket)
                granted = (await kv.get(key)).value
                await admin.call(settings.policy, "rm_user", member.address)
                with pytest.raises(Forbidden):
                    await caller.call(name, "forward", "removed")
                removal = (await kv.get(key)).value
                await kv.put(key, granted)  # the old record, back

                async def repaired() -> None:
                    assert (await kv.get(key)).value == removal

                await eventually(repaired)
                with pytest.raises(Forbidden):
                    await caller.call(name, "forward", "replayed")
        await kv.put(key, granted)  # while no policy actor runs
        async with (
            serve(Policy(), name=settings.policy, settings=settings),
            serve(Probe(), name=name, settings=settings),
            Client(member, settings=settings, session=False) as caller,
        ):
            assert (await kv.get(key)).value == removal  # put back as it started
            with pytest.raises(Forbidden):
                await caller.call(name, "forward", "after a restart")
        await nc.close()


async def test_forged_quota_counters_lend_nothing(settings: Settings, name: str) -> None:
    """Issue 30: the policy actor trusted any well-formed counter in its lent-stake bucket:
    one dated in the future, or one of the current window at the whole budget, refused a
    key every call (429) until that window. Now a counter the policy did not sign counts
    as nothing lent, and one from the future as nothing at all."""
    early, full = Keypair.generate(), Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings),
        Client(settings=settings) as admin,
        Client(early, settings=settings, session=False) as a,
        Client(full, settings=settings, session=False) as b,
    ):
        await admin.call(settings.policy, "set_config", 60.0, 60.0)  # 60 calls a minute
        await admin.call(settings.policy, "set_role", "member", [f"{name}/*"])
        await admin.add_users({early.address: "member", full.address: "member"})
        nc = await nats.connect(settings.url)  # the attacker writes the counters
        lent = await nc.jetstream().key_value(settings.policy_bucket + "_lent")
        now = int(time.time() // 60)
        for window in (now, now + 1):  # both parities: this window's and the next's
            parity = window % 2
            await lent.put(f"{early.address}.{parity}", f"[{window + 1000},0,60.0]".encode())
            await lent.put(f"{full.address}.{parity}", f"[{window},60,60.0]".encode())
        await nc.close()
        await eventually(lambda: _calls(a, name))
        await _calls(b, name)


async def test_a_message_on_a_callers_inbox_is_not_its_reply(settings: Settings, name: str) -> None:
    """Issue 30: the client took the first message on a call's reply subject as the reply,
    verified or not: a stranger who sees the request (or a JetStream API answer sent
    there) turned a good call into a 502. Now what does not verify is dropped and the
    call waits for its reply: the attacker answers every request at once, with junk and
    with a reply that is signed over another nonce, and each call still gets its
    actor's."""
    impostor = Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings),
        Client(settings=settings) as admin,
    ):
        nc = await nats.connect(settings.url)
        answered = 0

        async def answer(msg: Any) -> None:
            nonlocal answered
            await nc.publish(msg.reply, b"junk")
            forged = sign_reply(impostor, "another nonce", 200, b'"forged"')
            await nc.publish(msg.reply, b'"forged"', headers=forged)
            answered += 1

        await nc.subscribe(f"actor.{name}.slow", cb=answer)
        await nc.flush()
        for _ in range(3):
            assert await admin.call(name, "slow", 0.1) == 0.1
        assert answered == 3
        await nc.close()


async def test_a_rollup_onto_the_policy_bucket_is_refused(settings: Settings) -> None:
    """Issue 30: a KV stream takes a ``Nats-Rollup`` header, and JetStream can be made to
    publish stored headers anywhere (a direct get answers where its request says): one
    message onto the policy bucket rolled 27 entries up into 1, and nothing repaired it.
    Now the policy's buckets (and the registry) refuse rollups: the attacker's message is
    not stored, and every record is still there."""
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        Client(settings=settings) as admin,
    ):
        users = {Keypair.generate().address: "user" for _ in range(25)}
        await admin.add_users(users)
        nc = await nats.connect(settings.url)
        js = nc.jetstream()
        stream = f"KV_{settings.policy_bucket}"
        before = (await js.stream_info(stream)).state.messages
        for bucket in (stream, "KV_actor_registry", f"{stream}_lent"):
            subject = f"${bucket[:2]}.{bucket[3:]}.x"
            with pytest.raises(nats.js.errors.Error):
                await js.publish(subject, b"1", headers={"Nats-Rollup": "all"})
        assert (await js.stream_info(stream)).state.messages == before
        assert await admin.call(settings.policy, "role2users", "user") == sorted(users)
        await nc.close()


async def _calls(caller: Client, name: str) -> None:
    assert await caller.call(name, "forward", "hi") == "hi"


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
        # A bucket made again by someone else, empty or with entries of its own, is not
        # the policy either.
        nc = await nats.connect(settings.url)
        kv = await nc.jetstream().create_key_value(bucket=settings.policy_bucket)
        await kv.put(f"admin.{Keypair.generate().address}", b"1")
        await nc.close()

        async def still_closed() -> None:
            with pytest.raises(Unavailable, match="holds no record of the policy's key"):
                await client.call(name, "forward", "unchecked?")

        await eventually(still_closed, timeout=10)
        # The policy actor, started again, puts back its records (kept in its home).
        async with serve(Policy(), name=settings.policy, settings=settings):

            async def reopened() -> None:
                try:  # a host reads a bucket it does not take for the policy every second
                    assert await client.call(name, "forward", "checked") == "checked"
                except Unavailable as exc:
                    raise AssertionError(exc.message) from None

            await eventually(reopened, timeout=10)
        nc = await nats.connect(settings.url)
        await nc.jetstream().delete_key_value(settings.policy_bucket)
        await nc.close()
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


def fake_entry(actor: str, address: str, instance: str, /, **changes: Any) -> bytes:
    """A registry entry's value for ``actor`` at ``address`` (an attacker's)."""
    now = time.time()
    entry = {
        "name": actor,
        "address": address,
        "fns": ["forward"],
        "node": "fake",
        "pid": 1,
        "instance": instance,
        "started": now,
        "version": "0",
        "heartbeat": now,
        "ttl": 60.0,
        **changes,
    }
    return json.dumps(entry).encode()


NESTED = b'{"v":' + b"[" * 100_000 + b"]" * 100_000 + b',"by":"x","sig":"y"}'
"""A value nested past Python's recursion limit."""


async def impersonate(nc: nats.NATS, name: str, attacker: Keypair) -> None:
    """Write entries for ``name`` with the attacker's address (unsigned, as registry
    entries were; signed by the attacker but bound by no policy; under a name with a
    space; nested past reason) and answer in the actor's queue group, signed."""
    kv = await nc.jetstream().key_value("actor_registry")
    await kv.put(f"{name}.{'f' * 16}", fake_entry(name, attacker.address, "f" * 16))
    for instance, changes in (("e" * 16, {}), ("d" * 16, {"name": "a b"})):
        key = f"{name}.{instance}"
        value = fake_entry(name, attacker.address, instance, **changes)
        await kv.put(key, sign_record(attacker, "actor_registry", key, value))
    await kv.put(f"{name}.{'c' * 16}", NESTED)

    async def impostor(msg: Any) -> None:
        body = b'"from the impostor"'
        nonce = msg.headers["Actor-Nonce"]
        await nc.publish(msg.reply, body, headers=sign_reply(attacker, nonce, 200, body))

    await nc.subscribe(f"actor.{name}.*", queue=f"actor.{name}", cb=impostor)
    await nc.flush()


async def calls_reach_only(client: Client, name: str, address: str) -> None:
    """The registry lists ``address`` alone for ``name``, and no call returns the
    impostor's answer (some reach it: it is in the queue group; they are refused)."""
    assert [e.address for e in await client.entries(name)] == [address]
    outcomes = []
    for i in range(20):
        try:
            outcomes.append(await client.call(name, "forward", f"n{i}"))
        except BadReply:
            outcomes.append("refused")  # the impostor's answer, not taken
    assert "from the impostor" not in outcomes
    assert "refused" in outcomes
    assert all(o in ("refused", f"n{i}") for i, o in enumerate(outcomes))


async def test_an_impostors_registry_entries_are_not_counted(
    settings: Settings, name: str, tmp_path: Path
) -> None:
    """A caller of the policy's own home, and one of a home that never met this policy
    (it pins the policy actor's key from its entries, first contact), count the actor's
    replica alone; the impostor's answers are refused."""
    attacker = Keypair.generate()
    fresh = msgspec.structs.replace(settings, home=tmp_path / "fresh")
    async with (
        serve(Policy(), name=settings.policy, settings=settings) as policy,
        serve(Probe(), name=name, settings=settings) as host,
    ):
        nc = await nats.connect(settings.url)
        try:
            await impersonate(nc, name, attacker)
            async with Client(settings=settings) as client:
                await client.call(settings.policy, "set_role", "public", [f"{name}/*"])
                await calls_reach_only(client, name, host.address)
            async with Client(settings=fresh) as client:
                await calls_reach_only(client, name, host.address)
        finally:
            await nc.close()
    pinned = (tmp_path / "fresh" / "pins" / settings.policy_bucket).read_text()
    assert pinned.strip() == policy.address


async def test_forged_audit_records_and_log_lines_are_marked(nodes: Any, name: str) -> None:
    """On a NATS that lets anyone publish anywhere, records and lines in a node's name,
    unsigned or signed by another key, show as forged; the audit stream refuses purges
    and deletions."""
    node = await nodes()
    await up(node, "tests/support.py:Probe", "--name", name)
    await node.actor("call", f"{name}/say", "a genuine line")
    node_name = (node.home / "node").read_text().strip()
    attacker = Keypair.generate()
    nc = await nats.connect(node.settings.url)
    try:
        js = nc.jetstream()
        log_subject = f"actorbus.logs.{node_name}.0.{name}"
        line = {"time": time.time(), "node": node_name, "actor": name, "replica": 0, "pid": 1}
        await js.publish(log_subject, json.dumps({**line, "line": "unsigned line"}).encode())
        signed = json.dumps({**line, "line": "attacker-signed line"}).encode()
        await js.publish(log_subject, sign_record(attacker, "ACTOR_LOGS", log_subject, signed))
        audit_subject = f"actorbus.audit.node.{node_name}"
        record = {"time": time.time(), "who": attacker.address, "what": "down", "args": {}}
        forged = json.dumps(record).encode()
        await js.publish(audit_subject, forged)
        await js.publish(
            audit_subject, sign_record(attacker, "ACTOR_POLICY_AUDIT", audit_subject, forged)
        )
        with pytest.raises(nats.js.errors.Error, match="not permitted"):
            await js.purge_stream("ACTOR_POLICY_AUDIT")
        with pytest.raises(nats.js.errors.Error, match="not permitted"):
            await js.delete_msg("ACTOR_POLICY_AUDIT", 1)
    finally:
        await nc.close()
    _, out, _ = await node.actor("logs", name)
    lines = out.splitlines()
    assert any(line.endswith("| a genuine line") for line in lines), out
    assert [line for line in lines if "unsigned line" in line or "attacker-signed" in line] == [
        line for line in lines if "[FORGED: " in line
    ]
    assert sum("[FORGED: " in line for line in lines) == 2
    assert f"signed by {attacker.address}, not a key of node.{node_name}" in out
    _, out, _ = await node.actor("policy", "log", "--json")
    records = [r for r in json.loads(out) if r["source"] == f"node.{node_name}"]
    genuine = [r for r in records if "forged" not in r]
    assert genuine and all(r["what"] == "up" and r["by"] != attacker.address for r in genuine)
    forged_records = [r for r in records if "forged" in r]
    assert len(forged_records) == 2 and all("who" not in r for r in forged_records)


async def test_a_nodes_home_controls_it_with_its_policy_gone(nodes: Any, name: str) -> None:
    """With the policy bucket deleted, calls are refused (503), but the node's own home
    still runs `ps` and `down` on it: its control actor decides for that key itself."""
    node = await nodes()
    await up(node, "tests/support.py:Probe", "--name", name)
    nc = await nats.connect(node.settings.url)
    try:
        await nc.jetstream().delete_key_value(node.settings.policy_bucket)
    finally:
        await nc.close()

    async def closed() -> None:
        code, _, err = await node.actor("call", f"{name}/forward", "x", check=False)
        assert code != 0 and "503" in err

    await eventually(closed, timeout=10)
    assert any(r["actor"] == name for r in await node.ps())
    await node.actor("down")

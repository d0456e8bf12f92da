"""The policy actor and its enforcement on every call, each rule as a user would meet it."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import anyio
import msgspec
import pytest
from click.testing import CliRunner
from processes import actor_serve
from support import Probe, env_of, eventually

from actorbus import (
    BadRequest,
    Client,
    Forbidden,
    Keypair,
    Keystore,
    RateLimited,
    Settings,
    serve,
)
from actorbus.actors.policy import Policy
from actorbus.bus import EmbeddedServer
from actorbus.cli import EXIT_CODES, main


async def test_roles_allow_deny_and_the_whitelist(settings: Settings, name: str) -> None:
    stranger = Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings),
        Client(settings=settings) as admin,
        Client(stranger, settings=settings) as other,
    ):
        assert await admin.call(name, "add", 1, 2) == 3  # the first admin calls anything
        with pytest.raises(Forbidden, match="role 'public' may not call"):
            await other.call(name, "forward", "hi")
        assert (await other.call(name, "info"))["name"] == name  # whitelist
        assert "forward" not in await other.call(name, "whitelist")
        assert await other.call(name, "is_admin") is False
        assert await admin.call(name, "is_admin") is True

        await admin.call(
            settings.policy,
            "set_role",
            "reader",
            [f"{name}/forward", f"{name}/add"],
            [f"{name}/add"],
        )
        await admin.call(settings.policy, "add_user", stranger.address, "reader")

        async def allowed() -> None:
            assert await other.call(name, "forward", "hi") == "hi"

        took = await eventually(allowed)
        assert took < 1.0  # a role change reaches a running actor, no restart
        with pytest.raises(Forbidden, match="denies"):
            await other.call(name, "add", 1, 2)  # deny wins over allow
        with pytest.raises(Forbidden, match="may not call"):
            await other.call(name, "slow", 0)  # not allowed
        assert await other.call(settings.policy, "user2role") == "reader"
        why = await other.call(settings.policy, "decide", stranger.address, name, "add")
        assert why == {
            "allowed": False,
            "role": "reader",
            "reason": f"role 'reader' denies '{name}/add'",
            "rate": 60.0,
        }


async def test_only_admins_change_the_policy(settings: Settings, name: str) -> None:
    stranger = Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        Client(settings=settings) as admin,
        Client(stranger, settings=settings) as other,
    ):
        with pytest.raises(Forbidden):  # refused by the policy stage: public role
            await other.call(settings.policy, "add_user", stranger.address, "root")
        # Even a role that allows every policy call does not make its users admins.
        await admin.call(settings.policy, "set_role", "ops", [f"{settings.policy}/*"])
        await admin.call(settings.policy, "add_user", stranger.address, "ops")

        async def refused_by_the_handler() -> None:
            with pytest.raises(Forbidden, match="only a policy admin"):
                await other.call(settings.policy, "add_admin", stranger.address)

        await eventually(refused_by_the_handler)
        with pytest.raises(Forbidden):
            await other.call(settings.policy, "decide", admin.key.address, name, "forward")


async def test_a_role_must_exist_before_anyone_is_given_it(settings: Settings) -> None:
    """Issue 21: `add-user alice --role testr` and `token new x --role nosuchrole` were
    taken, and the key silently allowed nothing."""
    key = Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        Client(settings=settings) as admin,
    ):
        with pytest.raises(BadRequest, match=r"no role named 'testr' \(roles: .*user"):
            await admin.call(settings.policy, "add_user", key.address, "testr")
        with pytest.raises(BadRequest, match="no role named 'nosuchrole'"):
            await admin.call(settings.policy, "issue_token", "x", "nosuchrole")
        assert key.address not in await admin.call(settings.policy, "users")
        await admin.call(settings.policy, "set_role", "ops", ["echo/*"])
        await admin.call(settings.policy, "add_user", key.address, "ops")
        # ... nor may a role be removed from under its keys (the second attacker's
        # finding: they kept a role that allowed nothing, and a later one's rules).
        with pytest.raises(BadRequest, match="role 'ops' is held by 1 keys"):
            await admin.call(settings.policy, "rm_role", "ops")
        await admin.call(settings.policy, "rm_user", key.address)
        await admin.call(settings.policy, "rm_role", "ops")


async def test_admins_and_the_audit_log(settings: Settings) -> None:
    deputy = Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        Client(settings=settings) as admin,
    ):
        me = admin.key.address
        assert await admin.call(settings.policy, "add_admin", deputy.address) == sorted(
            [me, deputy.address]
        )
        assert await admin.call(settings.policy, "rm_admin", deputy.address) == [me]
        with pytest.raises(BadRequest, match="last admin"):
            await admin.call(settings.policy, "rm_admin", me)
        with pytest.raises(BadRequest, match="not a valid key"):
            await admin.call(settings.policy, "add_user", "not-an-address")
        log = await admin.call(settings.policy, "log")
        log = [r for r in log if r["source"] == settings.policy]  # node records come too
        assert [(r["who"], r["what"]) for r in log][-2:] == [(me, "add_admin"), (me, "rm_admin")]
        assert [r["what"] for r in log][:3] == ["set_config", "first_admin", "set_role"]
        assert log[1]["args"] == {"key": me}


async def test_a_quota_holds_across_three_replicas(settings: Settings, name: str) -> None:
    """600 calls/min over a 2 s window is 20 calls a window, for all replicas together."""
    settings = msgspec.structs.replace(settings, quota_window=2.0)
    caller = Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings) as a,
        serve(Probe(), name=name, settings=settings) as b,
        serve(Probe(), name=name, settings=settings) as c,
        Client(settings=settings) as admin,
        Client(caller, settings=settings) as client,
    ):
        await admin.call(settings.policy, "set_role", "metered", [f"{name}/*"], [], 1.0)
        await admin.call(settings.policy, "add_user", caller.address, "metered")
        await admin.call(settings.policy, "set_stake", caller.address, 600)

        async def metered() -> None:
            assert await client.call(name, "info")

        await eventually(metered)
        await anyio.sleep(2.0 - time.time() % 2.0 + 0.05)  # start at a fresh window
        outcomes: list[object] = []

        async def one() -> None:
            try:
                outcomes.append(await client.call(name, "forward", "x"))
            except RateLimited as exc:
                outcomes.append(exc)

        started = time.time()
        async with anyio.create_task_group() as tg:
            for _ in range(60):
                tg.start_soon(one)
        assert time.time() - started < 1.5  # all inside one window
        ok = outcomes.count("x")
        limited = [o for o in outcomes if isinstance(o, RateLimited)]
        assert 14 <= ok <= 20, ok  # about R, never more; not 3R
        assert len(limited) == 60 - ok
        assert all(0 < e.retry_after <= 2.0 for e in limited)
        served = [h.pipeline.stats["forward"].num_requests for h in (a, b, c)]
        assert min(served) > 0, served  # the calls did spread over the replicas
        await anyio.sleep(limited[0].retry_after)
        assert await client.call(name, "forward", "again") == "again"  # a new window


async def test_cached_decisions_apply_while_the_policy_actor_is_down(
    settings: Settings, name: str
) -> None:
    member, stranger = Keypair.generate(), Keypair.generate()
    # The policy exists before the actor starts (it enforces from its first call), and
    # has bound the actor's name to its key (callers count its replicas).
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings),
    ):
        pass
    async with (
        serve(Probe(), name=name, settings=settings),
        Client(settings=settings) as admin,
        Client(member, settings=settings) as m,
        Client(stranger, settings=settings) as s,
    ):
        with pytest.raises(Forbidden):
            await m.call(name, "forward", "not yet")
        async with serve(Policy(), name=settings.policy, settings=settings):
            await admin.call(settings.policy, "set_role", "member", [f"{name}/forward"])
            await admin.call(settings.policy, "add_user", member.address, "member")

            async def allowed() -> None:
                assert await m.call(name, "forward", "hi") == "hi"

            await eventually(allowed)
        # The policy actor is gone: decisions continue from the cache, no more permissive.
        assert await m.call(name, "forward", "still") == "still"
        with pytest.raises(Forbidden):
            await s.call(name, "forward", "no")
        assert await admin.call(name, "add", 2, 2) == 4


async def test_the_policy_survives_restarts(tmp_path: Path, home: Path) -> None:
    """Restart the policy actor, then the nats-server itself (same file store)."""
    member = Keypair.generate()
    store = tmp_path / "nats"
    with EmbeddedServer(store) as server:
        settings = Settings(home=home, nats_url=server.url, registry_ttl=3.0, drain_timeout=2.0)
        async with Client(settings=settings) as admin:
            async with serve(Policy(), settings=settings):
                await admin.call("policy", "set_role", "member", ["echo/*"])
                await admin.call("policy", "add_user", member.address, "member")
            async with serve(Policy(), settings=settings):
                assert await admin.call("policy", "users") == {member.address: "member"}
        port = server.port
    with EmbeddedServer(store, port=port) as server:
        settings = Settings(home=home, nats_url=server.url, registry_ttl=3.0, drain_timeout=2.0)
        async with serve(Policy(), settings=settings), Client(settings=settings) as admin:
            assert await admin.call("policy", "users") == {member.address: "member"}
            roles = await admin.call("policy", "roles")
            assert roles["member"]["allow"] == ["echo/*"]
            assert await admin.call("policy", "admins") == [admin.key.address]


def test_policy_cli(settings: Settings) -> None:
    env = env_of(settings)
    Keystore(settings.home).load("default", create=True)  # the first admin, as `up` makes it
    alice = Keystore(settings.home).create("alice")

    def actor(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    target = "actorbus.actors.policy:Policy"
    with actor_serve(settings.policy, env, target=target):
        assert (
            actor("policy", "role", "set", "reader", "--allow", "x/*", "--deny", "x/secret")[0] == 0
        )
        code, out, _ = actor("policy", "add-user", "alice", "--role", "reader")
        assert (code, json.loads(out)) == (0, {alice.address: "reader"})
        assert json.loads(actor("policy", "users")[1]) == {alice.address: "reader"}
        assert json.loads(actor("policy", "roles")[1])["reader"]["deny"] == ["x/secret"]
        assert actor("policy", "stake", "set", "alice", "120")[0] == 0
        assert json.loads(actor("policy", "stakes")[1]) == {alice.address: 120.0}
        code, out, _ = actor("policy", "decide", "alice", "x/secret")
        assert json.loads(out)["allowed"] is False
        code, out, _ = actor("policy", "decide", "alice", "x/open")
        assert json.loads(out) == {
            "allowed": True,
            "role": "reader",
            "reason": "role 'reader' allows 'x/*'",
            "rate": 120.0,
        }
        records = json.loads(actor("policy", "log", "--json")[1])
        # (other tests' nodes share the test server's audit stream: not this policy's)
        whats = [r["what"] for r in records if "forged" not in r]
        assert whats[-3:] == ["set_role", "add_user", "set_stake"]
        code, out, _ = actor("policy", "config")
        assert (code, json.loads(out)) == (
            0,
            {"window": 60.0, "floor": 60.0, "local_exempt": False},
        )
        code, out, _ = actor("policy", "config", "--floor", "0", "--local-exempt")
        assert json.loads(out) == {"window": 60.0, "floor": 0.0, "local_exempt": True}
        assert actor("policy", "config", "--window", "0")[0] == 2  # a usage error
        assert json.loads(actor("policy", "config", "--no-local-exempt")[1])["floor"] == 0.0
        assert actor("policy", "add-admin", "alice")[0] == 0
        assert actor("policy", "rm-admin", "alice")[0] == 0
        # Issue 21: every noun takes add|rm|ls (the spellings above are aliases), a pattern
        # is added or taken out alone, `set` says it replaces, `rm` says what it did, and
        # the log is a table with key names and local times.
        admins = json.loads(actor("policy", "admin", "ls")[1])
        assert admins == [Keystore(settings.home).load("default").address]
        actor("policy", "role", "add", "reader", "--allow", "y/*")
        code, out, _ = actor("policy", "role", "rm", "reader", "--allow", "x/*")
        assert json.loads(out)["reader"] == {
            "allow": ["y/*"],
            "deny": ["x/secret"],
            "stake2rate": 1.0,
        }
        code, _, err = actor("policy", "role", "rm", "reader", "--allow", "z/*")
        assert code == EXIT_CODES[404] and "role 'reader' has no rule 'z/*'" in err
        assert "replaced" in actor("policy", "role", "set", "reader", "--allow", "x/*")[2]
        code, _, err = actor("policy", "role", "rm", "reader")  # alice holds it
        assert code == EXIT_CODES[400] and "role 'reader' is held by 1 keys" in err
        code, out, err = actor("policy", "user", "rm", "alice")
        assert (code, out) == (0, "") and "alice has no role now: it is public" in err
        assert actor("policy", "role", "rm", "reader")[0] == 0
        assert "reader" not in json.loads(actor("policy", "role", "ls")[1])
        table = actor("policy", "log")[1]
        assert "rm_role" in table and " default " in table and time.strftime("%Y-%m-%d ") in table
        env_alice = dict(env, ACTOR_KEY="alice")
        result = CliRunner().invoke(
            main, ["policy", "add-user", "alice", "--role", "root"], env=env_alice
        )
        assert result.exit_code == EXIT_CODES[403]


async def test_local_keys_are_metered_unless_exempt(settings: Settings, name: str) -> None:
    """An actor's own key calling another actor: counted by default, free when exempt."""
    settings = msgspec.structs.replace(settings, quota_window=2.0)
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings) as host,
        Client(settings=settings) as admin,
    ):
        local = Keystore(settings.home).load(name)  # the actor's own key
        assert local.address == host.address
        await admin.call(settings.policy, "set_role", "peer", [f"{name}/*"])
        await admin.call(settings.policy, "add_user", local.address, "peer")
        await admin.call(settings.policy, "set_config", None, 30.0)  # 30/min: 1 per window

        async def burst() -> int:
            await anyio.sleep(2.0 - time.time() % 2.0 + 0.05)
            async with Client(local, settings=settings) as peer:
                return await successes(peer, name, 5)

        async def limited() -> None:
            assert await burst() == 1

        await eventually(limited, timeout=6)
        await admin.call(settings.policy, "set_config", None, None, True)
        assert await burst() == 5


async def successes(client: Client, name: str, n: int) -> int:
    """How many of ``n`` calls to ``name/forward`` passed their quota."""
    ok = 0
    for _ in range(n):
        try:
            await client.call(name, "forward", "x")
            ok += 1
        except RateLimited:
            pass
    return ok


async def meter(admin: Client, settings: Settings, name: str, caller: str, stake: float) -> None:
    """Make ``caller`` a user whose quota on ``name`` is its stake alone (floor 0)."""
    await admin.call(settings.policy, "set_config", None, 0.0)
    await admin.call(settings.policy, "set_role", "metered", [f"{name}/*"], [], 1.0)
    await admin.call(settings.policy, "add_user", caller, "metered")
    await admin.call(settings.policy, "set_stake", caller, stake)


async def test_a_stake_change_applies_to_the_next_call(settings: Settings, name: str) -> None:
    """Leases borrowed before a change do not outlive it: once, 5 calls passed a 3/min
    quota right after `stake set`, spending a lease granted at the old rate."""
    settings = msgspec.structs.replace(settings, quota_window=2.0)
    caller = Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings) as host,
        Client(settings=settings) as admin,
        Client(caller, settings=settings) as client,
    ):
        await meter(admin, settings, name, caller.address, 6000)  # 200 a window

        async def metered() -> None:
            assert await successes(client, name, 1) == 1

        await eventually(metered)
        await anyio.sleep(2.0 - time.time() % 2.0 + 0.05)  # a fresh window
        assert await successes(client, name, 1) == 1  # a lease of 20: 19 left on this host
        revision = host.pipeline.policy.state.revision
        await admin.call(settings.policy, "set_stake", caller.address, 90)  # 3 a window

        async def changed() -> None:
            assert host.pipeline.policy.state.revision > revision

        await eventually(changed)
        assert await successes(client, name, 6) <= 2  # 3 a window, 1 made; not 19


async def test_a_stake_raise_lifts_a_refusal_at_once(settings: Settings, name: str) -> None:
    """A refusal is remembered until the window ends, unless the policy changes."""
    settings = msgspec.structs.replace(settings, quota_window=30.0)
    caller = Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings),
        Client(settings=settings) as admin,
        Client(caller, settings=settings) as client,
    ):
        await meter(admin, settings, name, caller.address, 2)  # 1 a window

        async def refused() -> None:
            assert await successes(client, name, 2) < 2

        await eventually(refused)
        await admin.call(settings.policy, "set_stake", caller.address, 6000)

        async def allowed() -> None:
            assert await successes(client, name, 1) == 1

        assert await eventually(allowed) < 1.0  # not at the end of the window


async def test_a_longer_quota_window_locks_no_key_out(settings: Settings, name: str) -> None:
    """A key's counter said window 882589012 of 2 s; after the window became an hour (its
    number t // 3600, smaller), the counter looked like a window to come, and the key got
    429 for up to a day (found by a helper session). Counters of another window length
    now count as none."""
    caller = Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings) as host,
        Client(settings=settings) as admin,
        Client(caller, settings=settings) as client,
    ):
        await meter(admin, settings, name, caller.address, 6000)
        await admin.call(settings.policy, "set_config", 2.0)

        async def metered() -> None:
            assert host.pipeline.policy.state.config.window == 2.0
            assert await successes(client, name, 1) == 1

        await eventually(metered)
        await anyio.sleep(2.0 - time.time() % 2.0 + 0.05)
        assert await successes(client, name, 1) == 1  # a counter for each window parity now
        await admin.call(settings.policy, "set_config", 3600.0)

        async def longer() -> None:
            assert host.pipeline.policy.state.config.window == 3600.0

        await eventually(longer)
        assert await successes(client, name, 3) == 3


async def test_a_key_calls_many_hosts_within_its_rate(settings: Settings, name: str) -> None:
    """Each host borrowed a tenth of a key's budget for its first call: a key calling twelve
    actors once each had the whole budget lent to the first ten, and its calls at the
    others were 429 far below its rate (behind one gateway, 60 actors: 73% of the calls).
    Now a first lease is small and grows as the calls there need it."""
    caller = Keypair.generate()
    names = [f"{name}h{n}" for n in range(12)]
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(serve(Policy(), name=settings.policy, settings=settings))
        for each in names:
            await stack.enter_async_context(serve(Probe(), name=each, settings=settings))
        admin = await stack.enter_async_context(Client(settings=settings))
        client = await stack.enter_async_context(Client(caller, settings=settings))
        await admin.call(settings.policy, "set_config", 60.0, 600.0)  # 600 calls a minute
        await admin.call(settings.policy, "set_role", "member", [f"{name}h*/*"])
        await admin.call(settings.policy, "add_user", caller.address, "member")
        for each in names:  # 12 calls of a budget of 600
            assert await client.call(each, "forward", each) == each
        for _ in range(100):  # a host it calls often gets more at a time
            assert await client.call(names[0], "forward", "again") == "again"

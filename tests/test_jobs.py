"""Open jobs: slices in batches, results by range, status, cancel, ownership, delegation."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats
import pytest
from click.testing import CliRunner
from processes import actor_serve
from support import Probe, env_of, envelope, eventually, raw

from actorbus import BadRequest, Client, Forbidden, Keypair, NotFound, Settings, Unauthorized, serve
from actorbus.actors.jobs import Jobs
from actorbus.actors.policy import Policy
from actorbus.bus.delegation import sign_delegation
from actorbus.bus.records import sign_record
from actorbus.bus.subjects import JobsNames
from actorbus.cli import EXIT_CODES, main


@asynccontextmanager
async def probe_and_jobs(settings: Settings, name: str) -> AsyncIterator[Client]:
    """A Probe actor called ``name``, the jobs actor, and a client of theirs."""
    async with (
        serve(Probe(), name=name, settings=settings),
        serve(Jobs(), name=settings.jobs, settings=settings),
        Client(settings=settings) as client,
    ):
        yield client


async def test_an_open_job_takes_three_batches_then_closes(settings: Settings, name: str) -> None:
    async with probe_and_jobs(settings, name) as client:
        job = await client.submit(f"{name}/add", [[i, 1] for i in range(1, 11)])
        assert await job.add([[i, 1] for i in range(11, 21)]) == (11, 20)
        assert await job.add([[i, 1] for i in range(21, 31)]) == (21, 30)
        status = await job.close()
        assert status["state"] in ("closed", "finished") and status["total"] == 30
        final = await job.wait()
        assert final["state"] == "finished"
        assert (final["done"], final["failed"]) == (30, 0)
        results = [r async for r in job.results()]
        assert [r["index"] for r in results] == list(range(1, 31))
        assert [r["value"] for r in results] == [i + 1 for i in range(1, 31)]
        some = [r async for r in job.results("2-3,29-40")]
        assert [(r["index"], r["value"]) for r in some] == [(2, 3), (3, 4), (29, 30), (30, 31)]


async def test_a_jobs_slices_go_in_a_session_as_their_owner(settings: Settings, name: str) -> None:
    """The jobs actor calls a job's target in a session of its own from its second slice
    on (a MAC per slice, not two signatures), on behalf of the owner with the owner's
    delegation: the target still sees the owner as the caller."""
    async with probe_and_jobs(settings, name) as client:
        job = await client.submit(f"{name}/in_session", [[]] * 3, concurrency=1)
        await job.close()
        assert (await job.wait())["done"] == 3
        assert [r["value"] async for r in job.results()] == [False, True, True]
        job = await client.submit(f"{name}/whoami", [[]] * 2, concurrency=1)
        await job.close()
        await job.wait()
        jobs = (await client.known(settings.jobs)).addresses
        for result in [r["value"] async for r in job.results()]:
            assert result["caller"] == client.key.address and result["forwarder"] in jobs


async def test_a_cancelled_job_starts_no_more_slices(settings: Settings, name: str) -> None:
    probe = Probe()
    async with (
        serve(probe, name=name, settings=settings),
        serve(Jobs(), name=settings.jobs, settings=settings),
        Client(settings=settings) as client,
    ):
        job = await client.submit(f"{name}/slow", [[0.2]] * 200, concurrency=4)

        async def started() -> None:
            assert probe.runs >= 4

        await eventually(started)
        status = await job.cancel()
        assert status["state"] == "cancelled"
        runs = probe.runs
        await anyio.sleep(0.6)  # three slices' time: none starts
        assert probe.runs == runs
        final = await job.status()
        assert final["state"] == "cancelled" and final["done"] + final["failed"] < 200
        assert final["queued"] == 0 and final["in_flight"] == 0
        assert len([r async for r in job.results()]) == final["done"] + final["failed"]


async def test_only_the_owner_or_an_admin_touches_a_job(settings: Settings, name: str) -> None:
    stranger = Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings),
        serve(Jobs(), name=settings.jobs, settings=settings),
        Client(settings=settings) as admin,
        Client(stranger, settings=settings) as other,
    ):
        await admin.call(settings.policy, "set_role", "worker", [f"{name}/*", f"{settings.jobs}/*"])
        await admin.call(settings.policy, "add_user", stranger.address, "worker")

        async def member() -> None:
            assert await other.call(name, "forward", "hi") == "hi"

        await eventually(member)
        job = await other.submit(f"{name}/forward", [["a"], ["b"]])
        await job.close()
        assert (await job.wait())["done"] == 2
        mine = await other.call(settings.jobs, "jobs")
        assert [j["id"] for j in mine] == [job.id]
        assert await admin.call(settings.jobs, "jobs") == []  # jobs() is the caller's

        intruder = Keypair.generate()
        await admin.call(settings.policy, "add_user", intruder.address, "worker")
        async with Client(intruder, settings=settings) as third:
            theirs = third.job(job.id)
            for attempt in (
                theirs.status(),
                theirs.add([["c"]]),
                theirs.page(),
                theirs.close(),
                theirs.cancel(),
            ):
                with pytest.raises(Forbidden, match="not yours"):
                    await attempt
        assert (await admin.job(job.id).status())["done"] == 2  # admins may
        results = [r["value"] async for r in admin.job(job.id).results()]
        assert results == ["a", "b"]


async def test_a_delegation_is_good_for_its_delegate_target_job_and_time_only(
    settings: Settings, name: str
) -> None:
    owner, delegate, other = Keypair.generate(), Keypair.generate(), Keypair.generate()
    job = "job" + secrets.token_hex(6)
    expires = int((time.time() + 60) * 1000)
    good = sign_delegation(owner, delegate.address, f"{name}/whoami", job, expires)

    async def call(
        signer: Keypair, fn: str, header: str, on_behalf: str = owner.address
    ) -> tuple[int, Any]:
        headers, reply = envelope(nc, signer, name, fn, b"", on_behalf=on_behalf, delegation=header)
        status, value, _ = await raw(nc, signer, name, fn, b"", headers=headers, reply=reply)
        return status, value

    async with serve(Probe(), name=name, settings=settings) as host:
        nc = host.actor.nc
        status, value = await call(delegate, "whoami", good.header)
        assert (status, value) == (200, {"caller": owner.address, "forwarder": delegate.address})
        # Another target, another job, another presenter: each a 401.
        status, value = await call(delegate, "forward", good.header)
        assert status == 401 and "does not verify" in value["error"]
        other_job = good.header.replace(job, "job" + secrets.token_hex(6))
        assert (await call(delegate, "whoami", other_job))[0] == 401
        assert (await call(other, "whoami", good.header))[0] == 401
        # Nor can it be lent to another owner's name.
        assert (await call(delegate, "whoami", good.header, other.address))[0] == 401
        past = sign_delegation(owner, delegate.address, f"{name}/whoami", job, expires - 61_000)
        status, value = await call(delegate, "whoami", past.header)
        assert status == 401 and "expired" in value["error"]
        # The header is signed with the request: dropping it leaves an unsigned change.
        headers, reply = envelope(
            nc, delegate, name, "whoami", b"", on_behalf=owner.address, delegation=good.header
        )
        del headers["Actor-Delegation"]
        sent = {"headers": headers, "reply": reply}
        assert (await raw(nc, delegate, name, "whoami", b"", **sent))[0] == 401


async def test_slices_run_under_the_owners_policy_and_quota(settings: Settings, name: str) -> None:
    worker = Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings),
        serve(Jobs(), name=settings.jobs, settings=settings),
        Client(settings=settings) as admin,
        Client(worker, settings=settings) as client,
    ):
        await admin.call(
            settings.policy, "set_role", "worker", [f"{name}/add", f"{settings.jobs}/*"]
        )
        await admin.call(settings.policy, "add_user", worker.address, "worker")
        # 600 calls/min in windows of 1 s: 10 slices a second for this owner.
        await admin.call(settings.policy, "set_config", 1.0, 600.0)

        async def member() -> None:
            assert await client.call(name, "add", 1, 1) == 2

        await eventually(member)
        with pytest.raises(Forbidden, match="may not call"):
            await client.submit(f"{name}/forward", [["no"]])  # refused at once

        started = time.monotonic()
        job = await client.submit(f"{name}/add", [[i, 0] for i in range(30)])
        await job.close()
        final = await job.wait()
        took = time.monotonic() - started
        assert (final["done"], final["failed"]) == (30, 0)  # it waited, it did not fail
        assert took > 1.5, took  # 30 slices at 10 a second

        # A role taken away mid-job: the target refuses the next slices (403, no retry).
        slow = await client.submit(f"{name}/add", [[i, 0] for i in range(5)])
        await admin.call(settings.policy, "set_role", "worker", [f"{settings.jobs}/*"])
        await eventually(lambda: _refused(client, name))
        await slow.add([[i, 0] for i in range(5)])
        await slow.close()
        final = await slow.wait()
        assert final["done"] + final["failed"] == 10 and final["failed"] >= 5
        failed = [r async for r in slow.results("6-10")]
        assert {r["status"] for r in failed} == {403}
        assert all(r["attempts"] == 1 for r in failed)


async def test_a_job_for_an_actor_nobody_runs_is_refused_at_submit(
    settings: Settings, name: str
) -> None:
    """Issue 21: it was accepted, and its slices retried for minutes."""
    async with probe_and_jobs(settings, name) as client:
        with pytest.raises(
            NotFound, match=f"no actor named '{name}x' \\(did you mean {name}\\?\\)"
        ):
            await client.submit(f"{name}x/add", [[1, 1]])


async def _refused(client: Client, name: str) -> None:
    with pytest.raises(Forbidden):
        await client.call(name, "add", 1, 1)


async def test_a_delegation_serves_one_job_and_its_own_work(settings: Settings, name: str) -> None:
    async with (
        serve(Probe(), name=name, settings=settings),
        serve(Jobs(), name=settings.jobs, settings=settings) as jobs,
        Client(settings=settings) as client,
    ):
        expires = int((time.time() + 60) * 1000)
        job = "job" + secrets.token_hex(6)
        delegation = sign_delegation(client.key, jobs.address, f"{name}/add", job, expires)
        wire = msgspec.to_builtins(delegation)
        assert await client.call(settings.jobs, "submit", f"{name}/add", wire) == job
        with pytest.raises(BadRequest, match="exists"):
            await client.call(settings.jobs, "submit", f"{name}/add", wire)
        with pytest.raises(BadRequest, match="is for"):
            await client.call(settings.jobs, "submit", f"{name}/forward", wire)
        stranger = sign_delegation(
            client.key, Keypair.generate().address, f"{name}/add", "j" * 9, expires
        )
        with pytest.raises(BadRequest, match="not this actor"):
            await client.call(settings.jobs, "submit", f"{name}/add", msgspec.to_builtins(stranger))
        forged = {**wire, "job": "job" + secrets.token_hex(6)}
        with pytest.raises(Unauthorized, match="does not verify"):
            await client.call(settings.jobs, "submit", f"{name}/add", forged)


def test_job_cli(settings: Settings, name: str, tmp_path: Path) -> None:
    env = env_of(settings)

    def actor(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, list(args), env=env, input=stdin)
        return result.exit_code, result.stdout, result.stderr

    slices = tmp_path / "slices.jsonl"
    slices.write_text("".join(f"[{i}, 100]\n" for i in range(1, 6)) + "\n")
    with (
        actor_serve(name, env, "tests/support.py:Probe"),
        actor_serve(settings.jobs, env, "actorbus.actors.jobs:Jobs"),
    ):
        code, out, err = actor("job", "submit", f"{name}/add", "--slices", str(slices), "--watch")
        assert code == 0, err
        job_id = out.strip()
        assert "finished" in err and "5/5" in err  # the progress bar's last state
        code, out, _ = actor("job", "results", job_id, "--range", "2,4-9", "--json")
        assert code == 0
        assert [(r["index"], r["value"]) for r in json.loads(out)] == [(2, 102), (4, 104), (5, 105)]
        code, out, _ = actor("job", "status", job_id, "--json")
        assert json.loads(out)["done"] == 5

        code, out, _ = actor("job", "submit", f"{name}/forward")  # open, no slices yet
        open_id = out.strip()
        code, out, _ = actor("job", "add", open_id, "--slices", "-", stdin='"a"\n"b"\n')
        assert (code, out.strip()) == (0, "1-2")
        code, out, _ = actor("job", "ls", "--json")
        assert {j["id"] for j in json.loads(out)} == {job_id, open_id}
        code, _, err = actor("job", "cancel", open_id)
        assert code == 0 and "cancelled" in err
        code, _, err = actor("job", "add", open_id, "--slices", "-", stdin="[1]\n")
        assert code == EXIT_CODES[400] and "cancelled: no more slices" in err
        code, _, err = actor("job", "add", open_id, "--slices", "-", stdin="[1\n")
        assert code == 2 and "line 1 is not JSON" in err
        code, _, err = actor("job", "status", "nosuchjob1")
        assert code == EXIT_CODES[404]


async def test_5xx_is_retried_a_bounded_number_of_times_4xx_never(
    settings: Settings, name: str
) -> None:
    async with probe_and_jobs(settings, name) as client:
        failing = await client.submit(f"{name}/boom", [[]], retries=1)
        wrong = await client.submit(f"{name}/add", [["not a number", 1], [1, 2]], retries=3)
        for job in (failing, wrong):
            await job.close()
            await job.wait()
        (boom,) = [r async for r in failing.results()]
        assert (boom["status"], boom["attempts"]) == (500, 2) and boom["id"]
        assert "secret" not in boom["error"]  # the target's error body, no traceback
        bad, good = [r async for r in wrong.results()]
        assert (bad["status"], bad["attempts"], good["value"]) == (400, 1, 3)
        assert (await wrong.status())["failed"] == 1


async def test_owners_share_a_replica_fairly(settings: Settings, name: str) -> None:
    """Owner A's three jobs get no more of a jobs replica than owner B's one."""
    small = msgspec.structs.replace(settings, jobs_concurrency=2)
    owner_b = Keypair.generate()
    async with (
        serve(Probe(), name=name, settings=settings),
        serve(Jobs(), name=settings.jobs, settings=small),
        Client(settings=settings) as a,
        Client(owner_b, settings=settings) as b,
    ):
        many = [await a.submit(f"{name}/slow", [[0.05]] * 20) for _ in range(3)]
        one = await b.submit(f"{name}/slow", [[0.05]] * 10)
        await one.close()
        await one.wait(poll=0.05)
        done_a = sum([(await job.status())["done"] for job in many])
        # Round robin over jobs would have given A three slices for each of B's (30 by now).
        assert done_a < 20, done_a
        for job in many:
            await job.cancel()


async def test_work_written_into_the_jobs_streams_never_runs(settings: Settings, name: str) -> None:
    """On a NATS that lets anyone write JetStream (the test server): a slice published on
    a job's work subject, and its record rewritten with a larger total (unsigned, then
    signed by the attacker's key), run nothing as the job's owner; a result stored ahead
    of its slice is written over by the real one."""
    attacker = Keypair.generate()
    names = JobsNames(settings.jobs)
    async with probe_and_jobs(settings, name) as client:
        job = await client.submit(f"{name}/forward", [["mine"]])

        async def first_done() -> None:
            assert (await job.status())["done"] == 1

        await eventually(first_done)
        nc = await nats.connect(settings.url)
        try:
            js = nc.jetstream()
            evil = json.dumps({"args": ["evil"], "kwargs": {}}).encode()
            for index in ("2", "1"):
                headers = {"Actor-Slice": index, "Nats-Msg-Id": f"evil{index}"}
                await js.publish(names.work(job.id), evil, headers=headers)
            kv = await js.key_value(names.bucket)
            stored = json.loads((await kv.get(job.id)).value)["v"]
            bumped = json.dumps({**stored, "total": 2}).encode()
            await kv.put(job.id, bumped)
            await anyio.sleep(1)
            await kv.put(job.id, sign_record(attacker, names.bucket, job.id, bumped))
            await anyio.sleep(1)
            # A result stored first for a slice to come does not stand in for it.
            forged = json.dumps({"index": 2, "status": 200, "attempts": 1, "value": "evil"})
            await js.publish(
                names.result(job.id, 2), forged.encode(), headers={"Actor-Status": "200"}
            )
        finally:
            await nc.close()
        assert await job.add([["second"]]) == (2, 2)
        await job.close()
        final = await job.wait()
        results = [r async for r in job.results()]
        assert [(r["index"], r["value"]) for r in results] == [(1, "mine"), (2, "second")]
        assert (final["total"], final["done"]) == (2, 2)


async def test_a_slice_stored_again_runs_once(settings: Settings, name: str) -> None:
    """Issue 30: a sealed slice captured on its way into the work queue and published
    again once it had run (without its message id, past the queue's duplicate window)
    ran the owner's call once more each time. The jobs actor runs a slice whose result
    it has seen, or which it runs already, never again."""
    probe = Probe()
    names = JobsNames(settings.jobs)
    async with (
        serve(probe, name=name, settings=settings),
        serve(Jobs(), name=settings.jobs, settings=settings),
        Client(settings=settings) as client,
    ):
        spy = await client.nc.subscribe(names.work("*"))
        job = await client.submit(f"{name}/slow", [[0.01], [0.01]])

        async def ran() -> None:
            assert (await job.status())["done"] == 2

        await eventually(ran)  # open still: its slices are taken as they come
        captured = [await spy.next_msg(timeout=1) for _ in range(2)]
        await spy.unsubscribe()
        assert probe.runs == 2
        js = client.nc.jetstream()
        for msg in captured * 3:
            headers = {k: v for k, v in (msg.headers or {}).items() if k != "Nats-Msg-Id"}
            await js.publish(msg.subject, msg.data, headers=headers)
        await anyio.sleep(1.5)  # a batch's wait and three slices' time: none runs
        assert probe.runs == 2
        await job.close()
        final = await job.wait()
        assert (final["total"], final["done"], final["queued"]) == (2, 2, 0)

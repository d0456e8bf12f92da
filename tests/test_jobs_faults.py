"""Jobs under faults: kill -9 of a jobs replica or of a target replica mid-job, and a
nats-server restart mid-job; every slice ends with exactly one result."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
from processes import actor_serve
from support import Probe, env_of, eventually

from actorbus import Client, Settings, serve
from actorbus.actors.jobs import Jobs
from actorbus.bus import EmbeddedServer

JOBS = "actorbus.actors.jobs:Jobs"
PROBE = "tests/support.py:Probe"


async def exactly_once(job: Any, total: int) -> None:
    """The job finished with one successful result per slice, in index order."""
    final = await job.wait()
    assert (final["state"], final["total"], final["done"], final["failed"]) == (
        "finished",
        total,
        total,
        0,
    ), final
    results = [r async for r in job.results()]
    assert [r["index"] for r in results] == list(range(1, total + 1))


async def test_kill_9_of_a_jobs_replica_mid_job_loses_nothing(
    settings: Settings, name: str
) -> None:
    env = env_of(settings, ACTOR_DRAIN_TIMEOUT="2")
    with actor_serve(settings.jobs, env, JOBS) as first, actor_serve(settings.jobs, env, JOBS):
        async with (
            serve(Probe(), name=name, settings=settings),
            Client(settings=settings) as client,
        ):
            job = await client.submit(f"{name}/slow", [[0.05]] * 120, concurrency=4, timeout=1.0)
            await job.close()

            async def going() -> None:
                assert (await job.status())["done"] >= 10

            await eventually(going, timeout=10)
            os.kill(first.pid, signal.SIGKILL)  # with slices in hand
            first.wait()
            with anyio.fail_after(30):
                await exactly_once(job, 120)


async def test_kill_9_of_a_target_replica_mid_job_loses_nothing(
    settings: Settings, name: str
) -> None:
    env = env_of(settings, ACTOR_DRAIN_TIMEOUT="2")
    with actor_serve(name, env, PROBE) as first, actor_serve(name, env, PROBE):
        async with (
            serve(Jobs(), name=settings.jobs, settings=settings),
            Client(settings=settings) as client,
        ):
            job = await client.submit(f"{name}/slow", [[0.05]] * 120, timeout=1.0)
            await job.close()

            async def going() -> None:
                assert (await job.status())["done"] >= 10

            await eventually(going, timeout=10)
            os.kill(first.pid, signal.SIGKILL)  # with calls in hand: they time out, retried
            first.wait()
            with anyio.fail_after(30):
                await exactly_once(job, 120)


async def test_a_nats_server_restart_mid_job_loses_nothing(tmp_path: Path, name: str) -> None:
    store = tmp_path / "nats"
    server = EmbeddedServer(store)
    server.start()
    try:
        settings = Settings(
            home=tmp_path / "home",
            nats_url=server.url,
            registry_ttl=3.0,
            drain_timeout=2.0,
            jobs="jobs",
        )
        async with (
            serve(Probe(), name=name, settings=settings),
            serve(Jobs(), settings=settings),
            Client(settings=settings) as client,
        ):
            job = await client.submit(f"{name}/slow", [[0.02]] * 200, timeout=2.0)
            await job.close()

            async def going() -> None:
                assert (await job.status())["done"] >= 20

            await eventually(going, timeout=10)
            port = server.port
            await anyio.to_thread.run_sync(server.stop)
            server = EmbeddedServer(store, port=port)
            server.start()  # on this thread: a server stops when the thread that started it ends
            with anyio.fail_after(45):
                await exactly_once(job, 200)
    finally:
        server.stop()

"""The supervisor behind ``actor up``: one OS process per replica, restarted on a crash.

A visible loop per replica: start it, wait until it says it is ready, wait for it to
exit; on a crash log it, back off (capped, with jitter) and start it again; give up
loudly when it crashes more than ``max_restarts`` times in ``window`` seconds, or when it
dies before it was ever ready (a typo should not loop). Cancellation always passes
through: on the way out each replica gets SIGTERM, drains its calls, and is killed only
if it does not exit in time.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import msgspec

from ..bus import ActorError, EmbeddedServer, Unavailable, nats_answers
from .settings import DEFAULT_NATS_URL, Settings

__all__ = [
    "READY_PREFIX",
    "ReplicaReady",
    "SupervisorError",
    "nats_server_for",
    "ready_line",
    "supervise",
]

log = logging.getLogger("actorbus.supervisor")

READY_PREFIX = "actorbus-ready "
_READY_TIMEOUT = 60.0


class SupervisorError(ActorError):
    """A replica could not be kept running."""

    status = 503


class ReplicaReady(msgspec.Struct):
    """What a replica prints (after :data:`READY_PREFIX`) once it takes calls."""

    name: str
    address: str
    instance: str
    pid: int


@asynccontextmanager
async def nats_server_for(settings: Settings) -> AsyncIterator[EmbeddedServer | None]:
    """The NATS to use: ``settings.nats_url`` if set; else one already answering on
    127.0.0.1:4222; else an embedded ``nats-server -js`` on that port, its store under
    ``$ACTOR_HOME/nats``, stopped on exit. Yields the embedded server, or ``None``."""
    if settings.nats_url or await nats_answers(DEFAULT_NATS_URL):
        yield None
        return
    async with EmbeddedServer(settings.home / "nats", port=4222) as server:
        yield server


async def _read_ready(process: anyio.abc.Process) -> ReplicaReady:
    assert process.stdout is not None
    buffer = b""
    with anyio.fail_after(_READY_TIMEOUT):
        async for chunk in process.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(READY_PREFIX):
                    return msgspec.json.decode(text[len(READY_PREFIX) :], type=ReplicaReady)
    raise SupervisorError("exited before it was ready")


async def _stop(process: anyio.abc.Process, drain_timeout: float) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(drain_timeout + 5):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        await process.aclose()


async def _run_replica(
    label: str,
    command: Sequence[str],
    env: dict[str, str],
    on_event: Callable[[str], None],
    settings: Settings,
    max_restarts: int,
    window: float,
    *,
    task_status: anyio.abc.TaskStatus[ReplicaReady] = anyio.TASK_STATUS_IGNORED,
) -> None:
    crashes: deque[float] = deque()
    delay = 0.5
    started = False
    while True:
        process = await anyio.open_process(
            list(command), stdout=subprocess.PIPE, stderr=None, env=env
        )
        try:
            try:
                ready = await _read_ready(process)
            except (SupervisorError, TimeoutError, msgspec.DecodeError) as exc:
                if not started:
                    raise SupervisorError(
                        f"{label} did not start ({exc or 'no ready line in time'}); "
                        "see its log above"
                    ) from None
                ready = None
            if ready is not None:
                if not started:
                    started = True
                    task_status.started(ready)
                else:
                    on_event(f"{label} restarted as pid {ready.pid}")
                code = await process.wait()
            else:
                code = process.returncode if process.returncode is not None else -1
        finally:
            await _stop(process, settings.drain_timeout)
        now = time.monotonic()
        crashes.append(now)
        while crashes and crashes[0] < now - window:
            crashes.popleft()
        if len(crashes) > max_restarts:
            raise SupervisorError(
                f"{label} exited {len(crashes)} times in {window:g}s (last code {code}); giving up"
            )
        wait = delay * random.uniform(0.8, 1.2)
        on_event(f"{label} exited with code {code}; restarting in {wait:.1f}s")
        await anyio.sleep(wait)
        delay = min(delay * 2, 30.0)


async def supervise(
    command: Sequence[str],
    *,
    name: str,
    replicas: int,
    settings: Settings,
    nats_url: str,
    on_ready: Callable[[int, ReplicaReady], None],
    on_event: Callable[[str], None],
    max_restarts: int = 5,
    window: float = 60.0,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``replicas`` copies of ``command`` (one replica each) until cancelled.

    Each child gets ``ACTOR_NATS_URL`` and ``ACTOR_HOME``; ``on_ready`` is called as each
    first reports ready, and ``task_status`` once all are. Raises :class:`SupervisorError`
    when a replica cannot be kept up.
    """
    if replicas < 1:
        raise Unavailable("--replicas must be at least 1")
    env = dict(os.environ, ACTOR_NATS_URL=nats_url, ACTOR_HOME=str(settings.home))
    async with anyio.create_task_group() as tg:
        for index in range(replicas):
            label = f"{name}[{index}]"
            ready = await tg.start(
                _run_replica, label, command, env, on_event, settings, max_restarts, window
            )
            on_ready(index, ready)
        task_status.started()


def ready_line(ready: ReplicaReady) -> str:
    """The line a replica prints on stdout once it takes calls."""
    return READY_PREFIX + msgspec.json.encode(ready).decode()

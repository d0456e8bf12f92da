"""One replica slot of an actor on this node: a visible loop that keeps one process running.

Each replica is an ``actor serve`` child in its own session, so a terminal's Ctrl-C reaches
only the supervisor, which stops children in order; the child stops by itself if the
supervisor dies (``ACTOR_SUPERVISOR_PID``). The slot starts the process and waits for its
ready line; when it exits, it counts the crash, backs off (capped, with jitter) and starts
it again. It gives up loudly, keeping the last lines the process wrote, when a process dies
before it was ever ready or crashes more than ``restart_limit`` times in ``restart_window``
seconds.
A rolling restart starts the new process first and stops the old one only once the new one
answers, so the slot never stops serving. Cancelling the slot stops its process gracefully:
SIGTERM (the replica drains), SIGKILL only past ``drain_timeout``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.abc
import msgspec

from ..bus import ActorError, printable
from ..bus.settings import Settings
from ..client.specs import ActorSpec, ReplicaStatus
from .ghosts import forget

__all__ = ["READY_PREFIX", "Replica", "ReplicaReady", "SupervisorError", "ready_line"]

READY_PREFIX = "actorbus-ready "
_READY_TIMEOUT = 60.0
_TAIL = 20
_STABLE = 30.0  # seconds up after which a crash no longer counts as part of a loop
_LINE_LIMIT = 8192


class SupervisorError(ActorError):
    """A replica could not be started or kept running."""

    status = 503


class ReplicaReady(msgspec.Struct):
    """What a replica prints (after :data:`READY_PREFIX`) once it takes calls."""

    name: str
    address: str
    instance: str
    pid: int


_ready_decoder = msgspec.json.Decoder(ReplicaReady)


def ready_line(ready: ReplicaReady) -> str:
    """The line a replica prints on stdout once it takes calls."""
    return READY_PREFIX + msgspec.json.encode(ready).decode()


OutputFn = Callable[[str, int, int, str], None]
"""Called with (actor, replica index, pid, line) for each line a replica writes."""
EventFn = Callable[[str, bool], None]
"""Called with (message, is_failure) for starts, restarts and failures."""


class _Process:
    """One OS process of a slot; its scope, when cancelled, stops it gracefully."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.pid: int | None = None
        self.ready: ReplicaReady | None = None
        self.ready_at: float | None = None
        self.code: int | None = None
        self.exited = anyio.Event()
        self.drained = anyio.Event()
        """Set when everything the process wrote has been read."""
        self.tail: deque[str] = deque(maxlen=_TAIL)

    async def last_lines(self) -> list[str]:
        """Its last lines, once all it wrote is read (at most a second after it ended)."""
        with anyio.move_on_after(1.0):
            await self.drained.wait()
        return list(self.tail)


class Replica:
    """Slot ``index`` of ``spec`` on this node."""

    def __init__(
        self,
        spec: ActorSpec,
        index: int,
        *,
        settings: Settings,
        env: dict[str, str],
        on_output: OutputFn,
        on_event: EventFn,
    ) -> None:
        self.spec = spec
        self.index = index
        self.label = f"{spec.name}[{index}]"
        self.settings = settings
        self.on_output = on_output
        self.on_event = on_event
        self.max_restarts = settings.restart_limit
        self.window = settings.restart_window
        self.state = "starting"
        self.restarts = 0
        self.last_exit = ""
        self.failure_tail: list[str] = []
        self.current: _Process | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._command = [
            sys.executable,
            "-m",
            "actorbus.cli",
            "--log-level",
            env.pop("ACTOR_LOG_LEVEL", "INFO"),
            "serve",
            spec.target,
            "--name",
            spec.name,
        ]
        self._env = {
            **os.environ,
            **env,
            **{f"ACTOR_{k.upper()}": str(v) for k, v in spec.options.items()},
            **spec.env,
            "ACTOR_REPLICA": str(index),
            "ACTOR_SUPERVISOR_PID": str(os.getpid()),
        }
        self._own_settings = Settings.from_env(self._env)
        """What the replica's process reads from its environment."""

    # -- one process ---------------------------------------------------------------------

    async def _run_process(
        self, proc: _Process, *, task_status: anyio.abc.TaskStatus[ReplicaReady]
    ) -> None:
        """Start a process, report it ready, wait for it to exit; cancelled: stop it."""
        assert self._tg is not None
        with proc.scope:
            process = await anyio.open_process(
                self._command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                start_new_session=True,  # the terminal's signals are for the supervisor
            )
            proc.pid = process.pid
            try:
                # The pump belongs to the slot: it reads to the end after the process is gone.
                self._tg.start_soon(self._pump, process, proc)
                ready = await self._read_ready(process, proc)
                proc.ready, proc.ready_at = ready, time.time()
                task_status.started(ready)
                proc.code = await process.wait()
                if proc.code != 0:  # it did not drain: its registry entry outlives it
                    # Beside the restart, not before it: a policy actor's restart must not
                    # wait for a connection that its own auth callout has to let in.
                    entry = (ready.name, ready.address, ready.instance)
                    self._tg.start_soon(forget, self._own_settings, *entry)
            finally:
                with anyio.CancelScope(shield=True):
                    await _stop(process, self.settings.drain_timeout)
                    proc.code = process.returncode
                    proc.exited.set()

    async def _pump(self, process: anyio.abc.Process, proc: _Process) -> None:
        """Every line the process writes on stderr (its log, and its stdout once ready)."""
        assert process.stderr is not None
        try:
            async for line in _lines(process.stderr):
                self._line(proc, line)
        finally:
            proc.drained.set()

    def _line(self, proc: _Process, line: str) -> None:
        assert proc.pid is not None
        proc.tail.append(line)
        self.on_output(self.spec.name, self.index, proc.pid, line)

    async def _read_ready(self, process: anyio.abc.Process, proc: _Process) -> ReplicaReady:
        """Its ready line, from its stdout; what else it prints first (often why it fails)
        is passed on like its log."""
        assert process.stdout is not None
        with anyio.move_on_after(_READY_TIMEOUT) as waiting:
            async for line in _lines(process.stdout):
                if not line.startswith(READY_PREFIX):
                    self._line(proc, line)
                    continue
                try:
                    ready: ReplicaReady = _ready_decoder.decode(line[len(READY_PREFIX) :])
                except msgspec.DecodeError:
                    self._line(proc, line)
                    continue
                if ready.name != self.spec.name or ready.pid != process.pid:
                    self._line(proc, line)  # not this process speaking for itself
                    continue
                return ready
        if waiting.cancelled_caught:
            why = "gave no ready line in time"
        else:  # its stdout ended: it is exiting
            with anyio.move_on_after(5):
                await process.wait()
            why = _describe_exit(process.returncode)
        raise SupervisorError(
            f"{self.label} {why} before it was ready" + _tail_text(await proc.last_lines())
        )

    # -- the slot ------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[ReplicaReady]) -> None:
        """Keep a process running until cancelled; started once the first one is ready.

        Raises :class:`SupervisorError` if the first process is never ready; returns (state
        ``failed``) when processes keep crashing.
        """
        async with anyio.create_task_group() as tg:
            self._tg = tg
            failure = await self._keep(tg, task_status)
            tg.cancel_scope.cancel()  # no process is left: stop reading what a child left open
        if failure is not None:
            raise failure

    async def _keep(
        self, tg: anyio.abc.TaskGroup, task_status: anyio.abc.TaskStatus[ReplicaReady]
    ) -> SupervisorError | None:
        """The loop of :meth:`run`: the first start's failure, or ``None`` after giving up."""
        crashes: deque[float] = deque()
        delay = 0.25
        first = True
        while True:
            proc = _Process()
            try:
                ready = await tg.start(self._run_process, proc)
            except SupervisorError as exc:
                if first:
                    self.state = "failed"
                    self.failure_tail = await proc.last_lines()
                    return exc
                await proc.exited.wait()
                self.last_exit = (
                    f"{_describe_exit(proc.code)} before it was ready"
                    if proc.code is not None
                    else "gave no ready line in time"
                )
            else:
                self.current = proc
                self.state = "running"
                if first:
                    first = False
                    task_status.started(ready)
                else:
                    self.on_event(f"{self.label} restarted as pid {ready.pid}", False)
                await self._wait_for_exit()
                proc = self.current
                self.last_exit = _describe_exit(proc.code)
                if proc.ready_at is not None and time.time() - proc.ready_at > _STABLE:
                    crashes.clear()
                    delay = 0.25
            tail = await proc.last_lines()
            now = time.monotonic()
            crashes.append(now)
            while crashes and crashes[0] < now - self.window:
                crashes.popleft()
            if len(crashes) > self.max_restarts:
                self.state = "failed"
                self.failure_tail = tail
                self.current = None
                self.on_event(
                    f"{self.label} crashed {len(crashes)} times in {self.window:g}s "
                    f"({self.last_exit}); giving up" + _tail_text(tail),
                    True,
                )
                return None
            self.state = "restarting"
            wait = delay * random.uniform(0.8, 1.2)
            self.on_event(
                f"{self.label} {self.last_exit}; restarting in {wait:.2f}s" + _tail_text(tail[-3:]),
                True,
            )
            await anyio.sleep(wait)
            delay = min(delay * 2, 30.0)
            self.restarts += 1

    async def _wait_for_exit(self) -> None:
        """Until the current process exits on its own (a rolling restart swaps it)."""
        while True:
            proc = self.current
            assert proc is not None
            await proc.exited.wait()
            if self.current is proc:
                return

    async def restart(self) -> ReplicaReady:
        """Start a new process, and once it is ready stop the old one (it drains).

        Raises :class:`SupervisorError` (the old process keeps running) if the new one is
        not ready.
        """
        if self._tg is None or self.current is None:
            raise SupervisorError(f"{self.label} is not running")
        new = _Process()
        ready: ReplicaReady = await self._tg.start(self._run_process, new)
        old, self.current = self.current, new
        old.scope.cancel()
        self.on_event(f"{self.label} restarted as pid {ready.pid} (rolling)", False)
        return ready

    def status(self, node: str) -> ReplicaStatus:
        proc = self.current
        running = proc is not None and proc.ready is not None and not proc.exited.is_set()
        return ReplicaStatus(
            node=node,
            actor=self.spec.name,
            replica=self.index,
            state=self.state,
            pid=proc.pid if proc is not None and running else None,
            instance=proc.ready.instance if running and proc and proc.ready else "",
            started=proc.ready_at if running and proc else None,
            restarts=self.restarts,
            last_exit=self.last_exit,
            tail=self.failure_tail if self.state == "failed" else [],
        )


async def _stop(process: anyio.abc.Process, drain_timeout: float) -> None:
    """SIGTERM (the replica drains), SIGKILL past ``drain_timeout`` + 5 s; then reap it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(drain_timeout + 5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    await process.aclose()


async def _lines(stream: anyio.abc.ByteReceiveStream) -> AsyncIterator[str]:
    """The lines of ``stream`` as text; a line longer than the limit comes in pieces."""
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            yield raw.decode(errors="replace")[:_LINE_LIMIT]
        if len(buffer) > _LINE_LIMIT:
            yield buffer[:_LINE_LIMIT].decode(errors="replace")
            buffer = b""
    if buffer:
        yield buffer.decode(errors="replace")[:_LINE_LIMIT]


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _tail_text(lines: list[str]) -> str:
    shown = [printable(line, 300) for line in lines[-_TAIL:] if line.strip()]
    return ("; its last lines:\n    " + "\n    ".join(shown)) if shown else ""

"""`actor serve`: one replica in the foreground, what a node's supervisor runs per replica
(and what a container runs). It imports nothing of the supervisor's."""

from __future__ import annotations

import logging
import os
import sys

import anyio
import click

from ..bus import Unavailable
from ..host import Host, serve
from ..host.loading import load_actor_class
from ..node.slots import ReplicaReady, ready_line
from ._common import checked_name, err, run_coroutine, settings_of, stop_on_signal
from .logformat import log_context

__all__ = ["serve_command"]


@click.command("serve")
@click.argument("target")
@click.option("--name", callback=checked_name, help="Actor name (default: from the class).")
@click.pass_context
def serve_command(ctx: click.Context, target: str, name: str | None) -> None:
    """Serve one replica of TARGET in the foreground (what `actor up` runs per replica).

    Prints one ready line on stdout once it takes calls; SIGTERM or Ctrl-C drains it. A
    replica that cannot go on (every sync handler thread stuck) drains and exits with
    the code of a 503, for its supervisor to restart it; one whose supervisor is gone
    (ACTOR_SUPERVISOR_PID) drains and exits too.
    """
    settings = settings_of(ctx)
    hosts: list[Host] = []

    async def main() -> None:
        cls = load_actor_class(target)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            # A stop leaves `serve` normally, never by cancelling it: its workers must
            # stay alive to finish the calls it drains.
            tg.start_soon(stop_on_signal, stop, None)
            if settings.supervisor_pid:
                tg.start_soon(_watch_supervisor, settings.supervisor_pid, stop)
            async with serve(cls(), name=name, settings=settings) as host:
                hosts.append(host)
                log_context(actor=host.name)
                ready = ReplicaReady(host.name, host.address, host.instance, os.getpid())
                print(ready_line(ready), flush=True)
                os.dup2(2, 1)  # anything the actor prints goes to the log, not the pipe
                tg.start_soon(_set_when, host.failed, stop)
                await stop.wait()
            tg.cancel_scope.cancel()
        if hosts and hosts[0].failure:
            raise Unavailable(hosts[0].failure)

    try:
        run_coroutine(ctx, main)
    except click.exceptions.Exit as exc:
        _leave_stuck_threads(hosts, exc.exit_code)
        raise
    _leave_stuck_threads(hosts, 0)


async def _set_when(event: anyio.Event, stop: anyio.Event) -> None:
    await event.wait()
    stop.set()


async def _watch_supervisor(pid: int, stop: anyio.Event) -> None:
    """Stop (draining) when the supervisor that started us is gone (we are re-parented:
    nothing portable signals a parent's death, so look twice a second)."""
    while True:
        await anyio.sleep(0.5)
        if os.getppid() != pid:
            break
    logging.getLogger("actorbus.host").warning("supervisor %d is gone: stopping", pid)
    stop.set()


def _leave_stuck_threads(hosts: list[Host], code: int) -> None:
    """Exit now if handler threads are still stuck: Python waits for every thread at exit,
    and a stuck one would hold the process forever (the replica has drained already)."""
    stuck = sum(h.pipeline.threads.stuck for h in hosts)
    if stuck:
        err.print(f"leaving {stuck} stuck handler threads behind")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

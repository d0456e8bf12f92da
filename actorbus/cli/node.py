"""Commands that run on this node: `actor up` (the supervisor) and `actor serve` (one
replica, what the supervisor runs)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from functools import partial

import anyio
import click
import msgspec

from ..bus import Keystore, Unavailable
from ..bus.subjects import check_name
from ..runtime import Client, Host, Settings, serve
from ..runtime.actor import actor_name
from ..runtime.loading import load_actor_class
from ..runtime.supervisor import ReplicaReady, nats_server_for, ready_line, supervise
from ._common import err, run_coroutine, settings_of


@click.command()
@click.argument("target")
@click.option("--name", help="Actor name (default: the class's `name`, else its lowercased name).")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1, 256))
@click.pass_context
def up(ctx: click.Context, target: str, name: str | None, replicas: int) -> None:
    """Launch TARGET (path.py:Class or module:Class) and keep it running, in the foreground.

    Starts an embedded nats-server when no NATS URL is set and nothing answers on
    127.0.0.1:4222. Ctrl-C drains every replica, then stops the embedded server.
    """
    settings = settings_of(ctx)

    async def run() -> None:
        cls = load_actor_class(target)  # fail here, not in N children
        actor = check_name(actor_name(cls, name))
        async with nats_server_for(settings) as server:
            url = server.url if server else settings.url
            if server:
                err.print(
                    f"started embedded nats-server at [bold]{url}[/bold] (pid {server.pid}, "
                    f"store {server.store}); it stops with this command"
                )
            else:
                err.print(f"using NATS at [bold]{url}[/bold]")
            level = logging.getLevelName(logging.getLogger().level)

            def command(target: str, name: str) -> list[str]:
                return [
                    sys.executable,
                    "-m",
                    "actorbus.cli",
                    "--log-level",
                    level,
                    "serve",
                    target,
                    "--name",
                    name,
                ]

            def on_ready(name: str) -> Callable[[int, ReplicaReady], None]:
                def report(index: int, ready: ReplicaReady) -> None:
                    err.print(f"{name}[{index}] ready: pid {ready.pid}, address {ready.address}")

                return report

            here = msgspec.structs.replace(settings, nats_url=url)
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_on_signal, scope)
                    if actor != settings.policy and not await _policy_running(here):
                        admin = Keystore(settings.home).load(settings.key, create=True)
                        err.print(
                            f"starting the policy actor {settings.policy!r}; if it is "
                            f"new, its first admin is key {settings.key!r} ({admin.address})"
                        )
                        await tg.start(
                            partial(
                                supervise,
                                command(POLICY_TARGET, settings.policy),
                                name=settings.policy,
                                replicas=1,
                                settings=settings,
                                nats_url=url,
                                on_ready=on_ready(settings.policy),
                                on_event=err.print,
                            )
                        )
                    await supervise(
                        command(target, actor),
                        name=actor,
                        replicas=replicas,
                        settings=settings,
                        nats_url=url,
                        on_ready=on_ready(actor),
                        on_event=err.print,
                    )
            err.print("stopped")

    run_coroutine(ctx, run)


POLICY_TARGET = "actorbus.actors.policy:Policy"


async def _policy_running(settings: Settings) -> bool:
    async with Client(settings=settings) as client:
        return bool(await client.entries(settings.policy))


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            err.print(f"got {signal.Signals(signum).name}: draining")
            scope.cancel()
            return


@click.command("serve")
@click.argument("target")
@click.option("--name", help="Actor name (default: from the class).")
@click.pass_context
def serve_command(ctx: click.Context, target: str, name: str | None) -> None:
    """Serve one replica of TARGET in the foreground (what `actor up` runs per replica).

    Prints one ready line on stdout once it takes calls; SIGTERM or Ctrl-C drains it. A
    replica that cannot go on (every sync handler thread stuck) drains and exits with
    the code of a 503, for its supervisor to restart it.
    """
    settings = settings_of(ctx)
    hosts: list[Host] = []

    async def run() -> None:
        cls = load_actor_class(target)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_signal, scope)
                async with serve(cls(), name=name, settings=settings) as host:
                    hosts.append(host)
                    ready = ReplicaReady(host.name, host.address, host.instance, os.getpid())
                    print(ready_line(ready), flush=True)
                    os.dup2(2, 1)  # anything the actor prints goes to the log, not the pipe
                    await host.failed.wait()
                scope.cancel()
        if host.failure:
            raise Unavailable(host.failure)

    try:
        run_coroutine(ctx, run)
    except click.exceptions.Exit as exc:
        _leave_stuck_threads(hosts, exc.exit_code)
        raise
    _leave_stuck_threads(hosts, 0)


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

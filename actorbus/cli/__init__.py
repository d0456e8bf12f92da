"""The ``actor`` command: parse, call a library coroutine, print.

This module is the entry point and the command registry; each command group lives in its
own module, loaded only when one of its commands runs (a replica process, `actor serve`,
never imports the supervisor or the tables): :mod:`.node` (up, down, gateway: this
node's supervisor), :mod:`.replica` (serve: one replica), :mod:`.ops` (ps, kill,
restart, scale, logs: control from anywhere), :mod:`.calls` (call, ls, info),
:mod:`.policy`, :mod:`.keys`, :mod:`.tokens`, :mod:`.jobs`, :mod:`.nats`,
:mod:`.startup`, :mod:`.top`. Errors print
one line (status, message, error id) and exit with the code in :data:`EXIT_CODES`, so
scripts can tell a 403 from a 503.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click

from ..bus import BadRequest
from ..bus.settings import Settings
from ._common import EXIT_CODES
from .logformat import log_context, setup_logging

__all__ = ["EXIT_CODES", "main"]

COMMANDS = {
    "up": "node:up",
    "down": "node:down",
    "supervise": "node:supervise",
    "gateway": "node:gateway",
    "startup": "startup:startup",
    "token": "tokens:token",
    "job": "jobs:job",
    "serve": "replica:serve_command",
    "ps": "ops:ps",
    "kill": "ops:kill",
    "restart": "ops:restart",
    "scale": "ops:scale",
    "logs": "ops:logs",
    "top": "top:top",
    "call": "calls:call",
    "ls": "calls:ls",
    "info": "calls:info",
    "policy": "policy:policy",
    "key": "keys:key",
    "nats": "nats:nats",
}
"""Each command's ``module:object`` in this package."""


GLOBAL_OPTIONS = frozenset({"--nats", "--nats-port", "--home", "--log-level"})
"""The options of ``actor`` itself (each takes a value); they may follow the command too."""


def hoist_global_options(args: list[str]) -> list[str]:
    """``args`` with every global option (and its value) that follows the command moved
    before it, so `actor ls --home H` means `actor --home H ls`. A literal argument that
    looks like one goes after ``--``."""
    front: list[str] = []
    rest: list[str] = []
    command_seen = False
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest += args[index:]
            break
        name, equals, _ = arg.partition("=")
        if name in GLOBAL_OPTIONS:
            taken = args[index : index + (1 if equals else 2)]
            (front if command_seen else rest).extend(taken)
            index += len(taken)
            continue
        command_seen = command_seen or not arg.startswith("-")
        rest.append(arg)
        index += 1
    return front + rest


class _Commands(click.Group):
    """A group whose commands are imported when asked for (click's lazy-loading pattern),
    and whose own options may also follow the command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args))

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, name = COMMANDS[cmd_name].split(":")
        command: click.Command = getattr(importlib.import_module(f".{module}", __name__), name)
        return command


@click.group(cls=_Commands)
@click.option(
    "--nats",
    "nats_url",
    envvar=None,
    help="NATS URL (default: $ACTOR_NATS_URL, $NATS_URL, else nats://127.0.0.1:4222).",
)
@click.option(
    "--nats-port",
    type=click.IntRange(1, 65535),
    help="Port of this machine's NATS when --nats is not given: where `actor up` starts its "
    "embedded nats-server (default: $ACTOR_NATS_PORT, else 4222).",
)
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    help="State directory (default: $ACTOR_HOME or ~/.actor).",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.version_option(package_name="actorbus")
@click.pass_context
def main(
    ctx: click.Context,
    nats_url: str | None,
    nats_port: int | None,
    home: Path | None,
    log_level: str,
) -> None:
    """actorbus: serve Python classes as signed actors on NATS.

    The options here may also follow the command (`actor ls --home H`)."""
    setup_logging(log_level)
    try:
        ctx.obj = settings = Settings.from_env(nats_url=nats_url, nats_port=nats_port, home=home)
    except BadRequest as exc:
        raise click.UsageError(exc.message) from None
    if settings.log_format == "json":
        setup_logging(log_level, "json")
        replica = settings.replica if "ACTOR_REPLICA" in os.environ else None
        log_context(node=settings.node or None, replica=replica)

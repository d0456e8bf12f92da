"""The ``actor`` command: parse, call a library coroutine, print.

This module is the entry point and the group registry; each command group lives in its
own module: :mod:`.node` (up, down, serve: what runs on this node), :mod:`.ops` (ps,
kill, restart, scale, logs: control from anywhere), :mod:`.calls` (call, ls, info),
:mod:`.policy`, :mod:`.keys`. Errors print one line (status, message, error id)
and exit with the code in :data:`EXIT_CODES`, so scripts can tell a 403 from a 503.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..bus import BadRequest
from ..runtime import Settings
from . import calls, keys, node, ops, policy
from ._common import EXIT_CODES, setup_logging

__all__ = ["EXIT_CODES", "main"]


@click.group()
@click.option(
    "--nats",
    "nats_url",
    envvar=None,
    help="NATS URL (default: $ACTOR_NATS_URL, $NATS_URL, else nats://127.0.0.1:4222).",
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
def main(ctx: click.Context, nats_url: str | None, home: Path | None, log_level: str) -> None:
    """actorbus: serve Python classes as signed actors on NATS."""
    setup_logging(log_level)
    try:
        ctx.obj = Settings.from_env(nats_url=nats_url, home=home)
    except BadRequest as exc:
        raise click.UsageError(exc.message) from None


for command in (
    node.up,
    node.down,
    node.serve_command,
    node.supervise,
    ops.ps,
    ops.kill,
    ops.restart,
    ops.scale,
    ops.logs,
    calls.call,
    calls.ls,
    calls.info,
    policy.policy,
    keys.key,
):
    main.add_command(command)

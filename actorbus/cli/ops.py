"""Node control from any machine: `actor ps`, `kill`, `restart`, `scale`, `logs`.

Each is a signed call to the node supervisors (admins only) or a read of the logs stream;
nothing here starts or signals a process itself.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import deque
from typing import Any

import click
import msgspec
from rich.text import Text

from ..bus import ActorError
from ..client import Client
from ..client.control import Control
from ..client.logs import LogLine, NodeKeys, read_logs
from ..client.specs import ReplicaStatus
from ._common import checked_name, err, out, run_coroutine, settings_of
from ._console import ps_table

__all__ = ["kill", "logs", "ps", "restart", "scale"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _control(ctx: click.Context, job: Any) -> Any:
    settings = settings_of(ctx)

    async def main() -> Any:
        async with Client(settings=settings) as client:
            return await job(Control(client))

    return run_coroutine(ctx, main)


@click.command()
@click.option("--node", help="Only this node.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def ps(ctx: click.Context, node: str | None, as_json: bool) -> None:
    """Every node's replicas: pid, state, uptime, restarts, calls, memory."""
    control: list[Control] = []

    async def job(c: Control) -> list[ReplicaStatus]:
        control.append(c)
        return await c.ps(node)

    statuses = _control(ctx, job)
    for failed, exc in control[0].errors.items():
        err.print(f"[yellow]node {failed} did not answer:[/yellow] {exc}")
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(statuses)).decode())
    elif statuses:
        out.print(ps_table(statuses))
        for s in statuses:
            if s.state == "failed" and s.tail:
                err.print(Text(f"{s.actor}[{s.replica}] on {s.node} failed; its last lines:"))
                for line in s.tail[-10:]:
                    err.print(Text("    " + line))
    else:
        err.print("no node supervisor is running")


@click.command()
@click.argument("name", callback=checked_name)
@click.pass_context
def kill(ctx: click.Context, name: str) -> None:
    """Stop actor NAME on every node (its replicas drain first)."""
    stopped = _control(ctx, lambda control: control.kill(name))
    for node, count in stopped.items():
        err.print(f"{name}: {count} replicas stopped on {node}")


@click.command()
@click.argument("name", callback=checked_name)
@click.pass_context
def restart(ctx: click.Context, name: str) -> None:
    """Restart NAME one replica at a time (each new one answers before the old stops)."""
    out.print(ps_table(_control(ctx, lambda control: control.restart(name))))


@click.command()
@click.argument("name", callback=checked_name)
@click.argument("replicas", type=click.IntRange(1, 256))
@click.option("--node", help="The node (needed when NAME runs on several).")
@click.pass_context
def scale(ctx: click.Context, name: str, replicas: int, node: str | None) -> None:
    """Run REPLICAS replicas of NAME."""
    out.print(ps_table(_control(ctx, lambda control: control.scale(name, replicas, node))))


def _since(text: str) -> float | None:
    if text == "all":
        return None
    match = _DURATION.fullmatch(text)
    if not match:
        raise click.BadParameter("a duration like 30s, 10m, 2h, 1d, or 'all'")
    return time.time() - float(match.group(1)) * _UNITS[match.group(2)]


def _show(line: LogLine, timestamps: bool, as_json: bool) -> None:
    if as_json:
        click.echo(msgspec.json.encode(line).decode())
        return
    prefix = f"{line.actor}[{line.replica}]@{line.node} | "
    if timestamps:
        prefix = time.strftime("%H:%M:%S ", time.localtime(line.time)) + prefix
    text = Text(line.line)
    if line.forged:  # not the node's line: said so
        text = Text(f"[FORGED: {line.forged}] ", style="bold red") + Text(line.line, style="red")
    out.print(Text(prefix, style="dim") + text, soft_wrap=True)


@click.command()
@click.argument("name", callback=checked_name)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option(
    "--since",
    help="How far back: 10m, 2h, all (default: 1h; with -f, since this run of NAME started).",
)
@click.option(
    "--tail", default=200, show_default=True, type=click.IntRange(0), help="Last N (0: all)."
)
@click.option("--replica", type=click.IntRange(0), help="Only this replica index.")
@click.option("--node", help="Only this node.")
@click.option("-t", "--timestamps", is_flag=True, help="Show each line's time.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line (a LogLine).")
@click.pass_context
def logs(
    ctx: click.Context,
    name: str,
    follow: bool,
    since: str | None,
    tail: int,
    replica: int | None,
    node: str | None,
    timestamps: bool,
    as_json: bool,
) -> None:
    """Print what NAME's replicas wrote (their log and their output), from any machine."""
    settings = settings_of(ctx)
    start = _since(since or "1h")

    async def main() -> None:
        nonlocal start
        history: deque[LogLine] = deque(maxlen=tail or None)
        live = shown = False
        async with Client(settings=settings) as client:
            if follow and since is None:  # what runs now, not what ran before it
                with contextlib.suppress(ActorError):
                    start = min((e.started for e in await client.entries(name)), default=start)
            keys = NodeKeys(client)
            async for line in read_logs(
                client.nc, name, keys, node=node, replica=replica, since=start, follow=follow
            ):
                if line is None:  # caught up: the history, then what comes
                    for old in history:
                        _show(old, timestamps, as_json)
                    live = True
                elif live:
                    _show(line, timestamps, as_json)
                else:
                    history.append(line)
                shown = shown or line is not None
            if not shown and not follow:
                await client.check_named(name)  # a mistyped name: 404, not silence
        if not live:
            for old in history:
                _show(old, timestamps, as_json)

    run_coroutine(ctx, main)

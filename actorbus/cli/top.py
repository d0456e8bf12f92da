"""`actor top`: a live view of what the actors do, like `docker stats` or `nats micro stats`.

Every ``--interval`` seconds it asks every replica on the bus for its ``$SRV.STATS``
(:mod:`actorbus.client.stats`) and shows, per actor and function (per replica with
``--replicas``): calls and errors per second over the last interval, the handler time's
p50 and p99 (estimated from the replicas' histograms, as Prometheus does) and the queue
wait's p99, the calls running now and the calls waiting for a worker. A replica that
restarted starts from its own zero, so no interval counts what it counted before.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import click
from rich.live import Live
from rich.table import Table

from ..bus.figures import LATENCY_BUCKETS, quantile
from ..client import Client
from ..client.stats import ReplicaFigures, replica_figures
from ._common import checked_name, out, run_coroutine, settings_of, stop_on_signal

__all__ = ["top"]

Key = tuple[str, ...]
_BUCKETS = len(LATENCY_BUCKETS) + 1
_Sample = dict[tuple[str, str], dict[str, Any]]  # (instance, fn) -> what it said


def _sample(figures: Iterable[ReplicaFigures]) -> tuple[_Sample, dict[str, tuple[str, ...]]]:
    """The figures by (replica instance, function), and each instance's row prefix parts
    (actor, node, replica)."""
    sample: _Sample = {}
    where: dict[str, tuple[str, ...]] = {}
    for replica in figures:
        entry = replica.entry
        where[entry.instance] = (entry.name, entry.node, str(entry.replica))
        for endpoint in replica.endpoints:
            data = endpoint.data or {}
            sample[(entry.instance, endpoint.name)] = {
                "requests": endpoint.num_requests,
                "errors": endpoint.num_errors,
                "handler": list((data.get("handler_seconds") or {}).get("counts") or []),
                "queue": list((data.get("queue_seconds") or {}).get("counts") or []),
                "in_flight": data.get("in_flight", 0),
                "queued": data.get("queued", 0),
            }
    return sample, where


def _rows(
    before: _Sample,
    after: _Sample,
    where: dict[str, tuple[str, ...]],
    seconds: float,
    per_replica: bool,
    every: bool = False,
) -> dict[Key, dict[str, Any]]:
    """What each row shows for the interval between two samples: the functions called
    at least once (``every``: all of them)."""
    rows: dict[Key, dict[str, Any]] = {}
    queued: dict[Key, int] = {}
    for (instance, fn), now in after.items():
        actor, node, replica = where[instance]
        head = (actor, node, replica) if per_replica else (actor,)
        if fn == "_other":  # the replica's own gauges
            queued[head] = queued.get(head, 0) + int(now["queued"] or 0)
            continue
        if not (every or now["requests"] or now["in_flight"]):
            continue
        then = before.get((instance, fn))
        fresh = then is None or now["requests"] < then["requests"]  # new, or restarted
        row = rows.setdefault(
            (*head, fn),
            {"calls": 0.0, "errors": 0.0, "handler": [0] * _BUCKETS, "queue": [0] * _BUCKETS}
            | {"in_flight": 0},
        )
        row["in_flight"] += int(now["in_flight"] or 0)
        if fresh or then is None:
            continue
        row["calls"] += (now["requests"] - then["requests"]) / seconds
        row["errors"] += (now["errors"] - then["errors"]) / seconds
        for kind in ("handler", "queue"):
            for i, (a, b) in enumerate(zip(then[kind], now[kind], strict=False)):
                if i < len(row[kind]):
                    row[kind][i] += max(0, b - a)
    for key, row in rows.items():
        row["queued"] = queued.get(key[:-1], 0)
    return rows


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _table(rows: dict[Key, dict[str, Any]], per_replica: bool, interval: float) -> Table:
    heads = ["actor", "node", "replica", "fn"] if per_replica else ["actor", "fn"]
    table = Table(*heads, title=f"actor top (every {interval:g}s)", title_justify="left")
    for column in ("calls/s", "errors/s", "p50 ms", "p99 ms", "queue p99 ms", "running", "queued"):
        table.add_column(column, justify="right")
    ordered = sorted(rows.items(), key=lambda item: (-item[1]["calls"], item[0]))
    for key, row in ordered:
        table.add_row(
            *key,
            f"{row['calls']:.1f}",
            f"{row['errors']:.1f}",
            _ms(quantile(row["handler"], 0.5)),
            _ms(quantile(row["handler"], 0.99)),
            _ms(quantile(row["queue"], 0.99)),
            str(row["in_flight"]),
            str(row["queued"]),
        )
    return table


@click.command()
@click.argument("name", required=False, callback=checked_name)
@click.option("--replicas", "per_replica", is_flag=True, help="A row per replica.")
@click.option(
    "--interval", default=2.0, show_default=True, type=click.FloatRange(0.2, 3600), help="Seconds."
)
@click.option("--once", is_flag=True, help="One interval, one table, then exit (for scripts).")
@click.option("--all", "every", is_flag=True, help="Every function, not only those called.")
@click.pass_context
def top(
    ctx: click.Context,
    name: str | None,
    per_replica: bool,
    interval: float,
    once: bool,
    every: bool,
) -> None:
    """A live view of every actor (or NAME): calls/s, errors/s, p50/p99, running, queued."""
    settings = settings_of(ctx)

    async def main() -> None:
        async with Client(settings=settings) as client:

            async def sample() -> tuple[float, _Sample, dict[str, tuple[str, ...]]]:
                figures = await replica_figures(client.nc, client.vouching, name)
                return (time.monotonic(), *_sample(figures))

            then, before, _ = await sample()
            live = None if once or not out.is_terminal else Live(console=out, auto_refresh=False)
            stop = anyio.Event()  # Ctrl-C: the way out of a live view, not an error
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_on_signal, stop, None)
                with live or contextlib.nullcontext():
                    await _show(sample, then, before, live, stop, per_replica, every, interval)
                tg.cancel_scope.cancel()

    run_coroutine(ctx, main)


async def _show(
    sample: Callable[[], Awaitable[tuple[float, _Sample, dict[str, tuple[str, ...]]]]],
    then: float,
    before: _Sample,
    live: Live | None,
    stop: anyio.Event,
    per_replica: bool,
    every: bool,
    interval: float,
) -> None:
    """Sample every ``interval`` and show the table (once, without ``live``) until ``stop``."""
    while True:
        with anyio.move_on_after(interval):
            await stop.wait()
        if stop.is_set():
            return
        now, after, where = await sample()
        rows = _rows(before, after, where, max(now - then, 1e-6), per_replica, every)
        table = _table(rows, per_replica, interval)
        if live is None:
            out.print(table)
            return
        live.update(table, refresh=True)
        then, before = now, after

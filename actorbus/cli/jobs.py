"""`actor job ...`: open jobs on the jobs actor (submit, add, close, status, watch, results,
cancel, ls). Slices come as JSON lines: each line is one call's argument list (a JSON
array), or a single argument (any other JSON value)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import IO, Any

import anyio
import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column, Table

from ..bus import ReplyTimeout, Unavailable
from ..bus.settings import Settings
from ..client import Client, Job
from ..client.jobs import ENDED
from ._common import ask_pages, err, out, paged, run_coroutine, settings_of

__all__ = ["job"]

_BATCH_BYTES = 256 * 1024
_BATCH_SLICES = 5000


def read_slices(stream: IO[str]) -> Iterator[list[list[Any]]]:
    """Batches of slices from JSON lines (blank lines skipped), small enough for one call."""
    batch: list[list[Any]] = []
    size = 0
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            message = f"line {number} is not JSON: {exc}"
            raise click.BadParameter(message, param_hint="--slices") from None
        args = value if isinstance(value, list) else [value]
        batch.append(args)
        size += len(line)
        if size >= _BATCH_BYTES or len(batch) >= _BATCH_SLICES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _run(ctx: click.Context, work: Any) -> Any:
    settings = settings_of(ctx)

    async def main() -> Any:
        async with Client(settings=settings) as client:
            return await work(client)

    return run_coroutine(ctx, main)


@click.group()
def job() -> None:
    """Open jobs: call NAME/FN once per slice (an argument list) on the jobs actor."""


@job.command("submit")
@click.argument("work", metavar="NAME/FN")
@click.option(
    "--slices",
    "source",
    type=click.File(encoding="utf-8"),
    metavar="FILE",
    help="JSON lines, one slice each; - = stdin.",
)
@click.option("--close", "close_", is_flag=True, help="No more slices after these.")
@click.option("--watch", is_flag=True, help="Show progress until the job ends (implies --close).")
@click.option("--retries", type=click.IntRange(0, 10), help="Retries after 408/5xx (default 3).")
@click.option("--concurrency", type=click.IntRange(1, 1024), help="Slices at once per replica.")
@click.option("--timeout", type=click.FloatRange(0.001, 3600), help="Seconds per slice call.")
@click.option(
    "--ttl",
    type=click.FloatRange(60, 30 * 86400),
    default=86400.0,
    show_default=True,
    help="Seconds the job may run as you.",
)
@click.pass_context
def job_submit(
    ctx: click.Context,
    work: str,
    source: IO[str] | None,
    close_: bool,
    watch: bool,
    retries: int | None,
    concurrency: int | None,
    timeout: float | None,
    ttl: float,
) -> None:
    """Start a job calling NAME/FN as you; prints its id (progress on stderr with --watch)."""
    batches = read_slices(source) if source else iter(())

    async def work_(client: Client) -> None:
        first = next(batches, None)
        handle = await client.submit(
            work, first, ttl=ttl, retries=retries, concurrency=concurrency, timeout=timeout
        )
        click.echo(handle.id)
        for batch in batches:
            await handle.add(batch)
        if close_ or watch:
            await handle.close()
        if watch:
            await _watch(handle)

    _run(ctx, work_)


@job.command("add")
@click.argument("job_id", metavar="ID")
@click.option(
    "--slices",
    "source",
    type=click.File(encoding="utf-8"),
    required=True,
    metavar="FILE",
    help="JSON lines; - = stdin.",
)
@click.pass_context
def job_add(ctx: click.Context, job_id: str, source: IO[str]) -> None:
    """Add slices to open job ID; prints the index range each batch got."""

    async def work(client: Client) -> None:
        handle = client.job(job_id)
        for batch in read_slices(source):
            first, last = await handle.add(batch)
            click.echo(f"{first}-{last}")

    _run(ctx, work)


@job.command("close")
@click.argument("job_id", metavar="ID")
@click.pass_context
def job_close(ctx: click.Context, job_id: str) -> None:
    """No more slices for job ID: it finishes once each has a result."""
    status = _run(ctx, lambda client: client.job(job_id).close())
    err.print(f"job {job_id} is {status['state']}: {status['total']} slices")


@job.command("status")
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def job_status(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """State, counts, rate and ETA of job ID."""
    status = _run(ctx, lambda client: client.job(job_id).status())
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    for key, value in status.items():
        if key in ("created", "closed", "finished") and value:
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        out.print(f"{key:>9}  {value if value is not None else '-'}")


@job.command("watch")
@click.argument("job_id", metavar="ID")
@click.pass_context
def job_watch(ctx: click.Context, job_id: str) -> None:
    """A progress bar of job ID until it ends (Ctrl-C stops watching, not the job)."""
    _run(ctx, lambda client: _watch(client.job(job_id)))


@job.command("results")
@click.argument("job_id", metavar="ID")
@click.option("--range", "ranges", default="", help="Indices, e.g. 1-10,33-35 (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def job_results(ctx: click.Context, job_id: str, ranges: str, as_json: bool) -> None:
    """The results of job ID stored so far, in index order."""

    async def work(client: Client) -> list[dict[str, Any]]:
        handle = client.job(job_id)
        wanted = ranges or f"1-{max((await handle.status())['total'], 1)}"
        return [r async for r in handle.results(wanted)]

    results = _run(ctx, work)
    if as_json:
        click.echo(json.dumps(results, indent=2, ensure_ascii=False))
        return
    table = Table("index", "status", "value / error")
    for r in results:
        shown = json.dumps(r.get("value"), ensure_ascii=False) if r["status"] < 300 else r["error"]
        table.add_row(str(r["index"]), str(r["status"]), shown)
    out.print(table)


@job.command("cancel")
@click.argument("job_id", metavar="ID")
@click.pass_context
def job_cancel(ctx: click.Context, job_id: str) -> None:
    """Stop job ID: no slice starts any more, running ones are abandoned."""
    status = _run(ctx, lambda client: client.job(job_id).cancel())
    err.print(f"job {job_id} {status['state']}: {status['done']} done, {status['failed']} failed")


@job.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@paged
@click.pass_context
def job_ls(ctx: click.Context, as_json: bool, limit: int | None, after: str) -> None:
    """Your jobs, oldest first (--after takes a job's cursor, in --json)."""
    settings: Settings = settings_of(ctx)
    jobs = ask_pages(
        ctx, settings.jobs, "jobs", limit=limit, after=after, cursor=lambda p: p[-1]["cursor"]
    )
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
        return
    # Fits 80 columns: the id whole (it is copied from here), work folded if it must be.
    table = Table(
        Column("id", no_wrap=True, min_width=24),
        Column("work", overflow="fold"),
        "state",
        Column("done/failed/total", justify="right"),
        "created",
        box=None,
        pad_edge=False,
    )
    today = time.strftime("%Y-%m-%d")
    for j in jobs:
        when = time.localtime(j["created"])
        day = time.strftime("%Y-%m-%d", when)
        created = time.strftime("%H:%M:%S" if day == today else "%Y-%m-%d %H:%M", when)
        progress = f"{j['done']}/{j['failed']}/{j['total']}"
        table.add_row(j["id"], j["work"], j["state"], progress, created)
    out.print(table)


async def _watch(handle: Job) -> None:
    """A progress bar on stderr: done and failed of total, rate and ETA, until the end."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(handle.id, total=None, detail="")
        while True:
            try:
                status = await handle.status()
            except (Unavailable, ReplyTimeout):
                await anyio.sleep(0.5)
                continue
            eta = status["eta"]
            detail = f"{status['state']}  {status['failed']} failed  {status['rate']:.1f}/s" + (
                f"  eta {eta:.0f}s" if eta else ""
            )
            progress.update(
                task,
                total=status["total"] or None,
                completed=status["done"] + status["failed"],
                detail=detail,
            )
            if status["state"] in ENDED:
                return
            await anyio.sleep(0.5)

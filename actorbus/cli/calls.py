"""`actor call`, `actor ls`, `actor info`: calling actors and reading the registry."""

from __future__ import annotations

import json
import time
from typing import Any

import click
import msgspec
from rich.table import Table
from rich.text import Text

from ..bus import ActorError, BadRequest, NotFound
from ..bus.subjects import check_fn, check_name
from ..client import Client
from ..client.client import loose_value, typed_value
from ._common import checked_name, err, out, run_coroutine, settings_of


@click.command()
@click.argument("target", metavar="NAME/FN")
@click.argument("args", nargs=-1)
@click.option("-k", "kwargs", multiple=True, metavar="KEY=VALUE", help="A keyword argument.")
@click.option(
    "--key",
    "key_name",
    help="Keystore key to sign with (default: $ACTOR_KEY or 'default', created on first use).",
)
@click.option("--timeout", type=click.FloatRange(0.001, 86400), help="Seconds to wait.")
@click.option(
    "--raw", is_flag=True, help="A streamed reply's text chunks as they are, not a line each."
)
@click.pass_context
def call(
    ctx: click.Context,
    target: str,
    args: tuple[str, ...],
    kwargs: tuple[str, ...],
    key_name: str | None,
    timeout: float | None,
    raw: bool,
) -> None:
    """Call NAME/FN with ARGS (each JSON, else a string) and print the result as JSON; a
    streaming function's chunks are printed as they come, a line of JSON each (with
    --raw, text chunks as they are: tokens make up the text)."""
    settings = settings_of(ctx)
    if key_name:
        settings = msgspec.structs.replace(settings, key=key_name)
    name, sep, fn = target.rpartition("/")
    if not sep:
        raise click.BadParameter("expected NAME/FN, e.g. echo/forward", param_hint="NAME/FN")
    texts: dict[str, str] = {}
    for item in kwargs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="-k")
        texts[key] = value
    try:
        check_name(name)
        check_fn(fn)
    except BadRequest as exc:
        raise click.BadParameter(exc.message, param_hint="NAME/FN") from None

    async def run() -> tuple[bool, Any]:  # (a single result to print, it)
        async with Client(settings=settings) as client:
            values, keywords = await _arguments(client, name, fn, args, texts)
            if fn not in (await client.known(name)).streams:
                return True, await client.request(name, fn, values, keywords, timeout=timeout)
            async for chunk in client.stream(name, fn, *values, _timeout=timeout, **keywords):
                if raw and isinstance(chunk, str):
                    click.echo(chunk, nl=False)
                else:
                    click.echo(json.dumps(chunk, ensure_ascii=False))
            if raw:
                click.echo()
            return False, None

    single, result = run_coroutine(ctx, run)
    if single:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))


async def _arguments(
    client: Client, name: str, fn: str, args: tuple[str, ...], kwargs: dict[str, str]
) -> tuple[list[Any], dict[str, Any]]:
    """The call's arguments from their text: each JSON if it parses, else the text, but
    the text as it is for a parameter the function types as a string (``echo/forward
    123`` sends ``"123"``): its schema is asked only when some text parses as JSON."""
    loose = [loose_value(a) for a in args], {k: loose_value(v) for k, v in kwargs.items()}
    if all(isinstance(v, str) for v in [*loose[0], *loose[1].values()]):
        return loose
    try:
        params = (await client.call(name, "schema")).get(fn, {}).get("params", {})
    except ActorError:
        return loose  # the call itself will say what is wrong
    properties = params.get("properties", {}) if isinstance(params, dict) else {}
    names = list(properties)
    values = [
        typed_value(text, properties.get(names[i]) if i < len(names) else None)
        for i, text in enumerate(args)
    ]
    return values, {k: typed_value(v, properties.get(k)) for k, v in kwargs.items()}


# -- ls / info -----------------------------------------------------------------------------


@click.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """The actors in the registry: replicas, nodes, address, uptime, calls answered."""
    settings = settings_of(ctx)

    async def run() -> Any:
        async with Client(settings=settings) as client:
            return await client.entries()

    entries = run_coroutine(ctx, run)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(entries)).decode())
        return
    table = Table("name", "replicas", "nodes", "address", "up", "calls")
    by_name: dict[str, list[Any]] = {}
    for entry in entries:
        by_name.setdefault(entry.name, []).append(entry)
    now = time.time()
    for actor, replicas in by_name.items():
        table.add_row(
            actor,
            str(len(replicas)),
            ", ".join(sorted({r.node for r in replicas})),
            replicas[0].address,
            _duration(now - min(r.started for r in replicas)),
            str(sum(r.calls for r in replicas)),
        )
    if by_name:
        out.print(table)
    else:
        err.print("no actors are running")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@click.command()
@click.argument("name", callback=checked_name)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def info(ctx: click.Context, name: str, as_json: bool) -> None:
    """NAME's address (its key), functions with their signatures, and replicas."""
    settings = settings_of(ctx)

    async def run() -> Any:
        async with Client(settings=settings) as client:
            entries = await client.entries(name)
            if not entries:
                await client.check_named(name)  # a typo: "did you mean ...?"
                raise NotFound(f"no actor named {name!r} is running")
            return entries, await client.call(name, "schema")

    entries, schema = run_coroutine(ctx, run)
    if as_json:
        data = {"replicas": msgspec.to_builtins(entries), "functions": schema}
        click.echo(json.dumps(data, indent=2))
        return
    first = entries[0]
    out.print(Text.assemble((name, "bold"), f"  address {first.address}"))
    for fn, spec in schema.items():
        doc = (spec.get("doc") or "").strip().split("\n")[0]
        out.print(
            Text.assemble("  ", (spec.get("signature", fn), "cyan"), f"  {doc}" if doc else "")
        )
    table = Table("replica", "node", "pid", "instance", "version", "up", "calls", "heartbeat")
    now = time.time()
    for e in entries:
        table.add_row(
            str(e.replica),
            e.node,
            str(e.pid),
            e.instance,
            e.version,
            _duration(now - e.started),
            str(e.calls),
            f"{now - e.heartbeat:.1f}s ago",
        )
    out.print(table)

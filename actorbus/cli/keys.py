"""`actor key ...`: signing keys under $ACTOR_HOME/keys."""

from __future__ import annotations

import json

import click
from rich.table import Table

from ..bus import BadRequest, Keystore
from ..bus.subjects import call_subject
from ..bus.wire import JSON, sign_relayed
from ._common import EXIT_CODES, err, out, settings_of


@click.group()
def key() -> None:
    """Manage signing keys (files under $ACTOR_HOME/keys, mode 0600)."""


@key.command("new")
@click.argument("name")
@click.pass_context
def key_new(ctx: click.Context, name: str) -> None:
    """Create key NAME and print its address."""
    store = Keystore(settings_of(ctx).home)
    try:
        click.echo(store.create(name).address)
    except BadRequest as exc:
        err.print(f"[red]error[/red] {exc}")
        ctx.exit(EXIT_CODES[400])


@key.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def key_ls(ctx: click.Context, as_json: bool) -> None:
    """List keys with their addresses."""
    store = Keystore(settings_of(ctx).home.expanduser())
    rows = []
    for name in store.names():
        try:
            rows.append({"name": name, "address": store.load(name).address})
        except BadRequest as exc:
            rows.append({"name": name, "address": f"unreadable: {exc.message}"})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "address")
    for row in rows:
        table.add_row(row["name"], row["address"])
    out.print(table)


@key.command("show")
@click.argument("name", default="default")
@click.pass_context
def key_show(ctx: click.Context, name: str) -> None:
    """Print key NAME's address and public key (never its seed)."""
    try:
        keypair = Keystore(settings_of(ctx).home).load(name)
    except BadRequest as exc:
        err.print(f"[red]error[/red] {exc}")
        ctx.exit(EXIT_CODES[400])
        return
    click.echo(
        json.dumps(
            {"name": name, "address": keypair.address, "public_key": keypair.public_key.hex()},
            indent=2,
        )
    )


@key.command("sign")
@click.argument("target", metavar="NAME/FN")
@click.argument("body")
@click.option("--key", "key_name", help="Keystore key to sign with (default: $ACTOR_KEY).")
@click.option("--curl", is_flag=True, help="Print curl's -H options instead of JSON.")
@click.pass_context
def key_sign(ctx: click.Context, target: str, body: str, key_name: str | None, curl: bool) -> None:
    """The Actor-* headers that sign BODY (sent as is) as a call of NAME/FN, for any HTTP
    client through the gateway (with the Content-Type it takes): good for max_skew (30 s)
    and for one call."""
    settings = settings_of(ctx)
    name, _, fn = target.rpartition("/")
    try:
        subject = call_subject(name, fn)
        signer = Keystore(settings.home).caller(key_name or settings.key)
    except BadRequest as exc:
        err.print(f"[red]error[/red] {exc}")
        ctx.exit(EXIT_CODES[400])
        return
    headers = {"Content-Type": JSON, **sign_relayed(signer, subject, body.encode())}
    if curl:  # one word per option, no spaces: fit for the shell's $(...)
        click.echo(" ".join(f"-H{k}:{v}" for k, v in headers.items()))
    else:
        click.echo(json.dumps(headers, indent=2))

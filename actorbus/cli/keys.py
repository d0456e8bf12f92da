"""`actor key ...`: signing keys under $ACTOR_HOME/keys."""

from __future__ import annotations

import json

import click
from rich.table import Table

from ..bus import BadRequest, Keystore
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

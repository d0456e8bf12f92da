"""`actor token ...`: bearer tokens for web callers, issued and revoked by admins through
the policy actor (which keeps only their hash)."""

from __future__ import annotations

import json

import click
from rich.table import Table

from ._common import ask_pages, ask_policy, err, out, paged, settings_of

__all__ = ["token"]


@click.group()
def token() -> None:
    """Bearer tokens for the HTTP gateway (admins only)."""


@token.command("new")
@click.argument("name")
@click.option("--role", default="user", show_default=True, help="The role its calls have.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def token_new(ctx: click.Context, name: str, role: str, as_json: bool) -> None:
    """Issue token NAME. It is shown this once: keep it (only its hash is stored)."""
    issued = ask_policy(ctx, "issue_token", name, role)
    if as_json:
        click.echo(json.dumps(issued, indent=2))
        return
    click.echo(issued["token"])
    err.print(f"token {name!r}: role {role!r}, calls as {issued['address']}; shown once")


@token.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@paged
@click.pass_context
def token_ls(ctx: click.Context, as_json: bool, limit: int | None, after: str) -> None:
    """The tokens: name, role, the address their calls are signed as (never the token)."""
    settings = settings_of(ctx)
    tokens = ask_pages(
        ctx, settings.policy, "tokens", limit=limit, after=after, cursor=lambda p: p[-1]["name"]
    )
    if as_json:
        click.echo(json.dumps(tokens, indent=2))
        return
    table = Table("name", "role", "address")
    for t in tokens:
        table.add_row(t["name"], t["role"], t["address"])
    out.print(table)


@token.command("revoke")
@click.argument("name")
@click.pass_context
def token_revoke(ctx: click.Context, name: str) -> None:
    """Revoke token NAME: refused at once, and its key loses its role."""
    ask_policy(ctx, "revoke_token", name)
    err.print(f"token {name!r} revoked")

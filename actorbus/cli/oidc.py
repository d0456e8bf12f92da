"""`actor policy oidc ...`: the OpenID Connect issuers whose logins the gateway takes, and
the rules giving their logins roles (changes signed by your key, an admin's)."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from ..bus import BadRequest
from ..host.policy import check_issuer_url
from ._common import ask_policy, err, out

__all__ = ["oidc"]


def _url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: an issuer (or JWKS) URL, checked before the bus is asked."""
    try:
        return None if value is None else check_issuer_url(value, "the URL")
    except BadRequest as exc:
        raise click.BadParameter(exc.message, ctx, param) from None


def _claim(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, str]:
    name, sep, wanted = value.partition("=")
    if not sep or not name or not wanted:
        raise click.BadParameter("expected NAME=VALUE (e.g. groups=ops)", ctx, param)
    return name, wanted


_ISSUER = click.option(
    "--issuer", required=True, callback=_url, help="The issuer's URL, exactly its tokens' iss."
)
_CLAIM = click.option(
    "--claim",
    required=True,
    metavar="NAME=VALUE",
    callback=_claim,
    help="A claim and the value it has (a list claim: holds).",
)


@click.group()
def oidc() -> None:
    """OpenID Connect logins at the gateway (Authorization: Bearer <JWT>)."""


@oidc.command("add")
@_ISSUER
@click.option(
    "--audience", required=True, multiple=True, help="What tokens' aud must name (client id)."
)
@click.option("--jwks", callback=_url, help="Its JWKS URL (default: from its discovery document).")
@click.pass_context
def oidc_add(ctx: click.Context, issuer: str, audience: tuple[str, ...], jwks: str | None) -> None:
    """Take logins from ISSUER (its rules, if it was added before, stay)."""
    ask_policy(ctx, "add_oidc", issuer, list(audience), jwks or "")
    err.print(f"{issuer}: taken (its logins need a rule: `actor policy oidc map`)")


@oidc.command("rm")
@_ISSUER
@click.pass_context
def oidc_rm(ctx: click.Context, issuer: str) -> None:
    """Take no more logins from ISSUER (its logins lose their roles at once)."""
    ask_policy(ctx, "rm_oidc", issuer)
    err.print(f"{issuer}: removed")


@oidc.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def oidc_ls(ctx: click.Context, as_json: bool) -> None:
    """The issuers, their audiences and rules (the first a login matches decides)."""
    issuers: list[dict[str, Any]] = ask_policy(ctx, "oidc")
    if as_json:
        click.echo(json.dumps(issuers, indent=2))
        return
    table = Table("issuer", "audiences", "jwks", "rules", box=None, pad_edge=False)
    for issuer in issuers:
        rules = ", ".join(f"{r['claim']}={r['value']} -> {r['role']}" for r in issuer["rules"])
        table.add_row(
            issuer["issuer"],
            ", ".join(issuer["audiences"]),
            issuer["jwks"] or "(discovered)",
            rules or "(none: its logins are refused)",
        )
    out.print(table)


@oidc.command("map")
@_ISSUER
@_CLAIM
@click.option("--role", required=True, help="The role such logins have (it must exist).")
@click.pass_context
def oidc_map(ctx: click.Context, issuer: str, claim: tuple[str, str], role: str) -> None:
    """Give ISSUER's logins whose claim has this value ROLE (a rule for the same claim and
    value is replaced; a new one goes last)."""
    ask_policy(ctx, "oidc_map", issuer, *claim, role)
    err.print(f"{issuer}: logins with {claim[0]}={claim[1]} have role {role!r}")


@oidc.command("unmap")
@_ISSUER
@_CLAIM
@click.pass_context
def oidc_unmap(ctx: click.Context, issuer: str, claim: tuple[str, str]) -> None:
    """Remove ISSUER's rule for this claim and value."""
    ask_policy(ctx, "oidc_unmap", issuer, *claim)
    err.print(f"{issuer}: no rule for {claim[0]}={claim[1]} now")

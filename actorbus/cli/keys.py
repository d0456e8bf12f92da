"""`actor key ...`: signing keys under $ACTOR_HOME/keys."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from ..bus import BadRequest, Keypair, Keystore, SrKeypair
from ..bus.keyimport import from_bittensor_hotkey, from_commune, from_suri
from ..bus.subjects import DEFAULT_GATEWAY, call_subject, check_name
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
            signer = store.signer(name)
            rows.append({"name": name, "address": signer.address, "scheme": signer.scheme})
        except BadRequest as exc:
            rows.append({"name": name, "address": f"unreadable: {exc.message}", "scheme": ""})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "address", "scheme")
    for row in rows:
        table.add_row(row["name"], row["address"], row["scheme"])
    out.print(table)


@key.command("show")
@click.argument("name", default="default")
@click.pass_context
def key_show(ctx: click.Context, name: str) -> None:
    """Print key NAME's address, scheme and public key (never its secret)."""
    try:
        keypair = Keystore(settings_of(ctx).home).signer(name)
    except BadRequest as exc:
        err.print(f"[red]error[/red] {exc}")
        ctx.exit(EXIT_CODES[400])
        return
    click.echo(
        json.dumps(
            {
                "name": name,
                "address": keypair.address,
                "scheme": keypair.scheme,
                "public_key": keypair.public_key.hex(),
            },
            indent=2,
        )
    )


@key.command("import")
@click.argument("name")
@click.option(
    "--suri",
    metavar="PHRASE//hard/soft",
    help="A substrate secret URI (a BIP39 phrase or 0xSEED, junctions, ///password), as "
    "subkey takes it; - reads it from stdin (an argument shows in ps to local users).",
)
@click.option(
    "--bittensor-hotkey",
    "hotkey",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A bittensor wallet's hotkey file (wallets/W/hotkeys/H, unencrypted).",
)
@click.option(
    "--commune",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A commune key file (~/.commune/key/NAME.json).",
)
@click.pass_context
def key_import(
    ctx: click.Context, name: str, suri: str | None, hotkey: Path | None, commune: Path | None
) -> None:
    """Save a key you already hold as NAME and print its address: an sr25519 key from a
    secret URI or a bittensor hotkey, or a commune key of either scheme. Calls signed with
    it are judged by the policy like any key's (actor policy user add NAME ...)."""
    given = [option for option in (suri, hotkey, commune) if option is not None]
    if len(given) != 1:
        raise click.UsageError("give one of --suri, --bittensor-hotkey or --commune")
    imported: Keypair | SrKeypair
    try:
        if suri is not None:
            text = sys.stdin.read(4096) if suri == "-" else suri
            imported = from_suri(text)
        elif hotkey is not None:
            imported = from_bittensor_hotkey(_read_small(hotkey))
        else:
            assert commune is not None
            imported = from_commune(_read_small(commune))
        Keystore(settings_of(ctx).home).add(name, imported)
    except BadRequest as exc:
        err.print(f"[red]error[/red] {exc}")
        ctx.exit(EXIT_CODES[400])
        return
    click.echo(imported.address)


def _read_small(path: Path) -> str:
    """A key file's text (at most 64 KiB: a key file is a few hundred bytes); raises
    :class:`BadRequest` for what is not a regular file (a pipe would block, a device
    never end)."""
    if not path.is_file():  # before opening: opening a pipe waits for its writer
        raise BadRequest(f"{path} is not a regular file")
    with path.open("rb") as file:
        return file.read(64 * 1024 + 1).decode("utf-8", "replace")


@key.command("sign")
@click.argument("target", metavar="NAME/FN")
@click.argument("body")
@click.option("--key", "key_name", help="Keystore key to sign with (default: $ACTOR_KEY).")
@click.option("--curl", is_flag=True, help="Print curl's -H options instead of JSON.")
@click.option(
    "--gateway",
    default=DEFAULT_GATEWAY,
    show_default=True,
    help="The gateway's name (its /health says it): its relay carries the reply.",
)
@click.pass_context
def key_sign(
    ctx: click.Context, target: str, body: str, key_name: str | None, curl: bool, gateway: str
) -> None:
    """The Actor-* headers that sign BODY (sent as is) as a call of NAME/FN, for any HTTP
    client through the gateway (with the Content-Type it takes): good for max_skew (30 s)
    and for one call."""
    settings = settings_of(ctx)
    name, _, fn = target.rpartition("/")
    try:
        subject = call_subject(name, fn)
        relay = check_name(gateway)
        signer = Keystore(settings.home).caller(key_name or settings.key)
    except BadRequest as exc:
        err.print(f"[red]error[/red] {exc}")
        ctx.exit(EXIT_CODES[400])
        return
    headers = {
        "Content-Type": JSON,
        **sign_relayed(signer, subject, body.encode(), gateway=relay),
    }
    if curl:  # one word per option, no spaces: fit for the shell's $(...)
        click.echo(" ".join(f"-H{k}:{v}" for k, v in headers.items()))
    else:
        click.echo(json.dumps(headers, indent=2))

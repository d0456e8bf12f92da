"""`actor policy ...`: admins, roles, stakes and quotas, through the policy actor (OIDC
issuers: :mod:`.oidc`)."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import click
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from ..bus import ActorError, Keystore, address_to_public_key, printable
from ..bus.ranges import PAGE_SIZE
from ..bus.settings import Settings
from ..client import Client
from ._common import (
    ask_pages,
    ask_policy,
    checked_name,
    err,
    out,
    paged,
    run_coroutine,
    settings_of,
)
from .oidc import oidc


@click.group()
def policy() -> None:
    """Admins, roles, stakes and quotas (every change is signed by your key, an admin's)."""


policy.add_command(oidc)


def _key_address(settings: Settings, key: str) -> str:
    """KEY as an address: a keystore key's name, or an address as it is."""
    store = Keystore(settings.home)
    return store.signer(key).address if key in store.names() else key


def _policy_list(ctx: click.Context, fn: str, *args: Any, limit: int | None, after: str) -> None:
    """Print as JSON what the policy actor's listing ``fn`` holds after ``after`` (at most
    ``limit``), asked a page at a time."""
    settings = settings_of(ctx)
    listed = ask_pages(ctx, settings.policy, fn, *args, limit=limit, after=after)
    click.echo(json.dumps(listed, indent=2))


def _policy_call(ctx: click.Context, fn: str, *args: Any, said: str = "") -> None:
    """Call the policy actor's ``fn``; print its answer as JSON, or ``said`` for a change
    that answers nothing."""
    answer = ask_policy(ctx, fn, *args)
    if answer is None and said:
        err.print(said)
    else:
        click.echo(json.dumps(answer, indent=2))


@policy.group("user")
def policy_user() -> None:
    """Keys with a role (keys without one are `public`)."""


@policy_user.command("add")
@click.argument("key", required=False)
@click.option("--role", default="user", show_default=True)
@click.option(
    "--from",
    "source",
    type=click.File("r"),
    help="Give roles to many keys: a file (- for stdin), a line each: ADDRESS [ROLE].",
)
@click.pass_context
def policy_user_add(ctx: click.Context, key: str | None, role: str, source: Any) -> None:
    """Give KEY (an address or a keystore name) a role; or, with --from, every key a
    file lists (its own role, or --role), a thousand a call."""
    if (key is None) == (source is None):
        raise click.UsageError("give a KEY, or --from FILE")
    if key is not None:
        _policy_call(ctx, "add_user", _key_address(settings_of(ctx), key), role)
        return
    users = _users_of(source, role)
    settings = settings_of(ctx)

    async def run() -> int:
        async with Client(settings=settings) as client:
            items = list(users.items())
            with Progress(transient=True, console=err) as progress:
                task = progress.add_task("adding users", total=len(items))
                for start in range(0, len(items), PAGE_SIZE):
                    batch = dict(items[start : start + PAGE_SIZE])
                    await client.add_users(batch)
                    progress.advance(task, len(batch))
        return len(items)

    added = run_coroutine(ctx, run)
    err.print(f"{added} keys have their roles")


def _users_of(source: Any, default_role: str) -> dict[str, str]:
    """``ADDRESS [ROLE]`` lines (blank lines and ``#`` comments skipped; a key listed twice:
    its last line), each address checked; a usage error names the first bad line."""
    users: dict[str, str] = {}
    for number, line in enumerate(source, 1):
        fields = line.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        if len(fields) > 2:
            raise click.UsageError(f"line {number}: ADDRESS [ROLE], not {len(fields)} fields")
        try:
            address_to_public_key(fields[0])
        except ActorError as exc:
            raise click.UsageError(f"line {number}: {exc.message}") from None
        users[fields[0]] = fields[1] if len(fields) == 2 else default_role
    return users


@policy_user.command("rm")
@click.argument("key")
@click.pass_context
def policy_user_rm(ctx: click.Context, key: str) -> None:
    """Take KEY's role away (it becomes public)."""
    address = _key_address(settings_of(ctx), key)
    _policy_call(ctx, "rm_user", address, said=f"{key} has no role now: it is public")


@policy_user.command("ls")
@paged
@click.option("--role", default=None, help="Only the keys with this role.")
@click.pass_context
def policy_user_ls(ctx: click.Context, role: str | None, limit: int | None, after: str) -> None:
    """Keys with a role (a page at a time from the policy actor)."""
    if role is None:
        _policy_list(ctx, "users", limit=limit, after=after)
    else:
        _policy_list(ctx, "role2users", role, limit=limit, after=after)


@policy.group("admin")
def policy_admin() -> None:
    """Keys that may do anything, this policy's changes included."""


@policy_admin.command("add")
@click.argument("key")
@click.pass_context
def policy_admin_add(ctx: click.Context, key: str) -> None:
    """Make KEY an admin."""
    _policy_call(ctx, "add_admin", _key_address(settings_of(ctx), key))


@policy_admin.command("rm")
@click.argument("key")
@click.pass_context
def policy_admin_rm(ctx: click.Context, key: str) -> None:
    """Remove admin KEY (never the last one)."""
    _policy_call(ctx, "rm_admin", _key_address(settings_of(ctx), key))


@policy_admin.command("ls")
@paged
@click.pass_context
def policy_admin_ls(ctx: click.Context, limit: int | None, after: str) -> None:
    """The admins."""
    _policy_list(ctx, "admins", limit=limit, after=after)


@policy.group("role")
def policy_role() -> None:
    """Roles: the ACTOR/FN patterns their keys may (allow) and may not (deny) call."""


_PATTERNS = [
    click.option("--allow", multiple=True, metavar="ACTOR/FN", help="Pattern it may call (*)."),
    click.option("--deny", multiple=True, metavar="ACTOR/FN", help="Pattern it may not call."),
]


def _patterns(command: Any) -> Any:
    for option in reversed(_PATTERNS):
        command = option(command)
    return command


@policy_role.command("set")
@click.argument("role")
@_patterns
@click.option(
    "--stake2rate", type=float, default=1.0, show_default=True, help="Stake per call/minute."
)
@click.pass_context
def policy_role_set(
    ctx: click.Context, role: str, allow: tuple[str, ...], deny: tuple[str, ...], stake2rate: float
) -> None:
    """Replace ROLE's rules with these (the patterns not given are gone: `role add` adds one
    pattern, `role rm --allow P` takes one out)."""
    _policy_call(ctx, "set_role", role, list(allow), list(deny), stake2rate)
    err.print(f"{role}: its rules were replaced by these")


@policy_role.command("add")
@click.argument("role")
@_patterns
@click.option("--stake2rate", type=float, help="Stake per call/minute (default: unchanged).")
@click.pass_context
def policy_role_add(
    ctx: click.Context,
    role: str,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
    stake2rate: float | None,
) -> None:
    """Add patterns to ROLE (made if new); its other rules stay."""
    _policy_call(ctx, "edit_role", role, list(allow), list(deny), False, stake2rate)


@policy_role.command("rm")
@click.argument("role")
@_patterns
@click.pass_context
def policy_role_rm(
    ctx: click.Context, role: str, allow: tuple[str, ...], deny: tuple[str, ...]
) -> None:
    """Take these patterns out of ROLE; with none, remove ROLE (its keys become public)."""
    if allow or deny:
        _policy_call(ctx, "edit_role", role, list(allow), list(deny), True)
    else:
        _policy_call(ctx, "rm_role", role, said=f"role {role} is gone")


@policy_role.command("ls")
@paged
@click.pass_context
def policy_role_ls(ctx: click.Context, limit: int | None, after: str) -> None:
    """Roles and their rules."""
    _policy_list(ctx, "roles", limit=limit, after=after)


def _stake(amount: float) -> float:
    if not (math.isfinite(amount) and amount >= 0):
        raise click.BadParameter("a stake is a finite number, 0 or more")
    return amount


@policy.group("stake")
def policy_stake() -> None:
    """Set stakes."""


@policy_stake.command("set")
@click.argument("key")
@click.argument("amount", type=float, callback=lambda _c, _p, v: _stake(v))
@click.pass_context
def policy_stake_set(ctx: click.Context, key: str, amount: float) -> None:
    """Set KEY's stake (its rate is stake / stake2rate calls per minute)."""
    _policy_call(ctx, "set_stake", _key_address(settings_of(ctx), key), amount)


@policy_stake.command("ls")
@paged
@click.pass_context
def policy_stakes(ctx: click.Context, limit: int | None, after: str) -> None:
    """Every key's stake."""
    _policy_list(ctx, "stakes", limit=limit, after=after)


@policy.command("config")
@click.option("--window", type=click.FloatRange(0, min_open=True), help="Seconds per quota window.")
@click.option(
    "--floor",
    type=click.FloatRange(0),
    help="Calls per minute every key gets whatever its stake (0: stake alone decides).",
)
@click.option(
    "--local-exempt/--no-local-exempt",
    default=None,
    help="Whether this NATS's own actors' keys skip quotas.",
)
@click.pass_context
def policy_config(
    ctx: click.Context, window: float | None, floor: float | None, local_exempt: bool | None
) -> None:
    """Show the quota settings, or change the ones given."""
    if window is None and floor is None and local_exempt is None:
        _policy_call(ctx, "config")
    else:
        _policy_call(ctx, "set_config", window, floor, local_exempt)


@policy.group("forwarder")
def policy_forwarder() -> None:
    """Keys trusted to call on behalf of callers they authenticated (gateways)."""


@policy_forwarder.command("add")
@click.argument("key")
@click.pass_context
def policy_forwarder_add(ctx: click.Context, key: str) -> None:
    """Trust KEY (a gateway's address) to call on behalf of others."""
    _policy_call(ctx, "add_forwarder", _key_address(settings_of(ctx), key))


@policy_forwarder.command("rm")
@click.argument("key")
@click.pass_context
def policy_forwarder_rm(ctx: click.Context, key: str) -> None:
    """Stop trusting KEY to call on behalf of others."""
    _policy_call(ctx, "rm_forwarder", _key_address(settings_of(ctx), key))


@policy_forwarder.command("ls")
@paged
@click.pass_context
def policy_forwarders(ctx: click.Context, limit: int | None, after: str) -> None:
    """The keys trusted to call on behalf of others."""
    _policy_list(ctx, "forwarders", limit=limit, after=after)


@policy.group("host")
def policy_host() -> None:
    """Keys that may let replicas serve on this bus (admins may too)."""


@policy_host.command("add")
@click.argument("key")
@click.option("--jobs", "jobs", multiple=True, metavar="NAME", help="A jobs actor it may run.")
@click.option("--gateway", multiple=True, metavar="NAME", help="A gateway it may run.")
@click.pass_context
def policy_host_add(
    ctx: click.Context, key: str, jobs: tuple[str, ...], gateway: tuple[str, ...]
) -> None:
    """Let KEY (another home's key: `actor key show` there) host actors on this bus, and
    the jobs actors and gateways named (again: replaces those)."""
    address = _key_address(settings_of(ctx), key)
    _policy_call(ctx, "add_host", address, list(jobs), list(gateway))


@policy_host.command("rm")
@click.argument("key")
@click.pass_context
def policy_host_rm(ctx: click.Context, key: str) -> None:
    """Stop KEY from hosting actors (its running replicas serve on until they reconnect)."""
    _policy_call(ctx, "rm_host", _key_address(settings_of(ctx), key))


@policy_host.command("ls")
@paged
@click.pass_context
def policy_host_ls(ctx: click.Context, limit: int | None, after: str) -> None:
    """The listed hosts."""
    _policy_list(ctx, "hosts", limit=limit, after=after)


@policy.group("name")
def policy_name() -> None:
    """Which keys may serve each actor name (the first to serve a name claims it)."""


@policy_name.command("add")
@click.argument("name", callback=checked_name)
@click.argument("key")
@click.pass_context
def policy_name_grant(ctx: click.Context, name: str, key: str) -> None:
    """Let KEY serve actor NAME too (a new key for it, or a second one while moving)."""
    _policy_call(ctx, "grant_name", name, _key_address(settings_of(ctx), key))


@policy_name.command("rm")
@click.argument("name", callback=checked_name)
@click.argument("key", required=False)
@click.pass_context
def policy_name_revoke(ctx: click.Context, name: str, key: str | None) -> None:
    """Stop KEY (without one: every key) from serving actor NAME."""
    address = _key_address(settings_of(ctx), key) if key else None
    _policy_call(ctx, "revoke_name", name, address)


@policy_name.command("ls")
@paged
@click.pass_context
def policy_name_ls(ctx: click.Context, limit: int | None, after: str) -> None:
    """Every bound name and its keys."""
    _policy_list(ctx, "names", limit=limit, after=after)


@policy.command("decide")
@click.argument("key")
@click.argument("target", metavar="ACTOR/FN")
@click.pass_context
def policy_decide(ctx: click.Context, key: str, target: str) -> None:
    """Whether KEY may call ACTOR/FN, and why."""
    actor, sep, fn = target.rpartition("/")
    if not sep:
        raise click.BadParameter("expected ACTOR/FN", param_hint="ACTOR/FN")
    _policy_call(ctx, "decide", _key_address(settings_of(ctx), key), actor, fn)


@policy.command("log")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, PAGE_SIZE))
@click.option(
    "--before", default=0, type=click.IntRange(0), help="Older than this record (its seq)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (times in Unix seconds).")
@click.pass_context
def policy_log(ctx: click.Context, limit: int, before: int, as_json: bool) -> None:
    """The last policy changes and node controls: when, who, what (--before SEQ: further
    back; each record's seq is in --json)."""
    settings = settings_of(ctx)
    records: list[dict[str, Any]] = ask_policy(ctx, "log", limit, before)
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    store = Keystore(settings.home)
    names = {store.signer(n).address: n for n in store.names()}
    table = Table(box=None, pad_edge=False)
    for column in ("time", "who", "source", "what", "args"):
        table.add_column(column, overflow="fold")
    for record in records:
        who = str(record.get("who", ""))
        what = Text(str(record.get("what", "")))
        if record.get("forged"):
            what = Text(f"[FORGED: {record['forged']}] ", style="bold red") + what
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("time", 0)))),
            names.get(who, who),
            str(record.get("source", "")),
            what,
            printable(json.dumps(record.get("args", {}), separators=(",", ":")), 120),
        )
    out.print(table)


@policy_stake.command("rm")
@click.argument("key")
@click.pass_context
def policy_stake_rm(ctx: click.Context, key: str) -> None:
    """Set KEY's stake to 0 (the rate floor still applies)."""
    _policy_call(ctx, "set_stake", _key_address(settings_of(ctx), key), 0.0)


def _alias(group: click.Group, name: str, command: click.Command) -> None:
    """``command`` also as ``group name`` (an older spelling), out of the help."""
    group.add_command(
        click.Command(
            name, callback=command.callback, params=command.params, help=command.help, hidden=True
        )
    )


for _group, _old, _new in [
    (policy, "add-user", policy_user_add),
    (policy, "rm-user", policy_user_rm),
    (policy, "users", policy_user_ls),
    (policy, "add-admin", policy_admin_add),
    (policy, "rm-admin", policy_admin_rm),
    (policy, "admins", policy_admin_ls),
    (policy, "roles", policy_role_ls),
    (policy, "stakes", policy_stakes),
    (policy, "forwarders", policy_forwarders),
    (policy_name, "grant", policy_name_grant),
    (policy_name, "revoke", policy_name_revoke),
]:
    _alias(_group, _old, _new)

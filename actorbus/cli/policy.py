"""`actor policy ...`: admins, roles, stakes and quotas, through the policy actor."""

from __future__ import annotations

import json
from typing import Any

import click

from ..bus import Keystore
from ..bus.settings import Settings
from ..client import Client
from ._common import run_coroutine, settings_of


@click.group()
def policy() -> None:
    """Admins, roles, stakes and quotas (every change is signed by your key, an admin's)."""


def _key_address(settings: Settings, key: str) -> str:
    """KEY as an address: a keystore key's name, or an address as it is."""
    store = Keystore(settings.home)
    return store.load(key).address if key in store.names() else key


def _policy_call(ctx: click.Context, fn: str, *args: Any) -> None:
    settings = settings_of(ctx)

    async def run() -> Any:
        async with Client(settings=settings) as client:
            return await client.request(settings.policy, fn, list(args))

    click.echo(json.dumps(run_coroutine(ctx, run), indent=2))


@policy.command("add-user")
@click.argument("key")
@click.option("--role", default="user", show_default=True)
@click.pass_context
def policy_add_user(ctx: click.Context, key: str, role: str) -> None:
    """Give KEY (an address or a keystore name) a role."""
    _policy_call(ctx, "add_user", _key_address(settings_of(ctx), key), role)


@policy.command("rm-user")
@click.argument("key")
@click.pass_context
def policy_rm_user(ctx: click.Context, key: str) -> None:
    """Take KEY's role away (it becomes public)."""
    _policy_call(ctx, "rm_user", _key_address(settings_of(ctx), key))


@policy.command("add-admin")
@click.argument("key")
@click.pass_context
def policy_add_admin(ctx: click.Context, key: str) -> None:
    """Make KEY an admin."""
    _policy_call(ctx, "add_admin", _key_address(settings_of(ctx), key))


@policy.command("rm-admin")
@click.argument("key")
@click.pass_context
def policy_rm_admin(ctx: click.Context, key: str) -> None:
    """Remove admin KEY (never the last one)."""
    _policy_call(ctx, "rm_admin", _key_address(settings_of(ctx), key))


@policy.command("users")
@click.pass_context
def policy_users(ctx: click.Context) -> None:
    """Keys with a role."""
    _policy_call(ctx, "users")


@policy.command("roles")
@click.pass_context
def policy_roles(ctx: click.Context) -> None:
    """Roles and their rules."""
    _policy_call(ctx, "roles")


@policy.group("role")
def policy_role() -> None:
    """Define roles."""


@policy_role.command("set")
@click.argument("role")
@click.option("--allow", multiple=True, metavar="ACTOR/FN", help="Pattern it may call (*).")
@click.option("--deny", multiple=True, metavar="ACTOR/FN", help="Pattern it may not call.")
@click.option(
    "--stake2rate", type=float, default=1.0, show_default=True, help="Stake per call/minute."
)
@click.pass_context
def policy_role_set(
    ctx: click.Context, role: str, allow: tuple[str, ...], deny: tuple[str, ...], stake2rate: float
) -> None:
    """Define ROLE's allow and deny patterns and its stake per call/minute."""
    _policy_call(ctx, "set_role", role, list(allow), list(deny), stake2rate)


@policy.group("stake")
def policy_stake() -> None:
    """Set stakes."""


@policy_stake.command("set")
@click.argument("key")
@click.argument("amount", type=float)
@click.pass_context
def policy_stake_set(ctx: click.Context, key: str, amount: float) -> None:
    """Set KEY's stake (its rate is stake / stake2rate calls per minute)."""
    _policy_call(ctx, "set_stake", _key_address(settings_of(ctx), key), amount)


@policy.command("stakes")
@click.pass_context
def policy_stakes(ctx: click.Context) -> None:
    """Every key's stake."""
    _policy_call(ctx, "stakes")


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


@policy.command("forwarders")
@click.pass_context
def policy_forwarders(ctx: click.Context) -> None:
    """The keys trusted to call on behalf of others."""
    _policy_call(ctx, "forwarders")


@policy.group("host")
def policy_host() -> None:
    """Keys that may let replicas serve on this bus (admins may too)."""


@policy_host.command("add")
@click.argument("key")
@click.pass_context
def policy_host_add(ctx: click.Context, key: str) -> None:
    """Let KEY (another home's key: `actor key show` there) host actors on this bus."""
    _policy_call(ctx, "add_host", _key_address(settings_of(ctx), key))


@policy_host.command("rm")
@click.argument("key")
@click.pass_context
def policy_host_rm(ctx: click.Context, key: str) -> None:
    """Stop KEY from hosting actors (its running replicas serve on until they reconnect)."""
    _policy_call(ctx, "rm_host", _key_address(settings_of(ctx), key))


@policy_host.command("ls")
@click.pass_context
def policy_host_ls(ctx: click.Context) -> None:
    """The listed hosts."""
    _policy_call(ctx, "hosts")


@policy.group("name")
def policy_name() -> None:
    """Which keys may serve each actor name (the first to serve a name claims it)."""


@policy_name.command("grant")
@click.argument("name")
@click.argument("key")
@click.pass_context
def policy_name_grant(ctx: click.Context, name: str, key: str) -> None:
    """Let KEY serve actor NAME too (a new key for it, or a second one while moving)."""
    _policy_call(ctx, "grant_name", name, _key_address(settings_of(ctx), key))


@policy_name.command("revoke")
@click.argument("name")
@click.argument("key", required=False)
@click.pass_context
def policy_name_revoke(ctx: click.Context, name: str, key: str | None) -> None:
    """Stop KEY (without one: every key) from serving actor NAME."""
    address = _key_address(settings_of(ctx), key) if key else None
    _policy_call(ctx, "revoke_name", name, address)


@policy_name.command("ls")
@click.pass_context
def policy_name_ls(ctx: click.Context) -> None:
    """Every bound name and its keys."""
    _policy_call(ctx, "names")


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
@click.option("--limit", default=100, show_default=True, type=click.IntRange(0, 100_000))
@click.pass_context
def policy_log(ctx: click.Context, limit: int) -> None:
    """The last policy changes: who, what, when."""
    _policy_call(ctx, "log", limit)

"""The ``actor`` command: parse, call a library coroutine, print.

Errors print one line (status, message, error id) and exit with the code in
:data:`EXIT_CODES`, so scripts can tell a 403 from a 503.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
import msgspec
from rich.console import Console
from rich.table import Table

from .bus import ActorError, BadRequest, Keystore, NotFound, Unavailable
from .bus.subjects import check_fn, check_name
from .runtime import Client, Host, Settings, serve
from .runtime.actor import actor_name
from .runtime.loading import load_actor_class
from .runtime.supervisor import ReplicaReady, nats_server_for, ready_line, supervise

T = TypeVar("T")

EXIT_CODES = {
    400: 3,
    401: 4,
    403: 5,
    404: 6,
    408: 7,
    413: 8,
    429: 9,
    500: 10,
    502: 11,
    503: 12,
    504: 13,
}
"""Exit code per status; 1 for any other error, 2 for usage errors (click's)."""

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _run(ctx: click.Context, main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main`` under anyio; an :class:`ActorError` becomes one line and an exit code."""
    try:
        return anyio.run(main)
    except ActorError as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False, markup=True)
        ctx.exit(EXIT_CODES.get(exc.status, 1))
    raise AssertionError("unreachable")


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@click.group()
@click.option(
    "--nats",
    "nats_url",
    envvar=None,
    help="NATS URL (default: $ACTOR_NATS_URL, $NATS_URL, else nats://127.0.0.1:4222).",
)
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    help="State directory (default: $ACTOR_HOME or ~/.actor).",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.version_option(package_name="actorbus")
@click.pass_context
def main(ctx: click.Context, nats_url: str | None, home: Path | None, log_level: str) -> None:
    """actorbus: serve Python classes as signed actors on NATS."""
    _setup_logging(log_level)
    try:
        ctx.obj = Settings.from_env(nats_url=nats_url, home=home)
    except BadRequest as exc:
        raise click.UsageError(exc.message) from None


# -- up / serve ----------------------------------------------------------------------------


@main.command()
@click.argument("target")
@click.option("--name", help="Actor name (default: the class's `name`, else its lowercased name).")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1, 256))
@click.pass_context
def up(ctx: click.Context, target: str, name: str | None, replicas: int) -> None:
    """Launch TARGET (path.py:Class or module:Class) and keep it running, in the foreground.

    Starts an embedded nats-server when no NATS URL is set and nothing answers on
    127.0.0.1:4222. Ctrl-C drains every replica, then stops the embedded server.
    """
    settings = _settings(ctx)

    async def run() -> None:
        cls = load_actor_class(target)  # fail here, not in N children
        actor = check_name(actor_name(cls, name))
        async with nats_server_for(settings) as server:
            url = server.url if server else settings.url
            if server:
                err.print(
                    f"started embedded nats-server at [bold]{url}[/bold] (pid {server.pid}, "
                    f"store {server.store}); it stops with this command"
                )
            else:
                err.print(f"using NATS at [bold]{url}[/bold]")
            level = logging.getLevelName(logging.getLogger().level)

            def command(target: str, name: str) -> list[str]:
                return [
                    sys.executable,
                    "-m",
                    "actorbus.cli",
                    "--log-level",
                    level,
                    "serve",
                    target,
                    "--name",
                    name,
                ]

            def on_ready(name: str) -> Callable[[int, ReplicaReady], None]:
                def report(index: int, ready: ReplicaReady) -> None:
                    err.print(f"{name}[{index}] ready: pid {ready.pid}, address {ready.address}")

                return report

            here = msgspec.structs.replace(settings, nats_url=url)
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_on_signal, scope)
                    if actor != settings.policy and not await _policy_running(here):
                        admin = Keystore(settings.home).load(settings.key, create=True)
                        err.print(
                            f"starting the policy actor {settings.policy!r}; if it is "
                            f"new, its first admin is key {settings.key!r} ({admin.address})"
                        )
                        await tg.start(
                            partial(
                                supervise,
                                command(POLICY_TARGET, settings.policy),
                                name=settings.policy,
                                replicas=1,
                                settings=settings,
                                nats_url=url,
                                on_ready=on_ready(settings.policy),
                                on_event=err.print,
                            )
                        )
                    await supervise(
                        command(target, actor),
                        name=actor,
                        replicas=replicas,
                        settings=settings,
                        nats_url=url,
                        on_ready=on_ready(actor),
                        on_event=err.print,
                    )
            err.print("stopped")

    _run(ctx, run)


POLICY_TARGET = "actorbus.actors.policy:Policy"


async def _policy_running(settings: Settings) -> bool:
    async with Client(settings=settings) as client:
        return bool(await client.entries(settings.policy))


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            err.print(f"got {signal.Signals(signum).name}: draining")
            scope.cancel()
            return


@main.command("serve")
@click.argument("target")
@click.option("--name", help="Actor name (default: from the class).")
@click.pass_context
def serve_command(ctx: click.Context, target: str, name: str | None) -> None:
    """Serve one replica of TARGET in the foreground (what `actor up` runs per replica).

    Prints one ready line on stdout once it takes calls; SIGTERM or Ctrl-C drains it. A
    replica that cannot go on (every sync handler thread stuck) drains and exits with
    the code of a 503, for its supervisor to restart it.
    """
    settings = _settings(ctx)
    hosts: list[Host] = []

    async def run() -> None:
        cls = load_actor_class(target)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_signal, scope)
                async with serve(cls(), name=name, settings=settings) as host:
                    hosts.append(host)
                    ready = ReplicaReady(host.name, host.address, host.instance, os.getpid())
                    print(ready_line(ready), flush=True)
                    os.dup2(2, 1)  # anything the actor prints goes to the log, not the pipe
                    await host.failed.wait()
                scope.cancel()
        if host.failure:
            raise Unavailable(host.failure)

    try:
        _run(ctx, run)
    except click.exceptions.Exit as exc:
        _leave_stuck_threads(hosts, exc.exit_code)
        raise
    _leave_stuck_threads(hosts, 0)


def _leave_stuck_threads(hosts: list[Host], code: int) -> None:
    """Exit now if handler threads are still stuck: Python waits for every thread at exit,
    and a stuck one would hold the process forever (the replica has drained already)."""
    stuck = sum(h.pipeline.threads.stuck for h in hosts)
    if stuck:
        err.print(f"leaving {stuck} stuck handler threads behind")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# -- call ----------------------------------------------------------------------------------


def _value(text: str) -> Any:
    """A CLI argument: JSON if it parses (1, true, [1,2], {"a":1}, "quoted"), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@main.command()
@click.argument("target", metavar="NAME/FN")
@click.argument("args", nargs=-1)
@click.option("-k", "kwargs", multiple=True, metavar="KEY=VALUE", help="A keyword argument.")
@click.option(
    "--key",
    "key_name",
    help="Keystore key to sign with (default: $ACTOR_KEY or 'default', created on first use).",
)
@click.option("--timeout", type=click.FloatRange(0.001, 86400), help="Seconds to wait.")
@click.pass_context
def call(
    ctx: click.Context,
    target: str,
    args: tuple[str, ...],
    kwargs: tuple[str, ...],
    key_name: str | None,
    timeout: float | None,
) -> None:
    """Call NAME/FN with ARGS (each JSON, else a string) and print the result as JSON."""
    settings = _settings(ctx)
    if key_name:
        settings = msgspec.structs.replace(settings, key=key_name)
    name, sep, fn = target.rpartition("/")
    if not sep:
        raise click.BadParameter("expected NAME/FN, e.g. echo/forward", param_hint="NAME/FN")
    keywords: dict[str, Any] = {}
    for item in kwargs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="-k")
        keywords[key] = _value(value)
    try:
        check_name(name)
        check_fn(fn)
    except BadRequest as exc:
        raise click.BadParameter(exc.message, param_hint="NAME/FN") from None

    async def run() -> Any:
        async with Client(settings=settings) as client:
            return await client.request(
                name, fn, [_value(a) for a in args], keywords, timeout=timeout
            )

    result = _run(ctx, run)
    click.echo(json.dumps(result, indent=2, ensure_ascii=False))


# -- ls / info -----------------------------------------------------------------------------


@main.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List the actors in the registry with their replicas."""
    settings = _settings(ctx)

    async def run() -> Any:
        async with Client(settings=settings) as client:
            return await client.entries()

    entries = _run(ctx, run)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(entries)).decode())
        return
    table = Table("name", "replicas", "address", "functions", "nodes")
    by_name: dict[str, list[Any]] = {}
    for entry in entries:
        by_name.setdefault(entry.name, []).append(entry)
    for actor, replicas in by_name.items():
        table.add_row(
            actor,
            str(len(replicas)),
            replicas[0].address,
            ", ".join(replicas[0].fns),
            ", ".join(sorted({r.node for r in replicas})),
        )
    if by_name:
        out.print(table)
    else:
        err.print("no actors are running")


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def info(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show NAME's address (its key), functions and replicas."""
    settings = _settings(ctx)

    async def run() -> Any:
        async with Client(settings=settings) as client:
            entries = await client.entries(name)
            if not entries:
                raise NotFound(f"no actor named {name!r} is running")
            return entries

    entries = _run(ctx, run)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(entries)).decode())
        return
    first = entries[0]
    out.print(f"[bold]{name}[/bold]  address {first.address}")
    out.print(f"functions: {', '.join(first.fns)}")
    table = Table("instance", "node", "pid", "version", "up", "heartbeat")
    now = time.time()
    for e in entries:
        table.add_row(
            e.instance,
            e.node,
            str(e.pid),
            e.version,
            f"{now - e.started:.0f}s",
            f"{now - e.heartbeat:.1f}s ago",
        )
    out.print(table)


# -- policy --------------------------------------------------------------------------------


@main.group()
def policy() -> None:
    """Admins, roles, stakes and quotas (every change is signed by your key, an admin's)."""


def _key_address(settings: Settings, key: str) -> str:
    """KEY as an address: a keystore key's name, or an address as it is."""
    store = Keystore(settings.home)
    return store.load(key).address if key in store.names() else key


def _policy_call(ctx: click.Context, fn: str, *args: Any) -> None:
    settings = _settings(ctx)

    async def run() -> Any:
        async with Client(settings=settings) as client:
            return await client.request(settings.policy, fn, list(args))

    click.echo(json.dumps(_run(ctx, run), indent=2))


@policy.command("add-user")
@click.argument("key")
@click.option("--role", default="user", show_default=True)
@click.pass_context
def policy_add_user(ctx: click.Context, key: str, role: str) -> None:
    """Give KEY (an address or a keystore name) a role."""
    _policy_call(ctx, "add_user", _key_address(_settings(ctx), key), role)


@policy.command("rm-user")
@click.argument("key")
@click.pass_context
def policy_rm_user(ctx: click.Context, key: str) -> None:
    """Take KEY's role away (it becomes public)."""
    _policy_call(ctx, "rm_user", _key_address(_settings(ctx), key))


@policy.command("add-admin")
@click.argument("key")
@click.pass_context
def policy_add_admin(ctx: click.Context, key: str) -> None:
    """Make KEY an admin."""
    _policy_call(ctx, "add_admin", _key_address(_settings(ctx), key))


@policy.command("rm-admin")
@click.argument("key")
@click.pass_context
def policy_rm_admin(ctx: click.Context, key: str) -> None:
    """Remove admin KEY (never the last one)."""
    _policy_call(ctx, "rm_admin", _key_address(_settings(ctx), key))


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
    _policy_call(ctx, "set_stake", _key_address(_settings(ctx), key), amount)


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


@policy.command("decide")
@click.argument("key")
@click.argument("target", metavar="ACTOR/FN")
@click.pass_context
def policy_decide(ctx: click.Context, key: str, target: str) -> None:
    """Whether KEY may call ACTOR/FN, and why."""
    actor, sep, fn = target.rpartition("/")
    if not sep:
        raise click.BadParameter("expected ACTOR/FN", param_hint="ACTOR/FN")
    _policy_call(ctx, "decide", _key_address(_settings(ctx), key), actor, fn)


@policy.command("log")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(0, 100_000))
@click.pass_context
def policy_log(ctx: click.Context, limit: int) -> None:
    """The last policy changes: who, what, when."""
    _policy_call(ctx, "log", limit)


# -- keys ----------------------------------------------------------------------------------


@main.group()
def key() -> None:
    """Manage signing keys (files under $ACTOR_HOME/keys, mode 0600)."""


@key.command("new")
@click.argument("name")
@click.pass_context
def key_new(ctx: click.Context, name: str) -> None:
    """Create key NAME and print its address."""
    store = Keystore(_settings(ctx).home)
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
    store = Keystore(_settings(ctx).home.expanduser())
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
        keypair = Keystore(_settings(ctx).home).load(name)
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


if __name__ == "__main__":
    main()

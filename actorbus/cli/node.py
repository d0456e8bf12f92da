"""Commands that run this node's supervisor: `actor up` (start or join it), `actor down`
and the hidden `actor supervise` (the detached supervisor)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import click
import msgspec
import psutil
from rich.markup import escape

from ..actors.node import run_node
from ..bus import ActorError, BadRequest, Unavailable
from ..bus.settings import Settings, node_name
from ..bus.subjects import NODE_PREFIX, check_name
from ..client import Client, RegistryEntry
from ..client.control import Control
from ..client.logs import NodeKeys, read_logs
from ..client.specs import ActorSpec, replica_count
from ..host.actor import actor_name
from ..host.loading import load_actor_class
from ..node.manifest import Manifest, load_manifest
from ..node.saved import SAVED_FILE, SavedNode, load_saved
from ..node.supervisor import Node, NodeInfo, leaf_config_of, running_node
from ._common import checked_name, err, run_coroutine, settings_of, stop_on_signal
from ._console import NodeConsole, gateway_urls, status_table, where_nats

__all__ = ["GATEWAY_TARGET", "down", "gateway", "gateway_spec", "supervise", "up"]

GATEWAY_TARGET = "actorbus.actors.gateway:Gateway"

_READY_TIMEOUT = 120.0


def _absolute(target: str, base: Path) -> str:
    """A file target made absolute (against ``base``), so any process can load it."""
    module, sep, cls = target.rpartition(":")
    if sep and (module.endswith(".py") or "/" in module or "\\" in module):
        return f"{(base / module).resolve()}:{cls}"
    return target


def _specs(
    target: str | None,
    manifest: Path | None,
    name: str | None,
    replicas: str | None,
    home: Path,
) -> tuple[list[ActorSpec], Manifest | None, SavedNode | None]:
    """What to run, every target loaded once here so a bad one starts nothing; and the
    manifest, or the saved state of this home's node (:mod:`~actorbus.node.saved`), if it
    came from one."""
    if target and manifest:
        raise click.UsageError("give a TARGET or -f FILE, not both")
    loaded = None
    if target:
        try:
            count = replica_count(replicas or 1)
        except BadRequest as exc:
            raise click.BadParameter(exc.message, param_hint="--replicas") from None
        drafts = [(ActorSpec(_absolute(target, Path.cwd()), name or "", count), "")]
    else:
        if name or replicas:
            raise click.UsageError("--name and --replicas go with a TARGET")
        path = manifest or Path("actors.toml")
        saved = None if manifest or path.exists() else load_saved(home)
        if saved is not None and saved.actors:
            where = f"{home / SAVED_FILE}: "
            return _checked([(spec, where) for spec in saved.actors]), None, saved
        if not path.exists():
            raise click.UsageError(
                f"no TARGET and no {path} here: try `actor up examples/echo.py:Echo`"
            )
        base = path.resolve().parent
        loaded = load_manifest(path)
        drafts = [
            (
                msgspec.structs.replace(e.spec, target=_absolute(e.spec.target, base)),
                f"{path}:{e.line}: ",
            )
            for e in loaded.entries
        ]
    return _checked(drafts), loaded, None


def _checked(drafts: list[tuple[ActorSpec, str]]) -> list[ActorSpec]:
    """``drafts`` (each with where it was written) named and loaded: raises
    :class:`BadRequest` for the first target that does not load or name that is wrong."""
    specs: list[ActorSpec] = []
    for draft, where in drafts:
        try:
            replica_count(draft.replicas)
            cls = load_actor_class(draft.target)
        except BadRequest as exc:
            raise BadRequest(where + exc.message) from None
        actor = check_name(actor_name(cls, draft.name or None))
        if actor.startswith(NODE_PREFIX):
            raise BadRequest(f"{actor!r}: names starting with {NODE_PREFIX!r} are the nodes'")
        if any(s.name == actor for s in specs):
            raise BadRequest(f"actor {actor!r} is listed twice")
        specs.append(msgspec.structs.replace(draft, name=actor))
    return specs


@click.command()
@click.argument("target", required=False)
@click.option("-f", "--file", "manifest", type=click.Path(path_type=Path), help="A manifest.")
@click.option(
    "--name",
    callback=checked_name,
    help="Actor name (default: the class's `name`, else its lowercased name).",
)
@click.option("--replicas", metavar="N|auto", help='Replicas (default 1; "auto": one per core).')
@click.option("-d", "--detach", is_flag=True, help="Run in the background and return.")
@click.option(
    "--gateway/--no-gateway",
    default=True,
    show_default=True,
    help="Start an HTTP gateway with a new node ($ACTOR_GATEWAY_HOST:$ACTOR_GATEWAY_PORT).",
)
@click.option("--gateway-port", type=click.IntRange(0, 65535), help="Its port (default 8080).")
@click.option(
    "--join",
    metavar="URL",
    help="nats-leaf://HOST:PORT of a remote NATS: this node's NATS is a leaf node of it.",
)
@click.option(
    "--join-credentials",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Its credentials: a .creds file, or one line USER:PASSWORD or a token (0600).",
)
@click.pass_context
def up(
    ctx: click.Context,
    target: str | None,
    manifest: Path | None,
    name: str | None,
    replicas: str | None,
    detach: bool,
    gateway: bool,
    gateway_port: int | None,
    join: str | None,
    join_credentials: Path | None,
) -> None:
    """Run TARGET (path.py:Class or module:Class), or the actors of ./actors.toml (-f FILE),
    on this node, restarting replicas that crash.

    Starts this home's supervisor (with an embedded nats-server when no NATS is set and
    nothing answers on 127.0.0.1:4222, and the policy actor when none runs), or adds to
    the one already running. A new node also runs an HTTP gateway (on 127.0.0.1:8080
    unless told otherwise). In the foreground it shows the replicas and their output
    until Ctrl-C, which stops what it started; with -d it returns once every actor
    answers.

    With no TARGET and no ./actors.toml, it brings back what this home's node ran last
    (after `actor down`, a reboot or a crash: $ACTOR_HOME/actors.json).

    With --join (or `join` in the manifest's [node] table), the node's NATS is a leaf
    node of a remote NATS: a machine behind NAT serves its actors into the shared bus.
    """
    settings = settings_of(ctx)
    try:
        specs, loaded, saved = _specs(target, manifest, name, replicas, settings.home)
    except ActorError as exc:  # a bad manifest or target: a usage error, nothing started
        raise click.UsageError(exc.message) from None
    if saved is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(saved.saved))
        what = ", ".join(f"{s.name} x{s.replicas}" for s in saved.actors)
        err.print(f"bringing back what node {saved.node} ran at {when}: {escape(what)}")
    if join or (loaded and loaded.join):
        credentials = join_credentials.resolve() if join_credentials else None
        settings = msgspec.structs.replace(
            settings,
            join=join or (loaded.join if loaded else ""),
            join_credentials=str(credentials or (loaded.credentials if loaded else "")),
            join_domain=(loaded.domain if loaded else "") or settings.join_domain,
        )
    running = running_node(settings.home)
    if running is not None and saved is not None:
        err.print(f"node {running.node} runs already: `actor ps` shows what")
        return
    if running is not None:
        if join:
            raise click.UsageError(f"node {running.node} runs already: --join is for a new node")
        _add_to_node(ctx, settings, running.url, running.node, specs, detach)
        return
    if settings.join:
        try:
            leaf_config_of(settings)  # a bad URL or credentials file: start nothing
        except ActorError as exc:
            raise click.UsageError(exc.message) from None
    if gateway and saved is None:  # a saved node had its gateway, or chose to have none
        specs.append(gateway_spec(settings, settings.gateway_host, gateway_port, 1))
    _start_node(ctx, settings, specs, detach)


def _start_node(
    ctx: click.Context, settings: Settings, specs: list[ActorSpec], detach: bool
) -> None:
    if detach:
        _detach(ctx, settings, specs)
    else:
        _foreground(ctx, settings, specs)


def gateway_spec(settings: Settings, host: str, port: int | None, replicas: int) -> ActorSpec:
    """The gateway, as a node runs it (stopped first, so no web request finds its actors
    gone)."""
    port = settings.gateway_port if port is None else port
    options = {"gateway_host": host, "gateway_port": str(port)}
    return ActorSpec(GATEWAY_TARGET, "gateway", replicas, options=options, tier="front")


@click.command()
@click.option("--host", help="Address to listen on (default: $ACTOR_GATEWAY_HOST, 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(0, 65535), help="Port (default 8080; replicas share it)."
)
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("-d", "--detach", is_flag=True, help="Run in the background and return.")
@click.pass_context
def gateway(
    ctx: click.Context, host: str | None, port: int | None, replicas: int, detach: bool
) -> None:
    """Run an HTTP gateway on this node (adding it to the running supervisor, or starting
    one): POST /<actor>/<fn>, /docs, a dashboard at /."""
    settings = settings_of(ctx)
    spec = gateway_spec(settings, host or settings.gateway_host, port, replicas)
    running = running_node(settings.home)
    if running is not None:
        _add_to_node(ctx, settings, running.url, running.node, [spec], detach)
    else:
        _start_node(ctx, settings, [spec], detach)


def _foreground(ctx: click.Context, settings: Settings, specs: list[ActorSpec]) -> None:
    _run_supervisor(ctx, settings, specs, NodeConsole(err, json=settings.log_format == "json"))


def _run_supervisor(
    ctx: click.Context, settings: Settings, specs: list[ActorSpec], console: NodeConsole
) -> None:
    """This home's supervisor, in this process, until a signal or `actor down`."""

    async def main() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signal, stop, console.say)

            def ready(info: NodeInfo, node: Node) -> None:
                tg.start_soon(console.live, info, node, stop)

            await run_node(
                settings,
                specs,
                stop=stop,
                on_output=console.output,
                on_event=console.event,
                on_ready=ready,
            )
            tg.cancel_scope.cancel()
        console.say("stopped")

    run_coroutine(ctx, main)


def _detach(ctx: click.Context, settings: Settings, specs: list[ActorSpec]) -> None:
    """Start the supervisor as a background process; return once every actor answers."""
    node = node_name(settings)  # made here first, so the daemon reads the same name
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = settings.home / "node.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    level = logging.getLevelName(logging.getLogger().level)
    command = [sys.executable, "-m", "actorbus.cli", "--log-level", level, "supervise"]
    env = dict(os.environ, ACTOR_HOME=str(settings.home), ACTOR_NATS_PORT=str(settings.nats_port))
    if settings.nats_url:
        env["ACTOR_NATS_URL"] = settings.nats_url
    if settings.join:
        env.update(
            ACTOR_JOIN=settings.join,
            ACTOR_JOIN_CREDENTIALS=settings.join_credentials,
            ACTOR_JOIN_DOMAIN=settings.join_domain,
        )
    with open(log_path, "ab") as log:
        daemon = subprocess.Popen(
            command,
            # On its stdin, not its command line: every local user can read a command
            # line, and a spec's env may hold secrets.
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    assert daemon.stdin is not None
    daemon.stdin.write(msgspec.json.encode(specs))
    daemon.stdin.close()

    async def main() -> list[RegistryEntry]:
        with anyio.fail_after(_READY_TIMEOUT):
            while True:
                if daemon.poll() is not None:
                    tail = log_path.read_bytes()[offset:].decode(errors="replace")
                    raise Unavailable(
                        f"the supervisor exited (code {daemon.returncode}):\n"
                        + "\n".join(tail.strip().splitlines()[-15:])
                    )
                info = running_node(settings.home)
                if info is not None and info.ready and info.pid == daemon.pid:
                    here = msgspec.structs.replace(settings, nats_url=info.url)
                    entries = await _entries_when_up(here, node, specs, info.started)
                    if entries is not None:
                        return entries
                await anyio.sleep(0.1)

    entries = run_coroutine(ctx, main)
    err.print(
        f"node {node} is up (pid {daemon.pid}; log {log_path}); "
        "`actor ps` to see it, `actor down` to stop it"
    )
    if (info := running_node(settings.home)) is not None:
        err.print(f"NATS: {escape(where_nats(info, settings))}")
        if info.metrics:
            err.print(f"metrics: {info.metrics}")
        if info.nats_monitor:
            err.print(f"NATS monitoring: {info.nats_monitor} (/varz, /connz, /jsz)")
    started = {e.name for e in entries}
    for url in gateway_urls(s for s in specs if s.name in started):
        err.print(f"gateway: {url}")
    tail = log_path.read_bytes()[offset:].decode(errors="replace").splitlines()
    for spec in specs:
        if spec.name not in started:
            err.print(f"[red]{spec.name} did not start[/red]: {_why(tail, spec.name, log_path)}")
    err.print(status_table(entries))


def _why(lines: list[str], name: str, log_path: Path) -> str:
    """The last error line replica ``name`` logged, else where to look."""
    prefix = f"{name}["
    errors = [
        line.split("| ", 1)[-1].strip()
        for line in lines
        if line.startswith(prefix) and "error" in line.lower()
    ]
    return escape(errors[-1]) if errors else f"{log_path} says why"


async def _entries_when_up(
    settings: Settings, node: str, specs: list[ActorSpec], since: float
) -> list[RegistryEntry] | None:
    """The registry entries of ``specs`` on ``node`` (a node that says it is ready, and
    started at ``since``: not its previous run's) once every replica is there, but a
    gateway's: one that could not start was reported in the log, and the node runs
    without it."""
    try:
        async with Client(settings=settings) as client:
            entries = [e for e in await client.entries() if e.node == node and e.started >= since]
    except Unavailable:
        return None  # its NATS is not up yet
    for spec in specs:
        if spec.tier != "front" and sum(e.name == spec.name for e in entries) < spec.replicas:
            return None
    return [e for e in entries if any(e.name == s.name for s in specs)]


def _add_to_node(
    ctx: click.Context,
    settings: Settings,
    url: str,
    node: str,
    specs: list[ActorSpec],
    detach: bool,
) -> None:
    """Add ``specs`` to this home's running supervisor; in the foreground, show their
    output until Ctrl-C, then stop them."""
    here = msgspec.structs.replace(settings, nats_url=url)
    console = NodeConsole(err)

    async def main() -> None:
        async with Client(settings=here) as client:
            control = Control(client)
            for spec in specs:
                for status in await control.up(node, spec):
                    console.say(f"{status.actor}[{status.replica}] ready: pid {status.pid}")
            if detach:
                return
            console.say(f"joined node {node}; Ctrl-C stops {', '.join(s.name for s in specs)}")
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_on_signal, stop, console.say)
                for spec in specs:
                    tg.start_soon(_follow, client, spec.name, node, console)
                await stop.wait()
                tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                for spec in specs:
                    await control.kill(spec.name)
        console.say("stopped")

    run_coroutine(ctx, main)


async def _follow(client: Client, actor: str, node: str, console: NodeConsole) -> None:
    keys = NodeKeys(client)
    async for line in read_logs(client.nc, actor, keys, node=node, since=time.time(), follow=True):
        if line is not None and not line.forged:
            console.output(line.actor, line.replica, line.pid, line.line)


@click.command(hidden=True)
@click.pass_context
def supervise(ctx: click.Context) -> None:
    """The detached supervisor `actor up -d` starts (its output goes to node.log)."""
    specs = msgspec.json.decode(sys.stdin.buffer.read(), type=list[ActorSpec])
    settings = settings_of(ctx)
    console = NodeConsole(err, live=False, json=settings.log_format == "json")
    _run_supervisor(ctx, settings, specs, console)


@click.command()
@click.option("--node", help="Another node, by name (default: this home's).")
@click.pass_context
def down(ctx: click.Context, node: str | None) -> None:
    """Stop a node: its actors drain, then its supervisor (and the embedded nats-server it
    started) exits. Without --node, this home's."""
    settings = settings_of(ctx)
    local = running_node(settings.home) if node is None else None
    if node is None and local is None:
        err.print(f"no supervisor runs for {settings.home}")
        return
    target = node or (local.node if local else "")
    here = msgspec.structs.replace(settings, nats_url=local.url) if local else settings

    async def main() -> list[int]:
        async with Client(settings=here) as client:
            control = Control(client)
            pids = [s.pid for s in await control.ps(target) if s.pid]
            await control.down(target)
            return pids

    pids = run_coroutine(ctx, main)
    if local is None:
        err.print(f"node {target} is stopping")
        return
    deadline = time.monotonic() + settings.drain_timeout + 30
    while psutil.pid_exists(local.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in [local.pid, *pids] if psutil.pid_exists(p)]
    if left:
        raise click.ClickException(f"node {target}: processes still running: {left}")
    err.print(f"node {target} stopped")

"""What the node commands print: replicas' output with a prefix, the supervisor's events,
and tables of replicas (live, on a terminal, while `actor up` runs in the foreground)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import anyio
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..bus.settings import Settings
from ..client.specs import ActorSpec, ReplicaStatus
from ..node.supervisor import Node, NodeInfo
from .logformat import json_line

__all__ = ["NodeConsole", "ps_table", "status_table"]

_COLORS = ["cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan"]
_REFRESH = 2.0


def _color(actor: str) -> str:
    return _COLORS[sum(map(ord, actor)) % len(_COLORS)]


def _ago(started: float | None) -> str:
    if started is None:
        return "-"
    seconds = int(time.time() - started)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _mib(rss: int | None) -> str:
    return "-" if rss is None else f"{rss / 2**20:.0f} MiB"


def ps_table(statuses: Iterable[ReplicaStatus]) -> Table:
    """One row per replica slot."""
    table = Table("node", "actor", "replica", "pid", "state", "up", "restarts", "calls", "memory")
    for s in statuses:
        state = Text(s.state, style="red" if s.state == "failed" else "")
        if s.state != "running" and s.last_exit:
            state.append(f" ({s.last_exit})", style="dim")
        table.add_row(
            s.node,
            Text(s.actor, style=_color(s.actor)),
            str(s.replica),
            str(s.pid or "-"),
            state,
            _ago(s.started),
            str(s.restarts),
            "-" if s.calls is None else str(s.calls),
            _mib(s.rss),
        )
    return table


def status_table(entries: Iterable[Any]) -> Table:
    """Registry entries: what answers, where."""
    table = Table("actor", "replica", "node", "pid", "address")
    for e in entries:
        table.add_row(
            Text(e.name, style=_color(e.name)), str(e.replica), e.node, str(e.pid), e.address
        )
    return table


class NodeConsole:
    """Prints a node's output; on a terminal (and ``live``) keeps a table of its replicas
    under the scrolling lines."""

    def __init__(self, console: Console, *, live: bool = True, json: bool = False) -> None:
        self.console = console
        self._json = json
        """One JSON object a line (``ACTOR_LOG_FORMAT=json``): replicas' JSON lines as
        they are, anything else they print wrapped, the node's own words too."""
        self._live_table = live and console.is_terminal and not json
        self._live: Live | None = None

    def _print(self, text: Text) -> None:
        (self._live.console if self._live else self.console).print(text, soft_wrap=True)

    def _json_line(self, line: str) -> None:
        self.console.file.write(line + "\n")
        self.console.file.flush()

    def output(self, actor: str, replica: int, pid: int, line: str) -> None:
        if self._json:
            if not (line.startswith("{") and line.endswith("}")):
                line = json_line(time.time(), "INFO", "output", line, actor=actor, replica=replica)
            self._json_line(line)
            return
        prefix = Text(f"{actor}[{replica}] | ", style=_color(actor))
        self._print(prefix + Text(line))

    def event(self, message: str, failure: bool) -> None:
        if self._json:
            level = "ERROR" if failure else "INFO"
            self._json_line(json_line(time.time(), level, "actorbus.node", message))
            return
        self._print(Text(message, style="red" if failure else "bold"))

    def say(self, message: str) -> None:
        if self._json:
            self._json_line(json_line(time.time(), "INFO", "actorbus.node", message))
            return
        self._print(Text(message))

    async def live(self, info: NodeInfo, node: Node, stop: anyio.Event) -> None:
        """Say what runs; on a terminal, keep the table current until ``stop``."""
        self.say(f"node {info.node} (pid {info.pid}) on {where_nats(info, node.settings)}")
        for status in node.status():
            self.say(f"{status.actor}[{status.replica}] ready: pid {status.pid}")
        for url in gateway_urls(node.specs()):
            self.say(f"gateway: {url} (the dashboard; POST {url}/<actor>/<fn>)")
        if info.metrics:
            self.say(f"metrics: {info.metrics} (Prometheus)")
        if info.nats_monitor:
            self.say(f"NATS monitoring: {info.nats_monitor} (/varz, /connz, /jsz)")
        if not self._live_table:
            return
        with Live(ps_table(node.status()), console=self.console, auto_refresh=False) as live:
            self._live = live
            try:
                while not stop.is_set():
                    live.update(ps_table(await node.ps()), refresh=True)
                    with anyio.move_on_after(_REFRESH):
                        await stop.wait()
            finally:
                self._live = None


def where_nats(info: NodeInfo, settings: Settings) -> str:
    """Which NATS the node ``info`` uses, and whose it is."""
    if info.embedded:
        return f"an embedded nats-server (pid {info.embedded}) at {info.url}"
    if settings.nats_url or settings.join:
        return f"the NATS at {info.url}"
    return (
        f"the NATS that already answered at {info.url} (not this node's: "
        "`actor up --nats-port PORT` starts one of its own)"
    )


def gateway_urls(specs: Iterable[ActorSpec]) -> list[str]:
    """The URLs of the gateways among ``specs`` (on a fixed port)."""
    urls = []
    for spec in specs:
        port = spec.options.get("gateway_port", "0")
        if spec.name == "gateway" and port != "0":
            host = spec.options.get("gateway_host", "127.0.0.1")
            urls.append(f"http://{f'[{host}]' if ':' in host else host}:{port}")
    return urls

"""`actor startup`: a systemd user unit that runs this home's node at boot, as pm2's
`startup` does. The unit runs `actor up` in the foreground with no target, so the node
brings back what it ran (:mod:`actorbus.node.saved`); systemd restarts it if it dies."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ._common import settings_of

__all__ = ["startup"]


def _quoted(text: str) -> str:
    """``text`` as one systemd unit-file word (quoted; ``%`` doubled)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


@click.command()
@click.pass_context
def startup(ctx: click.Context) -> None:
    """Print a systemd user unit that starts this home's node at boot and restarts it if it
    dies; it brings back the actors the node last ran."""
    settings = settings_of(ctx)
    env = {"ACTOR_HOME": str(settings.home)}
    if settings.nats_url:
        env["ACTOR_NATS_URL"] = settings.nats_url
    if settings.nats_port != 4222:
        env["ACTOR_NATS_PORT"] = str(settings.nats_port)
    for name in ("ACTOR_KEY", "ACTOR_GATEWAY_HOST", "ACTOR_GATEWAY_PORT", "ACTOR_NODE"):
        if value := os.environ.get(name):
            env[name] = value
    lines = [
        f"# The actorbus node of {settings.home}. Save this as",
        "#   ~/.config/systemd/user/actorbus.service",
        "# then: systemctl --user daemon-reload && systemctl --user enable --now actorbus",
        "# and, to start it at boot before you log in: loginctl enable-linger $USER",
        "[Unit]",
        f"Description=actorbus node ({str(settings.home).replace('%', '%%')})",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={str(Path.cwd()).replace('%', '%%')}",
        *(f"Environment={_quoted(f'{k}={v}')}" for k, v in env.items()),
        f"ExecStart={_quoted(sys.executable)} -m actorbus.cli up",
        # SIGTERM to the supervisor alone: it stops the actors in order (the policy last).
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={int(settings.drain_timeout) + 30}",
        "Restart=on-failure",
        "RestartSec=2",
        "",
        "[Install]",
        "WantedBy=default.target",
    ]
    click.echo("\n".join(lines))

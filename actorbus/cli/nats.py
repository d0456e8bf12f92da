"""`actor nats config`: the authorization and limits a NATS of your own needs to run
actorbus as the embedded default does (PROTOCOL.md §5)."""

from __future__ import annotations

import json

import click

from ..bus import Keystore
from ..node.natsconf import server_config
from ._common import settings_of


@click.group()
def nats() -> None:
    """The NATS server's side of actorbus."""


@nats.command("config")
@click.pass_context
def nats_config(ctx: click.Context) -> None:
    """Print the `authorization` block and the connection limits for a nats-server config
    (JSON, which nats-server reads; save it and `include` it): this home's key as the
    operator, this home's policy actor key as the auth callout's user, everyone else asked
    about by the policy actor; how many connections, subscriptions per connection, bytes
    per message and unread bytes per connection the server takes. It names public keys
    only."""
    settings = settings_of(ctx)
    keys = Keystore(settings.home)
    operator = keys.owner(settings.key)
    policy = keys.load(settings.policy, create=True)
    click.echo(json.dumps(server_config(settings, operator, policy), indent=2))

"""The NATS server config actorbus runs with: users, permissions and the auth callout.

Two users are in the config itself: the **operator**, the key of the home that runs the
server (its supervisor and its `actor` commands: every right, stream deletion included),
and the **policy actor** (its own key: the auth callout and the policy's buckets,
:func:`~actorbus.bus.rights.policy_service`). Every other connection is asked about
(``auth_callout``): the policy actor answers with the connection's permissions
(:mod:`actorbus.actors.policy.callout`), signing as an account key derived from its seed
(:func:`~actorbus.bus.rights.callout_issuer`). The file is JSON (which nats-server
reads as its config format), mode 0600: it names keys, never a secret.

Beside them, the bounds every connection has (:func:`server_limits`): how many may be
open, how many subscriptions one may hold, its largest message and how far behind its
reading the server buffers for it. They are the server's, one for all connections: the
``subs`` and ``payload`` limits of an auth callout's user JWT would make them per
identity, but nats-server (2.15) drops them for a server without operator JWTs (it
registers the callout's user without its claims' limits).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ..bus import Keypair
from ..bus.natsjwt import Permissions
from ..bus.nkeys import ACCOUNT, encode_nkey
from ..bus.rights import callout_issuer, policy_service
from ..bus.settings import Settings

__all__ = ["server_config", "server_limits"]


MAX_PAYLOAD: Final = 1024 * 1024
"""The largest message, headers included (NATS's default, pinned: PROTOCOL.md §9)."""
MAX_PENDING: Final = 32 * 1024 * 1024
"""Bytes the server buffers for a connection that does not read (half NATS's default)
before it closes it as a slow consumer."""


def server_limits(settings: Settings) -> dict[str, Any]:
    """The bounds every connection has (top-level options of a nats-server config)."""
    return {
        "max_connections": settings.nats_max_connections,
        "max_subscriptions": settings.nats_max_subscriptions,
        "max_payload": MAX_PAYLOAD,
        "max_pending": MAX_PENDING,
    }


def _permissions(rights: Permissions) -> dict[str, Any]:
    """NATS config's spelling of ``rights``."""
    return {
        "publish": msgspec.to_builtins(rights.pub),
        "subscribe": msgspec.to_builtins(rights.sub),
    }


def _auth_config(settings: Settings, operator: Keypair, policy: Keypair) -> dict[str, Any]:
    """The ``authorization`` block: the operator and the policy actor as users, the auth
    callout for everyone else."""
    users = [encode_nkey(operator.public_key), encode_nkey(policy.public_key)]
    return {
        "authorization": {
            "users": [
                {"nkey": users[0]},
                {
                    "nkey": users[1],
                    "permissions": _permissions(policy_service(policy.public_key, settings)),
                },
            ],
            "auth_callout": {
                "issuer": encode_nkey(callout_issuer(policy).public_key, ACCOUNT),
                "auth_users": users,
            },
        }
    }


def server_config(settings: Settings, operator: Keypair, policy: Keypair) -> dict[str, Any]:
    """:func:`server_limits` and :func:`_auth_config`: what a server needs to run
    actorbus as the embedded default does (``actor nats config`` prints it)."""
    return server_limits(settings) | _auth_config(settings, operator, policy)

"""The NATS server config actorbus runs with: users, permissions and the auth callout.

Two users are in the config itself: the **operator**, the key of the home that runs the
server (its supervisor and its `actor` commands: every right, stream deletion included),
and the **policy actor** (its own key: the auth callout and the policy's buckets,
:func:`~actorbus.bus.rights.policy_service`). Every other connection is asked about
(``auth_callout``): the policy actor answers with the connection's permissions
(:mod:`actorbus.actors.policy.callout`), signing as an account key derived from its seed
(:func:`~actorbus.bus.rights.callout_issuer`). The file is JSON (which nats-server
reads as its config format), mode 0600: it names keys, never a secret.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..bus import Keypair
from ..bus.natsjwt import Permissions
from ..bus.nkeys import ACCOUNT, encode_nkey
from ..bus.rights import callout_issuer, policy_service
from ..bus.settings import Settings

__all__ = ["auth_config"]


def _permissions(rights: Permissions) -> dict[str, Any]:
    """NATS config's spelling of ``rights``."""
    return {
        "publish": msgspec.to_builtins(rights.pub),
        "subscribe": msgspec.to_builtins(rights.sub),
    }


def auth_config(settings: Settings, operator: Keypair, policy: Keypair) -> dict[str, Any]:
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

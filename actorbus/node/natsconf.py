"""The NATS server config actorbus runs with: accounts, users, permissions and the auth
callout.

Two accounts. **STATE** holds JetStream and no user: nobody connects to it. **BUS** holds
every connection, and imports from STATE the JetStream API, acknowledgements, flow
control, KV writes and the stored subjects (``actorbus.>``) as services, and as streams
the inboxes JetStream delivers to and what a followed bucket republishes (``actorbus.changes.>``:
:func:`_accounts`). JetStream answers every request
and acknowledgement on the reply subject it names; in the account of its API, an answer
on an API subject (``$JS.API.STREAM.DELETE.<s>``) was taken as the account's own request,
and any connection allowed to pull, acknowledge or get could delete any stream. From
STATE, an answer goes back to the requester's reply subject in BUS, where it is a message,
not a request. Which subjects a connection may reach stays its permissions' call.

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

import logging
from pathlib import Path
from typing import Any, Final

import msgspec

from ..bus import Keypair
from ..bus.jetstream import deleted_advisory
from ..bus.natsjwt import BUS_ACCOUNT, Permissions
from ..bus.nkeys import ACCOUNT, encode_nkey
from ..bus.rights import callout_issuer, policy_service
from ..bus.settings import Settings
from ..bus.subjects import (
    AUDIT_PREFIX,
    CHANGES_PREFIX,
    CLAIM_PREFIX,
    JOBS_PREFIX,
    LOG_PREFIX,
    NONCE_PREFIX,
)

__all__ = ["STATE_ACCOUNT", "adopt_global_store", "server_config", "server_limits"]

log = logging.getLogger("actorbus.nats")


MAX_PAYLOAD: Final = 1024 * 1024
"""The largest message, headers included (NATS's default, pinned: PROTOCOL.md §9)."""
MAX_PENDING: Final = 32 * 1024 * 1024
"""Bytes the server buffers for a connection that does not read (half NATS's default)
before it closes it as a slow consumer."""


STATE_ACCOUNT: Final = "STATE"
"""JetStream's account: no connection is in it (:data:`~actorbus.bus.natsjwt.BUS_ACCOUNT`
reaches it through imports)."""

_API: Final = (
    "INFO",
    "STREAM.>",
    *(
        f"CONSUMER.{verb}.>"
        for verb in ("CREATE", "DURABLE", "DELETE", "INFO", "LIST", "NAMES", "LEADER")
    ),
)
"""The JetStream API that BUS reaches with one answer per request (not ``ACCOUNT.>``,
``META.>`` or ``SERVER.>``: the server's operators', not the bus's). ``INFO`` is among
them, so nats-server does not give BUS its own answers of "JetStream not enabled"."""
_STREAMED: Final = ("CONSUMER.MSG.NEXT.>", "DIRECT.>")
"""The API answered by several messages: a pull's, a batched get's. Exports never overlap
(a request that two imports match is made twice)."""
_STREAMED_FOR: Final = "30s"
"""How long a streamed answer's route back lives after its last message: a pull that
waits longer without idle heartbeats misses what comes after (actorbus pulls for 0.5 s)."""
_STORED: Final = tuple(
    f"{prefix}.>" for prefix in (AUDIT_PREFIX, CLAIM_PREFIX, JOBS_PREFIX, LOG_PREFIX, NONCE_PREFIX)
)
"""The subjects JetStream keeps (the audit, the claims, the jobs, the logs, the nonces): a
message published on one is stored in STATE and heard by BUS's subscribers."""


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


def _accounts(users: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``accounts`` block: STATE with JetStream and what it exports to BUS, BUS with
    ``users`` and what it imports."""
    services = [
        *(
            (f"{api}.{verb}", verb in _STREAMED)
            for api in ("$JS.API", "$JS.*.API")  # the second: by domain (leaf nodes)
            for verb in (*_API, *_STREAMED)
        ),
        ("$JS.ACK.>", False),
        ("$JS.FC.>", False),
        ("$KV.>", False),
        *((subject, False) for subject in _STORED),
    ]
    streams = ["_INBOX.>", deleted_advisory("*"), f"{CHANGES_PREFIX}.>"]
    only_bus = {"accounts": [BUS_ACCOUNT]}
    exports: list[dict[str, Any]] = [
        {"service": subject, **only_bus}
        | ({"response_type": "stream", "response_threshold": _STREAMED_FOR} if streamed else {})
        for subject, streamed in services
    ]
    exports += [{"stream": subject, **only_bus} for subject in streams]
    imports = [
        {kind: {"account": STATE_ACCOUNT, "subject": subject}}
        for kind, subjects in (("service", [s for s, _ in services]), ("stream", streams))
        for subject in subjects
    ]
    return {
        "accounts": {
            STATE_ACCOUNT: {"jetstream": "enabled", "exports": exports},
            BUS_ACCOUNT: {"users": users, "imports": imports},
        }
    }


def _auth_config(settings: Settings, operator: Keypair, policy: Keypair) -> dict[str, Any]:
    """The accounts, with the operator and the policy actor as BUS's users, and the
    ``authorization`` block: the auth callout for everyone else."""
    users = [encode_nkey(operator.public_key), encode_nkey(policy.public_key)]
    return _accounts(
        [
            {"nkey": users[0]},
            {
                "nkey": users[1],
                "permissions": _permissions(policy_service(policy.public_key, settings)),
            },
        ]
    ) | {
        "authorization": {
            "auth_callout": {
                "issuer": encode_nkey(callout_issuer(policy).public_key, ACCOUNT),
                "auth_users": users,
                "account": BUS_ACCOUNT,
            },
        }
    }


def server_config(settings: Settings, operator: Keypair, policy: Keypair) -> dict[str, Any]:
    """:func:`server_limits` and :func:`_auth_config`: what a server needs to run
    actorbus as the embedded default does (``actor nats config`` prints it)."""
    return server_limits(settings) | _auth_config(settings, operator, policy)


def adopt_global_store(jetstream: Path) -> None:
    """Give STATE the streams a server made before the accounts, in nats-server's global
    account (``$G``): the policy, the audit, the jobs. ``jetstream`` is the server's store
    directory (``-sd``); a server without clustering keeps each account's streams in its
    own folder there, so they move with it. Before the server starts."""
    accounts = jetstream / "jetstream"
    old, new = accounts / "$G", accounts / STATE_ACCOUNT
    if not old.is_dir():
        return
    if new.exists():
        log.warning("%s is not used: this server's JetStream is in %s", old, new)
        return
    old.rename(new)
    log.warning("moved this server's JetStream from the global account to %s: %s", new.name, new)

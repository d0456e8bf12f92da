"""What each identity may do on the bus, as NATS permissions (PROTOCOL.md §5).

The NATS server enforces these before any actorbus process reads a message: the policy
actor's auth callout gives each connection one of them, and the embedded server's config
gives the policy actor its own. The rule for all of them: what a process publishes and
subscribes to is what its job needs, by name, and nothing that lets it read or write
another's state. JetStream is reached through the ``$JS.API`` subjects of the streams a
process uses (:func:`stream_reader`, :func:`stream_owner`); deleting or purging a stream
is no one's but the operator's (who has no permissions block at all).

Inboxes: a connection that authenticated with its key receives on ``_INBOX.u.<its user
nkey>.>`` only (:func:`inbox_of`); one without credentials shares ``_INBOX.>`` with the
others like it, but never sees ``_INBOX.u.>`` (the keyed connections') or
``_INBOX.relay.>`` (what relays receive for callers off the bus).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Final

from .jetstream import deleted_advisory
from .keys import Keypair
from .natsjwt import Permission, Permissions
from .sessions import SESSION_FN
from .settings import Settings
from .subjects import (
    AUDIT_PREFIX,
    AUDIT_STREAM,
    CALL_PREFIX,
    CLAIM_PREFIX,
    LOG_PREFIX,
    LOG_STREAM,
    MAX_NAME_TOKENS,
    NODE_PREFIX,
    NONCE_PREFIX,
    PRIVATE_INBOXES,
    REGISTRY_BUCKET,
    RELAY_PREFIX,
    JobsNames,
    changes_of,
    claim_subject,
    commune_bucket,
    inbox_of,
    nonce_stream,
    nonce_subject,
    queue_group,
    serve_subject,
    service_name,
)
from .wire import PROTOCOL_VERSION

__all__ = [
    "ACTOR",
    "AUTH_SUBJECT",
    "GATEWAY",
    "JOBS",
    "NODE",
    "ROLES",
    "admin",
    "call_subjects",
    "caller",
    "callout_issuer",
    "leaf",
    "policy_service",
    "replica",
    "stranger",
]

ACTOR: Final = "actor"
JOBS: Final = "jobs"
GATEWAY: Final = "gateway"
NODE: Final = "node"
ROLES: Final = (ACTOR, JOBS, GATEWAY, NODE)
"""What a host may let a replica be: any actor, the jobs actor (its streams), a gateway
(it receives relayed replies), a node's supervisor (``node.<node>``: it ships its node's
logs and records its control actions)."""

AUTH_SUBJECT: Final = "$SYS.REQ.USER.AUTH"
"""Where the server asks the auth callout about each new connection."""

_INBOXES: Final = "_INBOX.>"
_SERVER_INBOXES: Final = "$SYS._INBOX.>"
"""Where the server waits for the auth callout's answers."""
_GLOB = frozenset("*?[")


def callout_issuer(policy_key: Keypair) -> Keypair:
    """The account key the policy actor signs its callout answers with, derived from its
    seed (which all its replicas share); the server's config names its public half."""
    return Keypair(
        hmac.digest(policy_key.seed, f"{PROTOCOL_VERSION}\nnats issuer".encode(), "sha256")
    )


def _kv(bucket: str) -> str:
    return f"KV_{bucket}"


def stream_getter(stream: str) -> list[str]:
    """What reading ``stream`` by gets takes: its info and the API's gets, no consumer. A
    consumer's deliver subject is its maker's choice, and one aimed where something
    listens never goes inactive: issue 30's third attacker filled the registry's 1,000
    consumers so, as a plain host, long after it left, and the policy bucket's as a
    replica. No host or replica makes a consumer of a stream every node shares: each
    reads by gets (:meth:`~.jetstream.Bucket.latest`) and follows the policy by what its
    stream republishes (:func:`follower`)."""
    api = "$JS.API"
    return [f"{api}.STREAM.INFO.{stream}", f"{api}.STREAM.MSG.GET.{stream}"]


def stream_reader(stream: str) -> list[str]:
    """What reading ``stream`` takes: :func:`stream_getter`'s, and ordered push consumers
    of it (made, kept flowing, deleted). No direct gets (:func:`direct_reader`), no pulls
    and no acknowledgements (:func:`puller`): an ordered consumer acknowledges nothing."""
    api = "$JS.API"
    return [
        *stream_getter(stream),
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"{api}.CONSUMER.INFO.{stream}.*",
        f"{api}.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def follower(bucket: str) -> str:
    """What following KV ``bucket``'s changes takes: hearing what its stream republishes
    (:meth:`~.jetstream.Bucket.changes`), which only JetStream publishes there."""
    return f"{changes_of(bucket)}.>"


def direct_reader(stream: str) -> list[str]:
    """Direct gets of ``stream``, batched ones among them. The stream answers one on the
    reply subject the request names; on a server with JetStream in the callers' account,
    an answer onto ``$JS.API.STREAM.DELETE.<s>`` deleted stream ``s``; with JetStream in
    an account of its own (:mod:`actorbus.node.natsconf`) an answer is a message, as an
    API get's is."""
    return [f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>"]


def puller(stream: str) -> list[str]:
    """Pulling from ``stream``'s consumers and acknowledging what they deliver: the policy
    actor's, and a jobs actor's on its own work queue. JetStream answers a pull that finds
    nothing, and an acknowledgement that names a reply subject, on that subject; on a
    server with JetStream in the callers' account, a pull or a ``-NAK`` answered onto
    ``$JS.API.STREAM.DELETE.<s>`` deleted stream ``s``, as a direct get's answer did
    (:mod:`actorbus.node.natsconf` puts JetStream in an account of its own)."""
    return [f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*", f"$JS.ACK.{stream}.>"]


def stream_owner(stream: str) -> list[str]:
    """:func:`stream_reader`, and making the stream or changing its limits."""
    return [
        *stream_reader(stream),
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
    ]


def _service(name: str) -> list[str]:
    """The ``$SRV`` subjects a replica of ``name`` answers on."""
    service = service_name(name)
    return ["$SRV.*", f"$SRV.*.{service}", f"$SRV.*.{service}.*"]


def _any_actor(fn: str) -> list[str]:
    """``fn`` of every actor, whatever the depth of its name."""
    return [".".join([CALL_PREFIX, *["*"] * depth, fn]) for depth in range(1, MAX_NAME_TOKENS + 1)]


def call_subjects(patterns: Iterable[str], fns: Iterable[str] = ()) -> list[str]:
    """The call subjects that cover the policy's ``actor/fn`` patterns, and the functions
    ``fns`` of every actor (the discovery whitelist) and its session handshake (a session
    grants nothing by itself: each call in it is decided as its key's, and every role may
    call some function of every actor). A pattern the server cannot state exactly is
    widened (``llm-*/gen`` is every function of every actor): the server may let through
    more than the policy allows, never less; the replica decides exactly."""
    subjects: set[str] = set(_any_actor(SESSION_FN))
    for fn in fns:
        subjects.update(_any_actor(fn))
    for pattern in patterns:
        actor, slash, fn = pattern.rpartition("/")
        if not slash:
            continue
        fn_token = "*" if _GLOB & set(fn) else fn
        tokens = actor.split(".")
        if not _GLOB & set(actor):
            subjects.add(".".join([CALL_PREFIX, *tokens, fn_token]))
            continue
        literal = []
        for token in tokens:
            if _GLOB & set(token):
                break
            literal.append(token)
        if not literal and fn_token != "*":
            subjects.update(_any_actor(fn_token))
        else:
            subjects.add(".".join([CALL_PREFIX, *literal, ">"]))
    return sorted(subjects)


def stranger(calls: list[str]) -> Permissions:
    """A connection without credentials: it calls (``calls``: its role's call subjects),
    asks ``$SRV``, and hears its own replies among the other anonymous connections'.

    It may subscribe to ``_INBOX.>`` (NATS cannot tell that wildcard from its own inboxes:
    an allowed ``_INBOX.*`` lets ``_INBOX.>`` through), so what it must not see is denied
    at delivery: keyed connections' and relays' inboxes, and every stored subject a
    JetStream push delivery keeps (``$KV.>``, ``actorbus.>``: a delivery to a keyed
    connection's inbox carries its stored subject, which a deny on its inbox misses)."""
    return Permissions(
        pub=Permission(allow=[*calls, "$SRV.>", _INBOXES]),
        sub=Permission(
            allow=[_INBOXES],
            deny=[
                f"{PRIVATE_INBOXES}.>",
                f"{RELAY_PREFIX}>",
                "$KV.>",
                "$JS.>",
                "$SYS.>",
                "actorbus.>",
                f"{CALL_PREFIX}.>",
            ],
        ),
    )


def caller(public_key: bytes, calls: list[str], *, host: bool = False) -> Permissions:
    """A connection authenticated by its key, calling actors as that key: its role's call
    subjects, ``$SRV`` (to know whom replies come from: each replica's signed registry
    record) and its own inbox. No JetStream: its API answers on whatever reply subject a
    request names, so a connection that may ask it anything may have it write anywhere.
    A listed ``host``'s key also reads the registry, as every replica it runs does, and
    may call nodes' control actors (each takes its own home's key and admins only: a
    second home's `actor down` could not reach its own node)."""
    nodes = f"{CALL_PREFIX}.{NODE_PREFIX}*.*"
    readers = [*stream_getter(_kv(REGISTRY_BUCKET)), nodes] if host else []
    return Permissions(
        pub=Permission(allow=[*calls, "$SRV.>", _INBOXES, *readers]),
        sub=Permission(allow=[f"{inbox_of(public_key)}.>"]),
    )


def admin(public_key: bytes) -> Permissions:
    """A policy admin's connection: every call, and reading the logs and the audit trail
    (``actor logs``, ``actor policy log``); no stream's deletion."""
    readers = [stream_reader(s) for s in (_kv(REGISTRY_BUCKET), LOG_STREAM, AUDIT_STREAM)]
    return Permissions(
        pub=Permission(
            allow=[f"{CALL_PREFIX}.>", "$SRV.>", _INBOXES, *(s for r in readers for s in r)]
        ),
        sub=Permission(allow=[f"{inbox_of(public_key)}.>"]),
    )


def replica(name: str, public_key: bytes, role: str, settings: Settings) -> Permissions:
    """A replica of the actor ``name`` (as a host let it be: ``role``): it serves ``name``
    alone, writes only its own registry entries, nonce announcements and claims, reads the
    registry, the policy and its name's nonce window, and calls whom it likes (as its own key,
    which the callee's policy judges). The jobs actor also works on its streams and a
    gateway on its commune bucket (the policy actor makes them: a ticket grants no stream's
    creation, whose config would be the host's); a gateway also receives its relayed replies;
    a supervisor also ships its node's logs and audit records."""
    registry = _kv(REGISTRY_BUCKET)
    pub = [
        f"{CALL_PREFIX}.>",
        "$SRV.>",
        _INBOXES,
        nonce_subject(name),
        claim_subject(name),  # its relayed calls' claims (host.replay)
        f"$KV.{REGISTRY_BUCKET}.{name}.*",
        *stream_getter(registry),
        *stream_getter(_kv(settings.policy_bucket)),
        *stream_getter(nonce_stream(name)),
        *direct_reader(nonce_stream(name)),  # its replay window, in batches (host.replay)
    ]
    sub = [
        f"{serve_subject(name)} {queue_group(name)}",
        nonce_subject(name),
        *_service(name),
        f"{inbox_of(public_key)}.>",
        deleted_advisory(_kv(settings.policy_bucket)),
        follower(settings.policy_bucket),
    ]
    if role == JOBS:
        jobs = JobsNames(name)
        pub += [f"{jobs.prefix}.>", f"$KV.{jobs.bucket}.>"]
        for stream in (_kv(jobs.bucket), jobs.record_stream):
            pub += stream_reader(stream)  # made by the policy actor, as it makes them
        work = jobs.work_stream
        pub += stream_getter(work)
        # Its jobs' queues: the policy actor makes each (a consumer's config, how many
        # pulls it holds waiting among it, would be the host's: issue 30).
        pub += [f"$JS.API.CONSUMER.INFO.{work}.*", f"$JS.API.CONSUMER.DELETE.{work}.*"]
        pub.append(f"$JS.API.STREAM.PURGE.{work}")  # a cancelled job's queue
        pub += puller(work)
    elif role == GATEWAY:
        sub.append(f"{RELAY_PREFIX}{name}.>")  # its own callers' replies: none of another's
        seen = commune_bucket(name)
        pub += [f"$KV.{seen}.>", *stream_reader(_kv(seen))]
    elif role == NODE:
        pub += [f"{LOG_PREFIX}.{name.removeprefix(NODE_PREFIX)}.>", f"{AUDIT_PREFIX}.{name}"]
        pub.append(f"$JS.API.STREAM.INFO.{AUDIT_STREAM}")  # that it is there, as it should be
    return Permissions(pub=Permission(allow=pub), sub=Permission(allow=sub))


_NOT_READING: Final = (
    "STREAM.CREATE.>",
    "STREAM.UPDATE.>",
    "STREAM.DELETE.>",
    "STREAM.PURGE.>",
    "STREAM.MSG.DELETE.>",
    "STREAM.SNAPSHOT.>",
    "STREAM.RESTORE.>",
    "STREAM.LEADER.>",
    "STREAM.PEER.>",
    "STREAM.NAMES",
    "STREAM.LIST",
    "STREAM.TEMPLATE.>",
    "CONSUMER.DURABLE.CREATE.>",
    "CONSUMER.MSG.NEXT.>",
    "CONSUMER.LEADER.>",
    "CONSUMER.PAUSE.>",
    "CONSUMER.UNPIN.>",
    "CONSUMER.NAMES.>",
    "CONSUMER.LIST.>",
    "ACCOUNT.>",
    "SERVER.>",
    "META.>",
)
"""The JetStream API a leaf may not ask of its hub's domain: all but a reader's gets, infos
and ordered consumers (:func:`stream_reader`)."""


def leaf(node: str, settings: Settings) -> Permissions:
    """The leaf connection of a node that joined (``actor up --join``): what its machine's
    processes do, crossing into the hub. It carries every name its replicas serve, so it
    may receive any actor's calls (a reply from a key the name is not bound to is refused
    by its caller, :mod:`actorbus.client.discovery`); it writes registry entries and nonce
    announcements (signed by their actors), and its own node's logs and audit records; it
    reads the shared state its replicas read, through the hub's JetStream domain, as they
    do: by gets, and the policy's changes as its stream republishes them.

    A leaf connection's permissions work both ways round (nats-server checks the interest
    it sends the leaf against ``subscribe`` and the interest the leaf sends against
    ``publish``), so both are the same list. The hub's JetStream domain
    (``$JS.<domain>.API.>``) is one interest, which the leaf must be let publish to for
    its JetStream requests to cross at all, so what it may ask there is bounded by a deny
    list instead: every API verb but the readers' (issue 30: a joined node deleted the
    hub's streams through it), and no consumer of the streams every node reads by gets
    (one aimed where something listens outlives its maker: :func:`stream_getter`)."""
    shared = [_kv(REGISTRY_BUCKET), _kv(settings.policy_bucket)]
    api = [
        *(subject for stream in shared for subject in stream_getter(stream)),
        *(subject for stream in (LOG_STREAM, AUDIT_STREAM) for subject in stream_reader(stream)),
    ]
    domain = f"$JS.{settings.join_domain}.API."
    subjects = [
        f"{CALL_PREFIX}.>",
        "$SRV.>",
        _INBOXES,
        f"{NONCE_PREFIX}.>",
        f"{CLAIM_PREFIX}.>",
        f"$KV.{REGISTRY_BUCKET}.>",
        f"{LOG_PREFIX}.{node}.>",
        f"{AUDIT_PREFIX}.{NODE_PREFIX}{node}",
        follower(settings.policy_bucket),
        *api,
        *(s.replace("$JS.API.", domain) for s in api if s.startswith("$JS.API.")),
    ]
    unfollowed = [f"CONSUMER.CREATE.{stream}{tail}" for stream in shared for tail in ("", ".>")]
    return Permissions(
        pub=Permission(
            allow=[*subjects, f"{domain}>"],
            deny=[domain + verb for verb in (*_NOT_READING, *unfollowed)],
        ),
        sub=Permission(allow=subjects),
    )


def policy_service(public_key: bytes, settings: Settings) -> Permissions:
    """The policy actor's replicas (a static user of the server's config): the auth
    callout, its buckets, the streams every node shares (it makes them: registry, audit,
    logs), and those of each name (its nonces; a jobs actor's or a gateway's own: it makes
    them as the name's replicas connect, and deletes them when an admin frees the name)."""
    name = settings.policy
    bucket = settings.policy_bucket
    shared = [_kv(REGISTRY_BUCKET), AUDIT_STREAM, LOG_STREAM]
    owned = [*shared, _kv(bucket), _kv(f"{bucket}_lent"), nonce_stream(name)]
    return Permissions(
        pub=Permission(
            allow=[
                f"{CALL_PREFIX}.>",
                "$SRV.>",
                _INBOXES,
                _SERVER_INBOXES,
                nonce_subject(name),
                claim_subject(name),
                f"{AUDIT_PREFIX}.{name}",
                f"$KV.{REGISTRY_BUCKET}.{name}.*",
                f"$KV.{bucket}.>",
                f"$KV.{bucket}_lent.>",
                "$JS.API.INFO",
                "$JS.API.STREAM.INFO.*",
                "$JS.API.STREAM.CREATE.*",
                "$JS.API.STREAM.UPDATE.*",
                "$JS.API.STREAM.DELETE.*",  # a freed name's (NATS has no prefix)
                "$JS.API.CONSUMER.INFO.*.*",  # a jobs actor's queues (it makes them)
                "$JS.API.CONSUMER.DURABLE.CREATE.*.*",
                *(subject for stream in owned for subject in stream_owner(stream)),
                *(subject for stream in owned for subject in direct_reader(stream)),
                *(subject for stream in owned for subject in puller(stream)),
            ]
        ),
        sub=Permission(
            allow=[
                f"{serve_subject(name)} {queue_group(name)}",
                f"{AUTH_SUBJECT} {queue_group(name)}",
                nonce_subject(name),
                *_service(name),
                f"{inbox_of(public_key)}.>",
                deleted_advisory(_kv(bucket)),
            ]
        ),
    )

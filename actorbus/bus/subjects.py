"""Subject, queue-group, stream and bucket names: the only place they are spelled out."""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Final

from .errors import BadRequest, excerpt
from .nkeys import encode_nkey

__all__ = [
    "AUDIT_PREFIX",
    "AUDIT_STREAM",
    "CHANGES_PREFIX",
    "CLAIM_PREFIX",
    "JOBS_PREFIX",
    "LOG_PREFIX",
    "LOG_STREAM",
    "MAX_NAME_TOKENS",
    "NODE_PREFIX",
    "PRIVATE_INBOXES",
    "REGISTRY_BUCKET",
    "RELAY_PREFIX",
    "SHARED_NONCE_STREAM",
    "JobsNames",
    "call_subject",
    "changes_of",
    "check_fn",
    "check_name",
    "claim_subject",
    "commune_bucket",
    "inbox_of",
    "is_reply_subject",
    "nonce_stream",
    "nonce_subject",
    "queue_group",
    "serve_subject",
]

CALL_PREFIX: Final = "actor"
SHARED_NONCE_STREAM: Final = "ACTOR_NONCES"
"""The one nonce stream every name shared before each had its own (:func:`nonce_stream`):
one replica flooding its own subjects evicted every other name's window (issue 30). Its
subjects overlap theirs, so the policy actor deletes it."""
NONCE_PREFIX: Final = "actorbus.nonce"
CLAIM_PREFIX: Final = "actorbus.claim"
REGISTRY_BUCKET: Final = "actor_registry"
LOG_STREAM: Final = "ACTOR_LOGS"
LOG_PREFIX: Final = "actorbus.logs"
JOBS_PREFIX: Final = "actorbus.jobs"
AUDIT_STREAM: Final = "ACTOR_POLICY_AUDIT"
AUDIT_PREFIX: Final = "actorbus.audit"
CHANGES_PREFIX: Final = "actorbus.changes"


def changes_of(bucket: str) -> str:
    """Where the stream of KV bucket ``bucket`` republishes each entry it stores, as
    ``<this>.<key>``: its readers follow it without a consumer
    (:meth:`.jetstream.Bucket.changes`)."""
    return f"{CHANGES_PREFIX}.{bucket}"


def commune_bucket(gateway: str) -> str:
    """The KV bucket where the replicas of gateway ``gateway`` note the commune signatures
    they have taken (each is taken once, on any replica, until it could no longer be
    fresh)."""
    return "actor_commune_" + gateway.replace(".", "_")


PRIVATE_INBOXES: Final = "_INBOX.u"
"""A connection that authenticated with its key receives below ``_INBOX.u.<user nkey>``."""
RELAY_PREFIX: Final = "_INBOX.relay."
"""The reply subject of a request signed by a caller off the bus and relayed to it (the
HTTP gateway's end-to-end mode) is this prefix, the relay's name and the request's
nonce: each gateway receives its own callers' replies only."""
DEFAULT_GATEWAY: Final = "gateway"
"""The name of the gateway ``actor up`` starts."""
NODE_PREFIX: Final = "node."
"""``node.<node>`` is the actor of node ``<node>``'s supervisor."""
MAX_NAME_TOKENS: Final = 8
"""Dot-separated tokens an actor name has at most (so a NATS permission can say
``actor.*.info`` … ``actor.*.*.*.*.*.*.*.*.info``: every actor's ``info``)."""

_TOKEN = r"[A-Za-z0-9_-]+"
_NAME = re.compile(rf"{_TOKEN}(\.{_TOKEN})*")
_FN = re.compile(_TOKEN)
_MAX_NAME = 200
# Printable ASCII without space or the wildcards * and >; tokens checked below.
_REPLY = re.compile(r"[!-)+-=?-~]{1,256}")


def check_name(name: str) -> str:
    """``name`` if it is one to eight dot-separated ``[A-Za-z0-9_-]`` tokens, else 400."""
    if len(name) > _MAX_NAME or not _NAME.fullmatch(name) or name.count(".") >= MAX_NAME_TOKENS:
        raise BadRequest(
            f"invalid actor name {excerpt(name)}: 1 to {MAX_NAME_TOKENS} dot-separated "
            f"tokens of [A-Za-z0-9_-], at most {_MAX_NAME} characters"
        )
    return name


def check_fn(fn: str) -> str:
    """``fn`` if it is one ``[A-Za-z0-9_-]`` token, else 400."""
    if len(fn) > _MAX_NAME or not _FN.fullmatch(fn):
        raise BadRequest(f"invalid function name {fn!r}: one token of [A-Za-z0-9_-]")
    return fn


def inbox_of(public_key: bytes) -> str:
    """The inbox prefix of a connection authenticated with ``public_key``: only it may
    subscribe below it."""
    return f"{PRIVATE_INBOXES}.{encode_nkey(public_key)}"


@functools.lru_cache(maxsize=4096)
def call_subject(name: str, fn: str) -> str:
    """``actor.<name>.<fn>``: where a request for ``name``'s function ``fn`` is sent
    (remembered: a client makes one per call, and a few names take most)."""
    return f"{CALL_PREFIX}.{check_name(name)}.{check_fn(fn)}"


def serve_subject(name: str) -> str:
    """The wildcard an actor subscribes to, so unknown functions get a 404, not silence."""
    return f"{CALL_PREFIX}.{check_name(name)}.*"


def queue_group(name: str) -> str:
    """Replicas of one actor share this queue group, so NATS balances between them."""
    return f"{CALL_PREFIX}.{check_name(name)}"


def service_name(name: str) -> str:
    """``name``'s NATS service name (``$SRV``): one token, its dots made underscores (the
    real name is in the service's metadata, ``actor``)."""
    return check_name(name).replace(".", "_")


def service_subject(verb: str, name: str, instance: str = "") -> str:
    """``$SRV.<verb>.<service name>[.<instance>]``: where ``name``'s replicas (or one of
    them) answer ``PING``, ``INFO`` or ``STATS``."""
    return f"$SRV.{verb}.{service_name(name)}" + (f".{instance}" if instance else "")


def nonce_subject(name: str) -> str:
    """Where replicas of ``name`` announce the nonces they accepted."""
    return f"{NONCE_PREFIX}.{check_name(name)}"


def claim_subject(name: str, digest: str = "*") -> str:
    """Where a replica of ``name`` claims a relayed request's nonce (``digest``: the hex
    sha256 of ``<key>\n<nonce>``; ``*``: every claim of ``name``). A claim is one token
    longer than ``name``, so no name's claims are another's (``a``'s are 4 tokens,
    ``a.b``'s 5)."""
    return f"{CLAIM_PREFIX}.{check_name(name)}.{digest}"


def nonce_stream(name: str) -> str:
    """The stream that keeps ``name``'s nonce announcements and claims for the replay
    window: one per name, so what one name's replicas publish can evict none of another's
    (its flattened name, and a digest of the real one: ``a.b`` and ``a_b`` are two)."""
    flat = check_name(name).replace(".", "_")[:64]
    return f"ACTOR_NONCES_{flat}_{hashlib.sha256(name.encode()).hexdigest()[:12]}"


class JobsNames:
    """The subjects, streams and bucket of the jobs actor ``name``."""

    def __init__(self, name: str) -> None:
        flat = check_name(name).replace(".", "_")
        self.prefix = f"{JOBS_PREFIX}.{name}"
        self.bucket = f"actor_jobs_{flat}"
        """Job records by job id (KV)."""
        self.work_stream = f"ACTOR_JOBS_{flat.upper()}"
        """The work queue: one message per slice not yet done, on :meth:`work`."""
        self.record_stream = f"ACTOR_JOB_RESULTS_{flat.upper()}"
        """Results (:meth:`result`) and batches of slices (:meth:`batch`), kept for the
        jobs' retention."""

    def work(self, job: str) -> str:
        return f"{self.prefix}.work.{job}"

    def result(self, job: str, index: int | str) -> str:
        return f"{self.prefix}.result.{job}.{index}"

    def batch(self, job: str) -> str:
        return f"{self.prefix}.batch.{job}"


def is_reply_subject(subject: str | None, prefixes: tuple[str, ...]) -> bool:
    """Whether an actor may publish a reply on ``subject``: a literal subject of at most 256
    characters, no empty token, starting with one of ``prefixes`` (the inbox prefixes of
    the clients it serves). Anything else could make it publish onto another actor's
    subjects."""
    if not subject or not subject.startswith(prefixes):
        return False
    return _REPLY.fullmatch(subject) is not None and ".." not in subject and subject[-1] != "."

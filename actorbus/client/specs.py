"""What node supervisors and their control clients tell each other (wire types only)."""

from __future__ import annotations

import os
from typing import Any

import msgspec

from ..bus import BadRequest

__all__ = ["MAX_REPLICAS", "TIERS", "ActorSpec", "ReplicaStatus", "replica_count", "spec_record"]

MAX_REPLICAS = 256

TIERS = ("front", "jobs", "actor", "system")
"""The order in which a node stops its actors."""


class ActorSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What to run: an entry of a manifest, or `actor up TARGET`."""

    target: str
    """``path/to/file.py:Class`` or ``module:Class``."""
    name: str
    replicas: int = 1
    env: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra environment of its processes."""
    options: dict[str, str] = msgspec.field(default_factory=dict)
    """Settings of its replicas by field name (``max_in_flight`` ...), as ``ACTOR_*``."""
    tier: str = "actor"
    """When it stops: ``front`` (a gateway: stops taking requests first), ``jobs`` (the
    jobs actor: its slices call the user's actors), ``actor`` (the user's), ``system``
    (the policy actor: last, the others may need it to drain)."""


def spec_record(spec: ActorSpec) -> dict[str, Any]:
    """``spec`` as the audit trail keeps it: its ``env`` by names only (values may be
    secrets, and the trail is never purged)."""
    record: dict[str, Any] = msgspec.to_builtins(spec)
    record["env"] = sorted(spec.env)
    return record


class ReplicaStatus(msgspec.Struct):
    """One replica slot as ``actor ps`` shows it."""

    node: str
    actor: str
    replica: int
    state: str
    """``starting``, ``running``, ``restarting`` (backing off after a crash), ``failed``."""
    pid: int | None = None
    instance: str = ""
    started: float | None = None
    """Unix time the running process became ready."""
    restarts: int = 0
    calls: int | None = None
    rss: int | None = None
    """Resident memory of the process, bytes."""
    last_exit: str = ""
    tail: list[str] = msgspec.field(default_factory=list)
    """The last lines the process wrote, when it failed."""


def replica_count(value: object) -> int:
    """Replicas from 1 to 256, or ``"auto"``: one per core this process may run on.
    Raises :class:`BadRequest` otherwise."""
    if value == "auto":
        cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        return max(1, min(MAX_REPLICAS, len(cores) if cores else os.cpu_count() or 1))
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_REPLICAS:
        return value
    raise BadRequest(f'replicas must be a whole number from 1 to {MAX_REPLICAS}, or "auto"')

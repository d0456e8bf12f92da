"""``$ACTOR_HOME/actors.json``: what this home's node was asked to run, as it stands.

The supervisor writes it whenever `up`, `scale` or `kill` changes what runs (the gateway
included; the policy and jobs actors start on their own), and leaves it when it stops:
`actor up` with no target on this home brings the same actors back, after `actor down`,
a reboot or a supervisor killed -9. A write replaces the file whole, so a crash leaves
the last state or the one before it, never half of one.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import msgspec

from ..bus import BadRequest
from ..client.specs import ActorSpec

__all__ = ["SAVED_FILE", "SavedNode", "load_saved", "save"]

SAVED_FILE = "actors.json"
KEPT_TIERS = frozenset({"front", "actor"})
"""What a node brings back: the gateway and the user's actors."""


class SavedNode(msgspec.Struct):
    node: str
    saved: float
    actors: list[ActorSpec]


def save(home: Path, node: str, specs: list[ActorSpec]) -> None:
    """Record ``specs`` (those of :data:`KEPT_TIERS`) as what ``node`` runs."""
    kept = [s for s in specs if s.tier in KEPT_TIERS]
    data = msgspec.json.format(msgspec.json.encode(SavedNode(node, time.time(), kept)))
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(dir=home, prefix=".actors-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data + b"\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, home / SAVED_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_saved(home: Path) -> SavedNode | None:
    """What this home's node last ran, if it ran anything. Raises :class:`BadRequest` for
    a file that does not read as one."""
    path = home / SAVED_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=SavedNode)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        raise BadRequest(f"{path} is not readable ({exc}): move it away to start afresh") from None

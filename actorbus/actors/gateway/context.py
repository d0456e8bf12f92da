"""What the gateway's routes are handed: the parts of a gateway replica they use.

The routes (:mod:`.app`, :mod:`.jobs`) sit below the actor that serves them
(:mod:`.actor`), so they take this small object, built once when the replica starts its
HTTP server, instead of the actor itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ...bus import Keypair
from ...bus.settings import Settings
from ...client import Client
from ...host.policy import PolicyState
from .catalog import Catalog, Viewer
from .fairness import Fairness
from .identity import Identities
from .meter import Meter

__all__ = ["Context"]


@dataclass(frozen=True)
class Context:
    name: str
    """The gateway's actor name (its ``/metrics`` is the function ``<name>/metrics`` to
    the policy)."""
    settings: Settings
    client: Client
    """The gateway's own client: its key signs anonymous calls, in sessions."""
    identities: Identities
    catalog: Catalog
    fairness: Fairness
    policy: Callable[[], PolicyState]
    """The policy as the replica holds it now."""
    enforced: Callable[[], bool]
    """Whether a policy is enforced (one was loaded)."""
    learn: Callable[[str], Awaitable[None]]
    """Have the policy hold a key's own records (its role...) before deciding for it."""
    max_body: int
    """Largest request body (the smaller of the setting and what NATS carries)."""
    version: str
    meter: Meter
    """Its HTTP figures (``/metrics``)."""

    def viewer(self, key: str) -> Viewer:
        """What the caller ``key`` is shown of the actors."""
        return Viewer.of(key, self.policy(), self.enforced())

    @property
    def key(self) -> Keypair:
        """The gateway's own key."""
        return self.identities.key

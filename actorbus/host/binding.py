"""What makes callers count a replica: the policy's binding of its name to its key.

Callers that trust a policy count a registry entry only if it shows the policy's signed
binding of the name to the entry's key (:class:`~actorbus.client.registry.Vouching`). On a
NATS with the policy's auth callout, connecting claimed the name; elsewhere (a NATS of the
user's own, the leaf-local server of a joined node) the replica asks the policy actor,
with its home's hosting ticket, as soon as a policy is loaded and again, up to once a
second, until it is bound. The policy actor's own entries need none:
they are signed by the key the callers trust.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from ..bus import ActorError, BadRequest, Forbidden
from ..client.client import Client
from .policy_view import PolicyView

__all__ = ["NameBinding", "binding_key"]

log = logging.getLogger("actorbus.host")

_FIRST_RETRY = 0.25
"""Seconds before a claim the policy could not answer is asked again (then doubled)."""
_LAST_RETRY = 1.0
"""Seconds between claims at most (one nobody answers costs the bus next to nothing)."""


def binding_key(name: str) -> str:
    """Where the policy binds ``name`` to the keys that may serve it."""
    return "name." + name


class NameBinding:
    """The binding of the name ``name`` to ``client``'s key (the replica's)."""

    def __init__(
        self, client: Client, policy: PolicyView, name: str, ticket: Callable[[], str]
    ) -> None:
        self._client = client
        self._policy = policy
        self._name = name
        self._ticket = ticket
        self._warned = False

    @property
    def needed(self) -> bool:
        return self._name != self._client.settings.policy

    @property
    def bound(self) -> bool:
        return self._client.key.address in self._policy.state.names.get(self._name, [])

    @property
    def record(self) -> str:
        """The binding's signed record as stored (``""``: none yet)."""
        return self._policy.records.kept.get(binding_key(self._name), b"").decode()

    async def claim(self) -> bool:
        """Ask the policy actor for the name unless it is bound already; whether it is
        now. Raises :class:`Forbidden` (the name is another key's, or the home is no
        host) or :class:`BadRequest` (a name no replica may claim): this replica may not
        serve it, as the auth callout would have refused its connection. That the policy
        cannot be asked now is said once (until the name is bound)."""
        if not self.needed or self.bound:
            return True
        client = self._client
        try:
            record = await client.request(
                client.settings.policy, "claim", [self._ticket()], timeout=4.0
            )
        except (Forbidden, BadRequest):
            raise
        except ActorError as exc:
            if not self._warned:
                log.warning(
                    "%s: the policy could not bind this name to %s (%s): callers that "
                    "trust the policy do not count this replica; asking again every heartbeat",
                    self._name,
                    client.key.address,
                    exc.message,
                )
                self._warned = True
            return False
        # The policy view would bring the same record a moment later.
        self._policy.records.apply(
            self._policy.state, binding_key(self._name), str(record).encode()
        )
        if self._warned:
            log.warning("%s: the policy binds this name to %s now", self._name, client.key.address)
            self._warned = False
        return self.bound

    async def keep(
        self, period: Callable[[], float], announce: Callable[[], Awaitable[None]]
    ) -> None:
        """Once a policy is loaded, claim the name until it is bound, then ``announce()``
        it (the registry entry shows it at once). Asked again after a quarter second,
        then twice as long each time up to a second (or ``period()``, if shorter): a node
        that starts the policy actor itself loads the policy before that actor answers,
        and its own name, asked once a heartbeat, was bound a heartbeat late (`actor ps`
        right after `up` found no node)."""
        if not self.needed:
            return
        await self._policy.loaded.wait()
        wait = _FIRST_RETRY
        while not self.bound:
            if await self.claim():
                await announce()
                return
            await anyio.sleep(min(wait, period()))
            wait = min(2 * wait, _LAST_RETRY)

"""A replica that dies undrained (killed -9, out of memory) leaves its registry entry
behind, and callers would count it until the entry's TTL ran out. The supervisor sees the
process die at once: it deletes the entry then, connecting as that replica (its key is in
this node's home, and this node's host key signs it a hosting ticket), since a replica's
entries may be written by its own key alone."""

from __future__ import annotations

import logging
import re
from functools import partial

import anyio

from ..bus import ActorError, Keystore, connect
from ..bus.rights import ACTOR, NODE
from ..bus.settings import Settings
from ..bus.subjects import NODE_PREFIX
from ..bus.tickets import host_ticket
from ..client.registry import Registry
from ..host.replica import host_key

__all__ = ["forget"]

log = logging.getLogger("actorbus.node")

_FORGET_WAIT = 5.0
_INSTANCE = re.compile(r"[0-9a-f]{16}")


async def forget(settings: Settings, name: str, address: str, instance: str) -> None:
    """Delete the registry entry of replica ``instance`` of ``name``, which served as
    ``address`` (as its ready line said: logged, never raised, if that cannot be done
    within a few seconds)."""
    try:
        with anyio.fail_after(_FORGET_WAIT):
            keys = Keystore(settings.home)
            if name not in keys.names() or not _INSTANCE.fullmatch(instance):
                return  # not a replica of this home's keys: not ours to speak for
            if keys.load(name).address != address:
                return  # not a replica of ours that said who it was: not ours to speak for
            # A node's control actor is served on its supervisor's connection (its home key).
            key, role = (
                (keys.owner(settings.key), NODE)
                if name.startswith(NODE_PREFIX)
                else (keys.load(name), ACTOR)
            )
            ticket = partial(host_ticket, host_key(settings), name, role, key.address)
            async with connect(settings.url, name=f"forget {name}", key=key, token=ticket) as nc:
                registry = await Registry.open(nc, settings)
                await registry.forget(name, instance)
    except (ActorError, TimeoutError) as exc:
        why = exc.message if isinstance(exc, ActorError) else "timed out"
        log.warning("%s: could not remove a dead replica's registry entry: %s", name, why)

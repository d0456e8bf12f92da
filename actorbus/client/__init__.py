"""What any caller runs, on any machine: the :class:`Client` and its proxies, what a caller
makes of a reply, discovery (the registry, or ``$SRV.INFO`` when JetStream cannot answer),
jobs and their delegations, reading a stream, the node control client, and the log and
audit readers. It decides whom a reply may come from and when a call may be sent again;
it serves nothing and starts no process."""

from .client import ActorProxy, Client
from .jobs import Job
from .registry import Registry, RegistryEntry

__all__ = ["ActorProxy", "Client", "Job", "Registry", "RegistryEntry"]

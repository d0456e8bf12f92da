"""Hosting actors: the Actor base and endpoint decorator, the request pipeline, the
registry, the client and the supervisor behind ``actor up``."""

from .actor import Actor, Call, current_call, endpoint
from .client import ActorProxy, Client
from .host import Host, serve
from .jobs import Job
from .registry import Registry, RegistryEntry
from .settings import Settings

__all__ = [
    "Actor",
    "ActorProxy",
    "Call",
    "Client",
    "Host",
    "Job",
    "Registry",
    "RegistryEntry",
    "Settings",
    "current_call",
    "endpoint",
    "serve",
]

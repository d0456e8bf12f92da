"""actorbus: an async actor runtime on NATS with ed25519-signed calls."""

from .bus import (
    ActorError,
    BadReply,
    BadRequest,
    DeadlineExceeded,
    Forbidden,
    HandlerError,
    Keypair,
    Keystore,
    NoResponders,
    NoSuchActor,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ReplyTimeout,
    Unauthorized,
    Unavailable,
)
from .bus.settings import Settings
from .client import Client
from .host import Actor, Call, endpoint, serve

__all__ = [
    "Actor",
    "ActorError",
    "BadReply",
    "BadRequest",
    "Call",
    "Client",
    "DeadlineExceeded",
    "Forbidden",
    "HandlerError",
    "Keypair",
    "Keystore",
    "NoResponders",
    "NoSuchActor",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ReplyTimeout",
    "Settings",
    "Unauthorized",
    "Unavailable",
    "endpoint",
    "serve",
]

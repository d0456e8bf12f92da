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
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ReplyTimeout,
    Unauthorized,
    Unavailable,
)
from .runtime import Actor, Call, Client, Settings, endpoint, serve

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

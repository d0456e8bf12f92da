"""The wire: keys and addresses, envelope Structs and signing bytes, subjects, the NATS
connection and the embedded nats-server. Imports no other actorbus package."""

from .connection import NATS, Msg, connect, nats_answers, request
from .errors import (
    ActorError,
    BadReply,
    BadRequest,
    DeadlineExceeded,
    Forbidden,
    HandlerError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ReplyTimeout,
    Unauthorized,
    Unavailable,
    error_for_status,
)
from .jetstream import Bucket
from .keys import Keypair, Keystore, address_to_public_key, public_key_to_address, verify
from .server import EmbeddedServer, find_nats_server
from .wire import (
    JSON,
    MSGPACK,
    CallBody,
    ReplyMeta,
    RequestMeta,
    codec_for,
    sign_reply,
    sign_request,
    verify_reply,
    verify_request,
)

__all__ = [
    "JSON",
    "MSGPACK",
    "NATS",
    "ActorError",
    "BadReply",
    "BadRequest",
    "Bucket",
    "CallBody",
    "DeadlineExceeded",
    "EmbeddedServer",
    "Forbidden",
    "HandlerError",
    "Keypair",
    "Keystore",
    "Msg",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ReplyMeta",
    "ReplyTimeout",
    "RequestMeta",
    "Unauthorized",
    "Unavailable",
    "address_to_public_key",
    "codec_for",
    "connect",
    "error_for_status",
    "find_nats_server",
    "nats_answers",
    "public_key_to_address",
    "request",
    "sign_reply",
    "sign_request",
    "verify",
    "verify_reply",
    "verify_request",
]

"""The JWTs of NATS auth callout (nats-server 2.10+): the server's authorization request,
and the signed user and response claims an auth service answers with.

A JWT here is ``base64url(header).base64url(claims).base64url(ed25519 signature)`` over
the first two parts, the header ``{"typ": "JWT", "alg": "ed25519-nkey"}`` and the
issuer's nkey in ``iss``; ``jti`` is the base32 SHA-512/256 of the claims with an empty
``jti`` (as nats-io/jwt makes it). Only what actorbus reads or writes is modelled.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from typing import Final

import msgspec

from .errors import Unauthorized
from .keys import Keypair, verify_raw
from .nkeys import ACCOUNT, SERVER, decode_nkey, encode_nkey

__all__ = [
    "BUS_ACCOUNT",
    "AuthRequest",
    "Permission",
    "Permissions",
    "authorization_response",
    "decode_request",
]

BUS_ACCOUNT: Final = "BUS"
"""The NATS account every connection is in, the auth callout's users and the users it
answers for alike; JetStream is in another, which no connection is in
(:mod:`actorbus.node.natsconf`)."""

_HEADER: Final = base64.urlsafe_b64encode(b'{"typ":"JWT","alg":"ed25519-nkey"}').rstrip(b"=")
_MAX_JWT: Final = 64 * 1024


class Permission(msgspec.Struct, omit_defaults=True):
    allow: list[str] = msgspec.field(default_factory=list)
    deny: list[str] = msgspec.field(default_factory=list)


class Permissions(msgspec.Struct, frozen=True):
    """What a connection may publish and subscribe to (NATS subject patterns; a queue
    subscription is allowed by ``"<subject> <queue>"``)."""

    pub: Permission
    sub: Permission


class _ServerId(msgspec.Struct):
    id: str = ""
    name: str = ""


class _ClientInfo(msgspec.Struct):
    host: str = ""
    id: int = 0
    nonce: str = ""
    kind: str = ""
    name: str = ""


class _ConnectOptions(msgspec.Struct):
    nkey: str = ""
    sig: str = ""
    auth_token: str = ""
    name: str = ""


class AuthRequest(msgspec.Struct):
    """What the server tells an auth service about a connection that wants in."""

    server_id: _ServerId
    user_nkey: str
    """The server's name for this connection: the response must be about it."""
    client_info: _ClientInfo = msgspec.field(default_factory=_ClientInfo)
    connect_opts: _ConnectOptions = msgspec.field(default_factory=_ConnectOptions)


class _RequestClaims(msgspec.Struct):
    iss: str
    nats: AuthRequest


class _UserNats(msgspec.Struct):
    pub: Permission
    sub: Permission
    subs: int = -1
    data: int = -1
    payload: int = -1
    type: str = "user"
    version: int = 2


class _UserClaims(msgspec.Struct, omit_defaults=True):
    sub: str
    nats: _UserNats
    iss: str = ""
    iat: int = 0
    jti: str = ""
    name: str = ""
    aud: str = ""
    exp: int = 0


class _ResponseNats(msgspec.Struct):
    jwt: str = ""
    error: str = ""
    type: str = "authorization_response"
    version: int = 2
    """Not left out as a default: without it a claim reads as v1, signed otherwise."""


class _ResponseClaims(msgspec.Struct, omit_defaults=True):
    sub: str
    aud: str
    nats: _ResponseNats
    iss: str = ""
    iat: int = 0
    jti: str = ""


_request = msgspec.json.Decoder(_RequestClaims)
_encode = msgspec.json.Encoder().encode


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_request(token: bytes) -> AuthRequest:
    """The server's authorization request; raises :class:`Unauthorized` for anything that
    is not one signed by the server key it names."""
    if len(token) > _MAX_JWT:
        raise Unauthorized("authorization request too large")
    try:
        header, claims, signature = token.decode().split(".")
        decoded = _request.decode(_unb64(claims))
        server_key = decode_nkey(decoded.iss, SERVER)
        verify_raw(server_key, f"{header}.{claims}".encode(), _unb64(signature))
    except (ValueError, UnicodeDecodeError, binascii.Error, msgspec.DecodeError):
        raise Unauthorized("malformed authorization request") from None
    return decoded.nats


def _sign(issuer: Keypair, claims: _UserClaims | _ResponseClaims) -> str:
    """``claims`` as a JWT issued by the account key ``issuer`` (``iss``, ``iat`` and
    ``jti`` filled in here)."""
    claims.iss = encode_nkey(issuer.public_key, ACCOUNT)
    claims.iat = int(time.time())
    claims.jti = ""
    claims.jti = base64.b32encode(hashlib.new("sha512_256", _encode(claims)).digest()).decode()
    claims.jti = claims.jti.rstrip("=")
    signed = _HEADER + b"." + _b64(_encode(claims))
    return (signed + b"." + _b64(issuer.sign(signed))).decode()


def authorization_response(
    issuer: Keypair,
    request: AuthRequest,
    *,
    permissions: Permissions | None = None,
    name: str = "",
    expires: int = 0,
    error: str = "",
) -> bytes:
    """The signed answer to ``request``: a user with ``permissions`` in :data:`BUS_ACCOUNT` (until
    the Unix time ``expires``, if not 0), or, with ``error``, a refusal."""
    nats = _ResponseNats(error=error)
    if not error:
        assert permissions is not None
        user = _UserClaims(
            sub=request.user_nkey,
            nats=_UserNats(pub=permissions.pub, sub=permissions.sub),
            name=name,
            aud=BUS_ACCOUNT,
            exp=expires,
        )
        nats.jwt = _sign(issuer, user)
    response = _ResponseClaims(sub=request.user_nkey, aud=request.server_id.id, nats=nats)
    return _sign(issuer, response).encode()

"""The v2 wire format of PROTOCOL.md: headers, bodies, codecs and the canonical signing bytes.

Signatures are checked over the received bytes before anything is decoded: a request
whose ``Actor-*`` headers are missing or malformed is a 401, never a skipped check. Every
header is matched against its exact shape and length (an address is 47-48 base58
characters, a time at most 13 digits...) before it is decoded, so what an unsigned caller
can make us do costs at most one signature check, whatever it sends.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec

from .errors import BadReply, BadRequest, Unauthorized, excerpt, printable
from .keys import ED25519, SCHEMES, SR25519, Keypair, Signer, verify, verify_protocol
from .ss58 import ADDRESS
from .subjects import DEFAULT_GATEWAY, RELAY_PREFIX

__all__ = [
    "DELEGATION_HEADER",
    "JSON",
    "MAX_NESTING",
    "MSGPACK",
    "PROTOCOL_VERSION",
    "UNDECODABLE",
    "CallBody",
    "Codec",
    "ErrorBody",
    "NonceNote",
    "RawCallBody",
    "ReplyMeta",
    "RequestMeta",
    "Seal",
    "announcement_signing_bytes",
    "check_nesting",
    "codec_for",
    "decode_error",
    "end_signing_bytes",
    "headers_for",
    "mac",
    "relay_reply",
    "reply_signing_bytes",
    "request_headers",
    "request_nonce",
    "request_signing_bytes",
    "request_timeout",
    "sign_announcement",
    "sign_relayed",
    "sign_reply",
    "sign_request",
    "signature_seal",
    "signer_scheme",
    "verify_announcement",
    "verify_reply",
    "verify_request",
]

PROTOCOL_VERSION: Final = "actorbus/2"
UNDECODABLE: Final = (msgspec.DecodeError, RecursionError)
"""What decoding bytes from the bus may raise: msgspec recurses, so a value nested past
Python's recursion limit raises :class:`RecursionError`, not a decode error."""
MAX_NESTING: Final = 64
"""Levels of arrays and objects JSON text may nest where it is checked before parsing."""
_JSON_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_INNERMOST = re.compile(rb"\[\]|\{\}")
_RUNS = re.compile(rb"[\[{]+|[\]}]+")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")

H_KEY: Final = "Actor-Key"
H_TIME: Final = "Actor-Time"
H_NONCE: Final = "Actor-Nonce"
H_SIGNATURE: Final = "Actor-Signature"
H_TIMEOUT: Final = "Actor-Timeout"
H_STATUS: Final = "Actor-Status"
H_ERROR: Final = "Actor-Error"
H_RETRY_AFTER: Final = "Retry-After"
H_CONTENT_TYPE: Final = "Content-Type"
H_INSTANCE: Final = "Actor-Instance"
H_ON_BEHALF: Final = "Actor-On-Behalf-Of"
H_DELEGATION: Final = "Actor-Delegation"
H_CHUNKS: Final = "Actor-Chunks"
H_MAC: Final = "Actor-Mac"
H_SCHEME: Final = "Actor-Scheme"

JSON: Final = "application/json"
MSGPACK: Final = "application/msgpack"

_NONCE = re.compile(r"[0-9a-f]{32}")
_SIGNATURE = re.compile(r"[0-9a-f]{128}")
_TIME = re.compile(r"[0-9]{1,13}")
_SECONDS = re.compile(r"[0-9.eE+-]{1,16}")
_STATUS = re.compile(r"[1-5][0-9][0-9]")
_MAC = re.compile(r"[0-9a-f]{64}")
DELEGATION_HEADER: Final = re.compile(
    r"([A-Za-z0-9_-]{8,64});([0-9]{1,13});([0-9a-f]{128})(?:;(sr25519))?"
)
"""``Actor-Delegation``: ``<job>;<expires ms>;<the owner's signature>``, then ``;sr25519``
when the owner signed with an sr25519 key (PROTOCOL.md §12)."""
_MAX_TIMEOUT = 24 * 3600.0
ERROR_HEADER_LIMIT: Final = 200
"""Characters of ``Actor-Error`` at most (the full message is in the body)."""


class CallBody(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A request body as a caller encodes it."""

    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)


class RawCallBody(msgspec.Struct, forbid_unknown_fields=True):
    """A request body as an actor decodes it: each argument is decoded later, by its type."""

    args: list[msgspec.Raw] = msgspec.field(default_factory=list)
    kwargs: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)


class ErrorBody(msgspec.Struct):
    """The body of every reply whose status is not 2xx."""

    error: str
    code: int
    id: str = ""


class NonceNote(msgspec.Struct, array_like=True, frozen=True):
    """A nonce an actor replica accepted, announced to its peers (MessagePack array)."""

    key: str
    nonce: str
    time_ms: int


class Codec:
    """One content type's encoder and decoders, built once and reused."""

    def __init__(self, content_type: str) -> None:
        self.content_type = content_type
        module: Any = msgspec.msgpack if content_type == MSGPACK else msgspec.json
        self._module = module
        self._encoder = module.Encoder()
        self._raw_body = module.Decoder(RawCallBody)
        self._error_body = module.Decoder(ErrorBody)
        self._any = module.Decoder()

    def encode(self, value: Any) -> bytes:
        """Encode ``value``; raises :class:`TypeError` if it is not serializable."""
        try:
            return bytes(self._encoder.encode(value))
        except (msgspec.EncodeError, TypeError, OverflowError, RecursionError) as exc:
            raise TypeError(str(exc)) from exc

    def decode_call(self, body: bytes) -> RawCallBody:
        if not body:
            return RawCallBody()
        try:
            decoded: RawCallBody = self._raw_body.decode(body)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"malformed body: {decode_error(exc)}") from None
        except RecursionError:
            raise BadRequest("malformed body: nested too deeply") from None
        return decoded

    def decoder(self, type_: Any) -> Any:
        """A decoder for one argument type (``msgspec`` json or msgpack)."""
        return self._module.Decoder(type_)

    def decode_any(self, data: bytes) -> Any:
        try:
            return self._any.decode(data)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"malformed reply body: {exc}") from None

    def decode_error(self, data: bytes) -> ErrorBody | None:
        try:
            error: ErrorBody = self._error_body.decode(data)
        except msgspec.DecodeError:
            return None
        return error


_CODECS = {JSON: Codec(JSON), MSGPACK: Codec(MSGPACK)}


def codec_for(content_type: str | None) -> Codec:
    """The codec for a ``Content-Type`` header; absent means JSON."""
    if content_type is None or content_type == JSON:
        return _CODECS[JSON]
    if content_type == MSGPACK:
        return _CODECS[MSGPACK]
    raise BadRequest(f"unsupported Content-Type {excerpt(content_type)}: use {JSON} or {MSGPACK}")


def check_nesting(text: bytes | str, limit: int = MAX_NESTING) -> None:
    """Refuse JSON ``text`` nested deeper than ``limit`` (:class:`BadRequest`), before a
    parser recurses into it. Strings are dropped, then the innermost pairs of brackets
    (the deepest pair is always one: one level less), then the depth is counted over
    runs of brackets, never one Python step per byte. Malformed text is left to the
    parser to refuse."""
    raw = text.encode() if isinstance(text, str) else text
    brackets = _JSON_STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    inner = _INNERMOST.sub(b"", brackets)
    depth = 1 if len(inner) < len(brackets) else 0
    for run in _RUNS.findall(inner):
        depth += len(run) if run[0] in b"[{" else -len(run)
        if depth > limit:
            raise BadRequest(f"a value nests deeper than {limit} levels")


def decode_error(exc: msgspec.DecodeError) -> str:
    """A msgspec decode error's message, fit to send back: msgspec quotes unknown field
    names and paths from the input, so the message is cut and escaped like any input."""
    return printable(str(exc), 160)


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def request_signing_bytes(
    subject: str,
    reply: str,
    time_ms: int | str,
    nonce: str,
    body: bytes,
    *,
    content_type: str = JSON,
    timeout: str = "",
    on_behalf: str = "",
    delegation: str = "",
) -> bytes:
    """``actorbus/2\\n<subject>\\n<reply subject>\\n<time>\\n<nonce>\\n<Content-Type>\\n
    <Actor-Timeout>\\n<hex sha256 of body>`` as UTF-8 (``timeout``: the header's text, empty
    without one), then ``\\n<address>`` when a forwarder calls on behalf of that address,
    then ``\\n<Actor-Delegation>`` when it does so with the address's delegation."""
    signed = (
        f"{PROTOCOL_VERSION}\n{subject}\n{reply}\n{time_ms}\n{nonce}\n{content_type}\n"
        f"{timeout}\n{_digest(body)}"
    )
    if on_behalf:
        signed += f"\n{on_behalf}"
        if delegation:
            signed += f"\n{delegation}"
    return signed.encode()


def mac(session_key: bytes, signed: bytes) -> str:
    """A session's ``Actor-Mac`` over signing bytes: hex HMAC-SHA256 (PROTOCOL.md §4b)."""
    return hmac.digest(session_key, signed, "sha256").hex()


def reply_signing_bytes(nonce: str, status: int, body: bytes, content_type: str = JSON) -> bytes:
    """``actorbus/2\\n<request nonce>\\n<status>\\n<Content-Type>\\n<hex sha256 of body>``
    as UTF-8."""
    return f"{PROTOCOL_VERSION}\n{nonce}\n{status}\n{content_type}\n{_digest(body)}".encode()


def end_signing_bytes(
    nonce: str, chunks: int, status: int, body: bytes, content_type: str = JSON
) -> bytes:
    """The last message of a streamed reply, after ``chunks`` chunks: ``actorbus/2\\nend\\n
    <request nonce>\\n<chunks>\\n<status>\\n<Content-Type>\\n<hex sha256 of body>``."""
    return (
        f"{PROTOCOL_VERSION}\nend\n{nonce}\n{chunks}\n{status}\n{content_type}\n{_digest(body)}"
    ).encode()


def announcement_signing_bytes(subject: str, body: bytes) -> bytes:
    """``actorbus/2\nnonces\n<subject>\n<hex sha256 of body>`` as UTF-8."""
    return f"{PROTOCOL_VERSION}\nnonces\n{subject}\n{_digest(body)}".encode()


@functools.lru_cache(maxsize=64)
def _nonce_secret(seed: bytes) -> bytes:
    return hmac.digest(seed, f"{PROTOCOL_VERSION}\nnonces".encode(), "sha256")


def sign_announcement(key: Keypair, subject: str, body: bytes, instance: str) -> dict[str, str]:
    """The headers of a nonce announcement by replica ``instance`` of the actor ``key``:
    authenticated with an HMAC by a secret derived from the seed all its replicas share
    (an ed25519 signature cost a sender 40 µs and each other replica 100 µs per batch)."""
    signed = announcement_signing_bytes(subject, body)
    return {
        H_KEY: key.address,
        H_INSTANCE: instance,
        H_MAC: mac(_nonce_secret(key.seed), signed),
    }


def verify_announcement(
    key: Keypair, subject: str, headers: dict[str, str] | None, body: bytes
) -> None:
    """Check that a nonce announcement comes from a replica of the actor ``key`` (its own
    key: only its replicas hold the seed); raises :class:`Unauthorized`."""
    headers = headers or {}
    if headers.get(H_KEY) != key.address:
        raise Unauthorized("announcement not made with this actor's key")
    given = _header(headers, H_MAC, _MAC)
    if not hmac.compare_digest(
        mac(_nonce_secret(key.seed), announcement_signing_bytes(subject, body)), given
    ):
        raise Unauthorized("bad announcement MAC")


class RequestMeta(msgspec.Struct, frozen=True):
    """The verified ``Actor-*`` headers of a request."""

    key: str
    time_ms: int
    nonce: str
    timeout: float | None = None
    content_type: str = JSON
    on_behalf: str = ""
    """The caller a trusted forwarder vouches for (``Actor-On-Behalf-Of``), if any."""
    delegation: str = ""
    """The ``Actor-Delegation`` header: the ``on_behalf`` key's own signed permission for
    the signer to make this call (:mod:`.delegation`), if any."""
    scheme: str = ED25519
    """What the signer's key is (``Actor-Scheme``; an address does not say)."""


def sign_request(
    key: Signer,
    subject: str,
    reply: str,
    body: bytes,
    *,
    content_type: str = JSON,
    timeout: float | None = None,
    time_ms: int | None = None,
    nonce: str | None = None,
    on_behalf: str = "",
    delegation: str = "",
) -> dict[str, str]:
    """The headers of a request signed for the reply subject ``reply``; a fresh time and
    nonce unless given (test vectors). With ``on_behalf``, ``key`` signs as a forwarder
    vouching for that address, or, with that address's ``delegation`` header too, as its
    delegate."""
    return request_headers(
        key.address,
        subject,
        reply,
        body,
        signature_seal(key),
        content_type=content_type,
        timeout=timeout,
        time_ms=time_ms,
        nonce=nonce,
        on_behalf=on_behalf,
        delegation=delegation,
    )


def sign_relayed(
    key: Signer,
    subject: str,
    body: bytes,
    *,
    gateway: str = DEFAULT_GATEWAY,
    content_type: str = JSON,
    timeout: float | None = None,
) -> dict[str, str]:
    """The headers of a request signed by ``key`` for the relay ``gateway`` to send on
    (the gateway's end-to-end mode): its reply subject is :func:`relay_reply` of its
    nonce."""
    nonce = secrets.token_hex(16)
    reply = relay_reply(gateway, nonce)
    return sign_request(
        key, subject, reply, body, content_type=content_type, timeout=timeout, nonce=nonce
    )


def relay_reply(gateway: str, nonce: str) -> str:
    """The reply subject of a request relayed by the gateway ``gateway`` whose
    ``Actor-Nonce`` is ``nonce``."""
    return f"{RELAY_PREFIX}{gateway}.{nonce}"


Seal = Callable[[bytes], dict[str, str]]
"""What authenticates a request: the headers it makes of the request's signing bytes."""


def signature_seal(key: Signer) -> Seal:
    """A request's ``Actor-Signature`` by ``key``, and its ``Actor-Scheme`` unless it is
    ed25519 (the default)."""
    said = {} if key.scheme == ED25519 else {H_SCHEME: key.scheme}
    return lambda signed: {H_SIGNATURE: key.sign_protocol(signed).hex(), **said}


def signer_scheme(headers: dict[str, str]) -> str:
    """The scheme a message's ``Actor-Scheme`` names (none: ed25519); raises
    :class:`Unauthorized` for any other value."""
    scheme = headers.get(H_SCHEME, ED25519)
    if scheme not in SCHEMES:
        raise Unauthorized(f"malformed header {H_SCHEME}: {' or '.join(SCHEMES)}")
    return scheme


def request_headers(
    caller: str,
    subject: str,
    reply: str,
    body: bytes,
    seal: Seal,
    *,
    content_type: str = JSON,
    timeout: float | None = None,
    time_ms: int | None = None,
    nonce: str | None = None,
    on_behalf: str = "",
    delegation: str = "",
) -> dict[str, str]:
    """The headers of a request by ``caller`` sent with the reply subject ``reply``,
    authenticated by the headers ``seal`` makes of its signing bytes (a signature, or a
    session's MAC); a fresh time and nonce unless given."""
    if delegation and not on_behalf:
        raise ValueError("a delegated request is made on behalf of the delegation's owner")
    time_ms = int(time.time() * 1000) if time_ms is None else time_ms
    nonce = secrets.token_hex(16) if nonce is None else nonce
    timeout_text = "" if timeout is None else f"{timeout:g}"
    signed = request_signing_bytes(
        subject,
        reply,
        time_ms,
        nonce,
        body,
        content_type=content_type,
        timeout=timeout_text,
        on_behalf=on_behalf,
        delegation=delegation,
    )
    headers = {H_KEY: caller, H_TIME: str(time_ms), H_NONCE: nonce, **seal(signed)}
    if on_behalf:
        headers[H_ON_BEHALF] = on_behalf
    if delegation:
        headers[H_DELEGATION] = delegation
    if timeout_text:
        headers[H_TIMEOUT] = timeout_text
    if content_type != JSON:
        headers[H_CONTENT_TYPE] = content_type
    return headers


def headers_for(
    caller: str,
    subject: str,
    body: bytes,
    seal: Seal,
    *,
    content_type: str = JSON,
    timeout: float | None = None,
    on_behalf: str = "",
    delegation: str = "",
) -> Callable[[str], dict[str, str]]:
    """What makes the headers of a request by ``caller`` (:func:`request_headers`) for
    the reply subject it is sent with, chosen when it is sent."""
    return lambda reply: request_headers(
        caller,
        subject,
        reply,
        body,
        seal,
        content_type=content_type,
        timeout=timeout,
        on_behalf=on_behalf,
        delegation=delegation,
    )


def _header(headers: dict[str, str], name: str, pattern: re.Pattern[str]) -> str:
    value = headers.get(name)
    if value is None:
        raise Unauthorized(f"missing header {name}")
    if not pattern.fullmatch(value):
        raise Unauthorized(f"malformed header {name}")
    return value


def _seconds(text: str) -> float | None:
    """A header's decimal seconds (at most 16 characters), or ``None`` if it is not one."""
    if not _SECONDS.fullmatch(text):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def request_nonce(headers: dict[str, str] | None) -> str:
    """The request's ``Actor-Nonce`` if well-formed, else ``""``: what a reply signs over."""
    nonce = (headers or {}).get(H_NONCE, "")
    return nonce if _NONCE.fullmatch(nonce) else ""


def verify_request(
    subject: str,
    reply: str,
    headers: dict[str, str] | None,
    body: bytes,
    proof: Callable[[str, bytes, dict[str, str]], None] | None = None,
) -> RequestMeta:
    """Check a request's signature over its subject, reply subject, time, nonce, content
    type, timeout and body bytes; or, with ``proof``, whatever that checks instead (it gets
    the caller's address, the signing bytes and the headers: a session's MAC).

    Raises :class:`Unauthorized` for a missing, malformed or wrong signature, key, time or
    nonce header, for an ``Actor-Signature`` beside a ``proof`` (a session call), and
    :class:`BadRequest` for a bad ``Actor-Timeout`` or ``Content-Type`` (only after the
    signature holds, so an unsigned caller learns nothing more than 401). Freshness and
    replay are the caller's (stateful) checks.
    """
    headers = headers or {}
    key = _header(headers, H_KEY, ADDRESS)
    time_text = _header(headers, H_TIME, _TIME)
    nonce = _header(headers, H_NONCE, _NONCE)
    if proof is None:
        signature = _header(headers, H_SIGNATURE, _SIGNATURE)
        scheme = signer_scheme(headers)
    elif H_SIGNATURE in headers or H_SCHEME in headers:
        raise Unauthorized(f"a session call carries no {H_SIGNATURE} or {H_SCHEME}")
    else:
        scheme = ED25519
    on_behalf = _header(headers, H_ON_BEHALF, ADDRESS) if H_ON_BEHALF in headers else ""
    delegation = (
        _header(headers, H_DELEGATION, DELEGATION_HEADER) if H_DELEGATION in headers else ""
    )
    if delegation and not on_behalf:
        raise Unauthorized(f"{H_DELEGATION} without {H_ON_BEHALF}")
    content_type_text = headers.get(H_CONTENT_TYPE, JSON)
    timeout_text = headers.get(H_TIMEOUT, "")
    signed = request_signing_bytes(
        subject,
        reply,
        time_text,
        nonce,
        body,
        content_type=content_type_text,
        timeout=timeout_text,
        on_behalf=on_behalf,
        delegation=delegation,
    )
    if proof is None:
        # A wallet's signRaw wraps what it signs: an sr25519 request may be so signed.
        wrapped = scheme == SR25519
        verify_protocol(key, signed, bytes.fromhex(signature), scheme, wrapped=wrapped)
    else:
        proof(key, signed, headers)
    timeout = request_timeout(headers)
    content_type = codec_for(content_type_text).content_type
    return RequestMeta(
        key, int(time_text), nonce, timeout, content_type, on_behalf, delegation, scheme
    )


def request_timeout(headers: dict[str, str]) -> float | None:
    """A request's ``Actor-Timeout`` in seconds, if it has one; raises :class:`BadRequest`
    for one that is not seconds in (0, 86400]."""
    timeout_text = headers.get(H_TIMEOUT)
    if timeout_text is None:
        return None
    timeout = _seconds(timeout_text)
    if timeout is None or not 0 < timeout <= _MAX_TIMEOUT:  # also rejects nan and inf
        raise BadRequest(f"{H_TIMEOUT} must be seconds in (0, {_MAX_TIMEOUT:g}]")
    return timeout


class ReplyMeta(msgspec.Struct, frozen=True):
    """The verified headers of a reply."""

    status: int
    key: str
    error: str = ""
    retry_after: float | None = None
    content_type: str = JSON
    by_session: bool = False
    """Authenticated by the MAC of the caller's session, not by a signature."""


def sign_reply(
    key: Keypair,
    nonce: str,
    status: int,
    body: bytes,
    *,
    content_type: str = JSON,
    error: str = "",
    retry_after: float | None = None,
    chunks: int | None = None,
    session_key: bytes | None = None,
) -> dict[str, str]:
    """The headers of a signed reply to the request that carried ``nonce``; with
    ``chunks``, the end of a streamed reply that sent that many chunks; with the
    ``session_key`` of a session call (and no chunks), authenticated by its MAC instead."""
    headers = {H_STATUS: str(status), H_KEY: key.address}
    if chunks is None and session_key is not None:
        signed = reply_signing_bytes(nonce, status, body, content_type)
        headers[H_MAC] = mac(session_key, signed)
    else:
        signed = (
            reply_signing_bytes(nonce, status, body, content_type)
            if chunks is None
            else end_signing_bytes(nonce, chunks, status, body, content_type)
        )
        headers[H_SIGNATURE] = key.sign(signed).hex()
    if chunks is not None:
        headers[H_CHUNKS] = str(chunks)
    if error:
        # One printable ASCII line; the full message is in the body.
        headers[H_ERROR] = printable(" ".join(error.split()), ERROR_HEADER_LIMIT, ascii_only=True)
    if retry_after is not None:
        headers[H_RETRY_AFTER] = f"{max(retry_after, 0.001):.3f}"
    if content_type != JSON:
        headers[H_CONTENT_TYPE] = content_type
    return headers


def verify_reply(
    headers: dict[str, str] | None,
    body: bytes,
    nonce: str,
    *,
    chunks: int | None = None,
    session_key: bytes | None = None,
) -> ReplyMeta:
    """Check a reply's signature against the request ``nonce``; raises :class:`BadReply`.
    With ``chunks``, it must be the end of a streamed reply after that many chunks. With
    the ``session_key`` of a session call, a reply with an ``Actor-Mac`` is checked by it.

    For a signed reply the caller still has to check that ``ReplyMeta.key`` is the actor's
    registered address (``ReplyMeta.by_session`` is false).
    """
    headers = headers or {}
    try:
        key = _header(headers, H_KEY, ADDRESS)
        status_text = _header(headers, H_STATUS, _STATUS)
        status = int(status_text)
        content_type = headers.get(H_CONTENT_TYPE, JSON)
        by_session = session_key is not None and chunks is None and H_MAC in headers
        if session_key is not None and by_session:
            expected = mac(session_key, reply_signing_bytes(nonce, status, body, content_type))
            if not hmac.compare_digest(expected, _header(headers, H_MAC, _MAC)):
                raise Unauthorized("bad session MAC")
        else:
            signature = _header(headers, H_SIGNATURE, _SIGNATURE)
            if chunks is None:
                signed = reply_signing_bytes(nonce, status, body, content_type)
            else:
                if headers.get(H_CHUNKS) != str(chunks):
                    raise Unauthorized(f"the stream ended after {chunks} chunks, not as it says")
                signed = end_signing_bytes(nonce, chunks, status, body, content_type)
            verify(key, signed, bytes.fromhex(signature))
    except Unauthorized as exc:
        raise BadReply(f"unverifiable reply: {exc.message}") from None
    retry_after = _seconds(headers.get(H_RETRY_AFTER, ""))
    return ReplyMeta(
        status=status,
        key=key,
        error=headers.get(H_ERROR, ""),
        retry_after=retry_after,
        content_type=content_type,
        by_session=by_session,
    )

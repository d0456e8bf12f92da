"""Signing keys of both schemes, strict verification and the on-disk keystore.

Every other module signs and verifies through this one. Actors, hosts and nodes sign
with ed25519 keys (:class:`Keypair`); a caller may also sign with an sr25519 key
(:class:`~.sr25519.SrKeypair`: a bittensor hotkey, a commune key), and says so
(PROTOCOL.md §3a): an address does not tell the schemes apart. Verification is strict:
ed25519 public keys must be canonical points of large order (no small-order / "weak"
keys) and signatures 64 canonical bytes, as libsodium checks them; sr25519 as
:func:`~.sr25519.verify_sr25519` checks them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Final, Protocol

import nacl.bindings
import nacl.exceptions
import nacl.signing

from .errors import BadRequest, Unauthorized
from .sr25519 import SR25519, SrKeypair, scheme_bytes, verify_sr25519
from .ss58 import SS58_PREFIX, address_to_public_key, public_key_to_address

__all__ = [
    "ED25519",
    "SCHEMES",
    "SR25519",
    "SS58_PREFIX",
    "Keypair",
    "Keystore",
    "Signer",
    "address_to_public_key",
    "new_token",
    "public_key_to_address",
    "token_id",
    "token_keypair",
    "verify",
    "verify_protocol",
    "verify_raw",
]

ED25519: Final = "ed25519"
SCHEMES: Final = (ED25519, SR25519)
"""The signature schemes a caller may sign with; ed25519 is the default (no header)."""

_KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@functools.lru_cache(maxsize=8192)
def _verify_key(public_key: bytes) -> nacl.signing.VerifyKey:
    """The verifier of an ed25519 public key of large order (checked once per key: the
    check costs as much as a signature's)."""
    if len(public_key) != 32 or not nacl.bindings.crypto_core_ed25519_is_valid_point(public_key):
        raise Unauthorized("weak public key: not a canonical point of large order")
    return nacl.signing.VerifyKey(public_key)


def verify(
    address: str, message: bytes, signature: bytes, scheme: str = ED25519, *, wrapped: bool = False
) -> None:
    """Check ``signature`` over ``message`` by the key behind ``address`` in ``scheme``
    (with ``wrapped``: or over polkadot-js's ``<Bytes>`` wrap of it, what a wallet signs).

    Raises :class:`Unauthorized` on any failure: malformed or weak key, a signature that is
    not exactly 64 bytes or not canonical, one that does not match, an unknown scheme.
    """
    public_key = address_to_public_key(address)
    check = _CHECKS.get(scheme)
    if check is None:
        raise Unauthorized("unknown signature scheme")
    try:
        check(public_key, message, signature)
    except Unauthorized:
        if not wrapped:
            raise
        check(public_key, b"<Bytes>" + message + b"</Bytes>", signature)


def verify_protocol(
    address: str, signed: bytes, signature: bytes, scheme: str = ED25519, *, wrapped: bool = False
) -> None:
    """:func:`verify` of protocol signing bytes ``signed`` as a ``scheme`` signer signs
    them (:meth:`Signer.sign_protocol`)."""
    message = scheme_bytes(signed) if scheme == SR25519 else signed
    verify(address, message, signature, scheme, wrapped=wrapped)


def verify_raw(public_key: bytes, message: bytes, signature: bytes) -> None:
    """:func:`verify` by a 32-byte ed25519 public key (an nkey's); raises
    :class:`Unauthorized`."""
    verifier = _verify_key(public_key)
    if len(signature) != 64:
        raise Unauthorized("signature must be exactly 64 bytes")
    try:
        verifier.verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        raise Unauthorized("bad signature") from None


_CHECKS: Final = {ED25519: verify_raw, SR25519: verify_sr25519}
"""Each scheme's check of a 32-byte public key's signature."""


class Signer(Protocol):
    """A key a caller signs with, of either scheme."""

    @property
    def scheme(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def public_key(self) -> bytes: ...
    def sign(self, message: bytes) -> bytes: ...
    def sign_protocol(self, signed: bytes) -> bytes:
        """A signature of protocol signing bytes, with the scheme covered."""
        ...


class Keypair:
    """An ed25519 signing key built from a 32-byte seed."""

    __slots__ = ("_signing", "address", "public_key")

    scheme: Final = ED25519

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an ed25519 seed is exactly 32 bytes")
        self._signing = nacl.signing.SigningKey(seed)
        self.public_key: bytes = bytes(self._signing.verify_key)
        self.address: str = public_key_to_address(self.public_key)

    @classmethod
    def generate(cls) -> Keypair:
        return cls(secrets.token_bytes(32))

    @property
    def seed(self) -> bytes:
        return bytes(self._signing)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature of ``message``."""
        return self._signing.sign(message).signature

    def sign_protocol(self, signed: bytes) -> bytes:
        """A signature of protocol signing bytes: ed25519 signs the bytes themselves."""
        return self.sign(signed)

    def __repr__(self) -> str:  # never show the seed
        return f"Keypair({self.address})"


_TOKEN = re.compile(r"abt_[A-Za-z0-9_-]{43}")


def new_token() -> str:
    """A new bearer token: ``abt_`` and 32 random bytes, base64url without padding."""
    return "abt_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def token_id(token: str) -> str:
    """What is stored of a token: the hex SHA-256 of its text (never the token itself).
    Raises :class:`Unauthorized` for anything not shaped like a token."""
    if not _TOKEN.fullmatch(token):
        raise Unauthorized("malformed bearer token")
    return hashlib.sha256(token.encode()).hexdigest()


def token_keypair(token: str) -> Keypair:
    """The key a token's holder signs with: its seed is SHA-256 of
    ``actorbus/1\ntoken\n<token>``, so whoever holds the token (a gateway serving its
    request, or the holder itself) can sign as that identity and nobody else can."""
    token_id(token)  # shape check
    return Keypair(hashlib.sha256(f"actorbus/1\ntoken\n{token}".encode()).digest())


DEFAULT_KEY = "default"
"""The caller key a home makes on first use; any other is made with ``actor key new``."""


class Keystore:
    """Named keys under ``<home>/keys/<name>.key``, mode 0600, dir 0700: an ed25519 key's
    file holds its hex seed; an imported sr25519 key's holds ``sr25519:`` and its hex
    64-byte secret."""

    def __init__(self, home: Path) -> None:
        self.directory = home / "keys"

    def _path(self, name: str) -> Path:
        if not _KEY_NAME.match(name):
            raise BadRequest(f"invalid key name {name!r}: use 1-64 of [A-Za-z0-9_.-]")
        return self.directory / f"{name}.key"

    def create(self, name: str) -> Keypair:
        """Make and save a new ed25519 key; raises :class:`BadRequest` if ``name`` exists."""
        key = Keypair.generate()
        self._save(name, key.seed.hex())
        return key

    def add(self, name: str, key: Keypair | SrKeypair) -> None:
        """Save a key made elsewhere (``actor key import``) as ``name``; raises
        :class:`BadRequest` if ``name`` exists."""
        self._save(
            name, key.seed.hex() if isinstance(key, Keypair) else f"sr25519:{key.secret.hex()}"
        )

    def _save(self, name: str, text: str) -> None:
        """Write a key file. It appears whole or not at all (written under a temporary
        name, then linked into place): replicas of a new actor starting together on a
        fresh home all load the one key that won, never a half-written file."""
        path = self._path(name)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        fd, partial = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".new")
        try:
            with os.fdopen(fd, "w") as file:  # mkstemp makes it 0600
                file.write(text + "\n")
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(partial, path)
            except FileExistsError:
                raise BadRequest(f"key {name!r} already exists") from None
        finally:
            os.unlink(partial)

    def signer(self, name: str, *, create: bool = False) -> Keypair | SrKeypair:
        """Load key ``name`` of either scheme; with ``create``, make an ed25519 key first
        if it does not exist. Refuses a key file that others can read (mode must be 0600
        or stricter)."""
        path = self._path(name)
        if not path.exists():
            if not create:
                known = ", ".join(self.names()) or "none yet"
                raise BadRequest(
                    f"no key named {name!r} (keys: {known}; create one with `actor key new {name}`)"
                )
            try:
                return self.create(name)
            except BadRequest:  # created concurrently by another process: load it
                pass
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise BadRequest(f"key file {path} has mode {mode:o}; run: chmod 600 {path}")
        text = path.read_text().strip()
        try:
            if text.startswith("sr25519:"):
                return SrKeypair(bytes.fromhex(text.removeprefix("sr25519:")))
            return Keypair(bytes.fromhex(text))
        except ValueError:
            raise BadRequest(
                f"key file {path} holds neither a 32-byte hex seed nor sr25519:<64-byte hex secret>"
            ) from None

    def load(self, name: str, *, create: bool = False) -> Keypair:
        """Load ed25519 key ``name`` (what actors, hosts and nodes sign with); with
        ``create``, make it first if it does not exist."""
        key = self.signer(name, create=create)
        if not isinstance(key, Keypair):
            raise BadRequest(
                f"key {name!r} is an {key.scheme} key: it can call actors, but actors, hosts "
                "and nodes sign with ed25519 keys (actor key new NAME)"
            )
        return key

    def caller(self, name: str) -> Keypair | SrKeypair:
        """The key a caller signs with, of either scheme: the home's ``default`` key is
        made on first use; any other must exist, so a mistyped ``--key`` is an error,
        never a new identity."""
        return self.signer(name, create=name == DEFAULT_KEY)

    def owner(self, name: str) -> Keypair:
        """:meth:`caller`'s key where it must be ed25519: a node's owner, a host."""
        return self.load(name, create=name == DEFAULT_KEY)

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.key"))

"""ed25519 keys, SS58 addresses, strict verification and the on-disk keystore.

Every other module signs and verifies through this one. Verification is strict: exactly
32-byte public keys that are canonical points of large order (no small-order / "weak" keys)
and 64-byte canonical signatures, as libsodium checks them.
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

import nacl.bindings
import nacl.exceptions
import nacl.signing

from .errors import BadRequest, Unauthorized

__all__ = [
    "SS58_PREFIX",
    "Keypair",
    "Keystore",
    "address_to_public_key",
    "new_token",
    "public_key_to_address",
    "token_id",
    "token_keypair",
    "verify",
    "verify_raw",
]

SS58_PREFIX = 42
_SS58_CONTEXT = b"SS58PRE"
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_ADDRESS_LENGTHS = (47, 48)  # base58 of 35 bytes (prefix, key, checksum)
_KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, rem = divmod(number, 58)
        out.append(_B58_ALPHABET[rem])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    number = 0
    for char in text:
        try:
            number = number * 58 + _B58_INDEX[char]
        except KeyError:
            raise ValueError(f"invalid base58 character {char!r}") from None
    pad = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return b"\0" * pad + body


def _ss58_checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(_SS58_CONTEXT + payload, digest_size=64).digest()[:2]


def public_key_to_address(public_key: bytes) -> str:
    """The SS58 address (network prefix 42, the ``5...`` form) of a 32-byte public key."""
    if len(public_key) != 32:
        raise ValueError("an ed25519 public key is exactly 32 bytes")
    payload = bytes([SS58_PREFIX]) + public_key
    return _b58encode(payload + _ss58_checksum(payload))


@functools.lru_cache(maxsize=8192)
def address_to_public_key(address: str) -> bytes:
    """The 32-byte public key inside an SS58 address; checks prefix, length and checksum.

    Raises :class:`Unauthorized` for anything that is not a well-formed prefix-42 address
    of a valid ed25519 point of large order (small-order "weak" keys are refused).
    """
    if not _ADDRESS_LENGTHS[0] <= len(address) <= _ADDRESS_LENGTHS[1]:
        # Base58 decoding is quadratic in its input: never start on anything longer.
        raise Unauthorized("malformed address: an address is 47-48 base58 characters")
    try:
        raw = _b58decode(address)
    except ValueError:
        raise Unauthorized("malformed address: not base58") from None
    if len(raw) != 35 or raw[0] != SS58_PREFIX:
        raise Unauthorized("malformed address: not a 32-byte key with SS58 prefix 42")
    payload, checksum = raw[:33], raw[33:]
    if _ss58_checksum(payload) != checksum:
        raise Unauthorized("malformed address: bad checksum")
    public_key = payload[1:]
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(public_key):
        raise Unauthorized("weak public key: not a canonical point of large order")
    return public_key


@functools.lru_cache(maxsize=8192)
def _verify_key(public_key: bytes) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(public_key)


def verify(address: str, message: bytes, signature: bytes) -> None:
    """Check ``signature`` over ``message`` by the key behind ``address``.

    Raises :class:`Unauthorized` on any failure: malformed or weak key, a signature that is
    not exactly 64 bytes or not canonical, or one that does not match.
    """
    _verify(address_to_public_key(address), message, signature)


def verify_raw(public_key: bytes, message: bytes, signature: bytes) -> None:
    """:func:`verify` by a 32-byte public key (an nkey's); raises :class:`Unauthorized`."""
    if len(public_key) != 32 or not nacl.bindings.crypto_core_ed25519_is_valid_point(public_key):
        raise Unauthorized("weak public key: not a canonical point of large order")
    _verify(public_key, message, signature)


def _verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    if len(signature) != 64:
        raise Unauthorized("signature must be exactly 64 bytes")
    try:
        _verify_key(public_key).verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        raise Unauthorized("bad signature") from None


class Keypair:
    """An ed25519 signing key built from a 32-byte seed."""

    __slots__ = ("_signing", "address", "public_key")

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
    """Named keys under ``<home>/keys/<name>.key``: the hex seed, mode 0600, dir 0700."""

    def __init__(self, home: Path) -> None:
        self.directory = home / "keys"

    def _path(self, name: str) -> Path:
        if not _KEY_NAME.match(name):
            raise BadRequest(f"invalid key name {name!r}: use 1-64 of [A-Za-z0-9_.-]")
        return self.directory / f"{name}.key"

    def _ensure_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)

    def create(self, name: str) -> Keypair:
        """Make and save a new key; raises :class:`BadRequest` if ``name`` exists.

        The file appears whole or not at all (written under a temporary name, then linked
        into place): replicas of a new actor starting together on a fresh home all load
        the one key that won, never a half-written file."""
        path = self._path(name)
        self._ensure_directory()
        key = Keypair.generate()
        fd, partial = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".new")
        try:
            with os.fdopen(fd, "w") as file:  # mkstemp makes it 0600
                file.write(key.seed.hex() + "\n")
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(partial, path)
            except FileExistsError:
                raise BadRequest(f"key {name!r} already exists") from None
        finally:
            os.unlink(partial)
        return key

    def load(self, name: str, *, create: bool = False) -> Keypair:
        """Load key ``name``; with ``create``, make it first if it does not exist.

        Refuses a key file that others can read (mode must be 0600 or stricter).
        """
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
        try:
            seed = bytes.fromhex(path.read_text().strip())
            return Keypair(seed)
        except ValueError:
            raise BadRequest(f"key file {path} does not hold a 32-byte hex seed") from None

    def caller(self, name: str) -> Keypair:
        """The key a caller signs with: the home's ``default`` key is made on first use;
        any other must exist, so a mistyped ``--key`` is an error, never a new identity."""
        return self.load(name, create=name == DEFAULT_KEY)

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.key"))

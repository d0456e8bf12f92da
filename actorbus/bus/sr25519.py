"""sr25519 keys (Schnorr signatures on Ristretto, substrate's default): the scheme
bittensor hotkeys and commune keys sign with.

Callers may sign with them; actors, hosts and nodes keep ed25519 keys. A signature is
made in substrate's signing context (``substrate``), so what polkadot-js, subkey or a
wallet signs verifies here, and is randomized: two signatures of one message differ. A
request's (and a commune body's) may be of polkadot-js's ``<Bytes>message</Bytes>`` wrap,
what a browser wallet signs; a long-lived one (a delegation, a connection's vouch) may
not, so a wallet cannot be talked into one by a page asking it to sign some text.
A public key must decode as a Ristretto point and not be the identity (which any
signature would verify under); a signature must carry schnorrkel's marker bit.
"""

from __future__ import annotations

from typing import Final

import sr25519 as schnorrkel

from .errors import Unauthorized
from .ss58 import public_key_to_address

__all__ = ["SR25519", "SrKeypair", "verify_sr25519"]

SR25519: Final = "sr25519"
_IDENTITY = bytes(32)


class SrKeypair:
    """An sr25519 signing key: a 64-byte schnorrkel secret (key scalar and nonce seed, in
    the byte order substrate's tools write) and its public key."""

    __slots__ = ("_pair", "address", "public_key")

    scheme: Final = SR25519

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 64:
            raise ValueError("an sr25519 secret key is exactly 64 bytes")
        try:
            public_key = bytes(schnorrkel.public_from_secret_key(secret))
        except ValueError:
            raise ValueError("not an sr25519 secret key") from None
        self._pair = (public_key, bytes(secret))
        self.public_key: bytes = public_key
        self.address: str = public_key_to_address(public_key)

    @classmethod
    def from_mini_secret(cls, mini_secret: bytes) -> SrKeypair:
        """The key substrate expands from a 32-byte mini secret (a BIP39 phrase's, or a
        ``0x`` seed), as ``subkey`` and polkadot-js do (ed25519 expansion mode)."""
        if len(mini_secret) != 32:
            raise ValueError("an sr25519 mini secret is exactly 32 bytes")
        _public, secret = schnorrkel.pair_from_seed(mini_secret)
        return cls(bytes(secret))

    @property
    def secret(self) -> bytes:
        return self._pair[1]

    def derive(self, chain_code: bytes, *, hard: bool) -> SrKeypair:
        """The child key of one junction (its 32-byte chain code), as substrate derives it:
        hard (``//``) from the secret, soft (``/``) so the public side can follow."""
        derive = schnorrkel.hard_derive_keypair if hard else schnorrkel.derive_keypair
        _code, _public, secret = derive((chain_code, *self._pair), b"")
        return SrKeypair(bytes(secret))

    def sign(self, message: bytes) -> bytes:
        """A 64-byte signature of ``message`` (randomized)."""
        return bytes(schnorrkel.sign(self._pair, message))

    def sign_protocol(self, signed: bytes) -> bytes:
        """A signature of protocol signing bytes: over ``sr25519\\n`` and the bytes, so the
        scheme is covered by what it signs (PROTOCOL.md §3a)."""
        return self.sign(scheme_bytes(signed))

    def __repr__(self) -> str:  # never show the secret
        return f"SrKeypair({self.address})"


def scheme_bytes(signed: bytes) -> bytes:
    """What an sr25519 key signs of protocol signing bytes ``signed``."""
    return b"sr25519\n" + signed


def verify_sr25519(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Check an sr25519 ``signature`` of ``message`` by the 32-byte ``public_key``; raises
    :class:`Unauthorized` saying why not."""
    if public_key == _IDENTITY:
        raise Unauthorized("weak public key: the identity point")
    if len(signature) != 64:
        raise Unauthorized("signature must be exactly 64 bytes")
    try:
        valid = schnorrkel.verify(signature, message, public_key)
    except ValueError:
        raise Unauthorized("not an sr25519 public key and signature") from None
    if not valid:
        raise Unauthorized("bad signature")

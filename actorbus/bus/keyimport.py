"""Keys people already hold, made into actorbus keys (``actor key import``).

- A substrate secret URI, as ``subkey`` takes it: a BIP39 phrase (or a ``0x`` 32-byte
  seed; nothing: substrate's dev phrase), then hard (``//name``) and soft (``/name``)
  junctions, then ``///password``. The key is sr25519, expanded and derived as substrate
  does it (a junction is its number as a u64, else its SCALE-encoded text, padded to 32
  bytes or hashed with blake2b-256 when longer).
- A bittensor wallet's hotkey file (``~/.bittensor/wallets/W/hotkeys/H``): unencrypted
  JSON whose ``secretSeed`` is the key's mini secret (``cryptoType`` 1, sr25519, the
  default) or seed (0, ed25519).
- A commune key file (``~/.commune/key/NAME.json``): JSON with ``crypto_type`` (1:
  sr25519, 0: ed25519), ``private_key`` or ``seed_hex``, and its address; commune may wrap
  it as ``{"data": ...}``.

Each import checks the address the file states, when it states one: a key that does not
come out as the file says is refused, never saved.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Final

import bip39

from .errors import BadRequest
from .keys import Keypair
from .sr25519 import SrKeypair
from .wire import check_nesting

__all__ = ["DEV_PHRASE", "from_bittensor_hotkey", "from_commune", "from_suri"]

DEV_PHRASE: Final = "bottom drive obey lake curtain smoke basket hold race lonely fit walk"
"""Substrate's development phrase: what a secret URI with no phrase (``//Alice``) uses."""
_SURI = re.compile(r"(?P<phrase>[^/]*)(?P<path>(?://?[^/]+)*)(?:///(?P<password>.*))?", re.S)
_JUNCTION = re.compile(r"/(/?)([^/]+)")
_U64 = re.compile(r"\+?[0-9]{1,20}")
"""A junction that is a number, as Rust's ``u64`` parse takes it (subkey's)."""
_HEX_SEED = re.compile(r"0x[0-9a-fA-F]{64}")
_MAX_FILE = 64 * 1024


def from_suri(suri: str) -> SrKeypair:
    """The sr25519 key of a secret URI; raises :class:`BadRequest` saying what is wrong
    (never echoing the phrase)."""
    match = _SURI.fullmatch(suri.strip())
    if match is None:
        raise BadRequest("a secret URI is PHRASE//hard/soft///password (or 0xSEED//...)")
    phrase = " ".join(match["phrase"].split()) or DEV_PHRASE
    password = match["password"] or ""
    if _HEX_SEED.fullmatch(phrase):
        if password:
            raise BadRequest("a 0x seed takes no ///password")
        key = SrKeypair.from_mini_secret(bytes.fromhex(phrase[2:]))
    else:
        if not bip39.bip39_validate(phrase):
            words = len(phrase.split())
            raise BadRequest(
                f"not a BIP39 phrase ({words} words; an English phrase of 12, 15, 18, 21 or 24 "
                "words with a valid checksum, or 0x and a 32-byte hex seed)"
            )
        key = SrKeypair.from_mini_secret(bytes(bip39.bip39_to_mini_secret(phrase, password)))
    for hard, name in _JUNCTION.findall(match["path"]):
        key = key.derive(chain_code(name), hard=bool(hard))
    return key


def chain_code(junction: str) -> bytes:
    """A junction's 32-byte chain code, as substrate makes it."""
    if _U64.fullmatch(junction) and int(junction) < 2**64:  # "+5" and "007" are 5 and 7
        code = int(junction).to_bytes(8, "little")
    else:
        text = junction.encode()
        code = _compact(len(text)) + text
    if len(code) > 32:
        return hashlib.blake2b(code, digest_size=32).digest()
    return code.ljust(32, b"\0")


def _compact(n: int) -> bytes:
    """SCALE's compact encoding of a length."""
    if n < 1 << 6:
        return bytes([n << 2])
    if n < 1 << 14:
        return ((n << 2) | 1).to_bytes(2, "little")
    if n < 1 << 30:
        return ((n << 2) | 2).to_bytes(4, "little")
    raise BadRequest("a junction is shorter than 1 GiB")


def from_bittensor_hotkey(text: str) -> Keypair | SrKeypair:
    """The key of a bittensor hotkey file's text (``cryptoType`` 1, sr25519, the default;
    0, ed25519); raises :class:`BadRequest`."""
    data = _json_object(text, "a bittensor hotkey file")
    seed = data.get("secretSeed")
    if not isinstance(seed, str) or not _HEX_SEED.fullmatch(seed):
        raise BadRequest('a bittensor hotkey file holds "secretSeed": 0x and 64 hex digits')
    crypto_type = data.get("cryptoType", 1)
    if crypto_type == 1:
        key: Keypair | SrKeypair = SrKeypair.from_mini_secret(bytes.fromhex(seed[2:]))
    elif crypto_type == 0:
        key = Keypair(bytes.fromhex(seed[2:]))
    else:
        raise BadRequest("a bittensor hotkey's cryptoType is 1 (sr25519) or 0 (ed25519)")
    _check_stated(key.address, data.get("ss58Address"), "ss58Address")
    _check_stated(key.public_key.hex(), _hex_text(data.get("publicKey")), "publicKey")
    return key


def from_commune(text: str) -> Keypair | SrKeypair:
    """The key of a commune key file's text; raises :class:`BadRequest`."""
    data = _json_object(text, "a commune key file")
    inner = data.get("data")
    if isinstance(inner, str):
        data = _json_object(inner, "a commune key file's data")
    elif isinstance(inner, dict):
        data = inner
    crypto_type = data.get("crypto_type", 1)
    if crypto_type in (1, "sr25519"):
        key: Keypair | SrKeypair = _commune_sr25519(data)
    elif crypto_type in (0, "ed25519"):
        seed = _hex(data.get("seed_hex") or data.get("private_key"), (32, 64), "seed_hex")
        key = Keypair(seed[:32])  # an ed25519 private key is its seed, then its public key
    else:
        raise BadRequest(
            f"commune crypto_type {str(crypto_type)[:20]!r}: only sr25519 (1) and ed25519 (0)"
        )
    _check_stated(key.address, data.get("ss58_address") or data.get("key"), "ss58_address")
    _check_stated(key.public_key.hex(), _hex_text(data.get("public_key")), "public_key")
    return key


def _commune_sr25519(data: dict[str, Any]) -> SrKeypair:
    if data.get("private_key"):
        try:
            return SrKeypair(_hex(data["private_key"], (64,), "private_key"))
        except ValueError:
            raise BadRequest("the commune key's private_key is not an sr25519 secret") from None
    if data.get("mnemonic"):
        path = data.get("derive_path") or ""
        if not isinstance(path, str):
            raise BadRequest("a commune key's derive_path is text: //hard/soft")
        return from_suri(str(data["mnemonic"]) + path)
    if data.get("seed_hex"):
        return SrKeypair.from_mini_secret(_hex(data["seed_hex"], (32,), "seed_hex"))
    raise BadRequest("a commune key file holds private_key, mnemonic or seed_hex")


def _json_object(text: str, what: str) -> dict[str, Any]:
    if len(text) > _MAX_FILE:
        raise BadRequest(f"{what} is at most {_MAX_FILE // 1024} KiB")
    if text.lstrip().startswith(("$NACL", "$BTWALLET", "$ANSIBLE_VAULT")):
        raise BadRequest(f"{what} is encrypted: decrypt it with its own tool first")
    check_nesting(text, 8)  # a key file is flat: never recurse into a deep one
    try:
        data = json.loads(text)
    except ValueError:
        raise BadRequest(f"{what} is JSON") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{what} is a JSON object")
    return data


def _hex(value: object, lengths: tuple[int, ...], field: str) -> bytes:
    try:
        raw = bytes.fromhex(str(value).removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) not in lengths:
        raise BadRequest(f"{field} must be hex of {' or '.join(map(str, lengths))} bytes")
    return raw


def _hex_text(value: object) -> object:
    """A stated public key as lower-case hex without ``0x`` (anything else as it is)."""
    return value.removeprefix("0x").lower() if isinstance(value, str) else value


def _check_stated(found: str, stated: object, field: str) -> None:
    """Refuse a key whose address (or public key) is not what its file states."""
    if stated is not None and stated != found:
        raise BadRequest(
            f"the key's {field} is {found}, not the file's: the file is damaged, or its key "
            "is not what it says"
        )

"""The policy key a home trusts: whose signature makes a policy record (and a name's
binding, :mod:`.records`) true for this home's hosts and clients.

In order: the key configured (``ACTOR_POLICY_KEY``); this home's own policy key, when the
home runs the policy actor (the embedded default); the key pinned at first contact, kept in
``$ACTOR_HOME/pins/<policy bucket>`` (trust on first use: the first policy record a host
reads names its signer, and from then on only that key counts). A home with none of them
trusts no policy yet, and has seen none.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import BadRequest
from .keys import Keystore, address_to_public_key
from .settings import Settings
from .ss58 import ADDRESS

__all__ = ["pin_policy", "pinned_policy", "policy_seen", "seeded_marker"]


def _pin_path(settings: Settings) -> Path:
    return settings.home / "pins" / settings.policy_bucket


def pinned_policy(settings: Settings) -> str | None:
    """The address whose policy records this home trusts, or ``None`` if none yet."""
    if settings.policy_key:
        return settings.policy_key
    keys = Keystore(settings.home)
    if settings.policy in keys.names():
        return keys.load(settings.policy).address
    try:
        text = _pin_path(settings).read_text().strip()
    except FileNotFoundError:
        return None
    if not ADDRESS.fullmatch(text):
        raise BadRequest(f"{_pin_path(settings)} does not hold an address: remove it to pin again")
    return text


def seeded_marker(settings: Settings) -> Path:
    """The file a policy actor of this home leaves once it has made its bucket."""
    return settings.home / "pins" / f"{settings.policy_bucket}.seeded"


def policy_seen(settings: Settings) -> bool:
    """Whether this home knows that a policy exists (its key is configured, its signer
    pinned, or this home made it): then a missing bucket is a policy gone, not none."""
    return (
        bool(settings.policy_key)
        or _pin_path(settings).exists()
        or seeded_marker(settings).exists()
    )


def pin_policy(settings: Settings, address: str) -> None:
    """Trust ``address`` for this home's policy from now on (first contact)."""
    address_to_public_key(address)
    path = _pin_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_suffix(f".{os.getpid()}")
    partial.write_text(address + "\n")
    partial.replace(path)  # whole or not at all, whichever replica writes first

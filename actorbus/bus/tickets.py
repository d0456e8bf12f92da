"""Hosting tickets: a host's signed word that one key may serve one actor name on the bus.

A replica connects to NATS with its actor key (an nkey, :mod:`.nkeys`) and, as its
``auth_token``, a ticket signed by a *host* key: a key the policy lists as a host, or an
admin's (on ``actor up``'s embedded default, the home's own key, the first admin). The
auth callout (the policy actor) checks the ticket, then the name's binding (the first key
that serves a name claims it; admins move it), and only then lets the connection serve
that name (:func:`actorbus.bus.rights.replica`). A ticket is good for a minute: a replica
signs a new one each time it connects, with the host key of its ``$ACTOR_HOME``.

    <name>;<role>;<expires ms>;<host address>;<signature, 128 hex>

signed (ed25519, by the host) over
``actorbus/2\\nhost\\n<name>\\n<role>\\n<replica address>\\n<expires ms>``.
"""

from __future__ import annotations

import re
import time
from typing import Final

import msgspec

from .errors import Unauthorized
from .keys import Keypair, verify
from .ss58 import ADDRESS_SHAPE
from .subjects import check_name
from .wire import PROTOCOL_VERSION

__all__ = ["TICKET_SECONDS", "HostTicket", "host_ticket", "read_ticket"]

TICKET_SECONDS: Final = 60.0
_TICKET = re.compile(
    rf"([A-Za-z0-9_.-]{{1,200}});([a-z]{{1,16}});([0-9]{{1,13}});({ADDRESS_SHAPE});"
    r"([0-9a-f]{128})"
)


class HostTicket(msgspec.Struct, frozen=True):
    name: str
    role: str
    expires: int
    """Unix time in milliseconds."""
    host: str
    """The signer's address."""
    signature: str


def _signing_bytes(name: str, role: str, replica: str, expires: int) -> bytes:
    return f"{PROTOCOL_VERSION}\nhost\n{name}\n{role}\n{replica}\n{expires}".encode()


def host_ticket(host: Keypair, name: str, role: str, replica: str) -> str:
    """A ticket by ``host`` letting the key ``replica`` (an address) serve ``name`` as
    ``role``, good for :data:`TICKET_SECONDS`."""
    expires = int((time.time() + TICKET_SECONDS) * 1000)
    signature = host.sign(_signing_bytes(check_name(name), role, replica, expires)).hex()
    return f"{name};{role};{expires};{host.address};{signature}"


def read_ticket(text: str, replica: str) -> HostTicket:
    """The ticket ``text`` presented by the key ``replica``, checked: well-formed, signed
    by the host it names for that key, not expired. Raises :class:`Unauthorized`."""
    match = _TICKET.fullmatch(text)
    if match is None:
        raise Unauthorized("malformed hosting ticket")
    name, role, expires_text, host, signature = match.groups()
    expires = int(expires_text)
    verify(host, _signing_bytes(name, role, replica, expires), bytes.fromhex(signature))
    if expires < time.time() * 1000:
        raise Unauthorized("hosting ticket expired")
    return HostTicket(check_name(name), role, expires, host, signature)

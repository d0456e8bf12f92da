"""Delegations: an owner's signed permission for one other key to call one ``actor/fn``
as the owner, for one job, until an expiry (PROTOCOL.md §12).

The jobs actor runs each slice of a job as a call to the job's work function *as the
job's owner*: the target's policy, quota and hooks apply to the owner, never to the jobs
actor. The owner's private key stays with the owner: at submit time the owner signs a
:class:`Delegation` naming the delegate (the jobs actor's address), the work target, the
job id and an expiry. Each slice call is then signed by the delegate with
``Actor-On-Behalf-Of: <owner>`` and ``Actor-Delegation: <job>;<expires>;<signature>``
(and ``;sr25519`` when the owner's key is sr25519),
and the target verifies that the owner signed exactly that delegate, target, job and
expiry, and that it has not expired. A delegation seen on the bus is useless to anyone
but the delegate, and to the delegate for any other target or after its expiry.
"""

from __future__ import annotations

import functools
import re
from typing import Final

import msgspec

from .errors import BadRequest, Unauthorized
from .keys import ED25519, SCHEMES, Signer, verify_protocol
from .subjects import check_fn, check_name
from .wire import DELEGATION_HEADER, PROTOCOL_VERSION

__all__ = [
    "JOB_ID",
    "MAX_DELEGATION_SECONDS",
    "Delegation",
    "check_job_id",
    "delegation_signing_bytes",
    "parse_delegation_header",
    "sign_delegation",
    "split_work",
    "verify_delegation",
]

JOB_ID: Final = re.compile(r"[A-Za-z0-9_-]{8,64}")
"""A job id: 8 to 64 of ``[A-Za-z0-9_-]`` (chosen by the owner, who signs it)."""
MAX_DELEGATION_SECONDS: Final = 30 * 24 * 3600
"""The longest a delegation may be valid for, from its signing."""


class Delegation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The owner's signed permission, as sent with ``submit``."""

    job: str
    work: str
    """``actor/fn``: the only function the delegate may call as the owner."""
    delegate: str
    """The address allowed to present it (the jobs actor's)."""
    expires: int
    """Unix time in milliseconds after which it is void."""
    signature: str
    """The owner's signature over :func:`delegation_signing_bytes`, hex."""
    scheme: str = ED25519
    """The owner key's scheme."""

    @property
    def header(self) -> str:
        """The ``Actor-Delegation`` header of a call made with it."""
        said = "" if self.scheme == ED25519 else f";{self.scheme}"
        return f"{self.job};{self.expires};{self.signature}{said}"


def check_job_id(job: str) -> str:
    if not JOB_ID.fullmatch(job):
        raise BadRequest("a job id is 8 to 64 of [A-Za-z0-9_-]")
    return job


def split_work(work: str) -> tuple[str, str]:
    """``"echo/forward"`` -> ``("echo", "forward")``; 400 if it is not ``ACTOR/FN``."""
    name, slash, fn = work.rpartition("/")
    if not slash:
        raise BadRequest("work is ACTOR/FN, e.g. echo/forward")
    return check_name(name), check_fn(fn)


def delegation_signing_bytes(owner: str, delegate: str, work: str, job: str, expires: int) -> bytes:
    """``actorbus/2\\ndelegation\\n<owner>\\n<delegate>\\n<actor/fn>\\n<job>\\n<expires ms>``."""
    return f"{PROTOCOL_VERSION}\ndelegation\n{owner}\n{delegate}\n{work}\n{job}\n{expires}".encode()


def sign_delegation(owner: Signer, delegate: str, work: str, job: str, expires: int) -> Delegation:
    """``owner`` lets ``delegate`` call ``work`` as ``owner`` for ``job`` until ``expires``."""
    split_work(work)
    check_job_id(job)
    signed = delegation_signing_bytes(owner.address, delegate, work, job, expires)
    signature = owner.sign_protocol(signed).hex()
    return Delegation(job, work, delegate, expires, signature, owner.scheme)


@functools.lru_cache(maxsize=4096)
def _verify_signature(
    owner: str, delegate: str, work: str, job: str, expires: int, signature: str, scheme: str
) -> None:
    signed = delegation_signing_bytes(owner, delegate, work, job, expires)
    verify_protocol(owner, signed, bytes.fromhex(signature), scheme)


def parse_delegation_header(value: str, work: str, delegate: str) -> Delegation:
    """The delegation an ``Actor-Delegation`` header carries for a call of ``work`` signed
    by ``delegate``; 401 if misshapen."""
    match = DELEGATION_HEADER.fullmatch(value)
    if match is None:
        raise Unauthorized("malformed header Actor-Delegation")
    return Delegation(match[1], work, delegate, int(match[2]), match[3], match[4] or ED25519)


def verify_delegation(owner: str, delegation: Delegation, now_ms: int) -> None:
    """Check that ``owner`` signed this delegation and that it is in force at ``now_ms``;
    raises :class:`Unauthorized` saying which. A delegation that verified is remembered,
    so the calls of one job cost one signature check each, not two."""
    delegate, work, job = delegation.delegate, delegation.work, delegation.job
    expires = delegation.expires
    if delegation.scheme not in SCHEMES:
        raise Unauthorized(f"unknown delegation scheme: {' or '.join(SCHEMES)}")
    try:
        _verify_signature(
            owner, delegate, work, job, expires, delegation.signature, delegation.scheme
        )
    except (Unauthorized, ValueError):
        raise Unauthorized(
            f"delegation does not verify: {owner} did not let {delegate} call {work} for job {job}"
        ) from None
    if expires <= now_ms:
        raise Unauthorized(f"delegation for job {job} expired {now_ms - expires} ms ago")

"""What the jobs actor keeps on JetStream, sealed so that only its replicas could have
written it: nothing another connection stores there (a NATS that lets strangers write, a
leaked credential with JetStream rights) runs as a job's owner or counts as its result.

- A job record is a record (:mod:`actorbus.bus.records`) signed by the jobs actor's key.
- A stored slice, batch or result carries ``Actor-Digest`` (the lowercase hex sha256 of
  its body) and ``Actor-Mac``: the lowercase hex HMAC-SHA256, by
  ``HMAC-SHA256(jobs actor seed, "actorbus/2\\njobs")``, of
  ``actorbus/2\\njobs\\n<subject>\\n<detail>\\n<digest>`` where ``detail`` is the slice's
  index (a slice), the result's status (a result) or empty (a batch). A reader of headers
  alone (progress) checks the MAC; a reader of the body also checks the digest.

A sealed message stored again (a replay, by whoever could publish there) is the owner's
own slice: its result is kept once per slice (:meth:`~.store.JobStore.save`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging

import msgspec

from ...bus import ActorError, Keypair, LogThrottle, printable
from ...bus.records import open_record, sign_record
from ...bus.wire import PROTOCOL_VERSION, UNDECODABLE
from .model import JobRecord

__all__ = ["DIGEST_HEADER", "MAC_HEADER", "Seals"]

DIGEST_HEADER = "Actor-Digest"
MAC_HEADER = "Actor-Mac"

log = logging.getLogger("actorbus.jobs")

_encode = msgspec.json.Encoder().encode
_record = msgspec.json.Decoder(JobRecord)


class Seals:
    """Seals and checks what the jobs actor of ``key`` stores in ``bucket`` and streams."""

    def __init__(self, key: Keypair, bucket: str) -> None:
        self._key = key
        self._bucket = bucket
        self._secret = hmac.digest(key.seed, f"{PROTOCOL_VERSION}\njobs".encode(), "sha256")
        self._throttle = LogThrottle(log, burst=3, interval=60.0)

    def record(self, job: str, record: JobRecord) -> bytes:
        return sign_record(self._key, self._bucket, job, _encode(record))

    def open_record(self, job: str, data: bytes) -> JobRecord | None:
        """The record of ``job`` stored as ``data``, or ``None`` (reported) if it is not
        one this actor signed."""
        try:
            opened = open_record(self._bucket, job, data)
            if opened.by != self._key.address or opened.value is None:
                raise ValueError(f"signed by {opened.by}, not this jobs actor")
            return _record.decode(opened.value)
        except (ActorError, ValueError, *UNDECODABLE) as exc:
            self.reject(f"record {job}", str(exc))
            return None

    def headers(self, subject: str, detail: str, body: bytes) -> dict[str, str]:
        """The headers that seal ``body`` stored at ``subject``."""
        digest = hashlib.sha256(body).hexdigest()
        return {DIGEST_HEADER: digest, MAC_HEADER: self._mac(subject, detail, digest)}

    def check(
        self, subject: str, detail: str, headers: dict[str, str] | None, body: bytes | None
    ) -> bool:
        """Whether ``headers`` seal this message (``body``: ``None`` when read without it);
        a message that is not sealed is reported."""
        headers = headers or {}
        digest = headers.get(DIGEST_HEADER, "")
        sealed = hmac.compare_digest(
            headers.get(MAC_HEADER, ""), self._mac(subject, detail, digest)
        ) and (body is None or hashlib.sha256(body).hexdigest() == digest)
        if not sealed:
            self.reject(subject, "not sealed by this jobs actor")
        return sealed

    def reject(self, what: str, why: str) -> None:
        self._throttle.log(
            logging.WARNING, "forged", "jobs: ignoring %s: %s", printable(what, 120), why[:200]
        )

    def _mac(self, subject: str, detail: str, digest: str) -> str:
        signed = f"{PROTOCOL_VERSION}\njobs\n{subject}\n{detail}\n{digest}".encode()
        return hmac.digest(self._secret, signed, "sha256").hex()

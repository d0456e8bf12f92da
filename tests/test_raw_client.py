"""A client written from PROTOCOL.md alone: nats-py, PyNaCl and hashlib, no actorbus import.

The actor runs in a subprocess (``actor serve``), so nothing here touches our package.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.public
import nacl.signing
import nats
import pytest
from processes import actor_serve

ROOT = Path(__file__).resolve().parent.parent
ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def ss58(public_key: bytes) -> str:
    payload = b"\x2a" + public_key
    data = payload + hashlib.blake2b(b"SS58PRE" + payload, digest_size=64).digest()[:2]
    n, out = int.from_bytes(data, "big"), ""
    while n:
        n, r = divmod(n, 58)
        out = ALPHABET[r] + out
    return out


def ss58_public_key(address: str) -> bytes:
    n = 0
    for char in address:
        n = n * 58 + ALPHABET.index(char)
    data = n.to_bytes(35, "big")
    assert data[0] == 0x2A
    assert hashlib.blake2b(b"SS58PRE" + data[:33], digest_size=64).digest()[:2] == data[33:]
    return data[1:33]


def open_record(kind: str, name: str, text: str) -> tuple[bytes, str]:
    """§8: a record is ``{"v":`` V ``,"by":"`` address ``","sig":"`` hex ``"}``; the
    signature, by ``by``, is over the version, ``record``, kind, name and V's sha256."""
    data = text.encode()
    assert data.startswith(b'{"v":')
    value, _, rest = data[5:].rpartition(b',"by":"')
    by, _, sig = rest.removesuffix(b'"}').decode().partition('","sig":"')
    digest = hashlib.sha256(value).hexdigest()
    signed = f"actorbus/2\nrecord\n{kind}\n{name}\n{digest}".encode()
    nacl.signing.VerifyKey(ss58_public_key(by)).verify(signed, bytes.fromhex(sig))
    return value, by


@pytest.fixture
def echo_actor(nats_url: str, tmp_path: Path) -> Iterator[str]:
    name = f"raw{secrets.token_hex(4)}"
    with actor_serve(name, {"ACTOR_NATS_URL": nats_url, "ACTOR_HOME": str(tmp_path)}):
        yield name


def signing_bytes(subject: str, reply: str, now: str, nonce: str, body: bytes) -> bytes:
    """§3: JSON (no Content-Type header) and no Actor-Timeout, so both lines are as below."""
    digest = hashlib.sha256(body).hexdigest()
    return f"actorbus/2\n{subject}\n{reply}\n{now}\n{nonce}\napplication/json\n\n{digest}".encode()


def reply_bytes(nonce: str, status: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"actorbus/2\n{nonce}\n{status}\napplication/json\n{digest}".encode()


async def ask(nc: Any, subject: str, body: bytes, headers: dict[str, str], reply: str) -> Any:
    """One request on ``reply``, the subject the headers were signed for."""
    sub = await nc.subscribe(reply, max_msgs=1)
    await nc.publish(subject, body, reply=reply, headers=headers)
    return await sub.next_msg(timeout=5)


async def test_a_client_from_the_protocol_alone(nats_url: str, echo_actor: str) -> None:
    signing_key = nacl.signing.SigningKey(secrets.token_bytes(32))
    address = ss58(bytes(signing_key.verify_key))
    nc = await nats.connect(nats_url)
    try:
        subject = f"actor.{echo_actor}.forward"
        body = json.dumps({"args": ["hello from raw"], "kwargs": {}}).encode()
        now = str(int(time.time() * 1000))
        nonce = secrets.token_hex(16)
        inbox = nc.new_inbox()
        headers = {
            "Actor-Key": address,
            "Actor-Time": now,
            "Actor-Nonce": nonce,
            "Actor-Signature": signing_key.sign(
                signing_bytes(subject, inbox, now, nonce, body)
            ).signature.hex(),
        }
        reply = await ask(nc, subject, body, headers, inbox)
        assert reply.headers is not None
        status = reply.headers["Actor-Status"]
        assert status == "200", reply.data
        assert json.loads(reply.data) == "hello from raw"

        # Verify the reply: signature over nonce, status, type and body, by the actor's key.
        actor_address = reply.headers["Actor-Key"]
        nacl.signing.VerifyKey(ss58_public_key(actor_address)).verify(
            reply_bytes(nonce, status, reply.data), bytes.fromhex(reply.headers["Actor-Signature"])
        )
        # §7: $SRV.INFO names the replica's key and carries its signed registry record.
        info = json.loads((await nc.request(f"$SRV.INFO.{echo_actor}", b"", timeout=5)).data)
        assert info["metadata"]["address"] == actor_address
        value, by = open_record(
            "actor_registry", f"{echo_actor}.{info['id']}", info["metadata"]["record"]
        )
        assert by == actor_address and json.loads(value)["address"] == actor_address

        # The same envelope again is a replay; sent for another inbox, it is no signature.
        again = await ask(nc, subject, body, headers, inbox)
        assert again.headers is not None
        assert again.headers["Actor-Status"] == "401"
        assert json.loads(again.data)["error"] == "replayed nonce"
        stolen = await ask(nc, subject, body, headers, nc.new_inbox())
        assert json.loads(stolen.data)["error"] == "bad signature"
    finally:
        await nc.close()


async def test_a_session_from_the_protocol_alone(nats_url: str, echo_actor: str) -> None:
    """§4b: a signed handshake, the sealed session key opened, then calls with a MAC."""
    signing_key = nacl.signing.SigningKey(secrets.token_bytes(32))
    address = ss58(bytes(signing_key.verify_key))
    exchange = nacl.public.PrivateKey.generate()

    def envelope(subject: str, reply: str, body: bytes) -> tuple[str, str, bytes]:
        now, nonce = str(int(time.time() * 1000)), secrets.token_hex(16)
        return now, nonce, signing_bytes(subject, reply, now, nonce, body)

    nc = await nats.connect(nats_url)
    try:
        subject = f"actor.{echo_actor}._session"
        body = json.dumps({"args": [bytes(exchange.public_key).hex(), 60]}).encode()
        inbox = nc.new_inbox()
        now, nonce, signed = envelope(subject, inbox, body)
        headers = {
            "Actor-Key": address,
            "Actor-Time": now,
            "Actor-Nonce": nonce,
            "Actor-Signature": signing_key.sign(signed).signature.hex(),
        }
        reply = await ask(nc, subject, body, headers, inbox)
        assert reply.headers is not None and reply.headers["Actor-Status"] == "200", reply.data
        nacl.signing.VerifyKey(ss58_public_key(reply.headers["Actor-Key"])).verify(
            reply_bytes(nonce, "200", reply.data), bytes.fromhex(reply.headers["Actor-Signature"])
        )
        grant = json.loads(reply.data)
        session_key = nacl.public.SealedBox(exchange).decrypt(bytes.fromhex(grant["sealed_key"]))
        assert grant["expires"] > time.time() * 1000 + 50_000

        subject = f"actor.{echo_actor}.forward"
        body = json.dumps({"args": ["by session"]}).encode()
        inbox = nc.new_inbox()
        now, nonce, signed = envelope(subject, inbox, body)
        headers = {
            "Actor-Key": address,
            "Actor-Time": now,
            "Actor-Nonce": nonce,
            "Actor-Session": grant["ticket"],
            "Actor-Mac": hmac.new(session_key, signed, hashlib.sha256).hexdigest(),
        }
        reply = await ask(nc, subject, body, headers, inbox)
        assert reply.headers is not None and reply.headers["Actor-Status"] == "200", reply.data
        assert json.loads(reply.data) == "by session"
        expected = hmac.new(session_key, reply_bytes(nonce, "200", reply.data), hashlib.sha256)
        assert hmac.compare_digest(reply.headers["Actor-Mac"], expected.hexdigest())

        again = await ask(nc, subject, body, headers, inbox)
        assert again.headers is not None and again.headers["Actor-Status"] == "401"
        assert json.loads(again.data)["error"] == "replayed nonce"
        # A replayed nonce is refused after the MAC held: the refusal carries the MAC.
        assert "Actor-Mac" in again.headers and "Actor-Signature" not in again.headers
    finally:
        await nc.close()

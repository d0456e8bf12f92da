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


@pytest.fixture
def echo_actor(nats_url: str, tmp_path: Path) -> Iterator[str]:
    name = f"raw{secrets.token_hex(4)}"
    with actor_serve(name, {"ACTOR_NATS_URL": nats_url, "ACTOR_HOME": str(tmp_path)}):
        yield name


async def test_a_client_from_the_protocol_alone(nats_url: str, echo_actor: str) -> None:
    signing_key = nacl.signing.SigningKey(secrets.token_bytes(32))
    address = ss58(bytes(signing_key.verify_key))
    nc = await nats.connect(nats_url)
    try:
        subject = f"actor.{echo_actor}.forward"
        body = json.dumps({"args": ["hello from raw"], "kwargs": {}}).encode()
        now = str(int(time.time() * 1000))
        nonce = secrets.token_hex(16)
        signed = f"actorbus/1\n{subject}\n{now}\n{nonce}\n{hashlib.sha256(body).hexdigest()}"
        headers = {
            "Actor-Key": address,
            "Actor-Time": now,
            "Actor-Nonce": nonce,
            "Actor-Signature": signing_key.sign(signed.encode()).signature.hex(),
        }
        reply = await nc.request(subject, body, timeout=5, headers=headers)
        assert reply.headers is not None
        status = reply.headers["Actor-Status"]
        assert status == "200", reply.data
        assert json.loads(reply.data) == "hello from raw"

        # Verify the reply: signature over nonce, status and body, by the registered key.
        actor_address = reply.headers["Actor-Key"]
        reply_signed = f"actorbus/1\n{nonce}\n{status}\n{hashlib.sha256(reply.data).hexdigest()}"
        nacl.signing.VerifyKey(ss58_public_key(actor_address)).verify(
            reply_signed.encode(), bytes.fromhex(reply.headers["Actor-Signature"])
        )
        kv = await nc.jetstream().key_value("actor_registry")
        keys = [k for k in await kv.keys() if k.startswith(f"{echo_actor}.")]
        registered = {json.loads((await kv.get(k)).value)["address"] for k in keys}
        assert registered == {actor_address}

        # The same envelope again is a replay.
        again = await nc.request(subject, body, timeout=5, headers=headers)
        assert again.headers is not None
        assert again.headers["Actor-Status"] == "401"
        assert json.loads(again.data)["error"] == "replayed nonce"
    finally:
        await nc.close()


async def test_a_session_from_the_protocol_alone(nats_url: str, echo_actor: str) -> None:
    """§4b: a signed handshake, the sealed session key opened, then calls with a MAC."""
    signing_key = nacl.signing.SigningKey(secrets.token_bytes(32))
    address = ss58(bytes(signing_key.verify_key))
    exchange = nacl.public.PrivateKey.generate()

    def envelope(subject: str, body: bytes) -> tuple[str, str, bytes]:
        now, nonce = str(int(time.time() * 1000)), secrets.token_hex(16)
        digest = hashlib.sha256(body).hexdigest()
        return now, nonce, f"actorbus/1\n{subject}\n{now}\n{nonce}\n{digest}".encode()

    nc = await nats.connect(nats_url)
    try:
        subject = f"actor.{echo_actor}._session"
        body = json.dumps({"args": [bytes(exchange.public_key).hex(), 60]}).encode()
        now, nonce, signed = envelope(subject, body)
        headers = {
            "Actor-Key": address,
            "Actor-Time": now,
            "Actor-Nonce": nonce,
            "Actor-Signature": signing_key.sign(signed).signature.hex(),
        }
        reply = await nc.request(subject, body, timeout=5, headers=headers)
        assert reply.headers is not None and reply.headers["Actor-Status"] == "200", reply.data
        reply_signed = f"actorbus/1\n{nonce}\n200\n{hashlib.sha256(reply.data).hexdigest()}"
        nacl.signing.VerifyKey(ss58_public_key(reply.headers["Actor-Key"])).verify(
            reply_signed.encode(), bytes.fromhex(reply.headers["Actor-Signature"])
        )
        grant = json.loads(reply.data)
        session_key = nacl.public.SealedBox(exchange).decrypt(bytes.fromhex(grant["sealed_key"]))
        assert grant["expires"] > time.time() * 1000 + 50_000

        subject = f"actor.{echo_actor}.forward"
        body = json.dumps({"args": ["by session"]}).encode()
        now, nonce, signed = envelope(subject, body)
        headers = {
            "Actor-Key": address,
            "Actor-Time": now,
            "Actor-Nonce": nonce,
            "Actor-Session": grant["ticket"],
            "Actor-Mac": hmac.new(session_key, signed, hashlib.sha256).hexdigest(),
        }
        reply = await nc.request(subject, body, timeout=5, headers=headers)
        assert reply.headers is not None and reply.headers["Actor-Status"] == "200", reply.data
        assert json.loads(reply.data) == "by session"
        reply_signed = f"actorbus/1\n{nonce}\n200\n{hashlib.sha256(reply.data).hexdigest()}"
        expected = hmac.new(session_key, reply_signed.encode(), hashlib.sha256).hexdigest()
        assert hmac.compare_digest(reply.headers["Actor-Mac"], expected)

        again = await nc.request(subject, body, timeout=5, headers=headers)
        assert again.headers is not None and again.headers["Actor-Status"] == "401"
        assert json.loads(again.data)["error"] == "replayed nonce"
    finally:
        await nc.close()

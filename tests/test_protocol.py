"""The code against PROTOCOL.md's test vectors, and strict verification."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import multiprocessing
import os
import re
import stat
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from nats.js import api

from actorbus.bus import (
    BadReply,
    BadRequest,
    Keypair,
    Keystore,
    Unauthorized,
    public_key_to_address,
    token_id,
    token_keypair,
    verify,
)
from actorbus.bus.chunks import (
    chunk_signing_bytes,
    control_signing_bytes,
    sign_chunk,
    sign_control,
    verify_chunk,
    verify_control,
)
from actorbus.bus.connection import NATS, _Client
from actorbus.bus.delegation import sign_delegation, verify_delegation
from actorbus.bus.nkeys import decode_nkey, encode_nkey, encode_nkey_seed
from actorbus.bus.records import open_record, record_signing_bytes, sign_record
from actorbus.bus.sessions import SessionSecret, mac_request
from actorbus.bus.settings import Settings
from actorbus.bus.subjects import inbox_of
from actorbus.bus.wire import (
    announcement_signing_bytes,
    end_signing_bytes,
    reply_signing_bytes,
    request_signing_bytes,
    sign_announcement,
    sign_reply,
    sign_request,
    verify_announcement,
    verify_reply,
    verify_request,
)
from actorbus.client.registry import Vouching

ROOT = Path(__file__).resolve().parent.parent
# The group order of ed25519: adding it to S gives the same point math but a
# non-canonical encoding, which strict verifiers must refuse.
L = 2**252 + 27742317777372353535851937790883648493
WEAK_KEYS = [
    bytes.fromhex(hex64)
    for hex64 in [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "0100000000000000000000000000000000000000000000000000000000000080",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ]
]
"""The 14 encodings PROTOCOL.md lists: the eight small-order points, and non-canonical
encodings of them."""


def vectors() -> dict[str, Any]:
    text = (ROOT / "PROTOCOL.md").read_text()
    block = re.search(r"## Test vectors.*?```json\n(.*?)```", text, re.S)
    assert block, "PROTOCOL.md has no JSON test vector block"
    data: dict[str, Any] = json.loads(block.group(1))
    return data


def test_keys_and_addresses_match_the_vectors() -> None:
    v = vectors()
    for who in ("caller", "actor"):
        key = Keypair(bytes.fromhex(v[f"{who}_seed_hex"]))
        assert key.public_key.hex() == v[f"{who}_public_key_hex"]
        assert key.address == v[f"{who}_address"]


def test_ss58_matches_substrate() -> None:
    # Substrate's well-known dev account "Alice" (its public key and address).
    alice = bytes.fromhex("d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d")
    assert public_key_to_address(alice) == "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"


def request_of(v: dict[str, Any], **more: Any) -> dict[str, str]:
    """The vector request's headers, signed by ``key`` (the caller's by default)."""
    r = v["request"]
    key = more.pop("key", None) or Keypair(bytes.fromhex(v["caller_seed_hex"]))
    return sign_request(
        key,
        r["subject"],
        r["reply_subject"],
        r["body"].encode(),
        timeout=float(r["actor_timeout"]),
        time_ms=int(r["actor_time"]),
        nonce=r["actor_nonce"],
        **more,
    )


def test_request_signing_matches_the_vector() -> None:
    v = vectors()
    r = v["request"]
    caller = Keypair(bytes.fromhex(v["caller_seed_hex"]))
    body = r["body"].encode()
    assert hashlib.sha256(body).hexdigest() == r["body_sha256_hex"]
    signing = request_signing_bytes(
        r["subject"],
        r["reply_subject"],
        r["actor_time"],
        r["actor_nonce"],
        body,
        content_type=r["content_type"],
        timeout=r["actor_timeout"],
    )
    assert signing == r["signing_bytes"].encode()
    assert caller.sign(signing).hex() == r["signature_hex"]
    verify(caller.address, signing, bytes.fromhex(r["signature_hex"]))
    headers = request_of(v)
    assert headers == {
        "Actor-Key": v["caller_address"],
        "Actor-Time": r["actor_time"],
        "Actor-Nonce": r["actor_nonce"],
        "Actor-Signature": r["signature_hex"],
        "Actor-Timeout": r["actor_timeout"],
    }
    meta = verify_request(r["subject"], r["reply_subject"], headers, body)
    assert (meta.key, meta.timeout) == (v["caller_address"], 2.5)
    # Every signed line matters: another reply subject, content type or deadline fails.
    with pytest.raises(Unauthorized):
        verify_request(r["subject"], r["reply_subject"] + "2", headers, body)
    for changed in ({"Content-Type": "application/msgpack"}, {"Actor-Timeout": "2.4"}):
        with pytest.raises(Unauthorized):
            verify_request(r["subject"], r["reply_subject"], headers | changed, body)
    # A request is a signed call or a session call, never both.
    both = headers | {"Actor-Session": f"{'0' * 32}.1", "Actor-Mac": "0" * 64}
    with pytest.raises(Unauthorized, match="carries no Actor-Signature"):
        verify_request(r["subject"], r["reply_subject"], both, body, lambda *_: None)


def test_forwarded_request_signing_matches_the_vector() -> None:
    v = vectors()
    r, f = v["request"], v["forwarded_request"]
    forwarder = Keypair(bytes.fromhex(f["forwarder_seed_hex"]))
    assert forwarder.address == f["forwarder_address"]
    body = r["body"].encode()
    signing = request_signing_bytes(
        r["subject"],
        r["reply_subject"],
        r["actor_time"],
        r["actor_nonce"],
        body,
        timeout=r["actor_timeout"],
        on_behalf=f["on_behalf_of"],
    )
    assert signing == f["signing_bytes"].encode()
    headers = request_of(v, key=forwarder, on_behalf=f["on_behalf_of"])
    assert headers["Actor-Signature"] == f["signature_hex"]
    assert headers["Actor-On-Behalf-Of"] == v["caller_address"]
    # The on-behalf address is signed: dropping or changing the header breaks the call.
    reply = r["reply_subject"]
    assert verify_request(r["subject"], reply, headers, body).on_behalf == v["caller_address"]
    for changed in ({}, {"Actor-On-Behalf-Of": v["actor_address"]}):
        tampered = {k: x for k, x in headers.items() if k != "Actor-On-Behalf-Of"} | changed
        with pytest.raises(Unauthorized):
            verify_request(r["subject"], reply, tampered, body)


def test_delegation_matches_the_vector() -> None:
    v = vectors()
    r, f, d = v["request"], v["forwarded_request"], v["delegation"]
    owner = Keypair(bytes.fromhex(v["caller_seed_hex"]))
    delegate = Keypair(bytes.fromhex(f["forwarder_seed_hex"]))
    assert (owner.address, delegate.address) == (d["owner_address"], d["delegate_address"])
    signed = sign_delegation(owner, delegate.address, d["work"], d["job"], d["expires"])
    assert signed.signature == d["signature_hex"] and signed.header == d["header"]
    lines = ["actorbus/2", "delegation", owner.address, delegate.address, d["work"], d["job"]]
    expected = "\n".join([*lines, str(d["expires"])])
    assert d["signing_bytes"] == expected
    verify(owner.address, expected.encode(), bytes.fromhex(d["signature_hex"]))
    body, reply = r["body"].encode(), r["reply_subject"]
    headers = request_of(v, key=delegate, on_behalf=owner.address, delegation=d["header"])
    assert d["request_signing_bytes"] == f["signing_bytes"] + "\n" + d["header"]
    assert headers["Actor-Signature"] == d["request_signature_hex"]
    meta = verify_request(r["subject"], reply, headers, body)
    assert (meta.on_behalf, meta.delegation) == (owner.address, d["header"])
    # The delegation is signed with the request: it cannot be dropped or swapped...
    other = sign_delegation(owner, delegate.address, d["work"], "another-job", d["expires"])
    for changed in ({}, {"Actor-Delegation": other.header}):
        tampered = {k: x for k, x in headers.items() if k != "Actor-Delegation"} | changed
        with pytest.raises(Unauthorized):
            verify_request(r["subject"], reply, tampered, body)
    # ...and means nothing without the owner it speaks for.
    alone = {k: x for k, x in headers.items() if k != "Actor-On-Behalf-Of"}
    with pytest.raises(Unauthorized, match="without"):
        verify_request(r["subject"], reply, alone, body)
    with pytest.raises(Unauthorized, match="expired"):
        verify_delegation(owner.address, signed, d["expires"])


def test_token_key_matches_the_vector() -> None:
    t = vectors()["token"]
    assert t["token"] == "abt_" + base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")
    assert token_id(t["token"]) == t["token_sha256_hex"]
    seed = hashlib.sha256(f"actorbus/1\ntoken\n{t['token']}".encode()).digest()
    assert seed.hex() == t["seed_hex"]
    assert token_keypair(t["token"]).address == t["address"] == Keypair(seed).address
    with pytest.raises(Unauthorized, match="malformed"):
        token_id(t["token"][:-1])


@pytest.mark.parametrize("which", ["reply", "error_reply", "msgpack_reply"])
def test_reply_signing_matches_the_vector(which: str) -> None:
    v = vectors()
    r = v[which]
    actor = Keypair(bytes.fromhex(v["actor_seed_hex"]))
    body = bytes.fromhex(r["body_hex"]) if "body_hex" in r else r["body"].encode()
    nonce = v["request"]["actor_nonce"]
    signing = reply_signing_bytes(nonce, r["status"], body, r["content_type"])
    assert signing == r["signing_bytes"].encode()
    assert actor.sign(r["signing_bytes"].encode()).hex() == r["signature_hex"]
    headers = sign_reply(actor, nonce, r["status"], body, content_type=r["content_type"])
    assert headers["Actor-Signature"] == r["signature_hex"]
    meta = verify_reply(headers, body, nonce)
    assert (meta.status, meta.content_type) == (r["status"], r["content_type"])
    # The content type is signed: a relay cannot re-label the body.
    other = "application/json" if r["content_type"] != "application/json" else "text/html"
    with pytest.raises(BadReply):
        verify_reply(headers | {"Content-Type": other}, body, nonce)


@pytest.mark.parametrize("weak", WEAK_KEYS, ids=lambda k: k.hex()[:4] + ".." + k.hex()[-4:])
def test_small_order_public_keys_are_refused(weak: bytes) -> None:
    address = public_key_to_address(weak)
    with pytest.raises(Unauthorized, match="weak public key"):
        verify(address, b"message", bytes(64))


def test_non_canonical_signature_is_refused() -> None:
    key = Keypair(bytes(range(32)))
    message = b"actorbus/2\nactor.echo.forward\n1\n00\n00"
    signature = key.sign(message)
    verify(key.address, message, signature)
    s = int.from_bytes(signature[32:], "little") + L
    malleated = signature[:32] + s.to_bytes(32, "little")
    with pytest.raises(Unauthorized):
        verify(key.address, message, malleated)


@pytest.mark.parametrize("length", [0, 63, 65])
def test_signature_must_be_64_bytes(length: int) -> None:
    key = Keypair(bytes(range(32)))
    with pytest.raises(Unauthorized, match="64 bytes"):
        verify(key.address, b"m", bytes(length))


@pytest.mark.parametrize(
    "address",
    ["", "not-base58-0OIl", "5C9TqVEs5Q51zUdjvp6tSsjHAfLseJKq1Dq6ULcuSLqEuRSg", "1111"],
    ids=["empty", "alphabet", "checksum", "short"],
)
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(Unauthorized, match="malformed address"):
        verify(address, b"m", bytes(64))


def test_keystore_writes_0600_and_refuses_readable_keys(tmp_path: Path) -> None:
    store = Keystore(tmp_path)
    key = store.create("alice")
    path = tmp_path / "keys" / "alice.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.load("alice").address == key.address
    assert key.seed.hex() not in repr(key)
    with pytest.raises(BadRequest, match="already exists"):
        store.create("alice")
    os.chmod(path, 0o644)
    with pytest.raises(BadRequest, match="chmod 600"):
        store.load("alice")
    with pytest.raises(BadRequest, match="invalid key name"):
        store.load("../etc/passwd")
    assert store.load("fresh", create=True).address == store.load("fresh").address


def _load_created(home: str) -> str:
    return Keystore(Path(home)).load("racer", create=True).address


def test_replicas_creating_one_key_at_once_all_load_it(tmp_path: Path) -> None:
    """Issue 21: replicas of a new actor starting together read a key file another was
    still writing ("does not hold a 32-byte hex seed") in 21 of 200 three-process races."""
    for round_ in range(50):
        home = tmp_path / str(round_)
        with multiprocessing.get_context("fork").Pool(3) as pool:
            addresses = pool.map(_load_created, [str(home)] * 3)
        assert len(set(addresses)) == 1
        assert [p.name for p in (home / "keys").iterdir()] == ["racer.key"]  # no leftovers


def test_nonce_announcement_matches_the_vector() -> None:
    v = vectors()
    a = v["nonce_announcement"]
    actor = Keypair(bytes.fromhex(v["actor_seed_hex"]))
    body = bytes.fromhex(a["body_hex"])
    assert hashlib.sha256(body).hexdigest() == a["body_sha256_hex"]
    assert announcement_signing_bytes(a["subject"], body) == a["signing_bytes"].encode()
    secret = hmac.digest(actor.seed, b"actorbus/2\nnonces", "sha256")
    assert secret.hex() == a["secret_hex"]
    headers = sign_announcement(actor, a["subject"], body, a["instance"])
    assert headers == {
        "Actor-Key": v["actor_address"],
        "Actor-Instance": a["instance"],
        "Actor-Mac": a["mac_hex"],
    }
    verify_announcement(actor, a["subject"], headers, body)
    assert msgspec.msgpack.decode(body) == [
        [v["caller_address"], v["request"]["actor_nonce"], int(v["request"]["actor_time"])]
    ]
    caller = Keypair(bytes.fromhex(v["caller_seed_hex"]))
    with pytest.raises(Unauthorized):  # another actor's replicas
        verify_announcement(caller, a["subject"], headers, body)
    with pytest.raises(Unauthorized, match="bad announcement MAC"):  # altered
        verify_announcement(actor, a["subject"], headers, body + b"\x90")


def test_session_matches_the_vectors() -> None:
    v = vectors()
    s, r = v["session"], v["request"]
    actor = Keypair(bytes.fromhex(v["actor_seed_hex"]))
    secret = hmac.digest(actor.seed, b"actorbus/2\nsessions", "sha256")
    assert secret.hex() == s["session_secret_hex"]
    label = f"actorbus/2\nsession\n{s['actor']}\n{v['caller_address']}\n{s['ticket']}"
    assert label == s["session_key_bytes"]
    session_key = SessionSecret(actor, s["actor"]).session_key(v["caller_address"], s["ticket"])
    assert session_key.hex() == s["session_key_hex"]
    assert hmac.digest(secret, label.encode(), "sha256") == session_key
    headers = mac_request(
        session_key,
        v["caller_address"],
        s["ticket"],
        r["subject"],
        r["reply_subject"],
        r["body"].encode(),
        timeout=float(r["actor_timeout"]),
        time_ms=int(r["actor_time"]),
        nonce=r["actor_nonce"],
    )
    assert headers == {
        "Actor-Key": v["caller_address"],
        "Actor-Time": r["actor_time"],
        "Actor-Nonce": r["actor_nonce"],
        "Actor-Session": s["ticket"],
        "Actor-Mac": s["request_mac_hex"],
        "Actor-Timeout": r["actor_timeout"],
    }
    signed = r["signing_bytes"].encode()
    assert hmac.new(session_key, signed, hashlib.sha256).hexdigest() == s["request_mac_hex"]
    reply = v["reply"]
    replied = sign_reply(
        actor, r["actor_nonce"], 200, reply["body"].encode(), session_key=session_key
    )
    assert replied == {
        "Actor-Status": "200",
        "Actor-Key": v["actor_address"],
        "Actor-Mac": s["reply_mac_hex"],
    }
    meta = verify_reply(replied, reply["body"].encode(), r["actor_nonce"], session_key=session_key)
    assert meta.by_session and meta.status == 200
    with pytest.raises(BadReply, match="bad session MAC"):
        verify_reply(replied, b'"ho"', r["actor_nonce"], session_key=session_key)
    with pytest.raises(BadReply):  # a MAC is no signature: without the session it fails
        verify_reply(replied, reply["body"].encode(), r["actor_nonce"])


def test_streamed_reply_matches_the_vectors() -> None:
    v = vectors()
    s = v["stream"]
    actor = Keypair(bytes.fromhex(v["actor_seed_hex"]))
    caller = Keypair(bytes.fromhex(v["caller_seed_hex"]))
    nonce = v["request"]["actor_nonce"]
    for chunk in s["chunks"]:
        body = chunk["body"].encode()
        assert chunk_signing_bytes(nonce, chunk["seq"], body) == chunk["signing_bytes"].encode()
        headers = sign_chunk(actor, nonce, chunk["seq"], body)
        assert headers["Actor-Signature"] == chunk["signature_hex"]
        verify_chunk(headers, body, nonce, chunk["seq"], v["actor_address"])
        with pytest.raises(BadReply):  # the same chunk in another place
            verify_chunk(headers, body, nonce, chunk["seq"] + 1, v["actor_address"])
    end = s["end"]
    body = end["body"].encode()
    signing = end_signing_bytes(nonce, end["chunks"], end["status"], body, "application/json")
    assert signing == end["signing_bytes"].encode()
    headers = sign_reply(actor, nonce, end["status"], body, chunks=end["chunks"])
    assert headers["Actor-Signature"] == end["signature_hex"]
    assert headers["Actor-Chunks"] == str(end["chunks"])
    assert verify_reply(headers, body, nonce, chunks=end["chunks"]).status == 200
    with pytest.raises(BadReply):  # a chunk lost before the end
        verify_reply(headers, body, nonce, chunks=end["chunks"] - 1)
    for name, credit in (("credit", s["credit"]["read"]), ("cancel", None)):
        c = s[name]
        assert control_signing_bytes(nonce, credit) == c["signing_bytes"].encode()
        control = sign_control(caller, nonce, credit)
        assert control["Actor-Signature"] == c["signature_hex"]
        assert verify_control(control, nonce, {v["caller_address"]}.__contains__) == credit
        with pytest.raises(Unauthorized):
            verify_control(control, nonce, {v["actor_address"]}.__contains__)


def test_nkeys_match_the_vectors() -> None:
    """PROTOCOL.md §5: a key as a NATS user nkey and seed, and its private inbox prefix."""
    v = vectors()
    n = v["nkey"]
    caller = Keypair(bytes.fromhex(v["caller_seed_hex"]))
    actor = Keypair(bytes.fromhex(v["actor_seed_hex"]))
    assert encode_nkey(caller.public_key) == n["caller_nkey"]
    assert encode_nkey(actor.public_key) == n["actor_nkey"]
    assert encode_nkey_seed(caller.seed) == n["caller_nkey_seed"]
    assert decode_nkey(n["caller_nkey"]) == caller.public_key
    assert inbox_of(caller.public_key) == n["inbox_prefix"]
    assert v["request"]["reply_subject"].startswith(n["inbox_prefix"] + ".")
    for bad in (n["caller_nkey"][:-1] + "A", "S" + n["caller_nkey"][1:], n["caller_nkey"][:40]):
        with pytest.raises(Unauthorized, match="malformed nkey"):
            decode_nkey(bad)


def test_records_match_the_vectors(tmp_path: Path) -> None:
    """PROTOCOL.md §8: a record's exact bytes, what is signed, who may be trusted."""
    v = vectors()
    r = v["record"]
    policy = Keypair(bytes.fromhex(r["policy_seed_hex"]))
    actor = Keypair(bytes.fromhex(v["actor_seed_hex"]))
    assert policy.address == r["policy_address"]
    for vector, key in ((r["binding"], policy), (r["registry_entry"], actor)):
        kind, name, value = vector["kind"], vector["name"], vector["v"].encode()
        assert record_signing_bytes(kind, name, value).decode() == vector["signing_bytes"]
        assert sign_record(key, kind, name, value).decode() == vector["record"]
        opened = open_record(kind, name, vector["record"].encode())
        assert (opened.by, opened.value) == (key.address, value)
        with pytest.raises(Unauthorized):
            open_record(kind, name + "0", vector["record"].encode())  # moved: no record
    versioned = r["versioned"]
    kind, name, value, n = (versioned[k] for k in ("kind", "name", "v", "n"))
    signing = record_signing_bytes(kind, name, value.encode(), n).decode()
    assert signing == versioned["signing_bytes"]
    assert sign_record(policy, kind, name, value.encode(), n).decode() == versioned["record"]
    opened = open_record(kind, name, versioned["record"].encode())
    assert (opened.by, opened.value, opened.n) == (policy.address, value.encode(), n)
    with pytest.raises(Unauthorized):  # the version is signed: another is no record
        open_record(kind, name, versioned["record"].replace(str(n), str(n + 1)).encode())
    entry = r["registry_entry"]
    trusting = Settings(home=tmp_path, policy_key=policy.address)
    counted = Vouching(trusting).entry(entry["name"], entry["record"].encode())
    assert counted is not None and counted.address == actor.address
    other = Settings(home=tmp_path, policy_key=Keypair.generate().address)
    assert Vouching(other).entry(entry["name"], entry["record"].encode()) is None


_PIECES = ["a", "Z", "-", "_", ":", ".", " ", "\t", "\r", "\n", "é", "\x0b", "\u2028", "\r\n", ": "]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=6).map("".join)
_NAMES = st.one_of(_TEXT, st.sampled_from(list(api.Header)))


async def _written(client: NATS, headers: dict[Any, Any] | None) -> bytes | str:
    """What ``client`` hands its socket for one publish with ``headers`` (or the error)."""
    client._flush_queue = None
    client._pending, client._pending_data_size, client._max_pending_size = [], 0, 0
    try:
        await client._send_publish("a.b", "_INBOX.x", b"body", 4, headers)
    except Exception as exc:
        return type(exc).__name__
    return bytes(client._pending[-1])


@given(st.dictionaries(_NAMES, st.one_of(_TEXT, st.just(3)), max_size=5))
@hypothesis_settings(max_examples=500, deadline=None)
def test_the_connection_writes_and_reads_headers_as_nats_py_does(
    headers: dict[Any, Any],
) -> None:
    """Our connection writes and reads headers its own quicker way (bus.connection); the
    bytes and the parsed headers are nats-py's, for any names and values (a str enum
    name, a value to strip or clean, a name to refuse). Before, a name that was a str enum
    went out as its Python name, and a KV write's expected revision was lost."""
    ours = anyio.run(_written, _Client(), headers or None)
    assert ours == anyio.run(_written, NATS(), headers or None)
    if isinstance(ours, bytes):
        block = ours.split(b"\r\n", 1)[1][: -len(b"body\r\n")]
        raw = block[len(b"NATS/1.0\r\n") :]
        assert _Client._parse_header_lines(raw) == NATS._parse_header_lines(raw)

"""Identities people already hold (PROTOCOL.md §3a): sr25519 keys from substrate secret
URIs, bittensor hotkeys and commune keys call actors from the CLI, from Python, over plain
NATS and through the gateway, and are judged by the policy like any key. Keys and
signatures are made by the tools those people use (substrate-interface, bittensor-wallet),
which share no code with us; each refusal is tried as an attacker would, against a real
node."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import bittensor_wallet
import httpx
import msgspec
import nats
import nats.errors
import pytest
import substrateinterface
from cluster import free_port
from support import eventually
from up import Bus, embedded

from actorbus import Actor, Client, Forbidden, Keypair, Settings, serve
from actorbus.bus import BadRequest, SrKeypair, Unauthorized, sign_request, verify_reply
from actorbus.bus.keyimport import (
    DEV_PHRASE,
    chain_code,
    from_bittensor_hotkey,
    from_commune,
    from_suri,
)
from actorbus.bus.keys import Keystore
from actorbus.bus.nkeys import encode_nkey_seed
from actorbus.bus.subjects import call_subject, inbox_of
from actorbus.bus.vouch import read_vouch, vouch_for
from actorbus.bus.wire import request_signing_bytes, verify_request
from actorbus.client.sessions import Session

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent
FORWARD = call_subject("echo", "forward")


def protocol_vectors() -> dict[str, Any]:
    text = (ROOT / "PROTOCOL.md").read_text()
    block = text.split("## Test vectors", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    vectors: dict[str, Any] = json.loads(block)
    return vectors


# -- keys: what substrate's own tools say ------------------------------------------------


@pytest.mark.parametrize(
    ("suri", "address"),
    [
        ("//Alice", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"),
        ("//Bob", "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"),
        ("//Alice//stash", "5GNJqTPyNqANBkUVMN1LPPrxXnFouWXoe2wNSmmEoLctxiZY"),
        (DEV_PHRASE, "5DfhGyQdFobKM8NsWvEeAKk5EQQgYe9AydgJ7rMB6E1EqRzV"),
    ],
)
def test_secret_uris_give_substrates_published_dev_accounts(suri: str, address: str) -> None:
    assert from_suri(suri).address == address


def test_a_soft_junction_and_a_raw_seed_give_sp_cores_published_keys() -> None:
    # sp_core's derive_soft_known_pair_should_work and sr_test_vector_should_work.
    soft = "d6c71059dbbe9ad2b0ed3f289738b800836eb425544ce694825285b958ca755e"
    assert from_suri("/Alice").public_key.hex() == soft
    seed = "0x9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
    assert from_suri(seed).public_key.hex() == (
        "44a996beb1eef7bdcab976ab6d2ca26104834164ecf28fb375600576fcc6eb0f"
    )


def test_derivation_agrees_with_substrate_interface() -> None:
    """Hard, soft, numeric and long junctions, as substrate-interface derives them from a
    fresh phrase (it takes no ///password for sr25519: that one is not cross-checked)."""
    phrase = substrateinterface.Keypair.generate_mnemonic()
    long_name = "x" * 40  # longer than a chain code: hashed
    for path in ["", "//1", "/2", "//hard/soft", "//a//b/c/3", f"//{long_name}"]:
        theirs = substrateinterface.Keypair.create_from_uri(phrase + path)
        assert from_suri(phrase + path).address == theirs.ss58_address, path


def test_a_junction_is_a_number_as_subkey_parses_one() -> None:
    """Rust's u64 parse (subkey's) takes "+5" and "007" as numbers."""
    assert from_suri("//+5").address == from_suri("//5").address
    assert from_suri("//007").address == from_suri("//7").address
    assert from_suri("//5x").address != from_suri("//5").address


def test_a_bad_secret_uri_is_refused_without_echoing_it() -> None:
    words = DEV_PHRASE.split()
    typo = " ".join([*words[:-1], "walks"])
    with pytest.raises(BadRequest, match="not a BIP39 phrase") as caught:
        from_suri(typo + "//Alice")
    assert "walks" not in caught.value.message and "bottom" not in caught.value.message
    with pytest.raises(BadRequest, match="takes no ///password"):
        from_suri("0x" + "11" * 32 + "///secret")


def test_a_commune_key_file_is_imported_as_commune_writes_it() -> None:
    """commune keeps substrate-interface's Keypair fields, JSON inside {"data": ...}."""
    made = substrateinterface.Keypair.create_from_uri(DEV_PHRASE + "//commune")
    state = {
        "crypto_type": 1,
        "seed_hex": made.seed_hex,  # None: a derived key has no seed of its own
        "derive_path": "//commune",
        "path": "alice",
        "ss58_format": 42,
        "public_key": made.public_key.hex(),
        "private_key": made.private_key.hex(),
        "mnemonic": DEV_PHRASE,
        "ss58_address": made.ss58_address,
    }
    key = from_commune(json.dumps({"data": json.dumps(state)}))
    assert isinstance(key, SrKeypair) and key.address == made.ss58_address
    ed = substrateinterface.Keypair.create_from_mnemonic(
        DEV_PHRASE, crypto_type=substrateinterface.KeypairType.ED25519
    )
    seed = ed.seed_hex if isinstance(ed.seed_hex, str) else ed.seed_hex.hex()
    ed_state = {"crypto_type": 0, "seed_hex": seed, "ss58_address": ed.ss58_address}
    assert from_commune(json.dumps(ed_state)).address == ed.ss58_address
    with pytest.raises(BadRequest, match=r"ss58_address is .*, not the file's"):
        from_commune(json.dumps({**state, "ss58_address": ed.ss58_address}))
    with pytest.raises(BadRequest, match=r"public_key is .*, not the file's"):
        from_commune(json.dumps({**state, "ss58_address": None, "public_key": "00" * 32}))
    with pytest.raises(BadRequest, match="derive_path is text"):
        from_commune(json.dumps({**state, "private_key": None, "derive_path": ["//x"]}))
    with pytest.raises(BadRequest, match="nests deeper"):
        from_commune("[" * 60_000)
    with pytest.raises(BadRequest, match="encrypted"):
        from_commune("$NACL" + "00" * 40)


@pytest.mark.parametrize("crypto_type", [1, 0], ids=["sr25519", "ed25519"])
def test_a_hotkey_file_of_todays_bittensor_is_imported(tmp_path: Path, crypto_type: int) -> None:
    import bittensor

    wallet = bittensor.Wallet(name="w", hotkey="h", path=str(tmp_path))
    wallet.create_new_hotkey(overwrite=True, suppress=True, crypto_type=crypto_type)
    text = (tmp_path / "w" / "hotkeys" / "h").read_text()
    key = from_bittensor_hotkey(text)
    assert (key.address, key.scheme) == (
        wallet.hotkey.ss58_address,
        "sr25519" if crypto_type else "ed25519",
    )


def test_the_sr25519_vectors_hold() -> None:
    v = protocol_vectors()
    s, r = v["sr25519"], v["request"]
    alice = from_suri(s["suri"])
    assert (alice.address, alice.public_key.hex()) == (s["address"], s["public_key_hex"])
    assert chain_code("Alice").hex() == s["junction_chain_code_hex"]
    for derived in s["derived"]:
        key = from_suri(derived["suri"])
        assert derived.get("address", key.address) == key.address
        assert derived.get("public_key_hex", key.public_key.hex()) == key.public_key.hex()
    q = s["request"]
    signing = request_signing_bytes(
        r["subject"],
        q["reply_subject"],
        r["actor_time"],
        r["actor_nonce"],
        r["body"].encode(),
        timeout=r["actor_timeout"],
    )
    assert signing.decode() == q["signing_bytes"]
    assert q["signed_message"] == "sr25519\n" + q["signing_bytes"]
    headers = {
        "Actor-Key": s["address"],
        "Actor-Time": r["actor_time"],
        "Actor-Nonce": r["actor_nonce"],
        "Actor-Timeout": r["actor_timeout"],
        "Actor-Scheme": q["scheme_header"],
    }
    for signature in (q["signature_hex"], q["wrapped_signature_hex"]):
        sealed = headers | {"Actor-Signature": signature}
        meta = verify_request(r["subject"], q["reply_subject"], sealed, r["body"].encode())
        assert (meta.key, meta.scheme) == (s["address"], "sr25519")
    vouch = s["vouch"]
    assert (
        Keypair(bytes.fromhex(vouch["connection_seed_hex"])).address
        == (vouch["connection_address"])
    )
    with pytest.raises(Unauthorized, match="expired"):  # it verifies; its time is past
        read_vouch(vouch["token"], vouch["connection_address"])
    with pytest.raises(Unauthorized, match="bad signature"):
        read_vouch(vouch["token"], Keypair.generate().address)
    # What lasts (a vouch, a delegation) is never taken as a wallet's <Bytes> wrap: a page
    # that gets a wallet to sign some text gets no lasting power from it.
    connection = Keypair.generate().address
    fresh = vouch_for(alice, connection)
    _, _, expires, _ = fresh.split(";")
    wrapped = b"<Bytes>sr25519\nactorbus/2\nconnect\n%s\n%s</Bytes>" % (
        connection.encode(),
        expires.encode(),
    )
    read_vouch(fresh, connection)
    with pytest.raises(Unauthorized, match="bad signature"):
        read_vouch(fresh.rsplit(";", 1)[0] + ";" + alice.sign(wrapped).hex(), connection)


# -- on a real node ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    """`actor up -d` of echo on the embedded default (auth callout, policy, jobs,
    gateway); the role `ops` may call echo, talk and jobs, the public role nothing."""
    gateway = str(free_port())
    with embedded(tmp_path_factory.mktemp("identity"), ACTOR_GATEWAY_PORT=gateway) as bus:
        bus.actor(
            "policy",
            "role",
            "add",
            "ops",
            "--allow",
            "echo/*",
            "--allow",
            "talk/*",
            "--allow",
            "jobs/*",
        )
        bus.env["GATEWAY"] = f"http://127.0.0.1:{gateway}"
        yield bus


def settings_of(bus: Bus) -> Settings:
    return Settings.from_env(bus.env)


async def forward_as(key: SrKeypair | Keypair, bus: Bus, **options: Any) -> Any:
    async with Client(key, settings=settings_of(bus), **options) as client:
        return await client.request("echo", "forward", ["hi"])


async def grant(bus: Bus, address: str, role: str = "ops") -> None:
    """As the node's admin (its home's key), give ``address`` ``role``."""
    settings = settings_of(bus)
    async with Client(settings=settings) as admin:
        await admin.call(settings.policy, "add_user", address, role)


async def granted(bus: Bus, key: SrKeypair | Keypair, role: str = "ops") -> None:
    """``key`` gets ``role``, and its next connection is let call with it."""
    await grant(bus, key.address, role)

    async def check() -> None:
        assert await forward_as(key, bus) == "hi"

    await eventually(check, timeout=10)


def test_a_key_from_a_secret_uri_calls_from_the_cli(bus: Bus) -> None:
    address = bus.actor("key", "import", "alice", "--suri", "//Alice").strip()
    assert address == "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
    shown = json.loads(bus.actor("key", "show", "alice"))
    assert (shown["address"], shown["scheme"]) == (address, "sr25519")
    refused = bus.run("call", "--key", "alice", "echo/forward", "hi")
    assert refused.returncode != 0 and "403" in refused.stderr
    bus.actor("policy", "user", "add", "alice", "--role", "ops")
    deadline = time.monotonic() + 10
    while (done := bus.run("call", "--key", "alice", "echo/forward", "hi")).returncode:
        assert time.monotonic() < deadline, done.stderr
        time.sleep(0.2)
    assert json.loads(done.stdout) == "hi"
    # A caller's key may not read the registry, nor call what its role does not allow: the
    # server's refusals are the command's answers (a 403, or $SRV.INFO), not warnings.
    assert "WARNING" not in done.stderr + refused.stderr, done.stderr + refused.stderr
    again = bus.run("key", "import", "alice", "--suri", "//Bob")
    assert again.returncode != 0 and "already exists" in again.stderr
    secret = bus.run("key", "import", "eve", "--suri", "-", input="//Eve")
    assert secret.stdout.strip() == "5HGjWAeFDfFCWPsjFQdVV2Msvz2XtMktvgocEZcCj68kUMaw"
    both = bus.run("key", "import", "x", "--suri", "//X", "--commune", str(ROOT / "README.md"))
    assert both.returncode == 2 and "one of" in both.stderr
    fifo = bus.settings.home / "hotkey.fifo"
    os.mkfifo(fifo)
    piped = bus.run("key", "import", "x", "--bittensor-hotkey", str(fifo))
    assert piped.returncode != 0 and "not a regular file" in piped.stderr


async def test_a_bittensor_hotkey_calls_from_python_with_sessions_and_jobs(
    bus: Bus, tmp_path: Path
) -> None:
    wallet = bittensor_wallet.Wallet(name="miner", hotkey="default", path=str(tmp_path))
    wallet.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    hotkey_file = tmp_path / "miner" / "hotkeys" / "default"
    address = bus.actor("key", "import", "miner", "--bittensor-hotkey", str(hotkey_file))
    assert address.strip() == wallet.hotkey.ss58_address
    key = Keystore(settings_of(bus).home).caller("miner")
    with pytest.raises(Forbidden):
        await forward_as(key, bus)
    await granted(bus, key)
    async with Client(key, settings=settings_of(bus)) as client:
        assert [await client.call("echo", "forward", "hi") for _ in range(2)] == ["hi"] * 2
        assert isinstance(client.sessions.held("echo", key), Session)  # the second's
        job = await client.submit("echo/forward", [["a"], ["b"]])
        await job.close()
        status = await job.wait()
        assert status["done"] == 2, status
        results = [r["value"] for r in await job.page()]
        assert sorted(results) == ["a", "b"]


async def test_a_role_of_one_function_calls_in_a_session(bus: Bus) -> None:
    """Every caller's connection may ask any actor for a session (PROTOCOL.md §5): before,
    the server refused `actor.echo._session` to a role that allows only echo/forward, so
    its calls could never go in one."""
    bus.actor("policy", "role", "add", "narrow", "--allow", "echo/forward")
    key = Keypair.generate()
    await granted(bus, key, "narrow")
    async with Client(key, settings=settings_of(bus)) as client:
        assert [await client.call("echo", "forward", "hi") for _ in range(2)] == ["hi"] * 2
        assert isinstance(client.sessions.held("echo", key), Session)


class Talker(Actor):
    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i


async def test_an_sr25519_caller_steers_a_stream(bus: Bus) -> None:
    """A window of 2 over 10 chunks: the caller's credits (signed sr25519) must reach the
    actor for the stream to end."""
    key = from_suri("//Dave")
    await granted(bus, key)
    settings = settings_of(bus)
    async with serve(Talker(), name="talk", settings=settings), Client(key, settings=settings) as c:
        chunks = c.stream("talk", "count", 10, _window=2)
        assert [i async for i in chunks] == list(range(10))


async def test_a_commune_key_calls_through_the_gateway(bus: Bus) -> None:
    """A body signed as commune signs it (substrate-interface's sr25519, with or without
    polkadot-js's wrap), judged by the signer's role."""
    signer = substrateinterface.Keypair.create_from_uri("//Ferdie")
    url = bus.env["GATEWAY"] + "/echo/forward"

    def body(**extra: Any) -> dict[str, Any]:
        data = json.dumps(
            {"target": "echo/forward", "args": ["hi"], "kwargs": {}, "timestamp": time.time()}
        )
        message = f"<Bytes>{data}</Bytes>" if extra.pop("wrap", False) else data
        signature = signer.sign(message.encode()).hex()
        return {"data": data, "signature": signature, "address": signer.ss58_address, **extra}

    async with httpx.AsyncClient(timeout=10) as http:
        refused = await http.post(url, json=body())
        assert refused.status_code == 403, refused.text  # verified, and public may not
        await grant(bus, signer.ss58_address)

        async def allowed() -> None:
            response = await http.post(url, json=body())
            assert response.status_code == 200 and response.json() == "hi", response.text

        await eventually(allowed, timeout=10)
        for extra in ({"crypto_type": 1}, {"crypto_type": "sr25519"}, {"wrap": True}):
            response = await http.post(url, json=body(**extra))
            assert response.status_code == 200, (extra, response.text)
        wrong = await http.post(url, json=body(crypto_type="ed25519"))
        assert wrong.status_code == 401, wrong.text  # Ferdie's key is no ed25519 key
        odd = await http.post(url, json=body(crypto_type=True))
        assert odd.status_code == 400 and "crypto_type" in odd.json()["error"]
        once = body()
        assert (await http.post(url, json=once)).status_code == 200
        replayed = await http.post(url, json=once)
        assert replayed.status_code == 401 and "replayed" in replayed.json()["error"]


async def test_a_bittensor_sdk_request_calls_through_the_gateway(bus: Bus, tmp_path: Path) -> None:
    """bittensor's own btauth/1 signing (``bittensor.http_auth.sign``, which replaced the
    dendrite) on a plain httpx request: judged by the hotkey's role; each way of reusing
    or bending a signed request is a 401."""
    import bittensor
    from bittensor import http_auth

    wallet = bittensor.Wallet(name="validator", hotkey="default", path=str(tmp_path))
    wallet.create_new_hotkey(overwrite=True, suppress=True)
    hotkey = wallet.hotkey.ss58_address
    gateway, body = bus.env["GATEWAY"], b'{"args": ["hi"]}'
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        receiver = (await http.get("/health")).json()["address"]

        def signed(path: str = "/echo/forward", **options: Any) -> dict[str, str]:
            options = {"body": body, "receiver_ss58": receiver, **options}
            return http_auth.sign(wallet, method="POST", path=path, **options)

        async def post(headers: dict[str, str], content: bytes = body) -> httpx.Response:
            sent = {"Content-Type": "application/json", **headers}
            return await http.post("/echo/forward", content=content, headers=sent)

        refused = await post(signed())
        assert refused.status_code == 403, refused.text  # verified, and public may not
        await grant(bus, hotkey)

        async def allowed() -> None:
            response = await post(signed())
            assert response.status_code == 200 and response.json() == "hi", response.text

        await eventually(allowed, timeout=10)
        query = http_auth.sign(
            wallet, method="GET", path="/echo/add?a=1&b=2", receiver_ss58=receiver
        )
        assert (await http.get("/echo/add?a=1&b=2", headers=query)).json() == 3.0
        once = signed()
        assert (await post(once)).status_code == 200
        attacks = {
            "replayed": (once, body),
            "signed for this gateway": (signed(receiver_ss58=hotkey), body),
            "must be signed for": (signed(receiver_ss58=None), body),
            "within": (signed(nonce_ns=time.time_ns() - 120 * 10**9), body),
            "bad signature": (signed("/echo/add"), body),  # for another function
            "signature": (signed(), b'{"args": ["changed"]}'),
            "": (signed() | {"X-Bittensor-Crypto": "ed25519"}, body),
        }
        for reason, (headers, content) in attacks.items():
            response = await post(headers, content)
            assert response.status_code == 401, (reason, response.text)
            assert reason in response.json()["error"], (reason, response.text)


# -- attacks on the bus ------------------------------------------------------------------


@asynccontextmanager
async def plain(bus: Bus, **options: Any) -> AsyncIterator[nats.NATS]:
    """A plain nats-py connection to the node (with ``options``: credentials)."""

    async def quiet(exc: Exception) -> None:
        pass

    nc = nats.NATS()
    try:
        await nc.connect(
            bus.url, allow_reconnect=False, connect_timeout=3, error_cb=quiet, **options
        )
        yield nc
    finally:
        # Refused too: else its socket is closed by whichever later test collects it.
        await nc.close()


async def status_of(nc: nats.NATS, headers: dict[str, str], reply: str, body: bytes) -> Any:
    sub = await nc.subscribe(reply, max_msgs=1)
    await nc.publish(FORWARD, body, reply=reply, headers=headers)
    msg = await sub.next_msg(timeout=5)
    meta = verify_reply(msg.headers, msg.data, headers["Actor-Nonce"])
    return meta.status, msgspec.json.decode(msg.data)


def as_vouched(key: SrKeypair, connection: Keypair | None = None) -> dict[str, Any]:
    """nats-py options to connect as ``key``: a connection nkey and ``key``'s vouch."""
    connection = connection or Keypair.generate()
    return {
        "nkeys_seed_str": encode_nkey_seed(connection.seed),
        "token": vouch_for(key, connection.address),
        "inbox_prefix": inbox_of(key.public_key),
    }


async def test_a_plain_nats_client_connects_as_an_sr25519_caller(bus: Bus) -> None:
    """What PROTOCOL.md §5 says, with nats-py alone: a vouched connection has the caller's
    role (the server lets it call echo) and its own inbox only."""
    charlie, eve = from_suri("//Charlie"), from_suri("//Eve")
    await granted(bus, charlie)
    body = b'{"args":["by the book"]}'
    async with plain(bus, **as_vouched(charlie)) as nc:
        reply = nc.new_inbox()
        assert reply.startswith(inbox_of(charlie.public_key))
        headers = sign_request(charlie, FORWARD, reply, body)
        assert headers["Actor-Scheme"] == "sr25519"
        assert await status_of(nc, headers, reply, body) == (200, "by the book")
        sub = await nc.subscribe(inbox_of(eve.public_key) + ".>")  # another's inbox
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.5)
        assert nc.last_error is not None and "permissions violation" in str(nc.last_error)


def forged_vouch(key: SrKeypair, connection: str, expires_ms: int) -> str:
    from actorbus.bus.vouch import _signing_bytes

    signature = key.sign_protocol(_signing_bytes(connection, expires_ms)).hex()
    return f"sr25519;{key.address};{expires_ms};{signature}"


@pytest.mark.parametrize("attack", ["copied", "expired", "forged", "lasting", "unsigned"])
async def test_a_vouch_cannot_be_copied_forged_or_stretched(bus: Bus, attack: str) -> None:
    """Each way of connecting as Charlie without Charlie's key now is refused by the
    server: the connection never opens."""
    charlie, mallory = from_suri("//Charlie"), from_suri("//Mallory")
    mine = Keypair.generate()
    now_ms = int(time.time() * 1000)
    token = {
        # Charlie's real vouch, for another connection key (seen on the wire).
        "copied": lambda: vouch_for(charlie, Keypair.generate().address),
        "expired": lambda: forged_vouch(charlie, mine.address, now_ms - 1000),
        # Mallory's signature, Charlie's address.
        "forged": lambda: vouch_for(mallory, mine.address).replace(
            mallory.address, charlie.address
        ),
        "lasting": lambda: forged_vouch(charlie, mine.address, now_ms + 86_400_000),
        "unsigned": lambda: f"sr25519;{charlie.address};{now_ms + 60_000};" + "00" * 64,
    }[attack]()
    options = as_vouched(charlie, mine) | {"token": token}
    with pytest.raises(nats.errors.Error):
        async with plain(bus, **options) as nc:
            await nc.flush(timeout=2)


def sr25519_request(key: SrKeypair, reply: str, body: bytes) -> dict[str, str]:
    return sign_request(key, FORWARD, reply, body)


@pytest.mark.parametrize(
    "attack",
    [
        "no scheme header",
        "scheme swapped to ed25519",
        "ed25519 signature said to be sr25519",
        "scheme not covered",
        "unknown scheme",
        "identity key",
    ],
)
async def test_a_signature_counts_only_in_the_scheme_it_says(bus: Bus, attack: str) -> None:
    """Requests that the actor must refuse (401), from a stranger's connection; the
    same request made properly is served."""
    grace = from_suri("//Grace")
    ed = Keypair.generate()
    body = b'{"args":["x"]}'
    await granted(bus, grace)
    async with plain(bus, **as_vouched(grace)) as nc:
        reply = nc.new_inbox()
        good = sr25519_request(grace, reply, body)
        assert (await status_of(nc, good, nc.new_inbox() + "x", body))[0] == 401  # bound
        assert (await status_of(nc, good, reply, body))[0] == 200
        reply = nc.new_inbox()
        headers = sr25519_request(grace, reply, body)
        signing = request_signing_bytes(
            FORWARD, reply, headers["Actor-Time"], headers["Actor-Nonce"], body
        )
        if attack == "no scheme header":
            del headers["Actor-Scheme"]
        elif attack == "scheme swapped to ed25519":
            headers["Actor-Scheme"] = "ed25519"
        elif attack == "ed25519 signature said to be sr25519":
            headers = sign_request(ed, FORWARD, reply, body) | {"Actor-Scheme": "sr25519"}
        elif attack == "scheme not covered":  # a signature of the ed25519 bytes
            headers["Actor-Signature"] = grace.sign(signing).hex()
        elif attack == "unknown scheme":
            headers["Actor-Scheme"] = "ecdsa"
        else:  # a key any signature verifies under, in lax code
            headers["Actor-Key"] = "5C4hrfjw9DjXZTzV3MwzrrAr9P1MJhSrvWGWqi1eSuyUpnhM"
        status, answer = await status_of(nc, headers, reply, body)
        assert status == 401, answer
        assert any(word in answer["error"] for word in ("signature", "Scheme", "weak")), answer


def test_actors_and_nodes_refuse_to_sign_with_an_sr25519_key(tmp_path: Path) -> None:
    store = Keystore(tmp_path)
    store.add("hot", from_suri("//Alice"))
    assert store.caller("hot").scheme == "sr25519"
    with pytest.raises(BadRequest, match="sr25519 key: it can call actors"):
        store.load("hot")
    assert (tmp_path / "keys" / "hot.key").stat().st_mode & 0o077 == 0
    assert store.signer("hot").address == from_suri("//Alice").address

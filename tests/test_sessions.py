"""Sessions (PROTOCOL.md §4b): one signed handshake, then calls authenticated by a MAC;
each way a session call can be wrong is refused before anything runs."""

from __future__ import annotations

import time
from typing import Any

import anyio
import msgspec
import nacl.public
import pytest
from support import Probe, body, eventually, request_on

from actorbus import Client, Forbidden, Settings, serve
from actorbus.actors.policy import Policy
from actorbus.bus import NATS, Keypair, connect, sign_request, verify_reply
from actorbus.bus.sessions import H_SESSION, SESSION_FN, SessionGrant, mac_request, open_grant
from actorbus.bus.subjects import call_subject
from actorbus.bus.wire import H_MAC
from actorbus.client.sessions import Session


async def handshake(
    nc: NATS, key: Keypair, name: str, ttl: float = 60.0
) -> tuple[SessionGrant, bytes]:
    exchange = nacl.public.PrivateKey.generate()
    payload = body(bytes(exchange.public_key).hex(), ttl)
    subject, reply = call_subject(name, SESSION_FN), nc.new_inbox()
    headers = sign_request(key, subject, reply, payload)
    msg = await request_on(nc, subject, payload, headers, reply, 5)
    meta = verify_reply(msg.headers, msg.data, headers["Actor-Nonce"])
    assert meta.status == 200, msg.data
    grant = msgspec.json.decode(msg.data, type=SessionGrant)
    return grant, open_grant(grant, exchange)


async def session_call(
    nc: NATS,
    key: Keypair,
    name: str,
    session: tuple[SessionGrant, bytes],
    payload: bytes,
    *,
    headers: dict[str, str] | None = None,
    reply: str = "",
    fn: str = "forward",
) -> tuple[int, Any, dict[str, str]]:
    """A session call (sent with ``headers`` made for ``reply``, if given); returns (status,
    body, headers) with the reply checked: by its MAC when it has one, else by its
    signature."""
    grant, session_key = session
    subject = call_subject(name, fn)
    reply = reply or nc.new_inbox()
    if headers is None:
        headers = mac_request(session_key, key.address, grant.ticket, subject, reply, payload)
    msg = await request_on(nc, subject, payload, headers, reply, 5)
    meta = verify_reply(msg.headers, msg.data, headers["Actor-Nonce"], session_key=session_key)
    return meta.status, msgspec.json.decode(msg.data), dict(msg.headers or {})


async def test_a_session_call_is_answered_with_a_mac(settings: Settings, name: str) -> None:
    key = Keypair.generate()
    async with serve(Probe(), name=name, settings=settings), connect(settings.url) as nc:
        session = await handshake(nc, key, name)
        status, reply, headers = await session_call(nc, key, name, session, body("hi"))
        assert (status, reply) == (200, "hi")
        assert H_MAC in headers and "Actor-Signature" not in headers
        # the same session, a fresh nonce: still good; the caller is the handshake's key
        status, who, _ = await session_call(nc, key, name, session, body(), fn="whoami")
        assert who["caller"] == key.address


async def test_a_client_calls_in_a_session_from_its_second_call(
    settings: Settings, name: str
) -> None:
    """The default: a one-off call is signed (no handshake for one call), the calls after
    it go in a session; `session=False` or the setting turned off sign every call."""
    async with serve(Probe(), name=name, settings=settings):
        off = msgspec.structs.replace(settings, sessions=False)
        for options, expected in [
            ({}, [False, True, True]),
            ({"session": False}, [False] * 3),
            ({"settings": off}, [False] * 3),
        ]:
            async with Client(**{"settings": settings, **options}) as client:
                assert [await client.call(name, "in_session") for _ in range(3)] == expected


async def test_session_calls_work_on_every_replica(settings: Settings, name: str) -> None:
    key = Keypair.generate()
    async with (
        serve(Probe(), name=name, settings=settings) as a,
        serve(Probe(), name=name, settings=settings) as b,
        connect(settings.url) as nc,
    ):
        session = await handshake(nc, key, name)
        for i in range(20):
            assert (await session_call(nc, key, name, session, body(f"n{i}")))[:2] == (200, f"n{i}")
        served = [h.pipeline.stats["forward"].num_requests for h in (a, b)]
        assert all(n > 0 for n in served), served


async def test_altered_bytes_are_401(settings: Settings, name: str) -> None:
    key = Keypair.generate()
    async with serve(Probe(), name=name, settings=settings), connect(settings.url) as nc:
        session = await handshake(nc, key, name)
        grant, session_key = session
        subject, inbox = call_subject(name, "forward"), nc.new_inbox()
        headers = mac_request(
            session_key, key.address, grant.ticket, subject, inbox, body("paid 1")
        )
        sent = {"headers": headers, "reply": inbox}
        status, reply, _ = await session_call(nc, key, name, session, body("paid 9"), **sent)
        assert (status, reply["error"]) == (401, "bad session MAC")
        # a ticket with a later expiry: the key derived from it is another one
        sid, _, expires = grant.ticket.partition(".")
        longer = dict(headers, **{H_SESSION: f"{sid}.{int(expires) + 3_600_000}"})
        status, reply, _ = await session_call(
            nc, key, name, session, body("paid 1"), headers=longer, reply=inbox
        )
        assert (status, reply["error"]) == (401, "bad session MAC")
        # someone else's key with this session
        other = dict(headers, **{"Actor-Key": Keypair.generate().address})
        status, reply, _ = await session_call(
            nc, key, name, session, body("paid 1"), headers=other, reply=inbox
        )
        assert status == 401
        # the envelope sent for another inbox: the reply subject is in the MAC
        status, reply, _ = await session_call(
            nc, key, name, session, body("paid 1"), headers=headers
        )
        assert (status, reply["error"]) == (401, "bad session MAC")


async def test_a_replayed_session_call_is_401_on_any_replica(settings: Settings, name: str) -> None:
    key = Keypair.generate()
    async with (
        serve(Probe(), name=name, settings=settings) as a,
        serve(Probe(), name=name, settings=settings) as b,
        connect(settings.url) as nc,
    ):
        session = await handshake(nc, key, name)
        grant, session_key = session
        subject = call_subject(name, "forward")
        for i in range(8):
            payload, inbox = body(f"call {i}"), nc.new_inbox()
            headers = mac_request(session_key, key.address, grant.ticket, subject, inbox, payload)
            sent = {"headers": headers, "reply": inbox}
            assert (await session_call(nc, key, name, session, payload, **sent))[0] == 200
            for _ in range(4):  # the queue group spreads these over both replicas
                status, reply, _ = await session_call(nc, key, name, session, payload, **sent)
                assert (status, reply["error"]) == (401, "replayed nonce")
        refused = [h.pipeline.stats["forward"].num_errors for h in (a, b)]
        assert all(n > 0 for n in refused), refused


async def test_an_expired_session_is_401_and_the_client_opens_another(
    settings: Settings, name: str
) -> None:
    key = Keypair.generate()
    async with (
        serve(Probe(), name=name, settings=settings),
        connect(settings.url) as nc,
        Client(key, settings=settings, session=True, session_ttl=1.0) as client,
    ):
        session = await handshake(nc, key, name, ttl=0.5)
        assert (await session_call(nc, key, name, session, body("in time")))[0] == 200
        await anyio.sleep(0.6)
        status, reply, _ = await session_call(nc, key, name, session, body("late"))
        assert (status, reply["error"]) == (401, "session expired: open a new one")

        assert await client.call(name, "forward", "zero") == "zero"  # signed: the first
        assert await client.call(name, "forward", "one") == "one"
        first = client.sessions.held(name, key)
        assert isinstance(first, Session)
        await anyio.sleep(1.1)  # past its end: the next call opens a new session
        assert await client.call(name, "forward", "two") == "two"
        assert client.sessions.held(name, key) not in (first, None)


async def test_a_bad_handshake_is_refused(settings: Settings, name: str) -> None:
    key = Keypair.generate()
    async with serve(Probe(), name=name, settings=settings), connect(settings.url) as nc:
        subject = call_subject(name, SESSION_FN)
        for args, error in [
            (["not hex", 60], "exchange_key must be an X25519 public key"),
            (["ab" * 32, 7200], "ttl must be seconds in (0, 3600]"),
        ]:
            payload, inbox = body(*args), nc.new_inbox()
            headers = sign_request(key, subject, inbox, payload)
            msg = await request_on(nc, subject, payload, headers, inbox, 5)
            assert msg.headers is not None and msg.headers["Actor-Status"] == "400"
            assert error in msgspec.json.decode(msg.data)["error"]
        # a session does not open another one: that takes the key's own signature
        session = await handshake(nc, key, name)
        status, reply, _ = await session_call(
            nc, key, name, session, body("ab" * 32, 60), fn=SESSION_FN
        )
        assert status == 400 and "signs" in reply["error"]


async def test_a_revoked_role_applies_to_a_live_session(settings: Settings, name: str) -> None:
    member = Keypair.generate()
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        serve(Probe(), name=name, settings=settings),
        Client(settings=settings) as admin,
        Client(member, settings=settings, session=True) as m,
    ):
        await admin.call(settings.policy, "set_role", "member", [f"{name}/forward"])
        await admin.call(settings.policy, "add_user", member.address, "member")

        async def allowed() -> None:
            assert await m.call(name, "forward", "hi") == "hi"

        await eventually(allowed)
        await allowed()  # a second call at least: in a session
        assert isinstance(m.sessions.held(name, member), Session)
        await admin.call(settings.policy, "rm_user", member.address)
        revoked = time.monotonic()

        async def refused() -> None:
            with pytest.raises(Forbidden):
                await m.call(name, "forward", "still?")

        await eventually(refused)
        assert time.monotonic() - revoked < 1.0


async def test_the_policy_actor_takes_signed_calls_only(settings: Settings) -> None:
    async with (
        serve(Policy(), name=settings.policy, settings=settings),
        Client(settings=settings, session=True) as admin,
        connect(settings.url) as nc,
    ):
        for _ in range(2):  # the second call asks for a session: it grants none
            assert await admin.call(settings.policy, "admins")
        assert isinstance(admin.sessions.held(settings.policy, admin.key), float)  # signs
        subject = call_subject(settings.policy, "admins")
        inbox, ticket = nc.new_inbox(), f"{'0' * 32}.{2**40}"
        forged = mac_request(b"k" * 32, admin.key.address, ticket, subject, inbox, b"")
        msg = await request_on(nc, subject, b"", forged, inbox, 5)
        assert msg.headers is not None and msg.headers["Actor-Status"] == "401"
        assert "takes no sessions" in msgspec.json.decode(msg.data)["error"]

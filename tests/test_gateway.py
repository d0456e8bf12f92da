"""The HTTP gateway with real actors, a real policy and a real nats-server: every identity
mode, every status from its real cause, the limits, OpenAPI, and the CLI for tokens."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from click.testing import CliRunner
from support import Probe, env_of, eventually, impostor

from actorbus import Actor, Client, Forbidden, Keypair, Settings, serve
from actorbus.actors.gateway import Gateway
from actorbus.actors.jobs import Jobs
from actorbus.actors.policy import Policy
from actorbus.bus import (
    connect,
    relay_reply,
    sign_relayed,
    sign_reply,
    sign_request,
    token_keypair,
    verify_reply,
)
from actorbus.bus.subjects import call_subject
from actorbus.cli import main
from actorbus.host.policy import PolicyState


def _policy_of(actor: Actor, whole: Actor) -> tuple[Any, ...]:
    """What ``actor`` holds of the policy, and what it should hold of ``whole``'s (a host
    holds the records of the keys that called it only)."""
    view, of = actor.__actorbus_policy__, whole.__actorbus_policy__
    assert view is not None and of is not None

    def held(records: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in records.items() if view.knows(key)}

    def shared(state: PolicyState) -> tuple[Any, ...]:
        return (state.admins, state.roles, state.tokens, state.forwarders, state.config)

    return (
        (shared(view.state), view.state.users, view.state.stakes),
        (shared(of.state), held(of.state.users), held(of.state.stakes)),
    )


class Stack:
    """A policy, a probe actor and a gateway, served in this process."""

    def __init__(
        self, settings: Settings, name: str, actors: tuple[Policy, Probe, Gateway], admin: Client
    ) -> None:
        self.settings = settings
        self.name = name
        self.actors = actors
        self.gateway = actors[2]
        self.admin = admin
        # A JSON body unless a test says otherwise (the gateway takes no other POST).
        json_body = {"Content-Type": "application/json"}
        self.http = httpx.AsyncClient(base_url=self.gateway.url, timeout=15, headers=json_body)

    async def policy(self, fn: str, *args: Any) -> Any:
        """Call the policy actor, then wait until the probe and the gateway (which follow
        its bucket through a watch) have the change."""
        result = await self.admin.call(self.settings.policy, fn, *args)
        policy, *others = self.actors

        async def settled() -> None:
            for actor in others:
                holds, should = _policy_of(actor, policy)
                assert holds == should

        await eventually(settled)
        return result

    async def open_to(self, role: str) -> None:
        """Let ``role`` call the probe."""
        await self.policy("set_role", role, [f"{self.name}/*"])


@asynccontextmanager
async def stack(settings: Settings, name: str, **changes: Any) -> AsyncIterator[Stack]:
    here = msgspec.structs.replace(settings, gateway_port=0, **changes)
    actors = (Policy(), Probe(), Gateway())
    async with (
        serve(actors[0], name=here.policy, settings=here),
        serve(actors[1], name=name, settings=here),
        serve(actors[2], settings=here),
        Client(settings=here) as admin,
    ):
        result = Stack(here, name, actors, admin)
        async with result.http:
            yield result


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "code", "id"} and body["code"] == response.status_code
    assert body["id"]
    return body


async def test_anonymous_callers_are_public(settings: Settings, name: str) -> None:
    async with stack(settings, name) as s:
        response = await s.http.post(f"/{name}/forward", json={"args": ["hi"]})
        assert response.status_code == 403
        assert "role 'public' may not call" in error_of(response)["error"]
        response = await s.http.post(f"/{name}/info", json={})
        assert response.status_code == 200 and response.json()["name"] == name  # whitelisted
        await s.open_to("public")
        response = await s.http.post(f"/{name}/forward", json={"args": ["hi"]})
        assert (response.status_code, response.json()) == (200, "hi")
        response = await s.http.get(f"/{name}/same", params={"value": 50})
        assert (response.status_code, response.json()) == (200, 50)  # idempotent: GET-able
        response = await s.http.get(f"/{name}/add", params={"a": 2, "b": 3, "scale": 10})
        assert response.status_code == 405  # not marked idempotent: POST it
        # A string parameter takes the text as it is, digits or not (the fuzz test's find).
        response = await s.http.get(f"/{name}/text", params={"message": "3"})
        assert (response.status_code, response.json()) == (200, "3")
        me = (await s.http.post(f"/{name}/whoami", json={})).json()
        mine = s.gateway.identities.anonymous("127.0.0.1").address
        assert me == {"caller": mine, "forwarder": ""} and mine != s.gateway.address
        # the address's anonymous key has called before: its calls now go in a session
        assert (await s.http.post(f"/{name}/in_session", json={})).json() is True


async def test_a_signed_call_passes_through_untouched(settings: Settings, name: str) -> None:
    """End to end: the actor verifies the web caller; the gateway cannot alter the call,
    and the caller can verify the actor's answer itself."""
    async with stack(settings, name) as s:
        await s.open_to("public")
        await s.policy("add_forwarder", s.gateway.address)  # trusted, and still no forger
        caller = Keypair.generate()
        body = b'{"args":["signed"]}'
        headers = sign_relayed(caller, call_subject(name, "forward"), body)
        response = await s.http.post(f"/{name}/forward", content=body, headers=headers)
        assert (response.status_code, response.json()) == (200, "signed")
        canonical = {k.title(): v for k, v in response.headers.items()}  # HTTP names any case
        meta = verify_reply(canonical, response.content, headers["Actor-Nonce"])
        actor = (await s.admin.entries(name))[0].address
        assert (meta.status, meta.key) == (200, actor)
        me_headers = sign_relayed(caller, call_subject(name, "whoami"), b"{}")
        me = await s.http.post(f"/{name}/whoami", content=b"{}", headers=me_headers)
        assert me.json() == {"caller": caller.address, "forwarder": ""}
        # Replayed, altered, forged, or signed for another function: 401, gateway or not.
        again = await s.http.post(f"/{name}/forward", content=body, headers=headers)
        assert (again.status_code, error_of(again)["error"]) == (401, "replayed nonce")
        fresh = sign_relayed(caller, call_subject(name, "forward"), body)
        altered = await s.http.post(f"/{name}/forward", content=b'{"args":["evil"]}', headers=fresh)
        assert altered.status_code == 401
        forged = dict(fresh, **{"Actor-Key": Keypair.generate().address})
        assert (
            await s.http.post(f"/{name}/forward", content=body, headers=forged)
        ).status_code == 401
        moved = await s.http.post(f"/{name}/add", content=body, headers=fresh)
        assert moved.status_code == 401
        get = await s.http.get(f"/{name}/forward", headers=fresh)
        assert get.status_code == 400  # a signed call is a POST of what was signed
        # A web caller cannot borrow the gateway's trust to speak for someone else.
        admin = s.admin.key.address
        nonce = secrets.token_hex(16)
        posing = sign_request(
            caller,
            call_subject(name, "whoami"),
            relay_reply("gateway", nonce),
            b"{}",
            nonce=nonce,
            on_behalf=admin,
        )
        refused = await s.http.post(f"/{name}/whoami", content=b"{}", headers=posing)
        assert refused.status_code == 403 and "not a trusted forwarder" in refused.text


async def test_key_sign_makes_headers_for_curl(settings: Settings, name: str) -> None:
    """`actor key sign NAME/FN BODY --curl`, as README shows it with curl's -d: its
    Content-Type header stands in for the form type -d sends (which the gateway refuses:
    a web page may send a form anywhere)."""
    async with stack(settings, name) as s:
        body = '{"args": ["from curl"]}'
        env = {"ACTOR_HOME": str(settings.home)}
        signed = CliRunner().invoke(
            main, ["key", "sign", f"{name}/forward", body, "--curl"], env=env
        )
        assert signed.exit_code == 0, signed.output
        headers = dict(o.removeprefix("-H").split(":", 1) for o in signed.stdout.split())
        response = await s.http.post(f"/{name}/forward", content=body, headers=headers)
        assert (response.status_code, response.json()) == (200, "from curl")
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        fresh = CliRunner().invoke(
            main, ["key", "sign", f"{name}/forward", body, "--curl"], env=env
        )
        headers = dict(o.removeprefix("-H").split(":", 1) for o in fresh.stdout.split())
        response = await s.http.post(f"/{name}/forward", content=body, headers=headers | form)
        assert error_of(response)["code"] == 415
        again = CliRunner().invoke(main, ["key", "sign", f"{name}/forward", body], env=env)
        fresh = json.loads(again.stdout)
        altered = await s.http.post(f"/{name}/forward", content=body.upper(), headers=fresh)
        assert altered.status_code == 401


async def test_bearer_tokens(settings: Settings, name: str) -> None:
    async with stack(settings, name) as s:
        issued = await s.policy("issue_token", "web", "user")
        token = issued["token"]
        auth = {"Authorization": f"Bearer {token}"}
        assert token not in json.dumps(await s.policy("tokens"))  # only its hash is kept
        assert json.dumps(await s.policy("log", 1000)).count(token) == 0
        response = await s.http.post(f"/{name}/whoami", json={}, headers=auth)
        assert response.json() == {"caller": issued["address"], "forwarder": ""}  # its own key
        # the token's key calls in a session from its second call (the gateway holds it)
        response = await s.http.post(f"/{name}/in_session", json={}, headers=auth)
        assert (response.status_code, response.json()) == (200, True)
        for bad in ("Bearer abt_" + "x" * 43, "Bearer nope", "Basic dXNlcjpwYXNz"):
            refused = await s.http.post(f"/{name}/forward", json={}, headers={"Authorization": bad})
            assert refused.status_code == 401
        await s.policy("revoke_token", "web")
        started = time.monotonic()
        while (await s.http.post(f"/{name}/forward", json={}, headers=auth)).status_code != 401:
            assert time.monotonic() - started < 1.0, "a revoked token still works after 1 s"
            await anyio.sleep(0.02)
        assert (await s.policy("tokens")) == []


async def test_a_revoked_token_stops_its_jobs_and_its_key(settings: Settings, name: str) -> None:
    """Before, a revoked token's jobs ran on, and its key (which the holder can derive)
    still read them and added slices."""
    async with stack(settings, name) as s, serve(Jobs(), name=s.settings.jobs, settings=s.settings):
        issued = await s.policy("issue_token", "web", "user")
        await s.policy("set_role", "user", [f"{name}/*", f"{s.settings.jobs}/*"])
        auth = {"Authorization": f"Bearer {issued['token']}"}
        job_body = {"work": f"{name}/slow", "slices": [[0.5]] * 40, "options": {"concurrency": 1}}
        job = (await s.http.post("/api/v0/job", json=job_body, headers=auth)).json()
        await s.policy("revoke_token", "web")

        async def cancelled() -> None:
            status = await s.admin.call(s.settings.jobs, "status", job)
            assert status["state"] == "cancelled" and status["done"] < 40

        await eventually(cancelled, timeout=10)
        key = token_keypair(issued["token"])
        async with Client(key, settings=s.settings) as holder:
            for fn, args in (("forward", ["x"]),):
                with pytest.raises(Forbidden, match="revoked"):
                    await holder.call(name, fn, *args)
            with pytest.raises(Forbidden, match="revoked"):
                await holder.call(s.settings.jobs, "add_slices", job, [[1]])
            with pytest.raises(Forbidden, match="revoked"):
                await holder.call(s.settings.jobs, "status", job)


def web_client(s: Stack, address: str) -> httpx.AsyncClient:
    """An HTTP client of the gateway from ``address`` (any 127/8 address is this machine)."""
    return httpx.AsyncClient(
        base_url=s.gateway.url,
        timeout=15,
        headers={"Content-Type": "application/json"},
        transport=httpx.AsyncHTTPTransport(local_address=address),
    )


async def test_anonymous_clients_are_not_one_owner(settings: Settings, name: str) -> None:
    """Before, every anonymous web caller was the gateway's key: one quota for all, and
    each could list, read, add to and cancel the others' jobs. Now each address is an
    owner of its own."""
    async with (
        stack(settings, name, quota_window=30.0) as s,
        serve(Jobs(), name=s.settings.jobs, settings=s.settings),
        web_client(s, "127.0.0.21") as one,
        web_client(s, "127.0.0.22") as other,
    ):
        await s.policy("set_role", "public", [f"{name}/*", f"{s.settings.jobs}/*"])
        await s.policy("set_config", None, 2.0)  # unstaked keys: one call a 30 s window
        first = await one.post(f"/{name}/forward", json={"args": ["a"]})
        second = await one.post(f"/{name}/forward", json={"args": ["a"]})
        assert (first.status_code, second.status_code) == (200, 429)
        theirs = await other.post(f"/{name}/forward", json={"args": ["b"]})
        assert theirs.status_code == 200  # a quota of its own
        await s.policy("set_config", None, 6000.0)
        job = (await one.post("/api/v0/job", json={"work": f"{name}/slow", "slices": [[5]]})).json()
        assert [j["id"] for j in (await one.get("/api/v0/jobs")).json()] == [job]
        assert (await other.get("/api/v0/jobs")).json() == []
        for method, path in (("GET", "status"), ("GET", "result"), ("POST", "close")):
            response = await other.request(method, f"/api/v0/job/{job}/{path}", json={})
            assert response.status_code == 403, (method, path)
        added = await other.post(f"/api/v0/job/{job}/slices", json={"slices": [[1]]})
        assert added.status_code == 403
        assert (await other.delete(f"/api/v0/job/{job}")).status_code == 403
        assert (await one.delete(f"/api/v0/job/{job}")).json()["state"] == "cancelled"


async def test_a_client_gets_its_share_and_no_more(settings: Settings, name: str) -> None:
    """One client holding its whole share of long calls or streams leaves the others
    served (before: one global limit, so 300 stalled readers took 49-89% of all calls)."""
    async with (
        stack(settings, name, gateway_client_concurrency=3, gateway_client_rate=1000.0) as s,
        web_client(s, "127.0.0.31") as greedy,
        web_client(s, "127.0.0.32") as fair,
    ):
        await s.open_to("public")

        async def hold() -> None:
            await greedy.post(f"/{name}/slow", json={"args": [1.5]})

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(hold)
            await anyio.sleep(0.5)
            over = await greedy.post(f"/{name}/forward", json={"args": ["x"]})
            assert over.status_code == 429 and "requests open" in error_of(over)["error"]
            # A fresh key per request signed end to end is no way out: counted by address.
            body = b'{"args": ["e2e"]}'
            fresh = sign_relayed(Keypair.generate(), call_subject(name, "forward"), body)
            escaped = await greedy.post(f"/{name}/forward", content=body, headers=fresh)
            assert escaped.status_code == 429
            assert (await fair.post(f"/{name}/forward", json={"args": ["y"]})).json() == "y"
        assert (await greedy.post(f"/{name}/forward", json={"args": ["x"]})).json() == "x"
    async with (
        stack(settings, name, gateway_client_rate=0.5) as s,
        web_client(s, "127.0.0.33") as fast,
        web_client(s, "127.0.0.34") as slow,
    ):
        await s.open_to("public")
        started = time.monotonic()
        statuses = [(await fast.get(f"/{name}/text")).status_code for _ in range(3)]
        limited = await fast.get(f"/{name}/text")
        if time.monotonic() - started < 1.5:  # within a token's time: one call went through
            assert statuses == [200, 429, 429] and limited.status_code == 429
            assert 0 < float(limited.headers["Retry-After"]) <= 2
        assert (await slow.get(f"/{name}/text")).status_code == 200


async def test_bad_credentials_spend_their_addresss_share(settings: Settings, name: str) -> None:
    """Requests the gateway refuses for their signature cost it a signature check each:
    they spend a share of their own per address, and once it is spent that address is
    429 before anything is checked, while other addresses go on."""
    async with (
        stack(settings, name, gateway_client_rate=0.5) as s,
        web_client(s, "127.0.0.51") as forger,
        web_client(s, "127.0.0.52") as other,
    ):
        await s.open_to("public")
        target = f"{name}/forward"
        victim = Keypair.generate().address
        forged = commune_body(Keypair.generate(), target, ["x"]) | {"address": victim}
        first = await forger.post(f"/{target}", json=forged)
        assert first.status_code == 401, first.text
        again = await forger.post(f"/{target}", json=forged)
        assert again.status_code == 429 and float(again.headers["Retry-After"]) > 0
        assert (await other.post(f"/{target}", json={"args": ["y"]})).json() == "y"


async def test_a_reader_that_stops_reading_loses_its_stream(settings: Settings, name: str) -> None:
    """A server-sent events stream counts against its client's share, and one whose
    reader stopped reading is ended after the stall timeout, its share given back."""
    changes = {
        "gateway_stall_timeout": 1.0,
        "gateway_client_concurrency": 1,
        "gateway_header_timeout": 1.0,  # also the grace before a closed connection is aborted
    }
    async with stack(settings, name, **changes) as s, web_client(s, "127.0.0.41") as http:
        await s.open_to("public")
        host, port = s.gateway.url.removeprefix("http://").rsplit(":", 1)
        async with await anyio.connect_tcp(host, int(port), local_host="127.0.0.41") as stalled:
            await stalled.send(
                f"GET /{name}/endless?size=60000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            )
            assert (await stalled.receive(4096)).startswith(b"HTTP/1.1 200 ")
            # ... and reads no more: its place is taken while the gateway waits on it.
            held = await http.post(f"/{name}/forward", json={"args": ["x"]})
            assert held.status_code == 429

            async def released() -> None:
                response = await http.post(f"/{name}/forward", json={"args": ["x"]})
                assert response.status_code == 200

            await eventually(released, timeout=20)
            # ... and its connection is reset, not closed (asyncio would hold a closed
            # one until its data was read, then end it cleanly).
            await anyio.sleep(2.5)

            async def drained() -> None:
                with anyio.fail_after(10):
                    while True:  # what had reached this side's buffer, then the reset
                        await stalled.receive(1 << 20)

            with pytest.raises((anyio.BrokenResourceError, ConnectionResetError)):
                await drained()


async def test_a_token_has_its_own_quota(settings: Settings, name: str) -> None:
    async with stack(settings, name, quota_window=30.0) as s:
        issued = await s.policy("issue_token", "metered", "user")
        await s.policy("set_config", None, 0.0)
        await s.policy("set_stake", issued["address"], 2)  # one call a 30 s window
        auth = {"Authorization": f"Bearer {issued['token']}"}
        statuses = []
        for _ in range(3):
            response = await s.http.post(f"/{name}/forward", json={"args": ["x"]}, headers=auth)
            statuses.append(response.status_code)
        assert statuses.count(200) == 1 and statuses.count(429) == 2
        assert 0 < float(response.headers["Retry-After"]) <= 30


def commune_body(
    key: Keypair, target: str, args: list[Any], *, age: float = 0.0, wrap: bool = False
) -> dict[str, Any]:
    data = json.dumps(
        {"target": target, "args": args, "kwargs": {}, "timestamp": time.time() - age}
    )
    signed = f"<Bytes>{data}</Bytes>" if wrap else data
    return {"data": data, "signature": key.sign(signed.encode()).hex(), "address": key.address}


async def test_commune_bodies_call_as_their_signer(settings: Settings, name: str) -> None:
    async with stack(settings, name) as s:
        caller = Keypair.generate()
        await s.policy("add_user", caller.address, "user")
        whoami, forward = f"{name}/whoami", f"{name}/forward"
        refused = await s.http.post(f"/{whoami}", json=commune_body(caller, whoami, []))
        assert (
            refused.status_code == 403 and "not a trusted forwarder" in error_of(refused)["error"]
        )
        await s.policy("add_forwarder", s.gateway.address)
        response = await s.http.post(f"/{whoami}", json=commune_body(caller, whoami, []))
        assert response.json() == {"caller": caller.address, "forwarder": s.gateway.address}
        wrapped = await s.http.post(
            f"/{forward}", json=commune_body(caller, forward, ["w"], wrap=True)
        )
        assert (wrapped.status_code, wrapped.json()) == (200, "w")
        body = commune_body(caller, forward, ["once"])
        assert (await s.http.post(f"/{forward}", json=body)).json() == "once"
        again = await s.http.post(f"/{forward}", json=body)  # its signature was used
        stale = await s.http.post(f"/{forward}", json=commune_body(caller, forward, [], age=120))
        ahead = await s.http.post(f"/{forward}", json=commune_body(caller, forward, [], age=-45))
        tampered = commune_body(caller, forward, ["a"])
        tampered["data"] = tampered["data"].replace('"a"', '"b"')
        changed = await s.http.post(f"/{forward}", json=tampered)
        assert [r.status_code for r in (again, stale, ahead, changed)] == [401] * 4
        assert "replayed" in error_of(again)["error"]
        # Signed for one function (or actor), it calls no other.
        elsewhere = commune_body(caller, forward, ["x"])
        moved = await s.http.post(f"/{whoami}", json=elsewhere)
        assert moved.status_code == 401 and "target" in error_of(moved)["error"]
        for stamp in ("NaN", "Infinity", "true"):  # never "too old", or not a time
            data = f'{{"target": "{forward}", "args": ["x"], "kwargs": {{}}, "timestamp": {stamp}}}'
            odd = {
                "data": data,
                "signature": caller.sign(data.encode()).hex(),
                "address": caller.address,
            }
            refused = await s.http.post(f"/{forward}", json=odd)
            assert refused.status_code == 401 and "timestamp" in error_of(refused)["error"], stamp
        unbound = commune_body(caller, forward, ["x"])
        unbound["data"] = unbound["data"].replace(f'"target": "{forward}", ', "")
        unbound["signature"] = caller.sign(unbound["data"].encode()).hex()
        assert (await s.http.post(f"/{forward}", json=unbound)).status_code == 401
        # A forwarded admin is not an admin: the probe's role rules apply to it.
        as_admin = await s.http.post(f"/{forward}", json=commune_body(s.admin.key, forward, ["x"]))
        assert as_admin.status_code == 403


async def test_a_commune_body_is_taken_once_by_all_replicas(settings: Settings, name: str) -> None:
    """Before, each replica remembered what it had seen: a body replayed on a second
    replica, or after a restart, was taken again."""
    async with stack(settings, name) as s:
        caller = Keypair.generate()
        await s.policy("add_user", caller.address, "user")
        await s.policy("add_forwarder", s.gateway.address)
        forward = f"{name}/forward"
        body = commune_body(caller, forward, ["once"])
        assert (await s.http.post(f"/{forward}", json=body)).json() == "once"
        other = Gateway()
        async with (
            serve(other, settings=s.settings),
            httpx.AsyncClient(base_url=other.url, timeout=15) as http,
        ):
            again = await http.post(f"/{forward}", json=body)
            assert again.status_code == 401 and "replayed" in error_of(again)["error"]
        restarted = Gateway()
        async with (
            serve(restarted, settings=s.settings),
            httpx.AsyncClient(base_url=restarted.url, timeout=15) as http,
        ):
            assert (await http.post(f"/{forward}", json=body)).status_code == 401


async def test_each_status_arrives_one_to_one(settings: Settings, name: str) -> None:
    async with stack(settings, name, gateway_timeout=1.0, max_body=4096) as s:
        await s.open_to("public")
        post = s.http.post
        assert (await post(f"/{name}/add", json={"args": ["x", 1]})).status_code == 400
        # An error quoting non-Latin-1 input still fits in an HTTP header (escaped).
        odd = await post(f"/{name}/add", json={"kwargs": {"\U0002378b": 1}})
        assert odd.status_code == 400 and r"\U0002378b" in odd.headers["actor-error"]
        assert "\U0002378b" in error_of(odd)["error"]
        assert (await post(f"/{name}/nope", json={})).status_code == 404
        assert (await post(f"/{name}/slow", json={"args": [5]})).status_code == 408
        too_big = await post(f"/{name}/forward", json={"args": ["x" * 5000]})
        assert too_big.status_code == 413
        boom = await post(f"/{name}/boom", json={})
        assert boom.status_code == 500 and "shadow" not in boom.text and error_of(boom)["id"]
        assert (await post(f"/{name}x/forward", json={})).status_code == 503
        assert (await post("/bad name/forward", json={})).status_code == 400
        huge = await post(f"/{name}/forward", json={}, headers={"X-Junk": "j" * 20_000})
        assert huge.status_code == 431
        for response in (too_big, boom, huge):
            error_of(response)
        # 504: something takes the request and never answers.
        async with connect(settings.url) as nc:
            silent = f"{name}silent"
            await nc.subscribe(f"actor.{silent}.*")
            await nc.flush()
            timed_out = await post(f"/{silent}/forward", json={})
            assert timed_out.status_code == 504, timed_out.text
            assert error_of(timed_out)["code"] == 504


async def test_an_actor_cannot_shape_the_http_response(settings: Settings, name: str) -> None:
    """A rogue actor (its own key, its replies signed) answers with a page of script, or
    with an interim 1xx status: the gateway serves neither as such. (The rogue answers
    `slow` at once, while the probe's replica is still sleeping.)"""
    async with stack(settings, name) as s, connect(settings.url) as nc:
        await s.open_to("public")
        key = s.actors[1].client.key  # the probe's own: its replies verify
        page = b"<script>alert(document.cookie)</script>"

        async def rogue(status: int, kind: str) -> httpx.Response:
            sub = await nc.subscribe(f"actor.{name}.slow")
            await nc.flush()
            try:
                call = anyio.create_task_group()
                async with call:
                    answers: list[httpx.Response] = []

                    async def post() -> None:
                        answers.append(await s.http.post(f"/{name}/slow", json={"args": [2]}))

                    call.start_soon(post)
                    msg = await sub.next_msg(timeout=5)
                    nonce = (msg.headers or {}).get("Actor-Nonce", "")
                    headers = sign_reply(key, nonce, status, page, content_type=kind)
                    await nc.publish(msg.reply, page, headers=headers)
                return answers[0]
            finally:
                await sub.unsubscribe()

        served = await rogue(200, "text/html")
        assert served.status_code == 200 and served.content == page
        assert served.headers["content-type"] == "application/octet-stream"
        assert served.headers["content-disposition"] == "attachment"
        assert served.headers["x-content-type-options"] == "nosniff"
        interim = await rogue(101, "application/json")
        assert interim.status_code == 502 and "status 101" in error_of(interim)["error"]


async def test_a_reply_that_does_not_verify_is_502(settings: Settings, name: str) -> None:
    """An impostor answers in the actor's name with its own key: the gateway refuses the
    reply rather than pass it on."""
    async with stack(settings, name) as s, connect(settings.url) as nc:
        await s.open_to("public")
        seen = set()
        async with impostor(nc, name, "forward"):
            for _ in range(10):
                response = await s.http.post(f"/{name}/forward", json={"args": ["real"]})
                seen.add(response.status_code)
                assert response.text != '"pwned"'
        assert 502 in seen


async def test_slow_clients_get_408_and_do_not_hold_the_gateway(
    settings: Settings, name: str
) -> None:
    async with stack(settings, name, gateway_read_timeout=0.5) as s:
        await s.open_to("public")
        host, port = s.gateway.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as slow:
            # Promises 100 bytes of body, sends one, and waits (in a thread: the gateway
            # runs on this test's event loop).
            slow.sendall(
                f"POST /{name}/forward HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
            )
            slow.settimeout(5)
            async with anyio.create_task_group() as tg:
                answers: list[bytes] = []

                async def wait() -> None:
                    answers.append(await anyio.to_thread.run_sync(slow.recv, 4096))

                tg.start_soon(wait)
                started = time.monotonic()
                fast = await s.http.post(f"/{name}/forward", json={"args": ["meanwhile"]})
                assert fast.json() == "meanwhile" and time.monotonic() - started < 0.5
        assert answers[0].startswith(b"HTTP/1.1 408")


async def test_the_concurrency_cap_answers_503(settings: Settings, name: str) -> None:
    """Two slots: one network (an IPv4 /24) may hold no more of them than are still free
    (one), and the other slot is another network's."""
    async with (
        stack(settings, name, gateway_max_concurrency=2) as s,
        web_client(s, "127.0.1.1") as other,
    ):
        await s.open_to("public")
        statuses: list[int] = []

        async def slow(http: httpx.AsyncClient) -> None:
            statuses.append((await http.post(f"/{name}/slow", json={"args": [0.5]})).status_code)

        async with anyio.create_task_group() as tg:
            for http in (s.http, s.http, other, other):
                tg.start_soon(slow, http)
        assert sorted(statuses) == [200, 200, 503, 503]


async def test_strangers_see_no_actors_unless_discovery_is_open(
    settings: Settings, name: str
) -> None:
    """Issue 30: a gateway listening beyond loopback showed anyone its actors (the
    dashboard, /docs, /openapi.json, /api/v0/actors: names, keys, calls, latency), and a
    stranger calling policy/oidc_bind was handed the command that would make its key a
    trusted forwarder. Now discovery takes a bearer token there unless
    ACTOR_GATEWAY_PUBLIC_DOCS opens it (tests serve on loopback only: closed by that
    setting here), and the stranger gets a plain 403."""
    beyond = Settings(gateway_host="0.0.0.0")
    assert not beyond.public_docs and Settings(gateway_host="::1").public_docs
    assert msgspec.structs.replace(beyond, gateway_public_docs=True).public_docs
    async with stack(settings, name, gateway_public_docs=False) as s:
        await s.open_to("public")
        issued = await s.policy("issue_token", "viewer", "user")
        token = {"Authorization": f"Bearer {issued['token']}"}
        for path in ("/", "/docs", "/openapi.json", "/api/v0/actors"):
            # An empty Authorization passed the gate as a token (the second attacker).
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": ""}):
                refused = await s.http.get(path, headers=headers)
                assert refused.status_code == 401, path
                assert name not in refused.text and error_of(refused)["code"] == 401
            assert (await s.http.get(path, headers=token)).status_code == 200, path
        # Calling is as it was: anyone may, as the policy says.
        assert (await s.http.get("/health")).status_code == 200
        called = await s.http.post(f"/{name}/forward", json={"args": ["x"]})
        assert (called.status_code, called.json()) == (200, "x")
        later = time.time() + 60
        bind = await s.http.post(
            f"/{s.settings.policy}/oidc_bind",
            json={"args": [Keypair.generate().address, "https://id.example", "x", "ops", later]},
        )
        assert bind.status_code == 403 and "trusted forwarder" in error_of(bind)["error"]
        assert "forwarder add" not in bind.text


async def test_cors_is_off_unless_configured(settings: Settings, name: str) -> None:
    origin = {"Origin": "https://example.org"}
    async with stack(settings, name) as s:
        response = await s.http.get("/health", headers=origin)
        assert "access-control-allow-origin" not in response.headers
    async with stack(settings, name, gateway_cors="https://example.org") as s:
        response = await s.http.get("/health", headers=origin)
        assert response.headers["access-control-allow-origin"] == "https://example.org"


async def test_openapi_docs_health_and_dashboard_data(settings: Settings, name: str) -> None:
    async with stack(settings, name) as s:
        other = f"{name}b"
        await s.policy("set_role", "public", [f"{name}/*", f"{other}/*"])
        first = await s.http.get("/openapi.json")  # httpx accepts gzip
        assert first.headers["content-encoding"] == "gzip"
        document = first.json()
        assert document["openapi"] == "3.1.0"
        etag = {"If-None-Match": first.headers["etag"]}
        unchanged = await s.http.get("/openapi.json", headers=etag)
        assert unchanged.status_code == 304 and not unchanged.content
        add = document["paths"][f"/{name}/add"]
        kwargs = add["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert kwargs["properties"]["kwargs"]["properties"]["a"] == {"type": "integer"}
        assert add["post"]["summary"] == "add(a: int, b: int, *, scale: int = 1) -> int"
        assert "get" not in add  # not idempotent
        text = document["paths"][f"/{name}/text"]
        assert {p["name"] for p in text["get"]["parameters"]} == {"message"}
        assert "429" in add["post"]["responses"]
        # A new actor shows up as it comes.
        async with serve(Probe(), name=other, settings=s.settings):
            await anyio.sleep(2.1)  # the registry cache
            changed = await s.http.get("/openapi.json", headers=etag)
            assert changed.status_code == 200 and f"/{other}/forward" in changed.json()["paths"]
        docs = await s.http.get("/docs")
        assert docs.status_code == 200 and "swagger-ui" in docs.text
        assert (await s.http.get("/health")).json()["status"] == "ok"
        await s.http.post(f"/{name}/forward", json={"args": ["x"]})
        overview = (await s.http.get("/api/v0/actors")).json()["actors"]
        probe = next(a for a in overview if a["name"] == name)
        assert probe["replicas"][0]["calls"] >= 1 and "forward" in probe["fns"]


async def test_strangers_are_shown_what_they_may_call(settings: Settings, name: str) -> None:
    """Before, anonymous callers saw every function (the policy's and node control's,
    admins' only) and where each replica runs (host names, process ids)."""
    async with stack(settings, name) as s:
        await s.policy("set_role", "public", [f"{name}/forward"])
        paths = (await s.http.get("/openapi.json")).json()["paths"]
        assert f"/{name}/forward" in paths and f"/{name}/add" not in paths
        policy = s.settings.policy
        assert not {f"/{policy}/{fn}" for fn in ("add_user", "add_admin", "issue_token")} & set(
            paths
        )
        assert not [p for p in paths if p.startswith("/node.")]
        overview = (await s.http.get("/api/v0/actors")).json()["actors"]
        probe = next(a for a in overview if a["name"] == name)
        assert "forward" in probe["fns"] and "add" not in probe["fns"]
        assert all(set(r) & {"node", "pid"} == set() for a in overview for r in a["replicas"])
        assert {a["name"] for a in overview} <= {name, s.settings.policy, "gateway"}
        listed = next((a for a in overview if a["name"] == policy), None)
        assert listed is None or "add_user" not in listed["fns"]
        # An admin's token sees everything, and where it runs.
        issued = await s.policy("issue_token", "ops", "user")
        await s.policy("add_admin", issued["address"])
        auth = {"Authorization": f"Bearer {issued['token']}"}
        paths = (await s.http.get("/openapi.json", headers=auth)).json()["paths"]
        assert f"/{name}/add" in paths and f"/{s.settings.policy}/add_user" in paths
        overview = (await s.http.get("/api/v0/actors", headers=auth)).json()["actors"]
        probe = next(a for a in overview if a["name"] == name)
        assert {"node", "pid"} <= set(probe["replicas"][0])
        bad = await s.http.get("/openapi.json", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401


def test_token_cli(settings: Settings) -> None:
    from processes import actor_serve

    env = env_of(settings)

    def actor(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
        return result.exit_code, result.stdout

    with actor_serve(settings.policy, env, target="actorbus.actors.policy:Policy"):
        code, out = actor("token", "new", "ci", "--role", "user")
        token = out.strip()
        assert code == 0 and token.startswith("abt_")
        code, out = actor("token", "ls", "--json")
        assert [t["name"] for t in json.loads(out)] == ["ci"] and token not in out
        assert actor("token", "revoke", "ci")[0] == 0
        assert json.loads(actor("token", "ls", "--json")[1]) == []


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:httpx")


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)"
)
async def test_the_dashboard_in_a_browser(settings: Settings, name: str) -> None:
    """A person opens the dashboard, sees the actor, calls it and reads the answer."""
    from playwright.async_api import async_playwright

    async with stack(settings, name) as s, async_playwright() as playwright:
        await s.open_to("public")
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = await browser.new_page()
            await page.goto(s.gateway.url + "/")
            row = page.locator(f'#actors tr[data-actor="{name}"]')
            await row.wait_for(timeout=10_000)
            assert "1" in await row.locator("td").nth(1).inner_text()  # one replica
            await page.select_option("#actor", name)
            await page.select_option("#fn", "forward")
            await page.fill("#args", '["from the browser"]')
            await page.click("#call")
            result = page.locator("#result")
            await result.filter(has_text="from the browser").wait_for(timeout=10_000)
            assert (await page.locator("#status").inner_text()).startswith("200")
            await page.select_option("#fn", "boom")
            await page.fill("#args", "[]")
            await page.click("#call")
            await page.locator("#status").filter(has_text="500").wait_for(timeout=10_000)
            assert "shadow" not in await result.inner_text()  # the error id, not the details
            await page.select_option("#fn", "tokens")  # a stream: its chunks as they come
            await page.fill("#args", '["one two three"]')
            await page.click("#call")
            status = page.locator("#status")
            await status.filter(has_text="200 after 3 chunks").wait_for(timeout=10_000)
            assert await result.inner_text() == "onetwothree"
            # Its CSP lets its own code run and nothing injected: an inline handler an
            # actor's answer could smuggle in is refused, and reported.
            violations = await page.evaluate(
                """() => new Promise(done => {
                    const seen = [];
                    document.addEventListener("securitypolicyviolation",
                        e => seen.push(e.violatedDirective));
                    const img = document.createElement("img");
                    img.setAttribute("onerror", "window.injected = true");
                    img.src = "data:,nope";
                    document.body.append(img);
                    setTimeout(() => done({seen, injected: window.injected === true}), 500);
                })"""
            )
            assert violations["injected"] is False
            assert any(v.startswith("script-src") for v in violations["seen"])
        finally:
            await browser.close()


async def test_dcp_rest_job_routes(settings: Settings, name: str) -> None:
    async with stack(settings, name) as s, serve(Jobs(), name=s.settings.jobs, settings=s.settings):
        auth = {
            "Authorization": f"Bearer {(await s.policy('issue_token', 'web', 'user'))['token']}"
        }
        job_body = {"work": f"{name}/add", "slices": [[1, 2], [3, 4]], "options": {"retries": 1}}
        refused = await s.http.post("/api/v0/job", json=job_body)  # anonymous: role public
        assert refused.status_code == 403
        created = await s.http.post("/api/v0/job", json=job_body, headers=auth)
        assert created.status_code == 200, created.text
        job = created.json()
        added = await s.http.post(
            f"/api/v0/job/{job}/slices", json={"slices": [[5, 6]]}, headers=auth
        )
        assert added.json() == [3, 3]
        assert (await s.http.post(f"/api/v0/job/{job}/close", headers=auth)).status_code == 200

        async def finished() -> None:
            status = (await s.http.get(f"/api/v0/job/{job}/status", headers=auth)).json()
            assert (status["state"], status["done"]) == ("finished", 3)

        await eventually(finished, timeout=10)
        got = await s.http.get(
            f"/api/v0/job/{job}/result", params=[("range", "1"), ("range", "3-9")], headers=auth
        )
        assert [(r["index"], r["value"]) for r in got.json()] == [(1, 3), (3, 11)]
        mine = (await s.http.get("/api/v0/jobs", headers=auth)).json()
        assert [j["id"] for j in mine] == [job]
        bad = await s.http.post(f"/api/v0/job/{job}/slices", json={"slice": []}, headers=auth)
        assert bad.status_code == 400 and "malformed body" in error_of(bad)["error"]

        other = {"Authorization": f"Bearer {(await s.policy('issue_token', 'x', 'user'))['token']}"}
        for method, path in (("GET", "status"), ("GET", "result"), ("POST", "close")):
            response = await s.http.request(method, f"/api/v0/job/{job}/{path}", headers=other)
            assert response.status_code == 403, (method, path)
        assert (await s.http.delete(f"/api/v0/job/{job}", headers=other)).status_code == 403

        slow = (
            await s.http.post(
                "/api/v0/job", json={"work": f"{name}/slow", "slices": [[5]] * 3}, headers=auth
            )
        ).json()
        cancelled = await s.http.delete(f"/api/v0/job/{slow}", headers=auth)
        assert cancelled.json()["state"] == "cancelled"
        spec = (await s.http.get("/openapi.json", headers=auth)).json()
        assert {"/api/v0/job", "/api/v0/job/{id}/result"} <= set(spec["paths"])
        anonymous = (await s.http.get("/openapi.json")).json()  # may not submit: not shown
        assert "/api/v0/job" not in anonymous["paths"]


def sse_events(text: str) -> list[tuple[str, Any]]:
    """``(event, data)`` of a text/event-stream body."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_a_streaming_function_is_server_sent_events(settings: Settings, name: str) -> None:
    async with stack(settings, name) as s:
        response = await s.http.get(f"/{name}/tokens", params={"text": "a b"})
        assert response.status_code == 403  # refused before a chunk: a plain HTTP error
        await s.open_to("public")
        url = f"{str(s.http.base_url).rstrip('/')}/{name}/tokens?text=to+be+streamed"
        done = await anyio.run_process(["curl", "-sN", "-D", "-", url])
        head, _, body = done.stdout.decode().partition("\r\n\r\n")
        assert "200" in head.splitlines()[0] and "text/event-stream" in head
        assert sse_events(body) == [
            ("chunk", "to"),
            ("chunk", "be"),
            ("chunk", "streamed"),
            ("end", {"status": 200}),
        ]
        response = await s.http.post(f"/{name}/tokens", json={"args": ["x y", True]})
        *chunks, (event, end) = sse_events(response.text)
        assert chunks == [("chunk", "x"), ("chunk", "y")] and event == "end"
        assert end["status"] == 500 and end["id"] and "secret" not in end["error"]
        document = (await s.http.get("/openapi.json")).json()
        ok = document["paths"][f"/{name}/tokens"]["post"]["responses"]["200"]
        assert "text/event-stream" in ok["content"]

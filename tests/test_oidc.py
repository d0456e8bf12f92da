"""OIDC logins at the gateway (issue 23, item 4), against a real local issuer: an HTTP
server on 127.0.0.1 serving its discovery document and JWKS and signing tokens with its
current key (joserfc), which it can rotate. Every call is a real HTTP request to a real
gateway in front of a real policy actor and probe on the test nats-server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import msgspec
import pytest
from click.testing import CliRunner
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from support import env_of, eventually
from test_gateway import Stack, error_of, stack, web_client

from actorbus import Forbidden, Keypair, Settings
from actorbus.bus import BadRequest, NotFound
from actorbus.cli import main
from actorbus.host.policy import (
    OidcIssuer,
    OidcLogin,
    OidcRule,
    PolicyState,
    check_issuer_url,
    issuer_id,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:httpx")

AUDIENCE = "actorbus-test"
SigningKey = RSAKey | ECKey


class Issuer:
    """An OpenID provider on 127.0.0.1: ``/.well-known/openid-configuration`` and
    ``/jwks`` (fetches counted; ``failing`` makes it answer 500), tokens signed with its
    current key."""

    def __init__(self) -> None:
        self.keys: list[SigningKey] = [_rsa()]
        self.fetches = 0
        self.failing = False
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if issuer.failing:
                    self.send_response(500)
                    self.end_headers()
                    return
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"}
                elif self.path == "/jwks":
                    issuer.fetches += 1
                    body = {"keys": [k.as_dict(private=False) for k in issuer.keys]}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def key(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self) -> SigningKey:
        """A new key signs from now on, and the old one is no longer published; returns
        the old one."""
        old = self.keys[-1]
        self.keys = [_rsa()]
        return old

    def claims(self, sub: str = "alice", **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.url, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 300}
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self, sub: str = "alice", *, key: SigningKey | None = None, kid: str = "", **claims: Any
    ) -> str:
        """A token for ``sub`` signed with ``key`` (default: the current one)."""
        key = key or self.key
        alg = "RS256" if isinstance(key, RSAKey) else "ES256"
        header = {"alg": alg, "typ": "JWT", "kid": kid or key.kid}
        return jwt.encode(header, self.claims(sub, **claims), key, algorithms=[alg])


def _rsa() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(4), "use": "sig"})


@contextmanager
def issuer() -> Iterator[Issuer]:
    made = Issuer()
    thread = threading.Thread(target=made.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield made
    finally:
        made.server.shutdown()
        made.server.server_close()
        thread.join(5)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token joserfc would not make: unsigned (``secret`` None), or HMAC'd with it."""
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if secret is None:
        return signing + "."
    return signing + "." + _b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def configure(s: Stack, idp: Issuer, *rules: tuple[str, str, str]) -> None:
    """Take ``idp``'s logins with these (claim, value, role) rules, and wait until the
    gateway and the probe know (they follow the policy bucket through a watch)."""
    policy = s.settings.policy
    await s.admin.call(policy, "add_oidc", idp.url, [AUDIENCE])
    for claim, value, role in rules:
        await s.admin.call(policy, "oidc_map", idp.url, claim, value, role)
    wanted = OidcIssuer(idp.url, [AUDIENCE], "", [OidcRule(*r) for r in rules])

    async def known() -> None:
        for actor in s.actors:
            view = actor.__actorbus_policy__
            assert view is not None and view.state.issuer(idp.url) == wanted

    await eventually(known)


async def ops_stack_ready(s: Stack, idp: Issuer) -> None:
    """Role ``ops`` may call the probe's ``forward`` and ``whoami``; ``groups=ops`` maps
    to it; the gateway is a trusted forwarder (as `actor up` makes it)."""
    await s.policy("set_role", "ops", [f"{s.name}/forward", f"{s.name}/whoami"])
    await s.policy("add_forwarder", s.gateway.address)
    await configure(s, idp, ("groups", "ops", "ops"))


async def test_a_login_has_the_role_its_claims_map_to(settings: Settings, name: str) -> None:
    with issuer() as idp:
        async with stack(settings, name) as s:
            await s.policy("set_role", "ops", [f"{name}/forward", f"{name}/whoami"])
            await configure(s, idp, ("groups", "ops", "ops"))
            token = idp.token("alice", groups=["staff", "ops"])
            # A gateway the policy does not trust as a forwarder cannot bind logins: 503.
            refused = await s.http.post(
                f"/{name}/forward", json={"args": ["x"]}, headers=bearer(token)
            )
            assert refused.status_code == 503
            assert "trusted forwarder" in error_of(refused)["error"]
            await s.policy("add_forwarder", s.gateway.address)
            ok = await s.http.post(f"/{name}/forward", json={"args": ["x"]}, headers=bearer(token))
            assert (ok.status_code, ok.json()) == (200, "x")
            # The key: HMAC of the gateway's seed, the issuer and the subject.
            label = f"actorbus/2\noidc\n{idp.url}\nalice".encode()
            derived = Keypair(hmac.new(s.gateway.client.key.seed, label, hashlib.sha256).digest())
            me = await s.http.post(f"/{name}/whoami", json={}, headers=bearer(token))
            assert me.json() == {"caller": derived.address, "forwarder": ""}
            assert await s.admin.call(s.settings.policy, "user2role", derived.address) == "ops"
            denied = await s.http.post(f"/{name}/add", json={"args": [1, 2]}, headers=bearer(token))
            assert denied.status_code == 403 and "role 'ops' may not call" in denied.text
            # A login no rule maps is refused, saying why (not silently public).
            other = idp.token("bob", groups=["dev"])
            nobody = await s.http.post(f"/{name}/whoami", json={}, headers=bearer(other))
            assert nobody.status_code == 403 and "no rule" in error_of(nobody)["error"]
            # A role named admin gives that role's rules, never the policy's admin rights.
            await s.policy("set_role", "admin", ["*/*"])
            await configure(s, idp, ("groups", "ops", "ops"), ("groups", "dev", "admin"))
            mine = await s.http.post(
                f"/{s.settings.policy}/add_admin",
                json={"args": [Keypair.generate().address]},
                headers=bearer(other),
            )
            assert mine.status_code == 403 and "only a policy admin" in mine.text
            # Unmapping a role takes it from the logins that hold it at once.
            await s.admin.call(s.settings.policy, "oidc_unmap", idp.url, "groups", "ops")

            async def lost() -> None:
                assert s.gateway.policy_state.role_of(derived.address) == "public"
                response = await s.http.post(f"/{name}/whoami", json={}, headers=bearer(token))
                assert response.status_code == 403

            await eventually(lost)


async def test_only_a_gateway_binds_and_only_a_mapped_role(settings: Settings, name: str) -> None:
    with issuer() as idp:
        async with stack(settings, name) as s:
            await s.policy("set_role", "ops", [f"{name}/*"])
            await configure(s, idp, ("groups", "ops", "ops"))
            policy, address = s.settings.policy, Keypair.generate().address
            later = time.time() + 60
            with pytest.raises(Forbidden, match="trusted forwarder"):  # even an admin
                await s.admin.call(policy, "oidc_bind", address, idp.url, "x", "ops", later)
            await s.policy("add_forwarder", s.admin.key.address)
            with pytest.raises(Forbidden, match="no rule"):
                await s.admin.call(policy, "oidc_bind", address, idp.url, "x", "user", later)
            with pytest.raises(NotFound):
                await s.admin.call(policy, "oidc_bind", address, "https://else", "x", "ops", later)
            await s.policy("add_user", address, "user")
            with pytest.raises(Forbidden, match="role of its own"):
                await s.admin.call(policy, "oidc_bind", address, idp.url, "x", "ops", later)
            short = Keypair.generate().address
            await s.admin.call(policy, "oidc_bind", short, idp.url, "y", "ops", time.time() + 0.3)
            await anyio.sleep(0.35)
            fresh = Keypair.generate().address
            bound = await s.admin.call(policy, "oidc_bind", fresh, idp.url, "x", "ops", 2e10)
            assert bound["expires"] <= time.time() + 86400  # at most a day

            async def pruned() -> None:  # a binding deletes logins that have expired
                view = s.actors[0].__actorbus_policy__  # the policy actor's: it holds all
                assert view is not None
                logins = view.state.logins
                assert fresh in logins and short not in logins

            await eventually(pruned)
            with pytest.raises(BadRequest, match="role 'ops' is what OIDC logins"):
                await s.admin.call(policy, "rm_role", "ops")


def test_a_binding_ends_with_its_token() -> None:
    """The role of a login's key lasts until its binding's expiry, even in a decision
    already made (no memo outlives it)."""
    state = PolicyState()
    url = "https://idp.example"
    rules = [OidcRule("groups", "ops", "ops")]
    state.apply("role.ops", msgspec.json.encode({"allow": ["a/*"]}))
    state.apply("oidc." + issuer_id(url), msgspec.json.encode(OidcIssuer(url, ["x"], "", rules)))
    key = Keypair.generate().address
    login = OidcLogin(url, "alice", "ops", time.time() + 0.3)
    state.apply("login." + key, msgspec.json.encode(login))
    assert state.role_of(key) == "ops" and state.decide(key, "a", "f").allowed
    time.sleep(0.35)
    assert state.role_of(key) == "public" and not state.decide(key, "a", "f").allowed


def test_a_login_bound_later_is_decided_anew_and_leaves_quota_leases_be() -> None:
    """A key already decided (public) gets its login's role as soon as the binding
    arrives; and a binding keeps the policy's revision, whose change has every replica
    give back every key's quota lease (a login each second made them all lease again)."""
    state = PolicyState()
    url = "https://idp.example"
    state.apply("role.ops", msgspec.json.encode({"allow": ["a/*"]}))
    rules = [OidcRule("groups", "ops", "ops")]
    state.apply("oidc." + issuer_id(url), msgspec.json.encode(OidcIssuer(url, ["x"], "", rules)))
    key = Keypair.generate().address
    assert not state.decide(key, "a", "f").allowed
    revision = state.revision
    login = OidcLogin(url, "bob", "ops", time.time() + 60)
    state.apply("login." + key, msgspec.json.encode(login))
    assert state.decide(key, "a", "f").allowed and state.revision == revision
    state.apply("login." + key, None)
    assert not state.decide(key, "a", "f").allowed and state.revision == revision


async def test_one_login_is_one_identity(settings: Settings, name: str) -> None:
    """The same subject is one key (one quota, one client's share) whatever its token
    and wherever it comes from; two subjects are two."""
    with issuer() as idp:
        async with (
            stack(settings, name, gateway_client_rate=0.5) as s,
            web_client(s, "127.0.0.51") as here,
            web_client(s, "127.0.0.52") as there,
            web_client(s, "127.0.0.53") as elsewhere,
        ):
            await ops_stack_ready(s, idp)
            alice, bob = bearer(idp.token(groups="ops")), bearer(idp.token("bob", groups="ops"))
            started = time.monotonic()
            one = await here.post(f"/{name}/forward", json={"args": ["x"]}, headers=alice)
            two = await there.post(f"/{name}/forward", json={"args": ["x"]}, headers=alice)
            if time.monotonic() - started < 1.5:  # within a token's time: one went through
                assert (one.status_code, two.status_code) == (200, 429)
                assert "at this gateway" in error_of(two)["error"]
            # (from an address of its own: a login counts against its address too)
            theirs = await elsewhere.post(f"/{name}/forward", json={"args": ["y"]}, headers=bob)
            assert theirs.status_code == 200
        async with stack(settings, name) as s:
            await ops_stack_ready(s, idp)
            # The fair-share stack's policy, config and all (its bucket outlives its stack;
            # a quota_window setting only seeds a new one): the window is set here, or it
            # stays 60 s, two calls, and again was refused only for the first stack's call.
            await s.policy("set_config", 30.0, 2.0)  # unstaked keys: one call a 30 s window
            if time.time() % 30 > 25:  # both calls in one window, not either side of its end
                await anyio.sleep(30 - time.time() % 30 + 0.05)
            first = await s.http.post(
                f"/{name}/forward", json={"args": ["a"]}, headers=bearer(idp.token(groups="ops"))
            )
            again = await s.http.post(
                f"/{name}/forward",
                json={"args": ["a"]},
                headers=bearer(idp.token(groups="ops", iat=int(time.time()) - 5)),
            )
            assert (first.status_code, again.status_code) == (200, 429)
            bob = await s.http.post(
                f"/{name}/forward",
                json={"args": ["b"]},
                headers=bearer(idp.token("bob", groups="ops")),
            )
            assert bob.status_code == 200  # a quota of its own


async def test_bad_tokens_are_401_with_their_reason(settings: Settings, name: str) -> None:
    with issuer() as idp, issuer() as stranger:
        async with stack(settings, name) as s:
            await ops_stack_ready(s, idp)
            now = int(time.time())
            good = idp.claims(groups="ops")
            header = {"typ": "JWT", "kid": idp.key.kid}
            public_pem = idp.key.as_pem(private=False)
            attacker = _rsa()
            ec = ECKey.generate_key("P-256", parameters={"kid": idp.key.kid})
            cases = {
                "expired": idp.token(groups="ops", exp=now - 120, iat=now - 600),
                "not valid yet": idp.token(groups="ops", nbf=now + 600),
                "issued in the future": idp.token(groups="ops", iat=now + 600),
                "no expiry": idp.token(groups="ops", exp=None),
                "wrong audience": idp.token(groups="ops", aud="someone-else"),
                "wrong audience ": idp.token(groups="ops", aud=["a", "b"]),
                "unknown issuer": stranger.token(groups="ops"),
                "bad signature": idp.token(groups="ops", key=attacker, kid=idp.key.kid),
                "unknown kid": idp.token(groups="ops", key=attacker),
                "alg 'none'": forged({**header, "alg": "none"}, good, None),
                "alg 'HS256'": forged({**header, "alg": "HS256"}, good, public_pem),
                "does not fit its key": idp.token(groups="ops", key=ec),
                "over 8192": idp.token(groups="ops", padding="x" * 9000),
                "no subject": idp.token(sub="", groups="ops"),
                "not base64url JSON": "bm90IGpzb24.e30.c2ln",
            }
            for reason, token in cases.items():
                response = await s.http.post(f"/{name}/forward", json={}, headers=bearer(token))
                assert response.status_code == 401, (reason, response.text)
                error = error_of(response)["error"]
                assert reason.strip() in error, (reason, error)
                assert token not in response.text and token[:40] not in error
            good_one = await s.http.post(
                f"/{name}/forward", json={"args": ["ok"]}, headers=bearer(idp.token(groups="ops"))
            )
            assert good_one.json() == "ok"
            assert stranger.fetches == 0  # an issuer nobody configured is never asked


async def test_a_rotated_key_works_and_a_removed_one_stops(settings: Settings, name: str) -> None:
    with issuer() as idp:
        async with stack(settings, name, oidc_refetch=0.5) as s:
            await ops_stack_ready(s, idp)
            before = idp.token(groups="ops")
            assert (
                await s.http.post(f"/{name}/whoami", json={}, headers=bearer(before))
            ).is_success
            old = idp.rotate()
            after = idp.token(groups="ops")

            async def works() -> None:
                response = await s.http.post(f"/{name}/whoami", json={}, headers=bearer(after))
                assert response.status_code == 200, response.text

            await eventually(works, timeout=5)  # no restart: the unknown kid made it refetch
            stale = idp.token(groups="ops", key=old)
            response = await s.http.post(f"/{name}/whoami", json={}, headers=bearer(stale))
            assert response.status_code == 401 and "unknown kid" in error_of(response)["error"]


async def test_made_up_kids_do_not_hammer_the_issuer(settings: Settings, name: str) -> None:
    with issuer() as idp, issuer() as down:
        async with stack(settings, name, oidc_refetch=2.0, oidc_jwks_ttl=1.0) as s:
            await ops_stack_ready(s, idp)
            ok = await s.http.post(
                f"/{name}/whoami", json={}, headers=bearer(idp.token(groups="ops"))
            )
            assert ok.status_code == 200 and idp.fetches == 1
            started = time.monotonic()
            for _ in range(30):
                token = idp.token(groups="ops", kid=secrets.token_hex(8))
                response = await s.http.post(f"/{name}/whoami", json={}, headers=bearer(token))
                assert response.status_code == 401 and "unknown kid" in response.text
            allowed = 1 + int((time.monotonic() - started) / 2.0) + 1
            assert idp.fetches <= allowed, (idp.fetches, allowed)
            # Keys held outlive a failing issuer; with none held, 503 saying why.
            idp.failing = True
            await anyio.sleep(2.1)  # the keys are stale and may be fetched again
            held = await s.http.post(
                f"/{name}/whoami", json={}, headers=bearer(idp.token(groups="ops"))
            )
            assert held.status_code == 200
            down.failing = True
            await configure(s, down, ("groups", "ops", "ops"))
            response = await s.http.post(
                f"/{name}/whoami", json={}, headers=bearer(down.token(groups="ops"))
            )
            assert (
                response.status_code == 503 and "cannot be fetched" in error_of(response)["error"]
            )


@pytest.mark.parametrize("url", ["http://[127.0.0.1", "http://[::1]:port/x", "ftp://x"])
def test_a_url_that_is_no_issuers_is_one_clear_error(url: str) -> None:
    with pytest.raises(BadRequest, match=r"no URL|must be"):
        check_issuer_url(url)


def test_policy_oidc_cli(settings: Settings) -> None:
    from processes import actor_serve

    env = env_of(settings)

    def actor(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, ["policy", "oidc", *args], env=env)
        return result.exit_code, result.stdout, result.stderr

    url = "https://idp.example.com/realms/a"
    with actor_serve(settings.policy, env, target="actorbus.actors.policy:Policy"):
        assert actor("add", "--issuer", url, "--audience", "web")[0] == 0
        code, _, said = actor("add", "--issuer", "http://idp.example.com", "--audience", "web")
        assert code == 2 and "must be https" in said and "loopback" in said
        code, _, said = actor("map", "--issuer", url, "--claim", "groups=ops", "--role", "nope")
        assert code == 3 and said.count("\n") == 1 and "no role named 'nope'" in said
        code, _, said = actor("map", "--issuer", url, "--claim", "groups", "--role", "user")
        assert code == 2 and "NAME=VALUE" in said
        assert actor("map", "--issuer", url, "--claim", "groups=ops", "--role", "user")[0] == 0
        code, out, _ = actor("ls", "--json")
        assert code == 0 and json.loads(out) == [
            {
                "issuer": url,
                "audiences": ["web"],
                "jwks": "",
                "rules": [{"claim": "groups", "value": "ops", "role": "user"}],
            }
        ]
        code, out, _ = actor("ls")
        assert code == 0 and "groups=ops -> user" in out
        assert actor("unmap", "--issuer", url, "--claim", "groups=ops")[0] == 0
        code, _, said = actor("unmap", "--issuer", url, "--claim", "groups=ops")
        assert code == 6 and "no rule groups=ops" in said
        assert actor("rm", "--issuer", url)[0] == 0
        code, _, said = actor("rm", "--issuer", url)
        assert code == 6 and "no OIDC issuer" in said
        assert json.loads(actor("ls", "--json")[1]) == []

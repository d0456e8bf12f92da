"""Property-based fuzzing of a real replica from a raw NATS connection.

Hypothesis builds requests from every header and body class the protocol knows (signed
and not, each ``Actor-*`` header missing, mangled, oversized; JSON, MessagePack, junk and
deeply nested bodies; unknown functions; extra headers) and sends them to one `actor serve`
process. For each: one reply, signed by the actor, with a documented status, an error reply
small and printable. Afterwards: no request was answered twice or not at all, the
replica's own stats count every one, and it still serves calls. Bounded: a few hundred
examples, a handler deadline of 2 s.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from processes import actor_serve
from support import Inbox, srv_stats

from actorbus.bus import JSON, MSGPACK, Keypair, connect, sign_request, verify_reply
from actorbus.bus.subjects import call_subject
from actorbus.bus.wire import request_nonce

pytestmark = pytest.mark.asyncio(loop_scope="module")

STATUSES = {200, 400, 401, 403, 404, 408, 413, 429, 500, 503}
MAX_BODY = 64 * 1024
KEY = Keypair.generate()
HEADERS = ["Actor-Key", "Actor-Time", "Actor-Nonce", "Actor-Signature", "Actor-Timeout"]
FUNCTIONS = ["forward", "add", "boom", "unserializable", "guarded", "ranked", "info", "nope"]
TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


@pytest.fixture(scope="module")
def replica(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `actor serve` of the probe actor for the module; yields its name."""
    name = f"fuzz{secrets.token_hex(4)}"
    env = {
        "ACTOR_NATS_URL": nats_url,
        "ACTOR_HOME": str(tmp_path_factory.mktemp("fuzz")),
        "ACTOR_MAX_BODY": str(MAX_BODY),
        "ACTOR_HANDLER_TIMEOUT": "2",
        "ACTOR_POLICY": f"nopolicy{secrets.token_hex(4)}",
    }
    with actor_serve(name, env, target="tests/support.py:Probe") as process:
        yield name
        assert process.poll() is None, "the replica died"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def inbox(nats_url: str) -> AsyncIterator[Inbox]:
    async with connect(nats_url) as nc, Inbox(nc) as collector:
        yield collector


text = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def bodies(draw: st.DrawFn, content_type: str | None) -> bytes:
    kind = draw(
        st.sampled_from(["good"] * 3 + ["call"] * 3 + ["value", "bytes", "nested", "large"])
    )
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    if kind == "nested":
        depth = draw(st.integers(1, 20_000))
        return b"[" * depth + b"]" * depth
    if kind == "large":
        return b"x" * draw(st.integers(MAX_BODY - 10, MAX_BODY + 10_000))
    value: Any = draw(values)
    if kind == "good":  # what forward and add accept
        value = {"args": draw(st.sampled_from([[], ["hi"], [1, 2], [1, 2.5]]))}
    elif kind == "call":
        value = {
            "args": draw(st.lists(values, max_size=4)),
            "kwargs": draw(st.dictionaries(text, values, max_size=3)),
        }
    return msgspec.msgpack.encode(value) if content_type == MSGPACK else msgspec.json.encode(value)


header_values = (
    text
    | st.builds(lambda n: "A" * n, st.integers(0, 20_000))
    | st.sampled_from(["", " ", "0", "-1", "1e309", "nan", "5" * 48, "ab" * 16, "00" * 64])
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """(function, body, headers) of one request: four in five signed, one in five with a
    header replaced or dropped, some to unknown functions or with a junk content type."""
    known = st.sampled_from(FUNCTIONS)
    fn = draw(st.one_of(known, known, known, st.text(TOKEN, min_size=1, max_size=300)))
    content_type = draw(st.sampled_from([None] * 3 + [MSGPACK] * 2 + ["text/plain", JSON]))
    payload = draw(bodies(content_type))
    subject = f"actor.{{name}}.{fn}"
    headers: dict[str, str] = {}
    if draw(st.sampled_from([True] * 4 + [False])):
        timeout = draw(st.none() | st.floats(0.001, 2.0))
        # Signed for the real subject later (the name is only known to the test).
        headers = {"_sign": "1", "_timeout": "" if timeout is None else repr(timeout)}
    if content_type is not None:
        headers["Content-Type"] = content_type
    mangle = draw(st.sampled_from(["none"] * 8 + ["replace", "drop"]))
    if mangle == "replace":
        headers[draw(st.sampled_from(HEADERS))] = draw(header_values)
    elif mangle == "drop":
        headers[draw(st.sampled_from(HEADERS))] = "\x00drop"
    extra = draw(st.dictionaries(st.text(TOKEN, min_size=1, max_size=20), text, max_size=2))
    return subject, payload, {**extra, **headers}


def as_received(headers: dict[str, str]) -> dict[str, str]:
    """The headers as the replica's NATS client parses them (values stripped, one line)."""
    return {k: v.strip().replace("\r", " ").replace("\n", " ") for k, v in headers.items()}


@settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(request=requests())
async def test_every_request_gets_one_bounded_signed_reply(
    replica: str, inbox: Inbox, request: tuple[str, bytes, dict[str, str]]
) -> None:
    template, payload, drafted = request
    subject = template.format(name=replica)
    headers = {k: v for k, v in drafted.items() if not k.startswith("_")}
    timeout = float(drafted["_timeout"]) if drafted.get("_timeout") else None

    def built(reply: str) -> dict[str, str]:
        made = headers
        if "_sign" in drafted:
            signed = sign_request(KEY, subject, reply, payload, timeout=timeout)
            made = {**signed, **headers}  # a mangled header overrides the signed one
        return {k: v for k, v in made.items() if v != "\x00drop"}

    sent: dict[str, str] = {}

    def keep(reply: str) -> dict[str, str]:
        sent.update(built(reply))
        return sent

    number = await inbox.send(subject, payload, keep)
    await inbox.wait(timeout=10, grace=0)
    reply = inbox.replies[number][0]
    meta = verify_reply(reply.headers, reply.data, request_nonce(as_received(sent)))
    assert meta.status in STATUSES
    if meta.status != 200:
        assert len(reply.data) <= 1024
        assert meta.error.isprintable() and len(meta.error) <= 201
    assert all(len(v) <= 256 for v in (reply.headers or {}).values())


async def test_the_replica_answered_each_once_and_still_serves(replica: str, inbox: Inbox) -> None:
    await inbox.wait(timeout=10, grace=0.5)
    sent = inbox.sent
    assert sent >= 100
    inbox.statuses()  # exactly one reply per request
    stats = await srv_stats(inbox.nc, replica)
    assert sum(e["num_requests"] for e in stats.values()) == sent
    payload = msgspec.json.encode({"args": ["alive"]})
    subject = call_subject(replica, "forward")
    await inbox.send(subject, payload, lambda reply: sign_request(KEY, subject, reply, payload))
    await inbox.wait(timeout=5)
    last = inbox.replies[sent][0]
    assert msgspec.json.decode(last.data) == "alive"

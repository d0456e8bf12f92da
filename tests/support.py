"""Helpers shared by the tests: a probe actor and raw (hand-built) signed requests."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec

from actorbus import Actor, Call, Forbidden, Settings, endpoint
from actorbus.bus import NATS, Keypair, Msg, sign_reply, sign_request, verify_reply
from actorbus.bus.subjects import call_subject
from actorbus.bus.tracing import current_trace
from actorbus.host import current_call


class Probe(Actor):
    """An actor whose functions provoke every outcome."""

    def __init__(self) -> None:
        self.runs = 0
        self.ranks: list[int] = []

    def forward(self, message: str = "hello") -> str:
        return message

    @endpoint(idempotent=True)  # safe to repeat: callable by GET through the gateway
    def text(self, message: str = "hello") -> str:
        return message

    @endpoint(idempotent=True)
    async def tokens(self, text: str, fail: bool = False) -> AsyncIterator[str]:
        """The words of ``text``, one chunk each (then a 500, if ``fail``)."""
        for word in text.split():
            yield word
        if fail:
            raise RuntimeError("the secret detail")

    @endpoint(idempotent=True)
    async def endless(self, size: int) -> AsyncIterator[str]:
        """Chunks of ``size`` characters, until the caller stops the stream."""
        while True:
            yield "x" * size

    async def add(self, a: int, b: int, *, scale: int = 1) -> int:
        return (a + b) * scale

    @endpoint(idempotent=True)
    async def trace(self, through: str = "") -> str:
        """The ``traceparent`` this call runs in; with ``through``, the one a call to that
        actor's ``trace`` runs in (a nested call)."""
        if through:
            answer: str = await self.client.call(through, "trace")
            return answer
        return current_trace().get("traceparent", "")

    async def trace_job(self, work: str) -> list[Any]:
        """The values of a one-slice job of ``work`` this actor submits and waits for (its
        slices run in this call's trace)."""
        job = await self.client.submit(work, [[]])
        await job.close()
        await job.wait()
        return [r.get("value") async for r in job.results()]

    async def slow(self, seconds: float) -> float:
        self.runs += 1
        await anyio.sleep(seconds)
        return seconds

    @endpoint(idempotent=True)
    async def same(self, value: Any, seconds: float = 0.0) -> Any:
        """``value`` (after ``seconds``): idempotent, so callers may retry it."""
        self.runs += 1
        await anyio.sleep(seconds)
        return value

    def blocking(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def thread(self) -> str:
        """The name of the thread this (sync) handler runs in."""
        return threading.current_thread().name

    @endpoint(inline=True)
    def inline_thread(self, seconds: float = 0.0) -> str:
        """The same, inline (after blocking ``seconds``)."""
        time.sleep(seconds)
        return threading.current_thread().name

    async def whoami(self) -> dict[str, str]:
        """Who the pipeline says is calling, and through which forwarder."""
        call = current_call()
        return {"caller": call.caller, "forwarder": call.forwarder}

    async def in_session(self) -> bool:
        """Whether this call came in a session (a MAC), not signed."""
        return current_call().session_key is not None

    def say(self, text: str) -> str:
        """Print ``text`` on stdout (where a supervisor's log shipping picks it up)."""
        print(text, flush=True)
        return text

    async def big(self, size: int) -> str:
        """A result of ``size`` characters (over the server's max payload when large)."""
        return "x" * size

    async def boom(self) -> None:
        raise RuntimeError("secret internal detail /etc/shadow")

    async def unserializable(self) -> Any:
        return object()

    @endpoint(blacklist="_deny_all")
    async def guarded(self) -> str:
        return "never"

    def _deny_all(self, call: Call) -> tuple[bool, str]:
        return True, f"{call.caller[:6]} may not"

    @endpoint(priority="_by_arg")
    async def ranked(self, rank: int, seconds: float = 0.0) -> int:
        self.ranks.append(rank)
        await anyio.sleep(seconds)
        return rank

    def _by_arg(self, call: Call) -> float:
        return float(call.args[0]) if call.args else 0.0

    @endpoint(expose=False)
    def hidden(self) -> str:
        return "not served"


class Crashy(Actor):
    """Starts only while the file named by $CRASHY_FILE does not exist (a crash loop on
    demand: create the file, kill the replica)."""

    async def on_start(self) -> None:
        marker = os.environ.get("CRASHY_FILE", "")
        if marker and await anyio.Path(marker).exists():
            print("crashy: refusing to start: the marker file is there", flush=True)
            os._exit(3)

    def forward(self, message: str = "hello") -> str:
        return message


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of an `actor` command or process on this test's NATS, home,
    policy and jobs actor."""
    return {
        "ACTOR_NATS_URL": settings.url,
        "ACTOR_HOME": str(settings.home),
        "ACTOR_POLICY": settings.policy,
        "ACTOR_JOBS": settings.jobs,
        **extra,
    }


def body(*args: Any, **kwargs: Any) -> bytes:
    return msgspec.json.encode({"args": list(args), "kwargs": kwargs})


async def raw(
    nc: NATS,
    key: Keypair,
    name: str,
    fn: str,
    payload: bytes,
    *,
    headers: dict[str, str] | None = None,
    reply: str = "",
    drop: tuple[str, ...] = (),
    timeout: float = 5.0,
) -> tuple[int, Any, Msg]:
    """Send a hand-built request with the reply subject ``reply`` (a fresh inbox if not
    given; signed by ``key`` for it unless ``headers`` are given); returns (status,
    decoded body, reply), the reply verified."""
    subject = call_subject(name, fn)
    reply = reply or nc.new_inbox()
    if headers is None:
        headers = sign_request(key, subject, reply, payload)
    headers = {k: v for k, v in headers.items() if k not in drop}
    msg = await request_on(nc, subject, payload, headers, reply, timeout)
    meta = verify_reply(msg.headers, msg.data, headers.get("Actor-Nonce", ""))
    return meta.status, msgspec.json.decode(msg.data), msg


async def request_on(
    nc: NATS, subject: str, payload: bytes, headers: dict[str, str], reply: str, timeout: float
) -> Msg:
    """One request with the reply subject ``reply``, as a plain NATS client sends it."""
    sub = await nc.subscribe(reply, max_msgs=1)
    try:
        await nc.publish(subject, payload, reply=reply, headers=headers)
        return await sub.next_msg(timeout=timeout)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def envelope(
    nc: NATS, key: Keypair, name: str, fn: str, payload: bytes, **options: Any
) -> tuple[dict[str, str], str]:
    """Headers signed for a fresh reply subject, and that subject: a request to send (and
    send again) with :func:`raw`."""
    reply = nc.new_inbox()
    return sign_request(key, call_subject(name, fn), reply, payload, **options), reply


class Inbox:
    """Sends requests with reply subjects ``_INBOX.<id>.<n>`` and collects every reply per
    request, so a test can check that each was answered exactly once."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.replies: dict[int, list[Msg]] = {}
        self.sent = 0
        self._sub: Any = None
        self._complete = anyio.Event()

    async def __aenter__(self) -> Inbox:
        async def collect(msg: Msg) -> None:
            self.replies.setdefault(int(msg.subject.rsplit(".", 1)[1]), []).append(msg)
            if len(self.replies) >= self.sent:
                self._complete.set()

        self._sub = await self.nc.subscribe(f"{self.prefix}.*", cb=collect)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._sub.unsubscribe()

    async def send(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | Callable[[str], dict[str, str]] | None = None,
    ) -> int:
        """Publish one request (``headers``, or those it builds for the reply subject);
        returns its number."""
        number = self.sent
        self.sent += 1
        reply = f"{self.prefix}.{number}"
        built = headers(reply) if callable(headers) else headers
        await self.nc.publish(subject, payload, reply=reply, headers=built)
        return number

    async def wait(self, timeout: float = 10.0, grace: float = 0.3) -> None:
        """Until every request sent has a reply (fails after ``timeout``), then ``grace``
        seconds more, so a second reply to any of them would be seen."""
        await self.nc.flush()
        if len(self.replies) < self.sent:
            self._complete = anyio.Event()
            with anyio.fail_after(timeout):
                await self._complete.wait()
        await anyio.sleep(grace)

    def statuses(self) -> list[int]:
        """The status of each request's reply; asserts each got exactly one."""
        twice = {n: len(r) for n, r in self.replies.items() if len(r) != 1}
        assert not twice, f"answered more than once: {twice}"
        assert len(self.replies) == self.sent, (len(self.replies), self.sent)
        return [int((self.replies[n][0].headers or {})["Actor-Status"]) for n in range(self.sent)]


async def srv_stats(nc: NATS, name: str) -> dict[str, Any]:
    """``$SRV.STATS`` of the (only) replica of ``name``, by endpoint name."""
    reply = await nc.request(f"$SRV.STATS.{name}", b"", timeout=2)
    return {e["name"]: e for e in msgspec.json.decode(reply.data)["endpoints"]}


async def eventually(check: Any, timeout: float = 3.0) -> float:
    """Seconds until the coroutine function ``check`` stops failing (an assertion, or a 403
    while a policy change travels); fails after ``timeout``."""
    started = time.monotonic()
    while True:
        try:
            await check()
            return time.monotonic() - started
        except (AssertionError, Forbidden):
            if time.monotonic() - started > timeout:
                raise
            await anyio.sleep(0.01)


@asynccontextmanager
async def impostor(nc: NATS, name: str, fn: str) -> AsyncIterator[Keypair]:
    """Something on the bus answering every call of ``name/fn`` in the actor's name: a
    well-signed ``"pwned"`` from a key of its own (yielded), racing the real replicas."""
    key = Keypair.generate()
    sub = await nc.subscribe(call_subject(name, fn))

    async def answer() -> None:
        async for msg in sub.messages:
            nonce = (msg.headers or {}).get("Actor-Nonce", "")
            await nc.publish(msg.reply, b'"pwned"', headers=sign_reply(key, nonce, 200, b'"pwned"'))

    async with anyio.create_task_group() as tg:
        tg.start_soon(answer)
        try:
            yield key
        finally:
            tg.cancel_scope.cancel()
            await sub.unsubscribe()


def close_refused_sockets() -> None:
    """nats-py leaves a refused connection's socket open: close it while the loop runs
    (else its warning comes at a later test)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()

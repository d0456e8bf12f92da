"""The Python client: signed calls, verified replies, typed errors.

>>> async with Client(key) as c:
...     await c.call("echo", "forward", "hi")
...     await c.actor("echo").forward("hi")
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
import msgspec

from ..bus import (
    JSON,
    NATS,
    BadReply,
    CallBody,
    Keypair,
    Keystore,
    RateLimited,
    Unavailable,
    codec_for,
    connect,
    error_for_status,
    request,
    sign_request,
    verify_reply,
)
from ..bus.delegation import MAX_DELEGATION_SECONDS, sign_delegation, split_work
from ..bus.subjects import call_subject
from ..bus.wire import ReplyMeta, request_nonce
from .jobs import DEFAULT_JOB_TTL, Job
from .registry import Registry, RegistryEntry
from .settings import Settings

__all__ = ["ActorProxy", "Client", "Reply", "advertised_timeout", "loose_value"]

_ADDRESS_CACHE_SECONDS = 10.0


class Client:
    """Calls actors as ``key`` (the keystore's ``settings.key`` by default).

    An async context manager: it connects on entry (unless given a connection ``nc``)
    and drains on exit. Every reply's signature is checked against the addresses the
    registry holds for that actor, so no other NATS client can answer in its name.
    """

    def __init__(
        self,
        key: Keypair | None = None,
        *,
        settings: Settings | None = None,
        nc: NATS | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self._key = key
        self._nc = nc
        self._stack = AsyncExitStack()
        self._registry: Registry | None = None
        self._addresses: dict[str, tuple[float, frozenset[str]]] = {}
        self._lookup = anyio.Lock()

    @property
    def key(self) -> Keypair:
        if self._key is None:
            self._key = Keystore(self.settings.home).load(self.settings.key, create=True)
        return self._key

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("use the client inside 'async with'")
        return self._nc

    async def __aenter__(self) -> Client:
        _ = self.key  # fail early on a bad keystore
        if self._nc is None:
            self._nc = await self._stack.enter_async_context(
                connect(self.settings.url, name="actorbus client")
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def registry(self) -> Registry:
        if self._registry is None:
            self._registry = await Registry.open(
                self.nc, ttl=self.settings.registry_ttl, replicas=self.settings.js_replicas
            )
        return self._registry

    async def entries(self, name: str | None = None) -> list[RegistryEntry]:
        """The live replicas in the registry (of ``name``, or all)."""
        return await (await self.registry()).entries(name)

    async def _addresses_of(self, name: str, *, refresh: bool = False) -> frozenset[str]:
        cached = self._addresses.get(name)
        if cached and not refresh and cached[0] > time.monotonic():
            return cached[1]
        async with self._lookup:  # one lookup at a time: concurrent misses share its result
            again = self._addresses.get(name)
            if again and again is not cached and again[0] > time.monotonic():
                return again[1]
            addresses = frozenset(e.address for e in await self.entries(name))
            self._addresses[name] = (time.monotonic() + _ADDRESS_CACHE_SECONDS, addresses)
            return addresses

    async def call(self, name: str, fn: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``name``'s function ``fn``; returns its result or raises its error."""
        return await self.request(name, fn, args, kwargs)

    async def request(
        self,
        name: str,
        fn: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        content_type: str = JSON,
    ) -> Any:
        """:meth:`call` with options: ``timeout`` (seconds; also the actor's deadline) and
        ``content_type`` (JSON or MessagePack).

        Raises the :class:`ActorError` subclass of the reply's status; :class:`Unavailable`
        when no replica serves ``name``, :class:`ReplyTimeout` when no reply comes in time,
        :class:`BadReply` when the reply's signer is not ``name``'s registered key.
        """
        timeout = timeout or self.settings.call_timeout
        body = codec_for(content_type).encode(CallBody(list(args), kwargs or {}))
        headers = sign_request(
            self.key,
            call_subject(name, fn),
            body,
            content_type=content_type,
            timeout=advertised_timeout(timeout),
        )
        return (await self.send(name, fn, body, headers, timeout)).result()

    async def send(
        self, name: str, fn: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> Reply:
        """Send a request as built and signed (by this client's key or any other) and
        verify the reply: its signature over the request's nonce, and its signer against
        the addresses the registry holds for ``name``.

        Raises :class:`Unavailable` (no replica), :class:`ReplyTimeout`,
        :class:`PayloadTooLarge` (over the server's max payload) and :class:`BadReply`.
        """
        msg = await request(self.nc, call_subject(name, fn), body, headers, timeout)
        meta = verify_reply(msg.headers, msg.data, request_nonce(headers))
        known = meta.key in await self._addresses_of(name)
        if not known and meta.key not in await self._addresses_of(name, refresh=True):
            raise BadReply(f"reply signed by {meta.key}, not a registered key of {name!r}")
        return Reply(meta, msg.data, dict(msg.headers or {}))

    async def submit(
        self,
        work: str,
        slices: list[list[Any]] | None = None,
        *,
        job: str | None = None,
        ttl: float = DEFAULT_JOB_TTL,
        retries: int | None = None,
        concurrency: int | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Start an open job on the jobs actor: ``work`` (``"actor/fn"``) is called once per
        slice (a slice is the argument list of one call), as this client's key, through a
        delegation signed here for this job only, valid ``ttl`` seconds (the key never
        leaves this client). ``slices`` now and/or later (:meth:`Job.add`); ``retries``
        (after 408/5xx), ``concurrency`` (per jobs replica) and ``timeout`` (per slice)
        default to the jobs actor's. Raises :class:`Unavailable` if no jobs actor runs."""
        split_work(work)
        if not 0 < ttl <= MAX_DELEGATION_SECONDS:
            raise ValueError(f"ttl must be in (0, {MAX_DELEGATION_SECONDS}] seconds")
        name = self.settings.jobs
        entries = await self.entries(name)
        if not entries:
            raise Unavailable(f"no jobs actor {name!r} is running (`actor up` starts one)")
        job = job or secrets.token_hex(12)
        expires = int((time.time() + ttl) * 1000)
        delegation = sign_delegation(self.key, entries[0].address, work, job, expires)
        given = (("retries", retries), ("concurrency", concurrency), ("timeout", timeout))
        options = {k: v for k, v in given if v is not None}
        kwargs: dict[str, Any] = {"slices": slices, "options": options or None}
        await self.request(name, "submit", [work, msgspec.to_builtins(delegation)], kwargs)
        return Job(self, job)

    def job(self, id: str) -> Job:
        """A handle on the job ``id`` (yours, or anyone's if you are an admin)."""
        return Job(self, id)

    def actor(self, name: str, *, timeout: float | None = None) -> ActorProxy:
        """A proxy whose attributes are ``name``'s functions: ``await proxy.forward("hi")``."""
        return ActorProxy(self, name, timeout)


def loose_value(text: str) -> Any:
    """An argument typed as text (a command line, a query string): JSON if it parses
    (``1``, ``true``, ``[1,2]``, ``{"a":1}``, ``"quoted"``), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def advertised_timeout(timeout: float) -> float:
    """The ``Actor-Timeout`` to send when waiting ``timeout`` seconds: a little less, so
    the actor's 408 arrives before the caller gives up."""
    return timeout - min(timeout / 4, 0.5)


class Reply(msgspec.Struct, frozen=True):
    """A verified reply: its checked headers (``meta``), body and raw headers."""

    meta: ReplyMeta
    body: bytes
    headers: dict[str, str]

    def result(self) -> Any:
        """The decoded value, or the reply's error raised as its :class:`ActorError` class."""
        meta = self.meta
        codec = codec_for(meta.content_type)
        if 200 <= meta.status < 300:
            return codec.decode_any(self.body)
        error = codec.decode_error(self.body)
        message = error.error if error else meta.error
        error_id = error.id if error else None
        cls = error_for_status(meta.status)
        if cls is RateLimited:
            raise RateLimited(message, retry_after=meta.retry_after or 1.0, error_id=error_id)
        raise cls(message, error_id=error_id)


class ActorProxy:
    """``client.actor("echo").forward("hi")`` calls ``echo/forward``."""

    def __init__(self, client: Client, name: str, timeout: float | None) -> None:
        self._client = client
        self._name = name
        self._timeout = timeout

    def __getattr__(self, fn: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        if fn.startswith("_"):
            raise AttributeError(fn)

        async def invoke(*args: Any, **kwargs: Any) -> Any:
            return await self._client.request(self._name, fn, args, kwargs, timeout=self._timeout)

        invoke.__name__ = fn
        return invoke

    def __repr__(self) -> str:
        return f"<actor {self._name}>"

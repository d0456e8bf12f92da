"""The Python client: signed calls, verified replies, typed errors.

>>> async with Client(key) as c:
...     await c.call("echo", "forward", "hi")
...     await c.actor("echo").forward("hi")
"""

from __future__ import annotations

import difflib
import json
import logging
import random
import secrets
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from contextlib import AsyncExitStack
from functools import partial
from types import TracebackType
from typing import Any

import anyio
import msgspec

from ..bus import (
    JSON,
    NATS,
    ActorError,
    BadReply,
    BadRequest,
    CallBody,
    Forbidden,
    Keystore,
    Msg,
    NoResponders,
    NoSuchActor,
    ReplyMeta,
    ReplyTimeout,
    Signer,
    Unauthorized,
    Unavailable,
    codec_for,
    connect,
    request,
    sign_request,
    verify_reply,
)
from ..bus.delegation import MAX_DELEGATION_SECONDS, Delegation, sign_delegation, split_work
from ..bus.lru import LRU
from ..bus.ranges import PAGE_SIZE
from ..bus.requests import HeadersFor
from ..bus.sessions import DEFAULT_SESSION_TTL, SESSION_FN
from ..bus.settings import Settings
from ..bus.subjects import call_subject
from ..bus.tracing import current_trace, spans
from ..bus.wire import check_nesting, headers_for, request_nonce, signature_seal
from .answers import Reply, advertised_timeout
from .discovery import Known, from_entries, from_service_info, service_infos
from .jobs import DEFAULT_JOB_TTL, Job
from .registry import Registry, RegistryEntry, Vouching
from .sessions import SessionBook
from .streams import read_stream

__all__ = ["ActorProxy", "Client", "loose_value", "typed_value"]

_KNOWN_SECONDS = 10.0
_NAMES_KEPT = 1024
"""Actors a client keeps what it learned of (lookups): past that, the least
recently called is asked again."""
_DEGRADED_SECONDS = 5.0
_ATTEMPTS = 3
"""Attempts of an idempotent call within its deadline (after 503, 504 or a lost request)."""
_NO_RESPONDERS_WAIT = 2.0
"""Seconds any call is sent again while no replica takes it (no responders: it was not
delivered), for a replica that reconnects or restarts."""
_BACKOFF = 0.25
"""Seconds before the second attempt (then doubled, jittered): a replica that lost its
NATS server needs about half a second to reconnect and be routed to again."""
log = logging.getLogger("actorbus.client")


class Client:
    """Calls actors as ``key`` (the keystore's ``settings.key`` by default).

    An async context manager: it connects on entry (unless given a connection ``nc``)
    and drains on exit. Every reply's signature is checked against the addresses the
    registry holds for that actor, so no other NATS client can answer in its name.

    Unless ``session=False`` (or the ``sessions`` setting is off), from its second call
    to an actor on the client calls it in a session: one signed handshake, then a MAC per
    call instead of a signature (:mod:`.sessions`; PROTOCOL.md §4b says what a session
    gives up). Actors that take no sessions (the policy actor, node control) still get
    signed calls, and so do streams.
    """

    def __init__(
        self,
        key: Signer | None = None,
        *,
        settings: Settings | None = None,
        nc: NATS | None = None,
        session: bool | None = None,
        session_ttl: float = DEFAULT_SESSION_TTL,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self._key = key
        self._nc = nc
        self.session = self.settings.sessions if session is None else session
        """Whether calls go in sessions (from the second call to an actor on)."""
        self.sessions = SessionBook(self._handshake, session_ttl)
        self._stack = AsyncExitStack()
        self._registry: Registry | None = None
        self.vouching = Vouching(self.settings)
        """Which registry entries (and ``$SRV.INFO`` answers) this client counts."""
        self._known: LRU[str, Known] = LRU(_NAMES_KEPT)
        self._degraded_until = 0.0
        """While the registry is unreadable: when to try it again."""
        self._registry_denied = False
        """Whether the server lets this connection read the registry (a caller's key may
        not: it asks the replicas, ``$SRV.INFO``)."""
        self._lookup = anyio.Lock()

    @property
    def key(self) -> Signer:
        if self._key is None:
            self._key = Keystore(self.settings.home).caller(self.settings.key)
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
                connect(self.settings.url, name="actorbus client", key=self.key)
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
            self._registry = await Registry.open(self.nc, self.settings, self.vouching)
        return self._registry

    async def entries(self, name: str | None = None) -> list[RegistryEntry]:
        """The live replicas in the registry (of ``name``, or all)."""
        return await (await self.registry()).entries(name)

    async def check_named(self, name: str) -> None:
        """Raise :class:`NoSuchActor` (naming the nearest actor there is) if the registry is
        readable, holds actors, and none of them is ``name``: a mistyped name, not an
        outage. Says nothing otherwise (a registry this connection may not read, or one
        JetStream cannot serve now, cannot tell the two apart)."""
        if self._registry_denied:
            return
        try:
            names = {e.name for e in await self.entries()}
        except ActorError:
            return
        if names and name not in names:
            near = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise NoSuchActor(f"no actor named {name!r}{hint}")

    async def known(self, name: str, *, refresh: bool = False) -> Known:
        """What this client knows of ``name`` (its replicas' addresses, its idempotent
        functions), cached for 10 s: from the registry, or, when JetStream cannot answer
        (degraded mode), the connection may not read it (a caller's key) or it holds no
        replica that counts, from the replicas' ``$SRV.INFO`` over core NATS; past its
        time, a cached answer is kept while neither source can give a better one."""
        cached = self._known.get(name)
        if cached and not refresh and cached.expires > time.monotonic():
            return cached
        async with self._lookup:  # one lookup at a time: concurrent misses share its result
            again = self._known.get(name)
            if again and again is not cached and again.expires > time.monotonic():
                return again
            try:
                if self._registry_denied:
                    raise Forbidden("not this connection's to read")
                if self._degraded_until > time.monotonic():
                    raise Unavailable("unreadable moments ago")
                known = from_entries(await self.entries(name), _KNOWN_SECONDS)
            except Forbidden:  # a caller's key: its replicas say who they are, signed
                self._registry_denied = True
                if not self.vouching.contacted and self.vouching.trusted is None:
                    policy = self.vouching.policy
                    infos = await service_infos(self.nc, policy, self.vouching)
                    self.vouching.first_contact([info.entry for info in infos])
                known = await from_service_info(self.nc, name, _KNOWN_SECONDS, self.vouching)
            except Unavailable as exc:
                known = await from_service_info(self.nc, name, _KNOWN_SECONDS, self.vouching)
                if not self._degraded_until:
                    log.warning("registry unreadable (%s): asking replicas ($SRV.INFO)", exc)
                self._degraded_until = time.monotonic() + _DEGRADED_SECONDS
            else:
                if self._degraded_until:
                    log.warning("registry readable again")
                self._degraded_until = 0.0
                if not known.addresses:  # none that counts (gone, or written over)
                    known = await from_service_info(self.nc, name, _KNOWN_SECONDS, self.vouching)
            if not known.addresses and again is not None:
                return again  # nothing better: keep what we had
            self._known[name] = known
            return known

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
        call_subject(name, fn)  # a malformed name or function is a 400 before any lookup
        idempotent = fn in (await self.known(name)).idempotent
        now = time.monotonic()
        deadline = now + timeout
        patience = min(deadline, now + _NO_RESPONDERS_WAIT)
        attempt = 0  # of an idempotent call, each after a 503, a 504 or a lost request
        retries = 0
        while True:
            # An idempotent call's attempt gets its share of what is left, so a request
            # lost with a replica or a connection still leaves time to try again; any
            # other call waits for its reply as long as it may (it is never sent twice).
            left = deadline - time.monotonic()
            share = left / (_ATTEMPTS - attempt) if idempotent else left
            try:
                reply = await self.call_as(
                    self.key, name, fn, body, share, content_type=content_type
                )
                return reply.result()
            except NoResponders:
                # Not delivered: any call may be sent again, while a replica reconnects
                # or restarts, for a bounded time.
                pause = random.uniform(0.5, 1.5) * _BACKOFF * 2 ** min(retries, 1)
                if time.monotonic() + pause > patience:
                    known = self._known.get(name)
                    if known is None or not known.addresses:  # never heard of, or a typo?
                        await self.check_named(name)
                    raise
            except (Unavailable, ReplyTimeout) as exc:
                attempt += 1
                left = deadline - time.monotonic()
                if not idempotent or attempt == _ATTEMPTS or left <= 0:
                    raise
                log.debug("%s/%s: %s; trying again (idempotent)", name, fn, exc)
                pause = min(random.uniform(0.5, 1.5) * _BACKOFF * 2**retries, left / 2)
            retries += 1
            await anyio.sleep(pause)

    async def call_as(
        self,
        key: Signer,
        name: str,
        fn: str,
        body: bytes,
        timeout: float,
        *,
        content_type: str = JSON,
        on_behalf: str = "",
        delegation: str = "",
    ) -> Reply:
        """One call of ``name``'s ``fn`` with ``body`` as ``key`` (this client's, or one
        it signs for: a gateway's callers), in ``key``'s session with ``name`` when this
        client uses sessions, else signed; ``on_behalf`` of another key (``key`` is a
        trusted forwarder, or that key's delegate with its ``delegation`` header). A
        session call refused before it ran (401: the session expired, or the actor's key
        changed) is sent once more, signed, and the next call opens a new session. Returns
        the verified reply, whatever its status; raises what :meth:`send` raises."""
        started = time.monotonic()
        subject = call_subject(name, fn)
        session = await self.sessions.session(name, key, timeout / 2) if self.session else None
        seal = signature_seal(key) if session is None else session.seal
        while True:
            left = max(timeout - (time.monotonic() - started), 0.001)
            headers = headers_for(
                key.address,
                subject,
                body,
                seal,
                content_type=content_type,
                timeout=advertised_timeout(left),
                on_behalf=on_behalf,
                delegation=delegation,
            )
            if session is None:
                return await self.send(name, fn, body, headers, left)
            reply = await self.send(name, fn, body, headers, left, session_key=session.key)
            if reply.meta.status != Unauthorized.status:
                return reply
            self.sessions.forget(name, key)
            session, seal = None, signature_seal(key)

    async def pages(
        self,
        name: str,
        fn: str,
        /,
        *args: Any,
        after: str = "",
        cursor: Callable[[Any], str] | None = None,
    ) -> AsyncGenerator[Any]:
        """Each page of ``name``'s listing function ``fn`` (one taking ``limit`` and
        ``after``: :mod:`actorbus.host.pages`), from the one after ``after`` to the last:
        ``async for users in client.pages("policy", "users")``. ``cursor`` names the key a
        page ends at (default: its last key, or its last item). Raises what
        :meth:`request` raises."""
        while True:
            page = await self.request(name, fn, args, {"limit": PAGE_SIZE, "after": after})
            if page:
                yield page
            if len(page) < PAGE_SIZE:
                return
            after = cursor(page) if cursor is not None else list(page)[-1]

    async def add_users(self, users: Mapping[str, str]) -> int:
        """Give each key of ``users`` its role (an admin's call), a thousand keys a call of
        the policy actor's ``add_users``; returns how many keys. Raises what
        :meth:`request` raises (the batches before it are made)."""
        items = list(users.items())
        for start in range(0, len(items), PAGE_SIZE):
            batch = dict(items[start : start + PAGE_SIZE])
            await self.request(self.settings.policy, "add_users", [batch])
        return len(items)

    async def signs_for(self, name: str, key: str) -> bool:
        """Whether ``key`` is a registered address of ``name`` (looked up again once if the
        cached one does not have it: a replica may have just started)."""
        if key in (await self.known(name)).addresses:
            return True
        return key in (await self.known(name, refresh=True)).addresses

    def stream(
        self,
        name: str,
        fn: str,
        /,
        *args: Any,
        _window: int = 64,
        _timeout: float | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[Any]:
        """The chunks of ``name``'s streaming function ``fn``, each verified before it comes
        out: ``async for token in client.stream("llm", "generate", prompt)``. The actor
        sends at most ``_window`` chunks ahead of what the loop has taken; leaving the loop
        early stops the generator there. ``_timeout`` bounds the whole stream (default:
        ``call_timeout``). Raises what :meth:`request` raises, at the point it happens."""
        body = codec_for(JSON).encode(CallBody(list(args), kwargs))
        timeout = _timeout or self.settings.call_timeout
        subject = call_subject(name, fn)

        def headers(reply: str) -> dict[str, str]:
            return sign_request(self.key, subject, reply, body, timeout=advertised_timeout(timeout))

        return read_stream(
            self.nc,
            self.signs_for,
            name,
            fn,
            body,
            headers,
            steer=self.key,
            window=_window,
            timeout=timeout,
        )

    async def send(
        self,
        name: str,
        fn: str,
        body: bytes,
        headers: HeadersFor,
        timeout: float,
        *,
        session_key: bytes | None = None,
        reply: str = "",
    ) -> Reply:
        """Send a request as ``headers`` build and sign it for its reply subject (by this
        client's key or any other; ``reply`` if it was signed for that one elsewhere: a
        relay) and verify the reply: its signature over the request's nonce, and its signer
        against the addresses the registry holds for ``name``; or, for a request made in a
        session (``session_key``), a reply's MAC by that key.

        Raises :class:`Unavailable` (no replica), :class:`ReplyTimeout`,
        :class:`PayloadTooLarge` (over the server's max payload) and :class:`BadReply`.
        """
        sent: dict[str, str] = {}
        recorder = spans()
        span = recorder.start(f"{name}/{fn}", "client", current_trace()) if recorder else None
        trace = recorder.headers(span) if recorder else current_trace()

        def build(subject: str) -> dict[str, str]:
            sent.update(headers(subject))
            sent.update(trace)  # unsigned: it names a trace, grants nothing
            return sent

        verified: list[ReplyMeta] = []

        def verifies(msg: Msg) -> bool:  # anything else on the inbox is not the reply
            try:
                nonce = request_nonce(sent)
                verified.append(verify_reply(msg.headers, msg.data, nonce, session_key=session_key))
            except BadReply:
                return False
            return True

        try:
            to = call_subject(name, fn)
            msg = await request(self.nc, to, body, build, timeout, reply=reply, accept=verifies)
            meta = verified[-1]
            if not meta.by_session and not await self.signs_for(name, meta.key):
                raise BadReply(f"reply signed by {meta.key}, not a registered key of {name!r}")
        finally:
            if span is not None:
                span.end()
        return Reply(meta, msg.data, dict(msg.headers or {}))

    async def _handshake(self, name: str, key: Signer, args: list[Any], timeout: float) -> Any:
        """The result of a signed ``_session`` call of ``name`` by ``key``, not retried."""
        body = codec_for(JSON).encode(CallBody(args))
        subject = call_subject(name, SESSION_FN)
        seal = signature_seal(key)
        headers = headers_for(key.address, subject, body, seal, timeout=advertised_timeout(timeout))
        return (await self.send(name, SESSION_FN, body, headers, timeout)).result()

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
        delegation = await self.delegate(work, ttl, job=job)
        given = (("retries", retries), ("concurrency", concurrency), ("timeout", timeout))
        options = {k: v for k, v in given if v is not None}
        kwargs: dict[str, Any] = {"slices": slices, "options": options or None}
        args = [work, msgspec.to_builtins(delegation)]
        await self.request(self.settings.jobs, "submit", args, kwargs)
        return self.job(delegation.job)

    def job(self, id: str) -> Job:
        """A handle on the job ``id`` (yours, or anyone's if you are an admin)."""
        return Job(partial(self.request, self.settings.jobs), id)

    async def delegate(
        self, work: str, ttl: float, *, job: str | None = None, key: Signer | None = None
    ) -> Delegation:
        """A new job's delegation: ``key`` (this client's by default) lets the jobs actor
        call ``work`` as ``key`` for job ``job`` (a fresh id by default) for ``ttl``
        seconds. Raises :class:`BadRequest` for a bad ``work`` or ``ttl``,
        :class:`Unavailable` if no jobs actor runs."""
        split_work(work)
        if not 0 < ttl <= MAX_DELEGATION_SECONDS:
            raise BadRequest(f"ttl must be in (0, {MAX_DELEGATION_SECONDS}] seconds")
        name = self.settings.jobs
        addresses = (await self.known(name)).addresses
        if not addresses:
            raise Unavailable(f"no jobs actor {name!r} is running (`actor up` starts one)")
        expires = int((time.time() + ttl) * 1000)
        job = job or secrets.token_hex(12)
        return sign_delegation(key or self.key, min(addresses), work, job, expires)

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


_NOT_TEXT = frozenset({"integer", "number", "boolean", "array", "object"})


def typed_value(text: str, schema: Any) -> Any:
    """An argument typed as text for a parameter of JSON Schema ``schema`` (``None``: not
    known): the text itself for a parameter typed as a string (``message=3`` is ``"3"``),
    else :func:`loose_value`. Raises :class:`BadRequest` for JSON nested past reason."""
    if isinstance(schema, dict):
        options = [schema, *(o for o in schema.get("anyOf", []) if isinstance(o, dict))]
        types = {o.get("type") for o in options}
        if "string" in types and not types & _NOT_TEXT:
            return text
    check_nesting(text)
    return loose_value(text)


class ActorProxy:
    """``client.actor("echo").forward("hi")`` calls ``echo/forward``."""

    def __init__(self, client: Client, name: str, timeout: float | None) -> None:
        self._client = client
        self._name = name
        self._timeout = timeout

    def __getattr__(self, fn: str) -> Callable[..., _ProxyCall]:
        if fn.startswith("_"):
            raise AttributeError(fn)

        def invoke(*args: Any, **kwargs: Any) -> _ProxyCall:
            return _ProxyCall(self._client, self._name, fn, args, kwargs, self._timeout)

        invoke.__name__ = fn
        return invoke

    def __repr__(self) -> str:
        return f"<actor {self._name}>"


class _ProxyCall:
    """``await proxy.fn(...)`` for its result, ``async for x in proxy.fn(...)`` for the
    chunks of a streaming function."""

    def __init__(
        self,
        client: Client,
        name: str,
        fn: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> None:
        self._client, self._name, self._fn = client, name, fn
        self._args, self._kwargs, self._timeout = args, kwargs, timeout

    def __await__(self) -> Generator[Any, None, Any]:
        call = self._client.request(
            self._name, self._fn, self._args, self._kwargs, timeout=self._timeout
        )
        return call.__await__()

    def __aiter__(self) -> AsyncGenerator[Any]:
        return self._client.stream(
            self._name, self._fn, *self._args, _timeout=self._timeout, **self._kwargs
        )

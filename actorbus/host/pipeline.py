"""The request pipeline: decode -> verify -> (policy) -> admit -> invoke -> sign the reply.

A replica runs the *accept* stages for each message as it is read (they are quick,
CPU-bound checks: size, signature, freshness and replay, routing, argument binding, hooks);
an accepted call goes into a bounded priority queue (:mod:`.admission`), which
``max_in_flight`` worker tasks drain through the *execute* stages (deadline, invoke,
encode). Python runs one thing at a time anyway, so this costs no parallelism and saves a
task per request. A session handshake is answered in the reader, never queued. Each
stage is a plain function ``(call, msg) -> None`` that raises an :class:`ActorError` to
refuse (a coroutine per stage cost a call a few µs for nothing: none waits); an
endpoint's hooks, which may be async, run after them and see the bound arguments.

Before any stage, the door: a request nobody could hear the answer to (no reply subject,
or one that is not an inbox) is dropped unread, and when the reader is more than
``max_queue`` messages behind, a request is answered 503 without being verified, so a
flood costs a replica a header check and a signature per message, not a verification.
Every accepted call is answered exactly once: by a worker, by the deadline sweeper (408,
it never runs), or, when a stopping replica gives up waiting, with a 503.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import anyio

from ..bus import (
    NATS,
    ActorError,
    BadRequest,
    DeadlineExceeded,
    Forbidden,
    Keypair,
    Msg,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    address_to_public_key,
    excerpt,
)
from ..bus.chunks import H_STREAM, stream_window
from ..bus.delegation import parse_delegation_header, verify_delegation
from ..bus.sessions import H_SESSION, SESSION_FN
from ..bus.settings import Settings
from ..bus.subjects import RELAY_PREFIX
from ..bus.tracing import spans, trace_headers, use_trace
from ..bus.wire import codec_for, request_nonce, verify_request
from .actor import _CURRENT, Actor, Call, Function, resolve_hook, run_hook
from .admission import Admission
from .policy_view import PolicyView
from .quotas import Quotas
from .replay import ReplayGuard
from .replies import Replies
from .sessions import Sessions
from .stats import OTHER, FunctionStats
from .streams import stream_reply
from .threads import SyncRunner

__all__ = ["Pipeline", "Stage"]

Stage = Callable[[Call, Msg], None]
_NO_HOOKS: Final = (None, None, None)

INLINE_LIMIT = 0.05
"""Seconds an inline handler may hold the event loop before a warning says so."""


class _Slot:
    """A worker as the sweeper sees it: the call whose handler it runs, and its scope."""

    __slots__ = ("overrun", "running", "scope")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.running: Call | None = None
        self.overrun: Call | None = None
        """The call the sweeper cancelled for overrunning its deadline."""


class Pipeline:
    """The stages for one actor replica, composed once at start-up."""

    def __init__(
        self,
        *,
        nc: NATS,
        name: str,
        key: Keypair,
        actor: Actor,
        functions: dict[str, Function],
        guard: ReplayGuard,
        settings: Settings,
        policy: PolicyView | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self.name = name
        self.sessions = Sessions(key, name, enabled=actor.sessions)
        if actor.sessions:
            functions = {**functions, SESSION_FN: self.sessions.function}
        self.functions = functions
        self.guard = guard
        self.settings = settings
        self.policy = policy
        self.quotas = quotas
        self._allow = frozenset(actor.allow_fns)
        self._owner = actor.owner
        self._deny = frozenset(actor.deny_fns)
        self.replies = Replies(
            nc=nc,
            key=key,
            log=logging.getLogger(f"actorbus.actor.{name}"),
            functions=list(functions),
            reply_prefixes=settings.reply_prefixes,
        )
        self.stats: dict[str, FunctionStats] = self.replies.stats
        self.stats[OTHER].figures = actor.figures
        self.spans = spans()
        """The span recorder, if spans are on (``bus.tracing``)."""
        self.admission = Admission(settings.max_queue)
        self.threads = SyncRunner(settings.max_in_flight, settings.stuck_timeout)
        self.calls: set[Call] = set()
        """Accepted calls not answered yet."""
        self._slots: set[_Slot] = set()
        """The workers, each with the call it runs."""
        self.idle = anyio.Event()
        self.idle.set()
        self.accepting = True
        self.failure = ""
        """Why this replica cannot go on (set with :attr:`failed`)."""
        self.failed = anyio.Event()
        self.sub: Any = None
        """The subscription feeding :meth:`accept` (its backlog decides shedding)."""
        self.received = 0
        self._prefix_len = len(f"actor.{name}.")
        self._hooks = {
            fn: hooks if any(hooks) else _NO_HOOKS
            for fn, f in functions.items()
            if (
                hooks := (
                    resolve_hook(actor, f.options.verify),
                    resolve_hook(actor, f.options.blacklist),
                    resolve_hook(actor, f.options.priority),
                )
            )
        }
        # The order is the protocol's: nothing is decoded before the signature holds, and
        # an unsigned request is a 401 whatever else is wrong with it. The stages are plain
        # functions (none waits for anything); the hooks, which may, run after them.
        self.checks: tuple[Stage, ...] = (
            self.check_size,
            self.verify_signature,
            self.check_replay,
            self.check_forwarded,
        )
        self.decisions: tuple[Stage, ...] = (self.check_policy, self.route, self.bind)

    @property
    def in_flight(self) -> int:
        return len(self.calls)

    # -- accept: runs in the reader task -------------------------------------------------

    async def accept(self, msg: Msg) -> None:
        """Run the accept stages for ``msg`` and queue it, or answer it with an error.

        Never raises: whatever the message, it is dropped (no inbox to answer) or answered.
        """
        self.received += 1
        fn = msg.subject[self._prefix_len :]
        if not self.replies.can_reply(msg.reply):
            self.replies.drop(fn, msg.reply)
            return
        call = Call(self.name, msg.subject, fn, msg.reply, time.monotonic())
        call.nonce = request_nonce(msg.headers)
        call.trace = trace_headers(msg.headers)
        if self.spans is not None:
            call.span = self.spans.start(f"{self.name}/{fn}", "server", call.trace, fn=fn)
            call.stage = self.spans.start("accept (verify, policy)", "internal", call.span)
        try:
            if not self.accepting:
                raise Unavailable("shutting down")
            if self.sub is not None and self.sub.pending_msgs > self.settings.max_queue:
                raise Unavailable("overloaded: requests arrive faster than they are read")
            for stage in self.checks:
                stage(call, msg)
            policy = self.policy
            if policy is not None and not policy.knows(call.caller) and fn != SESSION_FN:
                await policy.learn(call.caller)  # the first call of a key this host holds not
            for stage in self.decisions:
                stage(call, msg)
            if self._hooks[call.fn] is not _NO_HOOKS:
                await self.run_hooks(call)
            if call.stage is not None:
                call.stage.end()
            if call.fn == SESSION_FN:
                await self._handshake(call)
                return
            self.calls.add(call)
            self.admission.put(call)
        except ActorError as exc:
            self.calls.discard(call)
            await self.replies.error(call, exc)
            return
        except Exception as exc:
            self.calls.discard(call)
            await self.replies.error(call, self.replies.internal(call, exc))
            return
        if self.idle.is_set():
            self.idle = anyio.Event()

    async def _handshake(self, call: Call) -> None:
        """Answer a session handshake here, in the reader: it is quick (a sealed box) and
        grants nothing by itself, so it never waits in the queue behind slow handlers,
        and a caller opening a session under load is not turned away for it."""
        if self.guard.pending:  # as any call: its nonce goes out before its reply
            await self.guard.flush()
        _CURRENT.set(call)
        grant = await self.sessions.open(*call.args, **call.kwargs)
        await self.replies.send(call, 200, codec_for(call.content_type).encode(grant))

    def check_size(self, call: Call, msg: Msg) -> None:
        if len(msg.data) > self.settings.max_body:
            raise PayloadTooLarge(
                f"body is {len(msg.data)} bytes; the limit is {self.settings.max_body}"
            )
        # Characters, not encoded bytes: a cheap bound on what a caller may make us hold.
        headers = msg.headers
        if headers and (size := sum(map(len, headers)) + sum(map(len, headers.values()))) > (
            self.settings.max_headers
        ):
            raise PayloadTooLarge(
                f"headers are {size} characters; the limit is {self.settings.max_headers}"
            )

    def verify_signature(self, call: Call, msg: Msg) -> None:
        headers = msg.headers
        if headers and H_SESSION in headers:
            meta = self.sessions.authenticate(call, msg.subject, msg.reply, headers, msg.data)
        else:
            meta = verify_request(msg.subject, msg.reply, headers, msg.data)
        call.meta = meta
        call.caller = meta.key
        call.content_type = meta.content_type

    def check_replay(self, call: Call, msg: Msg) -> None:
        assert call.meta is not None
        self.guard.check(call.meta)

    def check_forwarded(self, call: Call, msg: Msg) -> None:
        """A trusted forwarder (a gateway) may call on behalf of another key, and so may a
        delegate that carries that key's own delegation for this function: from here on
        that key is the caller (policy, quota, hooks), the forwarder is remembered."""
        meta = call.meta
        assert meta is not None
        if not meta.on_behalf:
            return
        if meta.delegation:
            work = f"{self.name}/{call.fn}"
            delegation = parse_delegation_header(meta.delegation, work, meta.key)
            verify_delegation(meta.on_behalf, delegation, int(time.time() * 1000))
            call.forwarder, call.caller, call.job = meta.key, meta.on_behalf, delegation.job
            return
        policy = self.policy
        if policy is None or not policy.enforced or meta.key not in policy.state.forwarders:
            raise Forbidden(f"{meta.key} is not a trusted forwarder: it may not call for others")
        address_to_public_key(meta.on_behalf)  # a well-formed address, or 401
        call.forwarder, call.caller = meta.key, meta.on_behalf

    def _forwarders(self) -> frozenset[str] | set[str]:
        policy = self.policy
        return policy.state.forwarders if policy is not None else frozenset()

    def check_policy(self, call: Call, msg: Msg) -> None:
        policy = self.policy
        if policy is None or call.fn == SESSION_FN:  # a session grants nothing by itself
            return
        if self._owner and call.caller == self._owner and not call.forwarder:  # it decides
            return
        if not policy.enforced:
            if policy.unreadable:  # there may be a policy we cannot see: fail closed
                raise Unavailable(f"the policy cannot be read yet: {policy.unreadable}")
            return
        # A forwarder cannot lend admin rights; a delegation is the owner's own signature.
        forwarded = bool(call.forwarder) and not call.job
        decision = policy.state.decide(
            call.caller, self.name, call.fn, self._allow, self._deny, forwarded=forwarded
        )
        if not decision.allowed:
            raise Forbidden(decision.reason)
        call.rate = decision.rate

    def route(self, call: Call, msg: Msg) -> None:
        function = self.functions.get(call.fn)
        if function is None:
            raise NotFound(f"{self.name} has no function {excerpt(call.fn)}")
        call.function = function
        call.window = stream_window(msg.headers)
        if function.is_stream and call.window is None:
            raise BadRequest(f"{call.fn} streams its reply: send {H_STREAM} (PROTOCOL.md §4a)")
        assert call.meta is not None
        limit = function.options.timeout or self.settings.handler_timeout
        if call.meta.timeout is not None:
            limit = min(limit, call.meta.timeout)
        call.deadline = call.received + limit

    async def run_hooks(self, call: Call) -> None:
        verify, blacklist, priority = self._hooks[call.fn]
        if verify is not None:
            await run_hook(verify, call)
        if blacklist is not None:
            verdict = await run_hook(blacklist, call)
            denied, reason = verdict if isinstance(verdict, tuple) else (verdict, "")
            if denied:
                raise Forbidden(reason or f"{call.caller} is blacklisted for {call.fn}")
        if priority is not None:
            call.priority = float(await run_hook(priority, call))

    def bind(self, call: Call, msg: Msg) -> None:
        assert call.function is not None
        body = codec_for(call.content_type).decode_call(msg.data)
        if len(body.args) + len(body.kwargs) > self.settings.max_args:
            raise BadRequest(f"too many arguments; the limit is {self.settings.max_args}")
        call.args, call.kwargs = call.function.bind(body, call.content_type)

    # -- execute: runs in a worker task --------------------------------------------------

    async def work(self) -> None:
        """One worker: take the most urgent call, run it, reply; until cancelled.

        A handler that overruns its deadline is cancelled by the sweeper through the
        worker's cancel scope (one scope per worker, made again after each overrun: entering
        a scope per call cost 15 µs, a tenth of a session call), and answered 408 here,
        outside the cancelled scope."""
        slot = _Slot()
        self._slots.add(slot)
        try:
            while True:
                with anyio.CancelScope() as slot.scope:
                    while not slot.scope.cancel_called:
                        call = await self.admission.get()
                        try:
                            await self.execute(call, slot)
                        finally:
                            if slot.overrun is not call:
                                self._finish(call)
                if (overrun := slot.overrun) is not None:
                    slot.overrun = None
                    late = DeadlineExceeded(f"{overrun.fn} did not finish within its deadline")
                    try:
                        await self.replies.error(overrun, late)
                    finally:
                        self._finish(overrun)
        finally:
            self._slots.discard(slot)

    async def execute(self, call: Call, slot: _Slot) -> None:
        """Run ``call`` (quota lease included) and answer it, unless it overruns its
        deadline: then the sweeper cancels it and the worker answers it."""
        function = call.function
        assert function is not None
        # Its nonce goes out to the other replicas before any reply does (same connection,
        # so in that order): a caller that replays a call it has an answer to finds every
        # replica knowing it.
        if self.guard.pending:
            await self.guard.flush()
        body = b""
        error: ActorError | None = None
        stats = self.replies.stats_of(call.fn)
        try:
            if call.deadline <= time.monotonic():
                raise DeadlineExceeded("deadline passed before the call could run")
            if call.reply_to.startswith(RELAY_PREFIX) and call.session_key is None:
                assert call.meta is not None  # a carrier could race it to two replicas
                await self.guard.claim(call.meta)
            slot.running = call
            call.started = time.monotonic()
            if self.spans is not None and call.span is not None:
                queued = call.stage.end_time if call.stage is not None else None
                self.spans.start("queue", "internal", call.span, start_ns=queued).end()
                call.stage = self.spans.start("handler", "internal", call.span)
                use_trace(self.spans.headers(call.stage))  # its own calls: the handler's
            else:
                use_trace(call.trace)  # the calls its handler makes carry it on
            stats.in_flight += 1
            try:
                if call.rate is not None and self.quotas is not None and self.policy is not None:
                    await self.quotas.take(call.caller, call.rate, self.policy.state.config.window)
                if function.is_stream:
                    _CURRENT.set(call)
                    await stream_reply(self.replies, self.threads, function, call, self._forwarders)
                    result = None  # the end of the stream: its chunks came before
                else:
                    result = await self._invoke(function, call)
            finally:
                slot.running = None
                stats.in_flight -= 1
            try:
                body = codec_for(call.content_type).encode(result)
            except TypeError as exc:
                raise self.replies.internal(call, exc, "return value is not serializable") from None
        except ActorError as exc:
            error = exc
        except Exception as exc:
            error = self.replies.internal(call, exc)
        if slot.overrun is call:
            return  # too late (it shielded itself from the cancel): the worker answers 408
        if error is not None:
            await self.replies.error(call, error)
        else:
            await self.replies.send(call, 200, body)

    async def _invoke(self, function: Function, call: Call) -> Any:
        _CURRENT.set(call)  # each worker task has its own context
        if function.is_async:
            return await function.method(*call.args, **call.kwargs)
        if function.options.inline:
            try:
                return function.method(*call.args, **call.kwargs)
            finally:
                self._check_inline(call)
        # The thread runs in a copy of this context, so current_call() works there too.
        return await self.threads.run(call.fn, partial(function.method, *call.args, **call.kwargs))

    def _check_inline(self, call: Call) -> None:
        """Log (throttled) an inline handler that held the loop too long."""
        held = time.monotonic() - call.started
        if held > INLINE_LIMIT:
            self.replies.throttle.log(
                logging.WARNING,
                "inline",
                "%s is inline but held the event loop %.0f ms: every other call waited "
                "(drop inline=True to run it in a thread)",
                call.fn,
                held * 1000,
            )

    def _finish(self, call: Call) -> None:
        self.calls.discard(call)
        if not self.calls:
            self.idle.set()

    # -- housekeeping: one task per replica ----------------------------------------------

    async def sweep(self, period: float = 0.025) -> None:
        """Until cancelled: cancel handlers past their deadline, answer 408 to queued calls
        as soon as their deadline passes (so the caller hears it while it still waits),
        publish the throttled log summaries, keep the replica's gauges current and notice
        stuck threads."""
        other = self.stats[OTHER]
        while True:
            await anyio.sleep(period)
            now = time.monotonic()
            for slot in self._slots:
                running = slot.running
                if running is not None and running.deadline <= now and slot.overrun is None:
                    slot.overrun = running
                    slot.scope.cancel()
            for call in self.admission.take_expired(now):
                try:
                    await self.replies.error(
                        call, DeadlineExceeded("deadline passed before the call could run")
                    )
                finally:
                    self._finish(call)
            self.replies.throttle.flush()
            other.gauges["stuck_threads"] = self.threads.stuck
            other.gauges["queued"] = len(self.admission)
            if self.sub is not None:
                # What nats-py dropped because the reader's buffer was full.
                other.gauges["unread"] = self.sub.delivered - self.received - self.sub.pending_msgs
            if not self.failure and (failure := self.threads.failure(now)):
                self.failure = failure
                self.replies.log.error("%s: %s", self.name, failure)
                self.failed.set()

    async def abandon(self, reason: str) -> None:
        """Answer every call not answered yet with a 503 (a stopping replica that could not
        finish them); their handlers, if running, are cancelled by the caller of this."""
        for call in self.admission.take_all() + list(self.calls):
            await self.replies.error(call, Unavailable(reason))
            self._finish(call)

"""The request pipeline: decode -> verify -> (policy) -> admit -> invoke -> sign the reply.

A replica runs the *accept* stages for each message as it is read (they are quick,
CPU-bound checks: size, signature, freshness and replay, routing, argument binding, hooks);
an accepted call goes into a bounded priority queue, which
``max_in_flight`` worker tasks drain through the *execute* stages (deadline, invoke,
encode). Python runs one thing at a time anyway, so this costs no parallelism and saves a
task per request. Hooks see the bound arguments. Each stage is a plain async function
``(call, msg) -> None`` that raises an :class:`ActorError` to refuse; the two entry points
turn errors into signed replies.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio

from ..bus import (
    NATS,
    ActorError,
    BadRequest,
    DeadlineExceeded,
    Forbidden,
    HandlerError,
    Keypair,
    Msg,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
)
from ..bus.wire import ErrorBody, codec_for, request_nonce, sign_reply, verify_request
from .actor import _CURRENT, Actor, Call, Function, resolve_hook, run_hook
from .micro import FunctionStats
from .policy import PolicyView, Quotas
from .replay import ReplayGuard
from .settings import Settings

__all__ = ["Admission", "Pipeline", "Stage"]

Stage = Callable[[Call, Msg], Awaitable[None]]


class Admission:
    """A bounded queue of accepted calls, highest priority first, FIFO among equals."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._heap: list[tuple[float, int, Call]] = []
        self._seq = itertools.count()
        self._ready = anyio.Semaphore(0)

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, call: Call) -> None:
        """Queue ``call``; raises :class:`Unavailable` (503) when the queue is full."""
        if len(self._heap) >= self.max_queue:
            raise Unavailable("overloaded: too many calls waiting, retry later")
        heapq.heappush(self._heap, (-call.priority, next(self._seq), call))
        self._ready.release()

    async def get(self) -> Call:
        await self._ready.acquire()
        return heapq.heappop(self._heap)[2]

    def take_expired(self, now: float) -> list[Call]:
        """Remove and return the queued calls whose deadline has passed."""
        expired = [item[2] for item in self._heap if item[2].deadline <= now]
        if expired:
            self._heap = [item for item in self._heap if item[2].deadline > now]
            heapq.heapify(self._heap)
            for _ in expired:
                self._ready.acquire_nowait()
        return expired


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
        self.nc = nc
        self.name = name
        self.key = key
        self.functions = functions
        self.guard = guard
        self.settings = settings
        self.policy = policy
        self.quotas = quotas
        self._allow = frozenset(actor.allow_fns)
        self._deny = frozenset(actor.deny_fns)
        self.log = logging.getLogger(f"actorbus.actor.{name}")
        self.stats: dict[str, FunctionStats] = {fn: FunctionStats() for fn in functions}
        self.admission = Admission(settings.max_queue)
        self.in_flight = 0
        self.idle = anyio.Event()
        self.idle.set()
        self.accepting = True
        self._prefix_len = len(f"actor.{name}.")
        self._threads = anyio.CapacityLimiter(settings.max_in_flight)
        self._hooks = {
            fn: (
                resolve_hook(actor, f.options.verify),
                resolve_hook(actor, f.options.blacklist),
                resolve_hook(actor, f.options.priority),
            )
            for fn, f in functions.items()
        }
        # The order is the protocol's: nothing is decoded before the signature holds, and
        # an unsigned request is a 401 whatever else is wrong with it.
        self.stages: tuple[Stage, ...] = (
            self.check_size,
            self.verify_signature,
            self.check_replay,
            self.check_policy,
            self.route,
            self.bind,
            self.run_hooks,
        )

    # -- accept: runs in the reader task -------------------------------------------------

    async def accept(self, msg: Msg) -> None:
        """Run the accept stages for ``msg`` and queue it, or answer it with an error."""
        call = Call(
            self.name, msg.subject, msg.subject[self._prefix_len :], msg.reply, time.monotonic()
        )
        call.nonce = request_nonce(msg.headers)
        try:
            if not self.accepting:
                raise Unavailable("shutting down")
            for stage in self.stages:
                await stage(call, msg)
            self.admission.put(call)
        except ActorError as exc:
            await self.reply_error(call, exc)
            return
        except Exception as exc:
            await self.reply_error(call, self._internal(call, exc))
            return
        self.in_flight += 1
        self.idle = anyio.Event() if self.idle.is_set() else self.idle

    async def check_size(self, call: Call, msg: Msg) -> None:
        if len(msg.data) > self.settings.max_body:
            raise PayloadTooLarge(
                f"body is {len(msg.data)} bytes; the limit is {self.settings.max_body}"
            )

    async def verify_signature(self, call: Call, msg: Msg) -> None:
        meta = verify_request(msg.subject, msg.headers, msg.data)
        call.meta = meta
        call.caller = meta.key
        call.content_type = meta.content_type

    async def check_replay(self, call: Call, msg: Msg) -> None:
        assert call.meta is not None
        self.guard.check(call.meta)

    async def check_policy(self, call: Call, msg: Msg) -> None:
        policy = self.policy
        if policy is None or not policy.enforced:
            return
        decision = policy.state.decide(call.caller, self.name, call.fn, self._allow, self._deny)
        if not decision.allowed:
            raise Forbidden(decision.reason)
        call.rate = decision.rate

    async def route(self, call: Call, msg: Msg) -> None:
        function = self.functions.get(call.fn)
        if function is None:
            raise NotFound(f"{self.name} has no function {call.fn!r}")
        call.function = function
        assert call.meta is not None
        limit = function.options.timeout or self.settings.handler_timeout
        if call.meta.timeout is not None:
            limit = min(limit, call.meta.timeout)
        call.deadline = call.received + limit

    async def run_hooks(self, call: Call, msg: Msg) -> None:
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

    async def bind(self, call: Call, msg: Msg) -> None:
        assert call.function is not None
        body = codec_for(call.content_type).decode_call(msg.data)
        if len(body.args) + len(body.kwargs) > self.settings.max_args:
            raise BadRequest(f"too many arguments; the limit is {self.settings.max_args}")
        call.args, call.kwargs = call.function.bind(body, call.content_type)

    # -- execute: runs in a worker task --------------------------------------------------

    async def sweep(self, period: float = 0.025) -> None:
        """Answer 408 to queued calls as soon as their deadline passes, so the caller hears
        it while it still waits; until cancelled."""
        while True:
            await anyio.sleep(period)
            for call in self.admission.take_expired(time.monotonic()):
                try:
                    await self.reply_error(
                        call, DeadlineExceeded("deadline passed before the call could run")
                    )
                finally:
                    self._done()

    def _done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    async def work(self) -> None:
        """One worker: take the most urgent call, run it, reply; until cancelled."""
        while True:
            call = await self.admission.get()
            try:
                await self.execute(call)
            finally:
                self._done()

    async def execute(self, call: Call) -> None:
        function = call.function
        assert function is not None
        try:
            if call.rate is not None and self.quotas is not None and self.policy is not None:
                await self.quotas.take(call.caller, call.rate, self.policy.state.config.window)
            remaining = call.deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded("deadline passed before the call could run")
            with anyio.move_on_after(remaining) as scope:
                result = await self._invoke(function, call)
            if scope.cancelled_caught:
                raise DeadlineExceeded(f"{call.fn} did not finish within its deadline")
            codec = codec_for(call.content_type)
            try:
                body = codec.encode(result)
            except TypeError as exc:
                raise self._internal(call, exc, "return value is not serializable") from None
        except ActorError as exc:
            await self.reply_error(call, exc)
            return
        except Exception as exc:
            await self.reply_error(call, self._internal(call, exc))
            return
        await self.reply(call, 200, body)

    async def _invoke(self, function: Function, call: Call) -> Any:
        _CURRENT.set(call)  # each worker task has its own context
        if function.is_async:
            return await function.method(*call.args, **call.kwargs)
        return await anyio.to_thread.run_sync(
            partial(function.method, *call.args, **call.kwargs),
            abandon_on_cancel=True,
            limiter=self._threads,
        )

    # -- replies -------------------------------------------------------------------------

    def _internal(
        self, call: Call, exc: BaseException, message: str = "internal error"
    ) -> HandlerError:
        error = HandlerError(message, error_id=secrets.token_hex(6))
        self.log.error(
            "%s/%s raised (error id %s)", self.name, call.fn, error.error_id, exc_info=exc
        )
        return error

    async def reply_error(self, call: Call, exc: ActorError) -> None:
        error_id = exc.error_id or secrets.token_hex(6)
        body = codec_for(call.content_type).encode(ErrorBody(exc.message, exc.status, error_id))
        retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
        await self.reply(
            call, exc.status, body, error=exc.message, error_id=error_id, retry_after=retry_after
        )

    async def reply(
        self,
        call: Call,
        status: int,
        body: bytes,
        *,
        error: str = "",
        error_id: str = "",
        retry_after: float | None = None,
    ) -> None:
        """Sign and send the reply; record the call in the stats and the log (one line)."""
        elapsed_ns = int((time.monotonic() - call.received) * 1e9)
        stats = self.stats.get(call.fn)
        if stats is not None:
            stats.record(status, elapsed_ns, error)
        # One line per call: DEBUG when it succeeded (a line per call costs ~10% of
        # throughput), INFO when it was refused or failed.
        level = logging.DEBUG if status < 400 else logging.INFO
        if self.log.isEnabledFor(level):
            detail = f": {error} (error id {error_id})" if error else ""
            self.log.log(
                level,
                "%s from %s -> %d in %.2f ms%s",
                call.fn,
                call.caller or "?",
                status,
                elapsed_ns / 1e6,
                detail,
            )
        if not call.reply_to:
            return
        headers = sign_reply(
            self.key,
            call.nonce,
            status,
            body,
            content_type=call.content_type,
            error=error,
            retry_after=retry_after,
        )
        await self.nc.publish(call.reply_to, body, headers=headers)

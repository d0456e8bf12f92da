"""A host's live copy of the policy: the policy actor's signed records, followed by a KV
watch, so a decision is a few dict lookups and a change reaches running actors in one NATS
hop. The watch does not depend on the policy actor's process: if it is down, hosts keep
deciding from the same data (fail static); if NATS itself goes away, they decide from the
last state they saw and say so.

A host holds what it needs, not the whole policy (issue 29: with 42,000 users a replica
started in 3.0 s, checking one signature per record, and held 24 MB more). It reads the
records every decision may need (the config, admins, roles, hosts, forwarders, names,
tokens, revocations, OIDC issuers) at once, and the records of one key (its role, stake
and OIDC login) when that key first calls it (:meth:`PolicyView.learn`: the gets of
its records, asked at once), keeping those of the 65,536 keys that called last. It follows
the bucket's changes from the moment it read it: a change to a key it does not hold costs
it nothing (not even a signature check). A key whose records cannot be read (JetStream
away) is decided as ``public`` (the least it could be), not held, and asked again next
time. The
policy actor itself holds everything (``lazy=False``): it lists and counts keys.

Only records signed by the policy key this home trusts count (:mod:`actorbus.bus.pins`;
the first one a home ever reads pins its signer): an unsigned entry, a forged one or a bare
delete is ignored, and reported once. A policy that was seen (or whose key this home
knows) and whose bucket then vanishes is not "no policy": calls are refused (503) until it
is back.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import anyio
import anyio.abc

from ..bus import NATS, ActorError, Unavailable
from ..bus.connection import subscribe
from ..bus.jetstream import Bucket, Change, deleted_advisory, stream_exists
from ..bus.pins import pin_policy, pinned_policy, policy_seen
from ..bus.records import open_record
from ..bus.settings import Settings
from ..bus.throttle import LogThrottle
from .policy import PER_KEY, PolicyState

__all__ = ["PolicyRecords", "PolicyView", "load_state"]

log = logging.getLogger("actorbus.policy")

_QUIET_ABSENCE = 10.0
"""Seconds a missing policy bucket is only an INFO line (a new bus's policy is starting)."""

_FOREIGN = "holds no record of the policy's key"
_REPORTED = 1024
"""Keys whose entries were reported as not counting, remembered (not to say them twice)."""
_HELD = 65536
"""Keys whose own records a host holds at most (those that called it last)."""
_RECHECK = 1.0
"""Seconds between reads of a bucket that holds no record of the policy's."""
_SHARED = [
    "config",
    "admin.>",
    "role.>",
    "forwarder.>",
    "host.>",
    "name.>",
    "token.>",
    "revoked.>",
    "oidc.>",
]
"""The records every decision may need, read whole."""
_LEARN_WAIT = 2.0
"""Seconds a host waits for a key's records before it decides the call as ``public``."""


class PolicyRecords:
    """Which of a policy bucket's entries count: those signed by the trusted key."""

    def __init__(
        self,
        bucket: str,
        trusted: str | None,
        pin: Callable[[str], None],
        keep: frozenset[str] = frozenset(),
    ) -> None:
        self.bucket = bucket
        self.trusted = trusted
        self._pin = pin
        self._reported: set[str] = set()
        self._throttle = LogThrottle(log)
        self._keep = keep
        self.kept: dict[str, bytes] = {}
        """The signed records (as stored) of the keys in ``keep`` that count."""
        self.versions: dict[str, int] = {}
        """Per key, the version of the last record that counted (none: 0)."""
        self.highest = 0
        """The largest version of any record that counted."""

    def apply(self, state: PolicyState, key: str, data: bytes | None) -> bool:
        """Apply the entry ``key`` (``None``: deleted) to ``state`` if it is a record the
        trusted key signed (and say whether it was); else ignore it, and say so once per
        key."""
        if data is None:
            self._report(key, "deleted without a signed record")
            return False
        try:
            record = open_record(self.bucket, key, data)
        except ActorError as exc:
            self._report(key, exc.message)
            return False
        if self.trusted is None:  # first contact: this signer is the policy from now on
            self.trusted = record.by
            self._pin(record.by)
            log.warning("policy %s: trusting its signer %s from now on", self.bucket, record.by)
        if record.by != self.trusted:
            self._report(key, f"signed by {record.by}, not the policy's key")
            return False
        seen = self.versions.get(key, 0)
        if record.n < seen:  # a record the policy signed once, put back by someone
            self._report(key, f"version {record.n} is older than {seen}, already seen there")
            return False
        if record.n:
            self.versions[key] = record.n
            self.highest = max(self.highest, record.n)
        state.apply(key, record.value)
        if key in self._keep and record.value is None:
            self.kept.pop(key, None)
        elif key in self._keep:
            self.kept[key] = data
        return True

    def _report(self, key: str, why: str) -> None:
        if len(self._reported) >= _REPORTED:
            self._reported.clear()  # a flood of keys: say some again rather than grow
        if key not in self._reported:
            self._reported.add(key)
            # Anyone may have an answer land on the changes subject (issue 30: 20,000
            # forged keys made 100,000 lines): said at a bounded pace, whatever the keys.
            self._throttle.log(
                logging.WARNING,
                "ignored",
                "policy %s: ignoring %s: %s",
                self.bucket,
                key[:80],
                why,
            )


async def load_state(
    bucket: Bucket, records: PolicyRecords, held: set[str] | None = None
) -> PolicyState:
    """The policy in ``bucket`` as it is now (what ``records`` lets count); the keys whose
    records count are added to ``held``."""
    state = PolicyState()
    async for item in bucket.watch():
        if item is None:
            break
        if records.apply(state, item.key, item.value) and held is not None:
            held.add(item.key)
    return state


class PolicyView:
    """A host's live copy of the policy in the bucket of ``settings``.

    The signed records of the keys in ``keep`` are kept as stored (a replica shows its
    name's binding in its registry entry). Until the bucket exists (no policy actor ever
    ran on this NATS, and this home knows no policy key) calls are not policy-checked and
    the host says so; once it has seen the policy it enforces for good, from the last
    state it saw if the watch breaks.
    """

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        *,
        keep: frozenset[str] = frozenset(),
        lazy: bool = True,
    ) -> None:
        self._nc = nc
        self.bucket = settings.policy_bucket
        self.state = PolicyState()
        self.lazy = lazy
        """Whether this view holds the records of the keys that call it only."""
        self._following: Bucket | None = None
        """The bucket followed now (lazy: where keys' records are read from)."""
        self._held: OrderedDict[str, None] = OrderedDict()
        """The keys whose own records this view holds, the least recent first."""
        self._learning: dict[str, tuple[anyio.Event, list[Change]]] = {}
        """Keys whose records are being read, and the changes to them meanwhile."""
        self._throttle = LogThrottle(log)
        self.enforced = False
        self.records = PolicyRecords(
            self.bucket,
            pinned_policy(settings),
            lambda address: pin_policy(settings, address),
            keep,
        )
        self.unreadable = ""
        """Why the policy cannot be read (or is gone), while no policy was ever loaded, or
        one is known and its bucket is missing: calls are refused then (503), never let
        through unchecked."""
        self._absent = False  # the bucket was missing when last looked at
        self._seen = policy_seen(settings)  # so a missing bucket is a policy gone
        self.loaded = anyio.Event()
        """Set once a policy was loaded (:attr:`enforced` became true)."""

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow the bucket until cancelled; started once the first state is loaded (or
        the bucket is known to be missing, or cannot be read)."""
        ready = False

        def mark_ready() -> None:
            nonlocal ready
            if not ready:
                ready = True
                task_status.started()

        said = ""  # what was logged of the bucket's absence: "gone", "quiet", "loud"
        absent_since = 0.0
        delay = 0.5
        while True:
            try:
                bucket = await Bucket.find(self._nc, self.bucket)
                self._absent = bucket is None
                if bucket is None:
                    self._following = None  # no records to learn a key's from
                if bucket is None and self._seen:
                    # A policy this home knows (or saw) is gone: not "no policy".
                    self.enforced = False
                    self.unreadable = (
                        f"the policy bucket {self.bucket} is gone: calls are refused until "
                        "it is back"
                    )
                    if said != "gone":
                        log.warning("%s", self.unreadable)
                        said = "gone"
                elif bucket is None:
                    self.unreadable = ""  # no policy here: nothing to enforce
                    # A new bus has none for a moment (`actor up` is starting the policy
                    # actor): said quietly, and loudly if none comes.
                    absent_since = absent_since or time.monotonic()
                    loud = time.monotonic() - absent_since > _QUIET_ABSENCE
                    if said not in ("loud", "loud" if loud else "quiet"):
                        log.log(
                            logging.WARNING if loud else logging.INFO,
                            "no policy in bucket %s%s: calls are not policy-checked until "
                            "a policy actor starts (`actor up` starts one)",
                            self.bucket,
                            f" after {_QUIET_ABSENCE:g}s" if loud else " yet",
                        )
                        said = "loud" if loud else "quiet"
                else:
                    said, absent_since = "", 0.0
                    await self._follow(bucket, mark_ready)
            except Unavailable as exc:
                if self.enforced:
                    log.warning("policy watch lost (%s): deciding from the cached policy", exc)
                elif self._absent and not self._seen:
                    log.debug("policy bucket unreadable (%s); it was missing before", exc)
                else:
                    if not self.unreadable:
                        log.warning("policy unreadable (%s): refusing calls until it is", exc)
                    self.unreadable = exc.message
            mark_ready()
            # Until a policy exists, look for it often: calls are open meanwhile.
            await anyio.sleep(delay if self.enforced else 0.25)
            delay = min(delay * 2, 5.0)

    async def _follow(self, bucket: Bucket, mark_ready: Callable[[], None]) -> None:
        """Apply the bucket's records as they come, until it is deleted (then the caller
        looks for it again, and finds it gone)."""
        lost: Unavailable | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._until_deleted, bucket, tg.cancel_scope)
            try:
                if self.lazy:
                    await self._apply_shared(bucket, mark_ready)
                else:
                    await self._apply_records(bucket, mark_ready)
            except Unavailable as exc:  # raised out of the group, not inside one
                lost = exc
            tg.cancel_scope.cancel()
        if lost is not None:
            raise lost

    async def _until_deleted(self, bucket: Bucket, scope: anyio.CancelScope) -> None:
        """Cancel ``scope`` when JetStream says the bucket's stream was deleted and it is
        gone (anyone can have an answer land on the advisory's subject: a forged one costs
        a look at the bucket, no more)."""
        try:
            sub = await subscribe(self._nc, deleted_advisory(bucket.stream))
        except Unavailable as exc:  # the connection is closing: the watch ends too
            log.debug("policy %s: no deletion advisories: %s", self.bucket, exc)
            return
        try:
            async for _ in sub.messages:
                try:
                    if await stream_exists(self._nc, bucket.stream):
                        continue
                except Unavailable:
                    pass  # cannot tell: look for it again from the start
                scope.cancel()
                return
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()

    async def _apply_records(self, bucket: Bucket, mark_ready: Callable[[], None]) -> None:
        """Read the bucket into a fresh state, which replaces the current one once caught
        up, then apply each change as it comes. A bucket that holds no record of the
        policy's key, where this home knows a policy, is not the policy (replaced by
        someone else): calls are refused (503) until one comes."""
        fresh = PolicyState()
        live = caught_up = False
        counted = 0
        async for item in bucket.watch():
            if item is None:
                caught_up = True
            elif self.records.apply(self.state if live else fresh, item.key, item.value):
                counted += 1
            if not caught_up or live:
                continue
            live = self._loaded(fresh, counted)
            mark_ready()

    def _loaded(self, fresh: PolicyState, counted: int) -> bool:
        """Make ``fresh`` (the bucket as read, ``counted`` records of the policy's in it)
        the policy, or refuse calls if it holds none and this home knows one; whether it
        is live."""
        if counted or not self._seen:
            fresh.revision = self.state.revision + 1
            self.state = fresh
            self.enforced = True
            self._seen = True
            self.unreadable = ""
            self.loaded.set()
            log.info("policy loaded from %s", self.bucket)
            return True
        if _FOREIGN not in self.unreadable:
            self.enforced = False
            self.unreadable = (
                f"the policy bucket {self.bucket} {_FOREIGN}: calls are refused until it does"
            )
            log.warning("%s", self.unreadable)
        return False

    async def _apply_shared(self, bucket: Bucket, mark_ready: Callable[[], None]) -> None:
        """Lazy: follow the bucket's changes from now, read the shared records, then apply
        each change to what this host holds (a key's own records only if it holds that
        key). A bucket that holds no record of the policy's yet (where this home knows
        one) is read again every :data:`_RECHECK` seconds."""
        async with bucket.changes() as changes:
            fresh = PolicyState()
            counted = sum(self._apply(fresh, c) for c in await bucket.latest(_SHARED))
            # Until the fresh copy replaces the last one, keys are still learned into the
            # last one (issue 30: read again after a reconnect, a host decided every key it
            # did not hold as `public`): what it held is let go as it is replaced, at once.
            live = self._loaded(fresh, counted)
            if live:
                self._held.clear()
            self._following = bucket if live else None
            mark_ready()
            if not live:
                # Read again shortly: a watch of a bucket someone else made may stall for
                # its heartbeat's time when the policy actor settles it (10 s seen).
                await anyio.sleep(_RECHECK)
                return
            async for change in changes:
                kind, _, key = change.key.partition(".")
                if kind in PER_KEY:
                    learning = self._learning.get(key)
                    if learning is not None:
                        learning[1].append(change)
                        continue
                    if key not in self._held:
                        continue  # not a key this host holds: nothing to check
                self._apply(self.state, change)

    def _apply(self, state: PolicyState, change: Change) -> bool:
        """Apply ``change`` unless what is held of its key is newer (by the version its
        record signs: a change's revision may be forged, :meth:`.Bucket.changes`);
        whether it counted."""
        return self.records.apply(state, change.key, change.value)

    def knows(self, key: str) -> bool:
        """Whether deciding for ``key`` needs nothing read first."""
        return not self.lazy or self._following is None or key in self._held

    async def learn(self, key: str) -> None:
        """Hold ``key``'s own records (its role, stake, login), read now if not held: their
        gets asked at once, shared by the calls that wait for the same key. Never raises:
        records that cannot be read leave the key ``public`` for this call (said,
        throttled), and are asked for again by the next."""
        if key in self._held:
            self._held.move_to_end(key)
            return
        bucket = self._following
        if not self.lazy or bucket is None:
            return
        learning = self._learning.get(key)
        if learning is not None:
            await learning[0].wait()
            return
        done = anyio.Event()
        changed: list[Change] = []
        self._learning[key] = (done, changed)
        try:
            found = await bucket.latest([f"{kind}.{key}" for kind in PER_KEY], timeout=_LEARN_WAIT)
        except Unavailable as exc:
            self._throttle.log(
                logging.WARNING,
                "learn",
                "policy: the records of %s cannot be read (%s): decided as public",
                key,
                exc.message,
            )
            return
        finally:
            del self._learning[key]
            done.set()
        for change in [*found, *changed]:
            self._apply(self.state, change)
        self._held[key] = None
        if len(self._held) > _HELD:  # let go of the key that called least lately
            dropped, _ = self._held.popitem(last=False)
            self.state.forget(dropped)
            for kind in PER_KEY:
                self.records.versions.pop(f"{kind}.{dropped}", None)

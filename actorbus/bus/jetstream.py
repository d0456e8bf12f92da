"""JetStream pieces actorbus uses: a KV bucket with a TTL and a bounded-age stream.

Errors from ``nats.js`` are translated to :class:`Unavailable` here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, NamedTuple, TypeVar

import anyio
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from .connection import connect
from .errors import Forbidden, Gone, NoResponders, ReplyTimeout, Unavailable
from .requests import request, request_all
from .stored import Stored, by_sequence, last_of, walk
from .subjects import changes_of

__all__ = [
    "JS_ERRORS",
    "Bucket",
    "Change",
    "delete_stream",
    "deleted_advisory",
    "direct_batches",
    "ensure_stream",
    "publish_acked",
    "strangers_use_jetstream",
    "stream_exists",
    "stream_messages",
    "stream_tail",
    "when_ready",
]

T = TypeVar("T")

log = logging.getLogger("actorbus.bus")

JS_ERRORS = (nats.errors.Error, OSError, TimeoutError)
_PROBE_WAIT = 1.0
"""Seconds to wait for JetStream's answer to a connection without credentials."""
"""What nats.js raises when JetStream cannot answer (all mapped to :class:`Unavailable`)."""


class Change(NamedTuple):
    """A key's value as a bucket's watch delivers it."""

    key: str
    value: bytes | None
    """``None``: deleted or purged."""
    revision: int
    """What :meth:`Bucket.update` compares with: unlike a get (a direct get may be served
    by a replica that lags), the watch has seen this revision land. What
    :meth:`Bucket.changes` yields says what its message said: not to be trusted."""


READERS: Final = api.StreamConsumerLimits(inactive_threshold=30.0)
"""What a consumer of a stream every node shares may be: gone 30 s after nobody reads it,
a durable one too (issue 30: a host's replica made 989 durable consumers of the policy
bucket, and every replica that started after could not read the policy while they stood).
Ours are ordered consumers, gone 5 s after their reader."""
MAX_ENTRY: Final = 256 * 1024
"""Bytes of one entry of a bucket that is settled (a registry entry is about 2 KB): an
answer JetStream writes onto a stored subject carries a stored message, so the largest
one bounds what one request can make a stream keep."""


class Bucket:
    """A JetStream KV bucket whose entries expire ``ttl`` seconds after their last put."""

    def __init__(
        self,
        nc: NATS,
        kv: KeyValue,
        name: str,
        js: JetStreamContext,
        ttl: float | None = None,
        *,
        direct_reads: bool = False,
        allow_direct: bool = False,
    ) -> None:
        self._nc = nc
        self._kv = kv
        self._js = js
        self.name = name
        self.ttl = ttl
        """Seconds an entry lives after its last put, as the bucket was made (``None``:
        forever, or not known)."""
        self._direct_reads = direct_reads
        kv._direct = direct_reads and allow_direct

    @property
    def direct(self) -> bool:
        """Whether this connection reads it with direct gets (the policy actor's alone:
        :mod:`.stored`), else with the API's gets. nats-py's own gets (a create over a
        deleted key reads its revision) go the same way: it is nats-py's flag."""
        return bool(self._kv._direct)

    @classmethod
    async def open(
        cls,
        nc: NATS,
        name: str,
        *,
        ttl: float | None,
        replicas: int = 1,
        direct_reads: bool = False,
        followed: bool = False,
    ) -> Bucket:
        """Bind to bucket ``name``, creating it (history 1, file store, direct gets; entries
        expire after ``ttl`` seconds, or never if ``None``; with ``followed``, its changes
        republished: :meth:`changes`) if it is missing; :attr:`ttl` is what the bucket
        really has (its creator's choice, if it existed). With ``direct_reads`` (the policy
        actor's own connection) it is read with direct gets."""
        js = nc.jetstream()
        try:
            try:
                kv = await js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                config = api.KeyValueConfig(
                    bucket=name, ttl=ttl, history=1, replicas=replicas, direct=True
                )
                kv = await js.create_key_value(config)
                made = await js.stream_info(f"KV_{name}")  # no rollups (see settle)
                republish = _republish(name) if followed else None
                await js.update_stream(
                    made.config.evolve(allow_rollup_hdrs=False, republish=republish)
                )
        except nats.js.errors.BadRequestError:  # created concurrently: bind to it
            kv = await _bind(nc, name)
        except JS_ERRORS as exc:
            raise Unavailable(f"JetStream bucket {name}: {exc}") from exc
        try:
            status = await kv.status()  # another creator may have chosen the ttl
        except JS_ERRORS as exc:
            raise Unavailable(f"JetStream bucket {name}: {exc}") from exc
        allow = bool(status.stream_info.config.allow_direct)
        return cls(
            nc, kv, name, js, status.ttl or None, direct_reads=direct_reads, allow_direct=allow
        )

    @property
    def stream(self) -> str:
        """The stream that holds the bucket."""
        return f"KV_{self.name}"

    async def settle(self, *, followed: bool = False) -> None:
        """Have the bucket's stream serve direct gets, refuse rollups, bound its entries and
        its readers' consumers (:data:`READERS`) and, if ``followed``, republish its changes
        (:meth:`changes`), if it was made before (its owner's call: changing a stream takes
        that right). A KV stream takes a ``Nats-Rollup`` header by default, and JetStream
        can be made to publish stored headers onto any subject (a direct get answers where
        its request says): one rollup onto the policy bucket left 1 entry of 27. Nothing of
        ours rolls up."""
        republish = _republish(self.name) if followed else None
        try:
            info = await self._js.stream_info(self.stream)
            config = info.config
            if (
                config.allow_direct
                and not config.allow_rollup_hdrs
                and config.max_msg_size == MAX_ENTRY
                and config.consumer_limits == READERS
                and config.republish == republish
            ):
                self._kv._direct = self._direct_reads
                return
            settled = config.evolve(
                allow_direct=True,
                allow_rollup_hdrs=False,
                max_msg_size=MAX_ENTRY,
                consumer_limits=READERS,
                republish=republish,
            )
            await self._js.update_stream(settled)
        except JS_ERRORS as exc:
            raise Unavailable(f"JetStream bucket {self.name}: {exc}") from exc
        self._kv._direct = self._direct_reads

    @classmethod
    async def find(cls, nc: NATS, name: str, *, direct_reads: bool = False) -> Bucket | None:
        """Bind to bucket ``name`` if it exists, else ``None`` (``direct_reads``: as for
        :meth:`open`)."""
        try:
            js = nc.jetstream()
            kv = await js.key_value(name)
            allow = bool(kv._direct)
            return cls(nc, kv, name, js, direct_reads=direct_reads, allow_direct=allow)
        except nats.js.errors.BucketNotFoundError:
            return None
        except JS_ERRORS as exc:
            raise Unavailable(f"JetStream bucket {name}: {exc}") from exc

    async def watch(self) -> AsyncIterator[Change | None]:
        """Each key's current value, then ``None`` once caught up, then every change as it
        happens.

        nats-py's watcher may say "caught up" before values already on their way (the
        server counts them delivered, the client has not read them yet): a policy view
        that believed it saw an empty bucket, refused calls for a moment and said the
        policy was not there (issue 28). So caught up is the entry with nothing pending
        after it, or nats-py's marker when the bucket holds no entry at all.

        Runs until cancelled; raises :class:`Unavailable` if the watch cannot start.
        """
        try:
            watcher = await self._kv.watch(">", inactive_threshold=_GONE_AFTER)
        except JS_ERRORS as exc:
            raise Unavailable(f"watching bucket {self.name}: {exc}") from exc
        caught_up = False
        try:
            async for entry in watcher:
                if entry is None:
                    if not caught_up and await self._holds_none(">"):
                        caught_up = True
                        yield None
                    continue
                deleted = entry.operation in ("DEL", "PURGE")
                value = None if deleted else entry.value or b""
                yield Change(entry.key, value, entry.revision or 0)
                if not caught_up and entry.delta == 0:
                    caught_up = True
                    yield None
        finally:
            with anyio.CancelScope(shield=True):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """``(value, revision)`` of ``key``, or ``None`` if it has none: asked of the
        stream's leader, so what was just written is read (a direct get may be answered by
        a replica that lags: on a cluster getting its quorum back, a name claimed a moment
        before read as unclaimed)."""
        found = await self._got([f"$KV.{self.name}.{key}"], 5.0)
        if not found or found[0].value is None:
            return None
        return found[0].value, found[0].revision

    async def update(self, key: str, value: bytes, revision: int) -> int | None:
        """Store ``value`` if ``key`` is still at ``revision`` (0: if it has no value);
        returns the new revision, or ``None`` if another writer came first."""
        try:
            if revision:
                return await self._kv.update(key, value, last=revision)
            return await self._kv.create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        except JS_ERRORS as exc:
            raise Unavailable(f"update {self.name}/{key}: {exc}") from exc

    async def put(self, key: str, value: bytes) -> None:
        try:
            await self._kv.put(key, value)
        except JS_ERRORS as exc:
            raise Unavailable(f"put {self.name}/{key}: {exc}") from exc

    async def delete(self, key: str) -> None:
        try:
            await self._kv.delete(key)
        except JS_ERRORS as exc:
            raise Unavailable(f"delete {self.name}/{key}: {exc}") from exc

    async def items(self, keys: str = ">", *, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        """The keys matching ``keys`` (a subject filter) and their current values (read as
        :meth:`latest` reads them: nothing is made on the server; a watch made a consumer
        that stayed five minutes after each read, and reads by the thousand used up the
        account's consumers: issue 29)."""
        found = await self.latest([keys], timeout=timeout)
        return [(c.key, c.value) for c in found if c.value]

    async def latest(self, keys: list[str], *, timeout: float = 5.0) -> list[Change]:
        """The last entry of each key matching one of ``keys`` (subject filters), deletions
        included (``value`` ``None``), oldest first. With direct gets: batched,
        :data:`_BATCH` at a time, all of one snapshot (the stream's last sequence at the
        first batch); else the API's gets, a key's at once, a filter's one after another
        (each stored entry is its key's last: a bucket keeps one). Raises
        :class:`Unavailable`."""
        prefix = f"$KV.{self.name}."
        if not self.direct:
            return await self._got([prefix + k for k in keys], timeout)
        ask: dict[str, object] = {"multi_last": [prefix + k for k in keys]}
        found: list[Change] = []
        async for msg in direct_batches(self._nc, self.stream, ask, timeout=timeout):
            headers = msg.headers or {}
            deleted = headers.get("KV-Operation") in ("DEL", "PURGE")
            key = headers.get("Nats-Subject", "")[len(prefix) :]
            revision = int(headers.get("Nats-Sequence", "0"))
            found.append(Change(key, None if deleted else msg.data, revision))
        return found

    @contextlib.asynccontextmanager
    async def changes(self, *, verify: float = 30.0) -> AsyncIterator[AsyncIterator[Change]]:
        """Every change stored from its entry on (none of what the bucket held before), as
        an iterator: what the bucket's stream republishes (its owner settles it so:
        :meth:`settle`), heard by a plain subscription, so reading makes nothing on the
        server. A consumer's deliver subject is its maker's choice, and one aimed where
        something listens never goes inactive: issue 30's third attacker filled the policy
        bucket's consumers so, and replicas that started after could not read the policy.

        On entry the subscription hears them already, so a snapshot read after it misses
        none. What comes may also be forged, a genuine old entry among it (see
        :meth:`_followed`): the reader orders by what each entry signs. Raises
        :class:`Unavailable` on entry if it cannot start, and while iterating if the stream
        republishes nothing or a change may have been missed, for the reader to read the
        bucket again: a reconnect, or fewer changes heard than the stream stored over two
        periods of ``verify`` seconds (how often it looks how many the stream stored)."""
        subject = changes_of(self.name)
        nc = self._nc
        try:
            sub = await nc.subscribe(f"{subject}.>", pending_msgs_limit=_FOLLOWED_MAX)
        except JS_ERRORS as exc:
            raise Unavailable(f"following bucket {self.name}: {exc}") from exc
        try:
            try:
                await nc.flush()
                info = await self._js.stream_info(self.stream)
            except JS_ERRORS as exc:
                raise Unavailable(f"following bucket {self.name}: {exc}") from exc
            republished = info.config.republish == _republish(self.name)
            yield self._followed(sub, info.state.last_seq, republished, verify)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(*JS_ERRORS):
                await sub.unsubscribe()

    async def _followed(
        self, sub: Subscription, stored: int, republished: bool, verify: float
    ) -> AsyncIterator[Change]:
        """:meth:`changes`' iterator: what ``sub`` hears (the stream held ``stored``
        messages' sequences when it started), if the stream is ``republished``.

        Nothing a message says is taken as the stream's: JetStream answers on the reply
        subject its request names, so any connection that may get from a stream of its
        own can have an answer, headers and all, land here (issue 30's third attacker
        froze a removed admin's record on every follower with a genuine old record and a
        ``Nats-Sequence`` ahead of the bucket's). A change's ``revision`` is what its
        message says, for show: its record's own signed version orders it. Missed ones
        are found by what the stream says of itself, every ``verify`` seconds."""
        if not republished:
            raise Unavailable(
                f"bucket {self.name} does not publish its changes (its owner settles it so)"
            )
        nc = self._nc
        reconnects = nc.stats["reconnects"]
        prefix = len(changes_of(self.name)) + 1
        checked, heard, owed = time.monotonic(), 0, 0
        while True:
            try:
                msg: Msg | None = await sub.next_msg(timeout=_IDLE)
            except nats.errors.TimeoutError:
                msg = None
            except JS_ERRORS as exc:
                raise Unavailable(f"following bucket {self.name}: {exc}") from exc
            if nc.stats["reconnects"] != reconnects:
                raise Unavailable(f"bucket {self.name}: reconnected, changes may be missed")
            if time.monotonic() - checked >= verify:
                try:
                    now = (await self._js.stream_info(self.stream)).state.last_seq
                except JS_ERRORS as exc:
                    raise Unavailable(f"following bucket {self.name}: {exc}") from exc
                # Changes stored and not heard, carried over one check (one on its way at
                # a check is heard by the next); more heard than stored owes nothing.
                before, owed = owed, max(0, owed + (now - stored) - heard)
                if owed and before:
                    raise Unavailable(f"bucket {self.name}: {owed} of its changes never came")
                checked, stored, heard = time.monotonic(), now, 0
            if msg is None:
                continue
            headers = msg.headers or {}
            if headers.get("Nats-Stream") != self.stream:
                continue  # another stream's answer aimed here (a push delivery may pass)
            heard += 1
            try:
                revision = int(headers.get("Nats-Sequence", "0"))
            except ValueError:
                revision = 0
            deleted = headers.get("KV-Operation") in ("DEL", "PURGE")
            yield Change(msg.subject[prefix:], None if deleted else msg.data, revision)

    async def _got(self, subjects: list[str], timeout: float) -> list[Change]:
        """:meth:`latest` through the API's gets (:mod:`.stored`)."""
        exact = [subject for subject in subjects if not _WILDCARDS & set(subject.split("."))]
        found: list[Stored] = []
        failed: list[Unavailable] = []

        async def read(subjects: list[str] | str) -> None:
            try:
                if isinstance(subjects, list):
                    found.extend(await last_of(self._nc, self.stream, subjects, timeout=timeout))
                else:
                    found.extend(await walk(self._nc, self.stream, subjects, timeout=timeout))
            except Unavailable as exc:
                failed.append(exc)

        async with anyio.create_task_group() as tg:  # the filters walked side by side
            tg.start_soon(read, exact)
            for subjects_filter in subjects:
                if subjects_filter not in exact:
                    tg.start_soon(read, subjects_filter)
        if failed:
            raise failed[0]
        changes: dict[int, Change] = {}
        prefix = len(f"$KV.{self.name}.")
        for stored in found:
            deleted = stored.headers.get("KV-Operation") in ("DEL", "PURGE")
            value = None if deleted else stored.data
            changes[stored.seq] = Change(stored.subject[prefix:], value, stored.seq)
        return [changes[seq] for seq in sorted(changes)]

    async def _holds_none(self, keys: str) -> bool:
        """Whether no key matching ``keys`` has an entry (a value or a deletion); for every
        key (``>``), asked without listing them (a bucket may hold a million)."""
        if keys == ">":
            return not (await self._js.stream_info(self.stream)).state.messages
        subjects = f"$KV.{self.name}.{keys}"
        info = await self._js.stream_info(self.stream, subjects_filter=subjects)
        return not info.state.subjects


_GONE_AFTER = 5.0
"""Seconds a watch's consumer outlives its reader."""
_IDLE = 1.0
"""Seconds without a change after which a follower looks whether it reconnected."""
_FOLLOWED_MAX = 1_000_000
"""Changes a follower's subscription holds unread at most (past that nats-py drops them,
and the follower finds the gap)."""
_WILDCARDS = frozenset({"*", ">"})
_BATCH = 256
"""Entries one direct get answers with at most (a registry entry is about 2 KB)."""
_BATCH_BYTES = 4 * 1024 * 1024
"""Bytes one direct get answers with at most (a nonce announcement is up to 256 KB)."""
_BATCH_WAIT = 2.0
"""Seconds one batch of a direct get may take before it is asked again (a request lost
on a leaf node's reconnect, or sent to a stream made a moment before on a cluster,
stalled a replica's start for a whole read's time)."""
_encode = msgspec.json.Encoder().encode


async def direct_batches(
    nc: NATS, stream: str, ask: dict[str, object], *, timeout: float = 5.0
) -> AsyncIterator[Msg]:
    """The messages of ``stream`` a batched direct get ``ask`` names (``multi_last``: each
    subject's last; ``next_by_subj``: every message on a filter), oldest first, asked
    :data:`_BATCH` (and :data:`_BATCH_BYTES`) at a time: each batch starts after the last
    one's end, and a ``multi_last`` read is of one snapshot (the stream's last sequence at
    the first batch). Nothing is made on the server. A batch unanswered within
    :data:`_BATCH_WAIT` seconds is asked again. Raises :class:`Unavailable` after
    ``timeout`` seconds in all."""
    subject = f"$JS.API.DIRECT.GET.{stream}"
    deadline = time.monotonic() + timeout
    ask = {**ask, "batch": _BATCH, "max_bytes": _BATCH_BYTES}
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unavailable(f"reading {stream} timed out")
        try:
            wait = min(left, _BATCH_WAIT)  # a request lost on the way costs this, no more
            answer = await request_all(nc, subject, _encode(ask), wait, last=_status)
        except ReplyTimeout as exc:
            if deadline - time.monotonic() > 0:
                continue  # asked again
            raise Unavailable(f"reading {stream}: {exc.message}") from None
        except NoResponders as exc:
            raise Unavailable(f"reading {stream}: {exc.message}") from None
        *messages, end = answer
        for msg in messages:
            yield msg
        headers = end.headers or {}
        status = headers.get("Status")
        if status == "404":  # nothing (more) to read
            return
        if status != "204":
            raise Unavailable(f"reading {stream}: JetStream answered {status}")
        if headers.get("Nats-Num-Pending", "0") == "0":
            return
        if "multi_last" in ask:
            ask["up_to_seq"] = int(headers["Nats-UpTo-Sequence"])
        ask["seq"] = int(headers["Nats-Last-Sequence"]) + 1  # the next batch starts after


def _republish(bucket: str) -> api.RePublish:
    """What the stream of ``bucket`` republishes for its followers: every entry."""
    return api.RePublish(src=f"$KV.{bucket}.>", dest=f"{changes_of(bucket)}.>")


def _status(msg: Msg) -> bool:
    """Whether ``msg`` ends a batched direct get: its end, or its refusal."""
    return bool(msg.headers and "Status" in msg.headers)


async def _bind(nc: NATS, name: str) -> KeyValue:
    try:
        return await nc.jetstream().key_value(name)
    except JS_ERRORS as exc:
        raise Unavailable(f"JetStream bucket {name}: {exc}") from exc


def deleted_advisory(stream: str) -> str:
    """Where JetStream says that ``stream`` was deleted."""
    return f"$JS.EVENT.ADVISORY.STREAM.DELETED.{stream}"


async def strangers_use_jetstream(url: str) -> bool:
    """Whether a connection without credentials may use JetStream at ``url`` (it could then
    write any bucket and delete any stream): asks for the account's JetStream info."""
    async with connect(url, name="actorbus check") as nc:
        try:
            await request(nc, "$JS.API.INFO", b"", {}, _PROBE_WAIT)
        except (Forbidden, ReplyTimeout, NoResponders):  # refused, or no JetStream
            return False
    return True


async def when_ready(op: Callable[[], Awaitable[T]], what: str, *, wait: float) -> T:
    """``op()``, again while it raises :class:`Unavailable` (JetStream still electing its
    leaders, a node catching up), for up to ``wait`` seconds with backoff; says once that it
    waits, and when it is over. Raises :class:`Unavailable` naming ``what`` after ``wait``,
    or at once if the server has no JetStream."""
    deadline = time.monotonic() + wait
    delay = 0.1
    waited = False
    while True:
        try:
            result = await op()
        except Unavailable as exc:
            if isinstance(exc, Gone) or "not enabled" in exc.message:  # waiting cannot help
                raise
            if time.monotonic() + delay > deadline:
                raise Unavailable(
                    f"{what}: JetStream was not ready within {wait:g} s ({exc.message})"
                ) from None
            if not waited:
                log.warning("%s: JetStream is not ready (%s); waiting up to %g s", what, exc, wait)
                waited = True
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)
        else:
            if waited:
                log.warning("%s: JetStream is ready", what)
            return result


async def ensure_stream(
    nc: NATS,
    name: str,
    subjects: list[str],
    *,
    max_age: float,
    replicas: int = 1,
    max_bytes: int | None = None,
    max_msg_size: int | None = None,
    work_queue: bool = False,
    duplicate_window: float = 0.0,
    append_only: bool = False,
    direct: bool = False,
    max_consumers: int = -1,
    adjust: bool = True,
) -> None:
    """Create stream ``name`` (file store, messages kept ``max_age`` s and, if given, at most
    ``max_bytes`` in all, the oldest dropped first, each at most ``max_msg_size``; its
    consumers bounded as :data:`READERS` says), or widen its age and set its bytes. A
    ``work_queue`` stream drops each message once a consumer acknowledges it; a message id is stored
    once per ``duplicate_window`` seconds (0: the server's default, 2 minutes); an
    ``append_only`` stream refuses to delete a message or purge (an existing stream is
    made so); a ``direct`` one answers direct gets (:func:`direct_batches`; an existing
    one is made so); it holds at most ``max_consumers`` consumers (-1: any number). Without
    ``adjust`` an existing
    stream is kept as it is (its maker's: changing it takes a right the caller lacks)."""
    js = nc.jetstream()
    config = api.StreamConfig(
        name=name,
        subjects=subjects,
        max_age=max_age,
        max_bytes=max_bytes,
        max_msg_size=max_msg_size,
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.WORK_QUEUE if work_queue else api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        num_replicas=replicas,
        duplicate_window=duplicate_window,
        deny_delete=append_only,
        deny_purge=append_only,
        allow_direct=direct,
        max_consumers=max_consumers,
        consumer_limits=None if work_queue else READERS,
    )
    try:
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(config)
                return
            except nats.js.errors.BadRequestError:  # created concurrently
                info = await js.stream_info(name)
        if not adjust:
            return
        made = info.config
        widen = (made.max_age or 0) < max_age
        bound = max_bytes is not None and made.max_bytes != max_bytes
        sized = max_msg_size is not None and made.max_msg_size != max_msg_size
        seal = append_only and not (made.deny_delete and made.deny_purge)
        limit = made.consumer_limits != config.consumer_limits
        opened = direct and not made.allow_direct
        counted = made.max_consumers != max_consumers
        if widen or bound or sized or seal or limit or opened or counted:
            await js.update_stream(
                made.evolve(
                    max_age=max(max_age, made.max_age or 0),
                    max_bytes=max_bytes if bound else made.max_bytes,
                    max_msg_size=max_msg_size if sized else made.max_msg_size,
                    deny_delete=made.deny_delete or append_only,
                    deny_purge=made.deny_purge or append_only,
                    allow_direct=made.allow_direct or direct,
                    max_consumers=max_consumers,
                    consumer_limits=config.consumer_limits,
                )
            )
    except JS_ERRORS as exc:
        raise Unavailable(f"JetStream stream {name}: {exc}") from exc


async def stream_exists(nc: NATS, name: str) -> bool:
    """Whether stream ``name`` exists. Raises :class:`Unavailable`."""
    try:
        await nc.jetstream().stream_info(name)
    except nats.js.errors.NotFoundError:
        return False
    except JS_ERRORS as exc:
        raise Unavailable(f"JetStream stream {name}: {exc}") from exc
    return True


async def delete_stream(nc: NATS, name: str) -> bool:
    """Delete stream ``name``; whether it was there. Raises :class:`Unavailable`."""
    try:
        await nc.jetstream().delete_stream(name)
    except nats.js.errors.NotFoundError:
        return False
    except JS_ERRORS as exc:
        raise Unavailable(f"deleting stream {name}: {exc}") from exc
    return True


async def stream_tail(
    nc: NATS, stream: str, limit: int, *, before: int = 0, timeout: float = 5.0
) -> list[Stored]:
    """The last ``limit`` messages of ``stream``, oldest first, or the last ``limit``
    before sequence ``before``: read by sequence from the right one on, nothing read
    before it and nothing made on the server. Raises :class:`Unavailable`."""
    try:
        state = (await nc.jetstream().stream_info(stream)).state
    except JS_ERRORS as exc:
        raise Unavailable(f"reading {stream}: {exc}") from exc
    end = min(before - 1, state.last_seq) if before else state.last_seq
    start = max(end - limit + 1, state.first_seq, 1)
    if end < start:
        return []
    return await by_sequence(nc, stream, start, end, timeout=timeout)


async def publish_acked(
    nc: NATS, subject: str, data: bytes, headers: dict[str, str] | None = None
) -> None:
    """Publish to a stream's subject and wait for JetStream to store it."""
    try:
        await nc.jetstream().publish(subject, data, headers=headers)
    except JS_ERRORS as exc:
        raise Unavailable(f"publish to {subject}: {exc}") from exc


async def stream_messages(
    nc: NATS,
    stream: str,
    subject: str,
    *,
    since: dt.datetime | None = None,
    follow: bool = False,
    idle: float = 1.0,
    headers_only: bool = False,
) -> AsyncIterator[Msg]:
    """The messages ``stream`` holds on ``subject`` (a filter, wildcards allowed), oldest
    first, from ``since`` (else all); with ``follow``, then each new one until cancelled.

    With ``headers_only`` the messages come without their bodies. Without ``follow`` it
    ends at once if nothing is stored on ``subject``, else once
    caught up, or when nothing arrives for ``idle`` seconds (all of it was older than
    ``since``). Raises :class:`Unavailable`.
    """
    js = nc.jetstream()
    policy = api.DeliverPolicy.BY_START_TIME if since else api.DeliverPolicy.ALL
    try:
        if not follow:
            info = await js.stream_info(stream, subjects_filter=subject)
            if not sum((info.state.subjects or {}).values()):
                return  # nothing stored: do not wait out `idle`
        sub = await js.subscribe(
            subject,
            stream=stream,
            ordered_consumer=True,
            config=api.ConsumerConfig(
                deliver_policy=policy, opt_start_time=since, headers_only=headers_only or None
            ),
        )
    except JS_ERRORS as exc:
        raise Unavailable(f"reading {subject} from {stream}: {exc}") from exc
    try:
        while True:
            try:
                if follow:
                    msg = await sub.next_msg(timeout=None)
                else:
                    msg = await sub.next_msg(timeout=idle)
            except nats.errors.TimeoutError:
                return
            except JS_ERRORS as exc:
                raise Unavailable(f"reading {subject} from {stream}: {exc}") from exc
            yield msg
            if not follow and msg.metadata.num_pending == 0:
                return
    finally:
        with anyio.CancelScope(shield=True):
            await sub.unsubscribe()

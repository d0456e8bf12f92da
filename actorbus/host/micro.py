"""The NATS service API (``$SRV.PING|INFO|STATS``) for an actor replica.

Every actor replica is a ``nats micro`` service: ``nats micro ls|info|stats`` and any
client of the service API see it. We answer the protocol ourselves (msgspec Structs, our
own task group) rather than through ``nats.micro.Service``, because its endpoints take a
subscription's messages one at a time in a callback and time only that callback; here each
function is an endpoint whose stats count the real calls, refusals included. STATS also
lists an endpoint ``_other`` (subject ``actor.<name>.*``) for requests that name no served
function and for what the replica dropped without reading.

Anyone on the bus may ask ``$SRV``: the answers go only to reply subjects that look like
inboxes, like the actor's own replies.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import anyio
import msgspec

from ..bus import NATS, ActorError, publish
from ..bus.subjects import (
    call_subject,
    is_reply_subject,
    queue_group,
    serve_subject,
    service_name,
)
from .actor import Function
from .stats import OTHER, FunctionStats

__all__ = ["ServiceIdentity", "serve_micro"]

log = logging.getLogger("actorbus.host")

_VERBS = ("PING", "INFO", "STATS")


class EndpointInfo(msgspec.Struct):
    name: str
    subject: str
    queue_group: str
    metadata: dict[str, str]


class EndpointStats(msgspec.Struct):
    name: str
    subject: str
    queue_group: str
    num_requests: int
    num_errors: int
    last_error: str
    processing_time: int
    average_processing_time: int
    data: dict[str, Any] | None = None


class PingResponse(msgspec.Struct):
    name: str
    id: str
    version: str
    metadata: dict[str, str]
    type: str = "io.nats.micro.v1.ping_response"


class InfoResponse(msgspec.Struct):
    name: str
    id: str
    version: str
    description: str
    metadata: dict[str, str]
    endpoints: list[EndpointInfo]
    type: str = "io.nats.micro.v1.info_response"


class StatsResponse(msgspec.Struct):
    name: str
    id: str
    version: str
    metadata: dict[str, str]
    endpoints: list[EndpointStats]
    started: str
    type: str = "io.nats.micro.v1.stats_response"


class ServiceIdentity(msgspec.Struct):
    """What a replica says about itself on ``$SRV``; metadata is always an object."""

    actor: str
    id: str
    version: str
    description: str
    metadata: dict[str, str]
    started: dt.datetime

    @property
    def service_name(self) -> str:
        return service_name(self.actor)


_json = msgspec.json.Encoder()


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def _info(identity: ServiceIdentity, functions: dict[str, Function]) -> InfoResponse:
    group = queue_group(identity.actor)
    return InfoResponse(
        name=identity.service_name,
        id=identity.id,
        version=identity.version,
        description=identity.description,
        metadata=identity.metadata,
        endpoints=[
            EndpointInfo(
                name=fn,
                subject=call_subject(identity.actor, fn),
                queue_group=group,
                metadata={"schema": _json.encode(function.schema).decode()},
            )
            for fn, function in sorted(functions.items())
        ],
    )


def _stats(identity: ServiceIdentity, stats: dict[str, FunctionStats]) -> StatsResponse:
    group = queue_group(identity.actor)
    return StatsResponse(
        name=identity.service_name,
        id=identity.id,
        version=identity.version,
        metadata=identity.metadata,
        started=_rfc3339(identity.started),
        endpoints=[
            EndpointStats(
                name=fn,
                subject=(
                    serve_subject(identity.actor)
                    if fn == OTHER
                    else call_subject(identity.actor, fn)
                ),
                queue_group=group,
                num_requests=s.num_requests,
                num_errors=s.num_errors,
                last_error=s.last_error,
                processing_time=s.processing_time,
                average_processing_time=s.processing_time // max(s.num_requests, 1),
                data=s.data(),
            )
            for fn, s in sorted(stats.items())
        ],
    )


async def serve_micro(
    nc: NATS,
    identity: ServiceIdentity,
    functions: dict[str, Function],
    stats: dict[str, FunctionStats],
    reply_prefixes: tuple[str, ...],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``$SRV.<verb>``, ``$SRV.<verb>.<name>`` and ``$SRV.<verb>.<name>.<id>``
    until cancelled, on reply subjects starting with one of ``reply_prefixes`` only.
    Started (``task_status``) once subscribed and flushed. Each answer shows
    ``identity.metadata`` as it is then (replaced, never changed in place): a replica's
    record there gains its name's binding when the policy grants it, which may be after
    the start."""
    shown: dict[str, tuple[object, bytes]] = {}

    def current(verb: str) -> bytes:
        """PING's or INFO's answer, encoded again only when the metadata was replaced (a
        flood of questions costs a publish each, not an encoding: 42 µs for INFO)."""
        metadata = identity.metadata
        held = shown.get(verb)
        if held is None or held[0] is not metadata:
            answer = (
                PingResponse(identity.service_name, identity.id, identity.version, metadata)
                if verb == "PING"
                else _info(identity, functions)
            )
            held = shown[verb] = (metadata, _json.encode(answer))
        return held[1]

    answers = {
        "PING": lambda: current("PING"),
        "INFO": lambda: current("INFO"),
        "STATS": lambda: _json.encode(_stats(identity, stats)),
    }
    subs = []
    for verb in _VERBS:
        for suffix in ("", f".{identity.service_name}", f".{identity.service_name}.{identity.id}"):
            subs.append((verb, await nc.subscribe(f"$SRV.{verb}{suffix}")))
    await nc.flush()

    async def answer(verb: str, sub: Any) -> None:
        async for msg in sub.messages:
            if not is_reply_subject(msg.reply, reply_prefixes):
                continue
            try:
                await publish(nc, msg.reply, answers[verb]())
            except ActorError as exc:
                log.debug("$SRV.%s: no answer sent: %s", verb, exc)

    try:
        async with anyio.create_task_group() as tg:
            for verb, sub in subs:
                tg.start_soon(answer, verb, sub)
            task_status.started()
    finally:
        with anyio.CancelScope(shield=True):
            for _, sub in subs:
                await sub.unsubscribe()

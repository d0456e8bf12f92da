"""What the gateway knows of the actors on its NATS: who runs (the registry), what each
function takes and returns (``$SRV.INFO``, no signature needed), and how each replica is
doing (``$SRV.STATS``), refreshed as replicas come and go; and the OpenAPI 3.1 document
built from it.

Each web caller is shown what it may call (:class:`Viewer`): the functions its key's role
allows (all of them while no policy is enforced), and no process ids or host names
unless it is a policy admin."""

from __future__ import annotations

import gzip
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec

from ...bus import ActorError, request
from ...bus.lru import LRU
from ...bus.subjects import service_subject
from ...bus.wire import UNDECODABLE
from ...client import Client, RegistryEntry
from ...client.discovery import read_service_info
from ...host.policy import PolicyState

__all__ = ["Catalog", "Document", "Viewer", "openapi"]

_ENTRIES_TTL = 2.0
_DOCUMENTS = 64
"""OpenAPI documents kept encoded, one per set of functions some caller may see."""
_STATS_WINDOW = 0.25
_json = msgspec.json.Decoder()
_STATUSES = {
    "400": "malformed body or arguments",
    "401": "missing or bad signature, token, login, commune or hotkey signature",
    "403": "denied by policy",
    "404": "no such function",
    "405": "a GET of a function not marked idempotent (POST it)",
    "408": "the handler passed its deadline, or the request was not received in time",
    "413": "body over the limit",
    "415": "a POST body that is not application/json or application/msgpack",
    "421": "a Host name this gateway is not served under",
    "429": "quota exhausted: wait Retry-After seconds",
    "431": "request headers over the limit",
    "500": "the handler raised (see the error id in the actor's log)",
    "502": "the reply's signature or signer did not check out",
    "503": "no replica serves it, or the gateway or the actor is overloaded",
    "504": "no reply within the gateway's timeout",
}


class Viewer:
    """Who is looking: ``may(actor, fn, allow, deny)`` says whether it may call a function
    (``allow``/``deny``: the actor's own widening and narrowing); ``admin``, whether it
    sees where replicas run."""

    def __init__(
        self, may: Callable[[str, str, frozenset[str], frozenset[str]], bool], admin: bool
    ) -> None:
        self.may = may
        self.admin = admin

    @classmethod
    def of(cls, key: str, policy: PolicyState, enforced: bool) -> Viewer:
        """The caller ``key`` as ``policy`` sees it (while none is ``enforced``, anyone
        may call anything, and nobody is an admin)."""
        if not enforced:
            return cls(lambda *_: True, admin=False)

        def may(actor: str, fn: str, allow: frozenset[str], deny: frozenset[str]) -> bool:
            return policy.decide(key, actor, fn, allow, deny).allowed

        return cls(may, admin=key in policy.admins and key not in policy.revoked)


@dataclass(frozen=True)
class Document:
    """An OpenAPI document as served: its JSON, the same gzipped, and its ETag."""

    body: bytes
    gzipped: bytes
    etag: str


class Catalog:
    """The registry and function schemas, cached (one per gateway replica)."""

    def __init__(self, client: Client, hidden: tuple[str, ...] = ("node.",)) -> None:
        self.client = client
        self.hidden = hidden
        self._entries: tuple[float, list[RegistryEntry]] = (0.0, [])
        self._schemas: dict[str, tuple[frozenset[str], dict[str, Any]]] = {}
        self._generation = 0
        """Counts the changes of :attr:`_schemas` (a document of an older one is stale)."""
        self._documents: LRU[tuple[Any, ...], Document] = LRU(_DOCUMENTS)
        self._lock = anyio.Lock()

    async def entries(self) -> list[RegistryEntry]:
        """Live replicas of the actors callers can reach, re-read every 2 s."""
        stamp, entries = self._entries
        if time.monotonic() - stamp > _ENTRIES_TTL:
            async with self._lock:
                stamp, entries = self._entries
                if time.monotonic() - stamp > _ENTRIES_TTL:
                    entries = [
                        e for e in await self.client.entries() if not e.name.startswith(self.hidden)
                    ]
                    self._entries = (time.monotonic(), entries)
        return entries

    async def schemas(self) -> dict[str, dict[str, Any]]:
        """Each actor's functions and their schemas; asked again when its replicas change."""
        by_name: dict[str, set[str]] = {}
        for entry in await self.entries():
            by_name.setdefault(entry.name, set()).add(entry.instance)
        for name in list(self._schemas):
            if name not in by_name:
                del self._schemas[name]
                self._generation += 1
        async with anyio.create_task_group() as tg:
            for name, instances in by_name.items():
                known = self._schemas.get(name)
                if known is None or known[0] != frozenset(instances):
                    tg.start_soon(self._fetch, name, frozenset(instances))
        return {name: schema for name, (_, schema) in sorted(self._schemas.items())}

    async def _fetch(self, name: str, instances: frozenset[str]) -> None:
        try:
            reply = await request(self.client.nc, service_subject("INFO", name), b"", {}, 1.0)
        except ActorError:
            return  # gone: left out until it answers
        info = read_service_info(reply.data, name, self.client.vouching)
        if info is not None:  # else not ours: left out
            self._schemas[name] = (instances, info.functions)
            self._generation += 1

    async def visible(self, viewer: Viewer) -> dict[str, dict[str, Any]]:
        """:meth:`schemas`, with only the functions ``viewer`` may call (and no actor of
        which it may call none)."""
        rules = {
            e.name: (frozenset(e.allow_fns), frozenset(e.deny_fns)) for e in await self.entries()
        }
        shown: dict[str, dict[str, Any]] = {}
        for name, functions in (await self.schemas()).items():
            allow, deny = rules.get(name, (frozenset(), frozenset()))
            mine = {fn: s for fn, s in functions.items() if viewer.may(name, fn, allow, deny)}
            if mine:
                shown[name] = mine
        return shown

    async def document(
        self,
        viewer: Viewer,
        version: str,
        extra: Callable[[dict[str, dict[str, Any]]], dict[str, Any] | None],
    ) -> Document:
        """The OpenAPI document of what ``viewer`` may call (:func:`openapi`, ``extra``
        making the gateway's own path items from it), built and encoded once for every
        caller who may call the same functions until an actor's schemas change: 60
        actors make a document of megabytes, asked for by anyone, anonymously."""
        schemas = await self.visible(viewer)
        shown = tuple((name, tuple(functions)) for name, functions in schemas.items())
        key = (self._generation, version, shown)
        found = self._documents.get(key)
        if found is None:
            body = msgspec.json.encode(openapi(schemas, version, extra(schemas)))
            etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
            found = Document(body, gzip.compress(body, 6, mtime=0), etag)
            self._documents[key] = found
        return found

    async def overview(self, viewer: Viewer) -> dict[str, Any]:
        """What the dashboard shows ``viewer``: each actor it may call, its replicas, calls,
        errors and latency (and where each runs, for an admin)."""
        visible = await self.visible(viewer)
        entries = [e for e in await self.entries() if e.name in visible]
        stats = await self.stats()
        now = time.time()
        actors: dict[str, Any] = {}
        for e in entries:
            endpoints = stats.get(e.instance, {}).get("endpoints", [])
            calls = sum(p.get("num_requests", 0) for p in endpoints)
            spent = sum(p.get("processing_time", 0) for p in endpoints)
            fns = [fn for fn in e.fns if fn in visible[e.name]]
            actor = actors.setdefault(
                e.name, {"name": e.name, "address": e.address, "fns": fns, "replicas": []}
            )
            replica: dict[str, Any] = {
                "replica": e.replica,
                "up": round(now - e.started),
                "calls": calls,
                "errors": sum(p.get("num_errors", 0) for p in endpoints),
                "latency_ms": round(spent / calls / 1e6, 3) if calls else None,
            }
            if viewer.admin:
                replica |= {"node": e.node, "pid": e.pid}
            actor["replicas"].append(replica)
        return {"actors": [actors[n] for n in sorted(actors)]}

    async def stats(self) -> dict[str, Any]:
        """``$SRV.STATS`` of every replica that answers within a quarter second, by
        instance id."""
        nc = self.client.nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        found: dict[str, Any] = {}
        try:
            await nc.publish("$SRV.STATS", b"", reply=inbox)
            with anyio.move_on_after(_STATS_WINDOW):
                async for msg in sub.messages:
                    try:
                        stats = _json.decode(msg.data)
                        found[stats["id"]] = stats
                    except (*UNDECODABLE, KeyError, TypeError):
                        continue
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()
        return found


def _relocate(schema: Any, prefix: str, defs: dict[str, Any]) -> Any:
    """``schema`` with msgspec's ``$defs`` moved to ``components/schemas`` (under
    ``prefix``) and its references pointed there."""
    if isinstance(schema, dict):
        for key, value in schema.pop("$defs", {}).items():
            defs[f"{prefix}{key}"] = _relocate(value, prefix, defs)
        out = {k: _relocate(v, prefix, defs) for k, v in schema.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = f"#/components/schemas/{prefix}{ref[len('#/$defs/') :]}"
        return out
    if isinstance(schema, list):
        return [_relocate(item, prefix, defs) for item in schema]
    return schema


def _nullable_numbers(schema: Any) -> Any:
    """``schema`` with every ``number`` also allowing ``null``: JSON has no Infinity or
    NaN, so a float result that is one arrives as null (PROTOCOL.md, section 3)."""
    if isinstance(schema, dict):
        out = {k: _nullable_numbers(v) for k, v in schema.items()}
        if out.get("type") == "number":
            out["type"] = ["number", "null"]
        return out
    if isinstance(schema, list):
        return [_nullable_numbers(item) for item in schema]
    return schema


def _scalar(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") in (
        "string",
        "integer",
        "number",
        "boolean",
    )


def _streamed(item: Any) -> dict[str, Any]:
    """The 200 of a streaming function: server-sent events, each `chunk` event's data one
    item (``item``, as JSON), then one `end` event."""
    return {
        "description": (
            "server-sent events: `event: chunk` with one item as JSON per event (schema "
            '`x-item`), then `event: end` with `{"status": 200}`, or the error\'s '
            '`{"status", "error", "id"}` if the stream failed midway'
        ),
        "content": {"text/event-stream": {"schema": {"type": "string"}, "x-item": item}},
    }


def openapi(
    schemas: dict[str, dict[str, Any]], version: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``schemas`` (actor -> function -> schema), with the
    ``extra`` path items (the gateway's own routes)."""
    defs: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    errors = {
        code: {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code, text in _STATUSES.items()
    }
    for actor, functions in schemas.items():
        prefix = actor.replace(".", "_") + "_"
        for fn, schema in sorted(functions.items()):
            params = _relocate(schema.get("params", {}), prefix, defs)
            returns = _relocate(_nullable_numbers(schema.get("returns", {})), prefix, defs)
            doc = schema.get("doc", "")
            operation = {
                "tags": [actor],
                "summary": schema.get("signature", fn),
                "description": doc,
                "responses": {
                    "200": _streamed(returns)
                    if schema.get("stream")
                    else {
                        "description": "the result",
                        "content": {"application/json": {"schema": returns}},
                    },
                    **errors,
                },
            }
            # The keyword form, which a schema can state exactly; positional "args" are
            # accepted too (the info description says so). A POST always has a JSON body
            # (`{}` for no arguments): what a web page cannot send without asking.
            body_schema = {
                "type": "object",
                "properties": {"kwargs": params},
                "required": ["kwargs"] if params.get("required") else [],
                "additionalProperties": False,
            }
            path: dict[str, Any] = {
                "post": {
                    **operation,
                    "operationId": f"{actor}.{fn}",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": body_schema}},
                    },
                }
            }
            properties = params.get("properties", {}) if isinstance(params, dict) else {}
            if schema.get("idempotent") is True and all(_scalar(p) for p in properties.values()):
                required = set(params.get("required", []))
                path["get"] = {
                    **operation,
                    "operationId": f"{actor}.{fn}.get",
                    "parameters": [
                        {"name": name, "in": "query", "required": name in required, "schema": p}
                        for name, p in properties.items()
                    ],
                }
            paths[f"/{actor}/{fn}"] = path
    defs["Error"] = {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "code": {"type": "integer"},
            "id": {"type": "string"},
        },
        "required": ["error", "code", "id"],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "actorbus gateway",
            "version": version,
            "description": "Every actor function on this NATS, called over HTTP: POST a body "
            '{"args": [...], "kwargs": {...}}, or GET with keyword arguments in the query. '
            "Send Actor-* headers to sign the call yourself, a bearer token (an actorbus "
            "token, or an OpenID Connect JWT from an issuer the policy names), a bittensor "
            "hotkey's btauth/1 X-Bittensor-* headers, a commune body, or nothing (the "
            "gateway's public identity).",
        },
        "paths": {**paths, **(extra or {})},
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An actorbus token (abt_...) or an OIDC JWT",
                }
            },
        },
    }

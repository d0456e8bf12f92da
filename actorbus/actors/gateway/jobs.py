"""dcp-rest's job routes on the gateway, each one call of the jobs actor.

| HTTP | jobs actor |
|---|---|
| ``POST /api/v0/job`` ``{"work", "slices", "options", "ttl"}`` | ``submit`` (answer: the job id) |
| ``POST /api/v0/job/{id}/slices`` ``{"slices": [...]}`` | ``add_slices`` (``[first, last]``) |
| ``POST /api/v0/job/{id}/close`` ``{}`` | ``close`` |
| ``GET /api/v0/job/{id}/status`` | ``status`` |
| ``GET /api/v0/job/{id}/result?range=1-10&range=33-35&page=0`` | ``results`` |
| ``DELETE /api/v0/job/{id}`` | ``cancel`` |
| ``GET /api/v0/jobs`` | ``jobs`` |

With a bearer token, or anonymously, the gateway signs as the token's key (or its own),
so it also signs the submitted job's delegation with that key. A caller who signs their
own requests (end to end, or a commune body) sends the jobs actor's call body as it is
(``{"args": [work, delegation], "kwargs": {...}}`` for ``submit``): they sign the
delegation themselves; the GET and DELETE routes need the gateway's signature, so such a
caller POSTs to ``/<jobs>/<fn>`` instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...bus import BadRequest, Keypair
from ...bus.wire import check_nesting, decode_error
from ...client.jobs import DEFAULT_JOB_TTL
from .context import Context

__all__ = ["BodyFn", "job_paths", "job_routes"]

BodyFn = Callable[[bytes, Keypair | None], Awaitable[bytes]]
"""Builds a call body from an HTTP request's body and the key the gateway signs with."""
Relay = Callable[[Request, str, str, BodyFn], Awaitable[Response]]


class JobRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /api/v0/job``."""

    work: str
    slices: list[list[Any]] | None = None
    options: dict[str, Any] | None = None
    ttl: float = DEFAULT_JOB_TTL
    """Seconds the job may run as its owner."""


class SlicesRequest(msgspec.Struct, forbid_unknown_fields=True):
    slices: list[list[Any]]


_job_request = msgspec.json.Decoder(JobRequest)
_slices_request = msgspec.json.Decoder(SlicesRequest)
_encode = msgspec.json.Encoder().encode


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes) -> Any:
    check_nesting(raw)
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed body: {decode_error(exc)}") from None


def job_routes(gateway: Context, relay: Relay) -> list[Route]:
    """The routes, relaying through ``relay`` to the jobs actor."""
    jobs = gateway.settings.jobs

    def body_of(*args: Any, **kwargs: Any) -> BodyFn:
        async def build(raw: bytes, signer: Keypair | None) -> bytes:
            return _encode({"args": list(args), "kwargs": kwargs}) if signer else raw

        return build

    async def submit(request: Request) -> Response:
        async def build(raw: bytes, signer: Keypair | None) -> bytes:
            if signer is None:
                return raw  # the caller's own submit body, delegation included
            spec: JobRequest = _decode(_job_request, raw)
            delegation = await gateway.client.delegate(spec.work, spec.ttl, key=signer)
            kwargs = {"slices": spec.slices, "options": spec.options}
            args = [spec.work, msgspec.to_builtins(delegation)]
            return _encode({"args": args, "kwargs": kwargs})

        return await relay(request, jobs, "submit", build)

    async def add(request: Request) -> Response:
        job = request.path_params["id"]

        async def build(raw: bytes, signer: Keypair | None) -> bytes:
            if signer is None:
                return raw
            return _encode({"args": [job, _decode(_slices_request, raw).slices]})

        return await relay(request, jobs, "add_slices", build)

    async def close(request: Request) -> Response:
        return await relay(request, jobs, "close", body_of(request.path_params["id"]))

    async def status(request: Request) -> Response:
        return await relay(request, jobs, "status", body_of(request.path_params["id"]))

    async def results(request: Request) -> Response:
        ranges = ",".join(request.query_params.getlist("range"))
        page = request.query_params.get("page", "0")
        if not page.isdigit() or len(page) > 9:
            page = "-1"  # the jobs actor says what a page is
        build = body_of(request.path_params["id"], ranges, int(page))
        return await relay(request, jobs, "results", build)

    async def cancel(request: Request) -> Response:
        return await relay(request, jobs, "cancel", body_of(request.path_params["id"]))

    async def mine(request: Request) -> Response:
        return await relay(request, jobs, "jobs", body_of())

    return [
        Route("/api/v0/job", submit, methods=["POST"]),
        Route("/api/v0/jobs", mine, methods=["GET"]),
        Route("/api/v0/job/{id}", cancel, methods=["DELETE"]),
        Route("/api/v0/job/{id}/slices", add, methods=["POST"]),
        Route("/api/v0/job/{id}/close", close, methods=["POST"]),
        Route("/api/v0/job/{id}/status", status, methods=["GET"]),
        Route("/api/v0/job/{id}/result", results, methods=["GET"]),
    ]


def job_paths() -> dict[str, Any]:
    """The routes above as OpenAPI 3.1 path items (errors as every call's)."""
    error = {"$ref": "#/components/schemas/Error"}
    slices = {"type": "array", "items": {"type": "array"}, "description": "argument lists"}

    def op(summary: str, op_id: str, **more: Any) -> dict[str, Any]:
        responses = {
            "200": {"description": "the jobs actor's answer"},
            "default": {
                "description": "an error",
                "content": {"application/json": {"schema": error}},
            },
        }
        return {
            "tags": ["jobs"],
            "summary": summary,
            "operationId": op_id,
            "responses": responses,
            **more,
        }

    def json_body(schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
        }

    job_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    submit = {
        "type": "object",
        "properties": {
            "work": {"type": "string", "description": "ACTOR/FN"},
            "slices": slices,
            "options": {
                "type": "object",
                "properties": {
                    "retries": {"type": "integer", "minimum": 0, "maximum": 10},
                    "concurrency": {"type": "integer", "minimum": 1, "maximum": 1024},
                    "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                },
            },
            "ttl": {"type": "number", "description": "seconds the job may run as you"},
        },
        "required": ["work"],
        "additionalProperties": False,
    }
    slices_body = {"type": "object", "properties": {"slices": slices}, "required": ["slices"]}
    ranges = {
        "name": "range",
        "in": "query",
        "schema": {"type": "array", "items": {"type": "string", "example": "1-10"}},
        "explode": True,
    }
    page = {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 0}}
    return {
        "/api/v0/job": {
            "post": op("Submit a job; answers its id", "jobs.api.submit", **json_body(submit))
        },
        "/api/v0/jobs": {"get": op("Your jobs", "jobs.api.list")},
        "/api/v0/job/{id}": {"delete": op("Cancel a job", "jobs.api.cancel", parameters=[job_id])},
        "/api/v0/job/{id}/slices": {
            "post": op(
                "Add slices; answers [first, last]",
                "jobs.api.add",
                parameters=[job_id],
                **json_body(slices_body),
            )
        },
        "/api/v0/job/{id}/close": {
            "post": op(
                "No more slices",
                "jobs.api.close",
                parameters=[job_id],
                **json_body({"type": "object", "maxProperties": 0}),
            )
        },
        "/api/v0/job/{id}/status": {
            "get": op("A job's status", "jobs.api.status", parameters=[job_id])
        },
        "/api/v0/job/{id}/result": {
            "get": op(
                "Results by index ranges", "jobs.api.results", parameters=[job_id, ranges, page]
            )
        },
    }

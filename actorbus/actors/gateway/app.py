"""The gateway's HTTP side: a Starlette app mapping ``POST|GET /<name>/<fn>`` to signed NATS
calls and their replies back to HTTP, one status for one status.

The actor's status becomes the HTTP status and its body the response body (errors are
``{"error", "code", "id"}``), after the reply's signature and signer have been checked
(502 if they do not hold); the reply's ``Actor-*`` headers go back too, so a caller that
signed its request can verify the answer itself. What the gateway refuses on its own
has the same body: 400 malformed path or body, 401 bad token, OIDC token or commune
signature, 403 an OIDC login no rule gives a role,
408 body not read within the read timeout, 413 body over the limit, 431 headers over the
limit, 503 no replica (or the gateway at its concurrency cap, or the caller's network
holding as many requests as are still free, :mod:`.shares`), 504 no reply in time; the
actors are shown (the dashboard, the docs) to strangers only as ``public_docs`` says.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...bus import (
    ActorError,
    BadReply,
    BadRequest,
    Keypair,
    LogThrottle,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unavailable,
    printable,
)
from ...bus.settings import loopback_host
from ...bus.subjects import check_fn, check_name
from ...client.answers import advertised_timeout
from ...client.client import typed_value
from ...client.streams import read_stream
from .catalog import Viewer
from .context import Context
from .errors import ErrorShape, Refused, error_json, new_error_id
from .identity import Received
from .jobs import BodyFn, job_paths, job_routes
from .meter import Metered
from .shares import Shares, held
from .sse import sse_response
from .traced import Traced
from .web import PASSED_STATUSES, WebSafety, page, reply_response

__all__ = ["build_app"]


log = logging.getLogger("actorbus.gateway")

_HERE = Path(__file__).parent
_STREAM_WINDOW = 8
"""Chunks an actor may stream ahead of what the web caller has taken (what a reader that
stopped reading leaves held here, until its stall timeout)."""
_REPLY_HEADERS = ("actor-status", "actor-key", "actor-signature", "actor-error", "retry-after")


def _target(request: Request) -> str:
    """A request's path and ``?query`` exactly as the client sent them."""
    path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    query: bytes = request.scope.get("query_string", b"")
    return (path + (b"?" + query if query else b"")).decode("latin-1")


def _error(status: int, message: str, error_id: str = "", **headers: str) -> Response:
    return Response(
        error_json(status, message, error_id),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


_GET_ONLY_IDEMPOTENT = (
    "GET calls only functions marked idempotent (safe to repeat); POST a JSON body to call it"
)


def build_app(gateway: Context) -> Starlette:
    """The app of one gateway replica."""
    settings = gateway.settings
    throttle = LogThrottle(log)

    async def read_body(request: Request) -> bytes:
        limit = gateway.max_body
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"body is {declared} bytes; the limit is {limit}")
        chunks: list[bytes] = []
        size = 0
        try:
            with anyio.fail_after(settings.gateway_read_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise Refused(
                408, f"body not received within {settings.gateway_read_timeout:g}s"
            ) from None
        return b"".join(chunks)

    async def relay(request: Request, name: str, fn: str, make_body: BodyFn) -> Response:
        """Call ``name/fn`` as the request's identity with the body ``make_body`` builds
        from the request's own (read here, for a POST) and the key the gateway will sign
        with (``None`` when the caller signed: then the body must be theirs, as sent)."""
        try:
            check_name(name)
            check_fn(fn)
            headers = {k.lower(): v for k, v in request.headers.items()}
            raw = b""
            if request.method != "POST":
                if "actor-signature" in headers:
                    raise BadRequest("a call you sign is a POST of the body you signed")
            else:
                raw = await read_body(request)
            address = held(request).address
            failures = f"refused:{address}"
            gateway.fairness.check(failures)  # spent on bad credentials: no more checks now
            try:
                signer = await gateway.identities.signer(headers, raw, gateway.policy(), address)
                body = await make_body(raw, signer)
                received = Received(request.method, _target(request), headers, raw, address)
                timeout = settings.gateway_timeout
                outgoing = await gateway.identities.outgoing(
                    name, fn, received, body, signer, advertised_timeout(timeout)
                )
            except (Unauthorized, BadRequest):
                gateway.fairness.spend(failures)
                raise
            schema = (await gateway.catalog.schemas()).get(name, {}).get(fn, {})
            mine = held(request)
            if outgoing.who != mine.who:  # a key of its own, counted beside its address
                mine.add(gateway.fairness.enter(outgoing.who))
            if schema.get("stream"):
                chunks = read_stream(
                    gateway.client.nc,
                    gateway.client.signs_for,
                    name,
                    fn,
                    outgoing.body,
                    outgoing.headers,
                    steer=signer or gateway.identities.key,  # the gateway, relaying
                    window=_STREAM_WINDOW,
                    timeout=timeout,
                    reply=outgoing.reply,
                )
                return await sse_response(chunks, settings.gateway_stall_timeout)
            if outgoing.signer is not None:  # in the signer's session, from its second call
                reply = await gateway.client.call_as(
                    outgoing.signer,
                    name,
                    fn,
                    outgoing.body,
                    timeout,
                    content_type=outgoing.content_type,
                    on_behalf=outgoing.on_behalf,
                )
            else:
                reply = await gateway.client.send(
                    name, fn, outgoing.body, outgoing.headers, timeout, reply=outgoing.reply
                )
        except Refused as exc:
            return _refusal(exc.code, exc)
        except ActorError as exc:
            return _refusal(exc.status, exc)
        if reply.meta.status not in PASSED_STATUSES:
            refused = BadReply(f"{name} answered with status {reply.meta.status}")
            return _refusal(refused.status, refused)
        # HTTP header values are Latin-1: anything else from an actor is escaped.
        passed = {
            k: printable(v, 512, ascii_only=True)
            for k, v in reply.headers.items()
            if k.lower() in _REPLY_HEADERS
        }
        return reply_response(reply.meta.status, reply.meta.content_type, reply.body, passed)

    async def call(request: Request) -> Response:
        name, fn = request.path_params["name"], request.path_params["fn"]

        async def body(raw: bytes, signer: Keypair | None) -> bytes:
            if request.method == "POST":
                return raw
            schema = (await gateway.catalog.schemas()).get(name, {}).get(fn, {})
            if schema.get("idempotent") is not True:
                raise Refused(405, _GET_ONLY_IDEMPOTENT)
            properties = schema.get("params", {}).get("properties", {})
            kwargs = {k: typed_value(v, properties.get(k)) for k, v in request.query_params.items()}
            return msgspec.json.encode({"kwargs": kwargs})

        return await relay(request, name, fn, body)

    def _refusal(status: int, exc: ActorError) -> Response:
        error_id = exc.error_id or new_error_id()
        throttle.log(
            logging.INFO,
            str(status),
            "refused %d: %s (error id %s)",
            status,
            printable(exc.message, 200),
            error_id,
        )
        headers = {"Retry-After": "1"} if status == Unavailable.status else {}
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": f"{exc.retry_after:g}"}
        return _error(status, exc.message, error_id, **headers)

    async def health(request: Request) -> JSONResponse:
        up = gateway.client.nc.is_connected
        # Its address: what a caller signs for when the gateway is the receiver (btauth).
        identities = gateway.identities
        answer = {
            "status": "ok" if up else "no NATS",
            "address": identities.key.address,
            "name": identities.name,  # what an end-to-end caller signs for (its relay)
        }
        return JSONResponse(answer, status_code=200 if up else 503)

    async def viewer(request: Request) -> Viewer:
        """Who asks, as a call would be made (a token's key, else the address's anonymous
        key); raises :class:`Unauthorized` for a bad token."""
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() == "authorization"}
        address = held(request).address
        key = await gateway.identities.signer(headers, b"", gateway.policy(), address)
        assert key is not None  # neither signed nor a commune body
        await gateway.learn(key.address)
        return gateway.viewer(key.address)

    async def discoverer(request: Request) -> Viewer:
        """Who asks to see the actors (:func:`viewer`); raises :class:`Unauthorized` for
        a caller without a bearer token where strangers are not shown them."""
        if not settings.public_docs and not request.headers.get("authorization", "").strip():
            raise Unauthorized("this gateway shows its actors to callers with a bearer token")
        return await viewer(request)

    def discovery_page(
        filename: str, external: str = ""
    ) -> Callable[[Request], Awaitable[Response]]:
        """The route serving a page of ours that shows the actors (to :func:`discoverer`)."""
        serve = page(filename, external)

        async def shown(request: Request) -> Response:
            try:
                await discoverer(request)
            except ActorError as exc:
                return _refusal(exc.status, exc)
            return await serve(request)

        return shown

    async def openapi_json(request: Request) -> Response:
        try:
            mine = await discoverer(request)
        except ActorError as exc:
            return _refusal(exc.status, exc)

        def extra(schemas: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
            submit = settings.jobs in schemas and "submit" in schemas[settings.jobs]
            return job_paths() if submit else None

        document = await gateway.catalog.document(mine, gateway.version, extra)
        # Cached by whoever may call the same functions; a token makes it another's.
        headers = {"ETag": document.etag, "Vary": "Accept-Encoding, Authorization"}
        if document.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return Response(document.gzipped, media_type="application/json", headers=headers)
        return Response(document.body, media_type="application/json", headers=headers)

    async def actors(request: Request) -> Response:
        try:
            mine = await discoverer(request)
        except ActorError as exc:
            return _refusal(exc.status, exc)
        return JSONResponse(await gateway.catalog.overview(mine))

    # Behind a loopback-bound gateway every client is this machine's: anyone may scrape.
    open_metrics = loopback_host(settings.gateway_host)

    async def metrics(request: Request) -> Response:
        if not open_metrics:
            try:
                allowed = (await viewer(request)).may(
                    gateway.name, "metrics", frozenset(), frozenset()
                )
            except ActorError as exc:
                return _refusal(exc.status, exc)
            if not allowed:
                return _error(
                    403,
                    f"scraping this gateway takes a key whose role allows {gateway.name}/metrics "
                    "(a bearer token: actor policy role add scraper --allow "
                    f"'{gateway.name}/metrics'; actor token new prometheus --role scraper)",
                )
        body = await gateway.meter.render(gateway.client)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/", discovery_page("dashboard.html")),
        Route("/metrics", metrics),
        Route("/docs", discovery_page("docs.html", external="https://cdn.jsdelivr.net")),
        Route("/health", health),
        Route("/openapi.json", openapi_json),
        Route("/api/v0/actors", actors),
        *job_routes(gateway, relay),
        Route("/{name}/{fn}", call, methods=["GET", "POST"]),
    ]
    middleware = [Middleware(Shares, gateway=gateway)]
    if settings.gateway_cors:
        origins = [o.strip() for o in settings.gateway_cors.split(",") if o.strip()]
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "POST"],
                allow_headers=["*"],
                expose_headers=list(_REPLY_HEADERS),
            ),
        )
    middleware.insert(0, Middleware(ErrorShape))
    middleware.insert(0, Middleware(Metered, meter=gateway.meter))
    middleware.insert(0, Middleware(Traced))
    middleware.insert(
        0, Middleware(WebSafety, hosts=settings.gateway_hosts, bound=settings.gateway_host)
    )

    async def not_routed(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return _error(status, exc.detail if isinstance(exc, HTTPException) else "failed")

    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: not_routed}
    )
    app.router.redirect_slashes = False  # a redirect would be built from the Host header
    return app

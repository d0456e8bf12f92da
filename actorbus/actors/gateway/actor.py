"""The gateway as an actor: registered and served like any other (its key signs anonymous
calls), with an HTTP server running beside its calls (:meth:`Gateway.on_run`).

Replicas are stateless: each binds its port with ``SO_REUSEPORT``, so several can share
one port (the kernel spreads connections) or run side by side on their own. The server
stops after the replica has drained its NATS calls: it stops accepting connections and
lets open requests finish (up to ``drain_timeout``) while the NATS connection is still
up.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.abc
import uvicorn

from ...bus import Unavailable
from ...bus.jetstream import Bucket
from ...bus.rights import GATEWAY
from ...bus.subjects import DEFAULT_GATEWAY, commune_bucket
from ...host import Actor, current_call
from ...host.policy import PolicyState
from ...host.replica import VERSION
from .app import build_app
from .catalog import Catalog, Viewer
from .context import Context
from .fairness import Fairness
from .guard import Admission, Backlog, HeadLimits, guarded_protocol
from .identity import Identities
from .jwks import IssuerKeys
from .meter import Meter
from .oidc import OidcLogins

__all__ = ["Gateway"]

log = logging.getLogger("actorbus.gateway")

_HEADROOM = 4096  # bytes of a NATS message left for headers


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the replica decides when the server stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway(Actor):
    """HTTP in, signed NATS calls out: ``POST /<actor>/<fn>``, ``/openapi.json``, ``/docs``,
    a dashboard at ``/``."""

    name = "gateway"
    quotas = False
    rights = GATEWAY
    version = VERSION

    def __init__(self) -> None:
        self.url = ""

    async def on_start(self) -> None:
        try:
            seen: Bucket | None = await Bucket.open(
                self.nc,
                commune_bucket(self.name or DEFAULT_GATEWAY),
                ttl=2 * self.settings.max_skew,
                replicas=self.settings.js_replicas,
            )
        except Unavailable as exc:
            log.warning("gateway: no JetStream (%s): commune bodies are refused (503)", exc)
            seen = None
        policy = self.settings.policy

        async def bind(key: str, issuer: str, subject: str, role: str, expires: float) -> Any:
            return await self.client.call(policy, "oidc_bind", key, issuer, subject, role, expires)

        logins = OidcLogins(
            self.key,
            IssuerKeys(self.settings.oidc_jwks_ttl, self.settings.oidc_refetch),
            lambda: self.policy_state,
            self.learn,
            bind,
        )
        name = self.name or DEFAULT_GATEWAY
        self.identities = Identities(name, self.key, self.settings.max_skew, seen, logins)
        self.catalog = Catalog(self.client)
        self.max_body = min(self.settings.max_body, self.nc.max_payload - _HEADROOM)

    @property
    def policy_state(self) -> PolicyState:
        view = self.__actorbus_policy__
        return view.state if view is not None else PolicyState()

    def where(self) -> str:
        """This replica's HTTP address."""
        return self.url

    async def learn(self, key: str) -> None:
        """Have this replica's policy hold ``key``'s own records (its role, stake)."""
        view = self.__actorbus_policy__
        if view is not None:
            await view.learn(key)

    @property
    def policy_enforced(self) -> bool:
        view = self.__actorbus_policy__
        return view is not None and view.enforced

    async def overview(self) -> dict[str, Any]:
        """What the dashboard shows you: each actor you may call, its replicas, calls,
        errors and latency (and where each runs, if you are an admin)."""
        viewer = Viewer.of(current_call().caller, self.policy_state, self.policy_enforced)
        return await self.catalog.overview(viewer)

    async def on_run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        settings = self.settings
        sock = _listen(settings.gateway_host, settings.gateway_port)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        admission = Admission(
            settings.gateway_max_connections, settings.gateway_max_connections_per_ip
        )
        server = _Server(
            uvicorn.Config(
                build_app(
                    Context(
                        name=self.name,
                        settings=settings,
                        client=self.client,
                        identities=self.identities,
                        catalog=self.catalog,
                        fairness=Fairness(
                            settings.gateway_client_concurrency, settings.gateway_client_rate
                        ),
                        policy=lambda: self.policy_state,
                        enforced=lambda: self.policy_enforced,
                        learn=self.learn,
                        max_body=self.max_body,
                        version=self.version,
                        meter=Meter(lambda: admission.total, settings.replica),
                    )
                ),
                http=guarded_protocol(
                    admission,
                    HeadLimits(
                        max_bytes=settings.gateway_max_headers,
                        max_count=settings.gateway_max_header_count,
                        timeout=settings.gateway_header_timeout,
                        stall=settings.gateway_stall_timeout,
                    ),
                    Backlog(settings.gateway_max_unread),
                ),
                log_level="critical",  # the gateway logs its own errors (throttled)
                access_log=False,
                server_header=False,
                proxy_headers=False,  # X-Forwarded-For from anyone would pick its address
                lifespan="off",
                timeout_keep_alive=settings.gateway_idle_timeout,  # type: ignore[arg-type]
                timeout_graceful_shutdown=int(settings.drain_timeout),
            )
        )

        async def run() -> None:
            with anyio.CancelScope(shield=True):  # it stops through should_exit, gracefully
                await server.serve(sockets=[sock])

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                while not server.started:
                    if server.should_exit:
                        raise RuntimeError(f"the gateway could not serve on {self.url}")
                    await anyio.sleep(0.01)
                task_status.started()
                await anyio.sleep_forever()
            finally:
                server.should_exit = True


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket other replicas may share (``SO_REUSEPORT`` where there is one).
    Its protocol is named: asyncio sets TCP_NODELAY on accepted connections only when it
    is, and without it every keep-alive response waits ~40 ms for a delayed ACK. Raises
    :class:`Unavailable` (one line, no traceback) if the address is taken or invalid."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Unavailable(
            f"the gateway cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(another process has it? choose one with --gateway-port or ACTOR_GATEWAY_PORT)"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock

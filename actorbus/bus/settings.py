"""The one Settings Struct: defaults, overridden by ``ACTOR_*`` variables, then by CLI flags.

Nothing else in actorbus reads the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .errors import BadRequest

__all__ = ["Settings", "loopback_host", "node_name"]


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Every knob of actorbus, with the default a laptop wants."""

    home: Path = Path("~/.actor").expanduser()
    """Keys, the embedded server's store and logs (``ACTOR_HOME``)."""
    nats_url: str | None = None
    """Where NATS is (``ACTOR_NATS_URL``, else ``NATS_URL``); unset: the embedded default,
    ``nats://127.0.0.1:<nats_port>``."""
    nats_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 4222
    """The port of the embedded default (``ACTOR_NATS_PORT``): where ``actor up`` starts
    a nats-server when none answers there, and where every ``actor`` command looks for
    it."""
    nats_auth: bool = True
    """Whether the embedded default runs with users and the auth callout
    (``ACTOR_NATS_AUTH``; PROTOCOL.md §5). Off, any connection may do anything on it."""
    nats_monitor: bool = False
    """Whether the embedded default opens nats-server's HTTP monitoring port (on loopback,
    ``ACTOR_NATS_MONITOR``): it has no authentication, and its ``/connz`` lists every
    connection's key and subscriptions to whoever on the machine asks."""
    nats_max_connections: Annotated[int, msgspec.Meta(ge=1)] = 8192
    """Connections the embedded default (and ``actor nats config``'s server) takes at once
    (``ACTOR_NATS_MAX_CONNECTIONS``); more are refused."""
    nats_max_subscriptions: Annotated[int, msgspec.Meta(ge=1)] = 16384
    """Subscriptions one connection may hold there (``ACTOR_NATS_MAX_SUBSCRIPTIONS``): a
    connection past it is closed. A gateway holds one per relayed call and event stream,
    a joined node's leaf connection its machine's (a replica about 15); a caller a few."""
    key: str = "default"
    """The caller's key name in the keystore (``ACTOR_KEY``); only ``default`` is made on
    first use, any other with ``actor key new``."""
    host_key: str = ""
    """The keystore key that signs this home's hosting tickets (``ACTOR_HOST_KEY``; empty:
    :attr:`key`): replicas started here serve their names under it, if the policy lets it
    host (an admin's key, or one ``actor policy host add`` lists)."""
    host_token: str = ""
    """A bearer token (``abt_…``, ``ACTOR_HOST_TOKEN``) whose key signs this home's hosting
    tickets instead of :attr:`host_key`: for processes that share no home (containers).
    A policy actor that starts a new policy lists it as a host."""
    auth_ttl: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    """Seconds the NATS permissions the policy actor gives a caller's connection last (a
    role's change reaches the server's check within this; replicas apply it at once). The
    client reconnects and is given fresh ones."""
    replica_ttl: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    """Seconds a replica's NATS credentials last, give or take a quarter (each its own):
    then the server closes its connection and it connects again with a fresh ticket, which
    the policy checks anew. A host removed, or a name revoked, loses its replicas within
    this."""
    leaf_ttl: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """Seconds a leaf node's connection to its hub lasts, give or take a quarter: then the
    hub closes it, the leaf node connects again (its actors out of the hub's reach for
    about a second) and the policy checks its key anew. A host removed loses its leaf
    within this."""
    max_skew: float = 30.0
    """Seconds a request's ``Actor-Time`` may differ from the actor's clock."""
    max_body: int = 1024 * 1024
    """Largest request body in bytes (413 beyond)."""
    max_args: int = 256
    """Most positional plus keyword arguments in one call (400 beyond)."""
    max_in_flight: int = 64
    """Handlers running at once per actor replica."""
    max_queue: int = 1024
    """Verified calls waiting for a handler slot per replica (503 beyond)."""
    max_pending_bytes: int = 64 * 1024 * 1024
    """Bytes of requests a replica holds unread; beyond, its NATS client drops them."""
    max_headers: int = 8192
    """Largest header block of a request, in characters of names and values (413 beyond)."""
    stuck_timeout: float = 60.0
    """Seconds a sync handler's thread may run past its deadline before it counts as stuck;
    a replica whose threads are all stuck drains and exits so its supervisor restarts it."""
    reply_prefix: str = "_INBOX."
    """Reply subjects a replica answers on (comma-separated prefixes; nats-py, nats.js and
    nats.go use ``_INBOX.``). Requests asking for a reply elsewhere are dropped unread."""
    handler_timeout: float = 60.0
    """A handler's deadline when neither its endpoint nor the caller sets a shorter one."""
    call_timeout: float = 30.0
    """How long a client waits for a reply by default."""
    sessions: bool = True
    """Whether a client (and a gateway, for the keys it signs with) calls an actor in a
    session from its second call to it on (``ACTOR_SESSIONS``; PROTOCOL.md §4b): a MAC per
    call instead of a signature. Off, every call is signed."""
    registry_ttl: float = 15.0
    """Seconds a registry entry lives without a heartbeat."""
    drain_timeout: float = 30.0
    """How long a stopping replica waits for in-flight calls."""
    js_replicas: int = 1
    """JetStream replicas for the buckets and streams actorbus creates (3 on a cluster)."""
    join: str = ""
    """``nats-leaf://HOST:PORT`` of a remote NATS (``ACTOR_JOIN``, `actor up --join`): the
    node's embedded nats-server is then a leaf node of it, listening on :attr:`url`."""
    join_credentials: str = ""
    """A file (0600) with the credentials for :attr:`join`: a NATS ``.creds`` file, or one
    line ``USER:PASSWORD`` or a token (``ACTOR_JOIN_CREDENTIALS``)."""
    join_domain: str = "hub"
    """The JetStream domain of the NATS that :attr:`join` names (its ``jetstream { domain:
    ... }``; ``ACTOR_JOIN_DOMAIN``)."""
    start_wait: float = 60.0
    """Seconds a start-up waits for JetStream (a cluster electing its leaders) before it
    gives up, for what cannot start without it: the policy and jobs actors, a node."""
    policy: str = "policy"
    """The policy actor's name; its KV bucket is ``actor_<policy>`` (``ACTOR_POLICY``)."""
    policy_key: str = ""
    """The policy actor's address, whose signed records this home trusts
    (``ACTOR_POLICY_KEY``); empty: this home's own policy key, else the first one seen
    (kept in ``$ACTOR_HOME/pins``)."""
    policy_replicas: int = 0
    """Replicas of the policy actor that ``actor up`` starts when none runs (0: two when
    :attr:`js_replicas` > 1, i.e. on a cluster, else one)."""
    quota_window: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 60.0
    """Seconds per quota window (at most a day), used when a policy actor first writes its
    config."""
    node: str = ""
    """This machine's name among the nodes on one NATS (``ACTOR_NODE``); empty: the one
    kept in ``$ACTOR_HOME/node``, made on first use from the host name (see
    :func:`node_name`)."""
    replica: int = 0
    """This process's replica index on its node (``ACTOR_REPLICA``, set by the supervisor)."""
    restart_limit: int = 5
    """Crashes of one replica a supervisor restarts within ``restart_window`` seconds; one
    more and it gives up on that replica (``actor ps`` shows it failed)."""
    restart_window: float = 60.0
    supervisor_pid: int = 0
    """The supervisor this replica belongs to (``ACTOR_SUPERVISOR_PID``): the replica
    stops if it goes away."""
    log_format: Literal["text", "json"] = "text"
    """How processes log (``ACTOR_LOG_FORMAT``): lines for people, or one JSON object a
    line (time, level, logger, message, node, actor, replica, error id)."""
    metrics_host: str = "127.0.0.1"
    """Where a node's supervisor serves its replicas' Prometheus metrics (``/metrics``)."""
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464
    """Its port (taken: a free one instead, which ``actor up`` prints; 0: a free one)."""
    gateway_host: str = "127.0.0.1"
    """Where a gateway listens (``actor up`` starts one unless told not to)."""
    gateway_port: int = 8080
    """Its port; replicas share it (0: any free port)."""
    gateway_timeout: float = 30.0
    """Seconds a gateway waits for an actor's reply (504 beyond)."""
    gateway_read_timeout: float = 10.0
    """Seconds a gateway waits for a request's body (408 beyond)."""
    gateway_max_concurrency: int = 1024
    """Requests a gateway replica handles at once (503 beyond); one network (an IPv4 /24,
    an IPv6 /64) holds no more of them than are still free (503 beyond)."""
    gateway_max_headers: int = 16384
    """Bytes of a request's head (request line and headers) a gateway reads (431 beyond,
    refused while reading)."""
    gateway_max_header_count: int = 100
    """Headers a request may have (431 beyond)."""
    gateway_header_timeout: float = 10.0
    """Seconds a connection has to send a request's whole head, from when it opens or its
    next request begins (408, or a close if it sent nothing)."""
    gateway_idle_timeout: float = 5.0
    """Seconds a keep-alive connection may sit idle between requests."""
    gateway_max_connections: int = 4096
    """Open connections a gateway replica holds (503 and a close beyond)."""
    gateway_max_connections_per_ip: int = 256
    """Open connections one client address (an IPv6 /64) may hold (503 and a close beyond).
    Behind a reverse proxy every client has the proxy's address: raise it there."""
    gateway_client_concurrency: int = 32
    """Requests one web client may have open at a gateway replica, server-sent event
    streams included (429 beyond), each held until its response is taken. A client: a
    token, else the address a request comes from (a call as an OIDC login, a commune
    address or a hotkey counts against that key too)."""
    gateway_client_rate: float = 200.0
    """Requests a second one web client may make of a gateway replica, in bursts of up to
    two seconds' worth (429 beyond)."""
    gateway_stall_timeout: float = 30.0
    """Seconds a response may wait on a web caller that stopped reading (a server-sent
    events stream is then ended and its connection closed)."""
    gateway_max_bodies: Annotated[int, msgspec.Meta(ge=1024 * 1024)] = 256 * 1024 * 1024
    """Bytes of request bodies a gateway replica holds at once, each counted at its
    ``Content-Length`` (a chunked one at ``max_body``) until its answer is taken (503
    beyond; one network holds no more of them than are still free)."""
    gateway_max_unread: Annotated[int, msgspec.Meta(ge=1024 * 1024)] = 256 * 1024 * 1024
    """Bytes of answers a gateway replica holds, in all, for web callers that have not
    read them: beyond, connections are reset from the network that holds the most; a
    network that holds an eighth of it starts no new request (503) until it holds less."""
    gateway_hosts: str = ""
    """Host names a gateway answers to besides ``localhost``, IP addresses and the address
    it listens on (comma-separated; ``*``: any). Others get 421: a web page that points its
    own name at this machine (DNS rebinding) cannot call it."""
    gateway_cors: str = ""
    """Origins allowed to call a gateway from a browser (comma-separated; empty: none)."""
    gateway_public_docs: bool | None = None
    """Whether a gateway shows its actors (the dashboard ``/``, ``/docs``,
    ``/openapi.json``, ``/api/v0/actors``) to callers without a bearer token or login;
    unset: only where it listens on loopback (:attr:`public_docs`)."""
    oidc_jwks_ttl: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    """Seconds a gateway keeps an OIDC issuer's keys (its JWKS) before fetching them again."""
    oidc_refetch: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """Seconds between two fetches of one issuer's keys at least (a token naming a key
    the gateway does not know makes it fetch them early, at most this often, so tokens
    with made-up key ids cannot make it hammer the issuer)."""
    jobs: str = "jobs"
    """The jobs actor's name (``ACTOR_JOBS``); ``actor up`` starts it with the policy actor."""
    jobs_concurrency: int = 64
    """Slices one jobs replica runs at once, over all jobs (shared fairly between owners)."""
    jobs_retention: float = 7 * 24 * 3600.0
    """Seconds a job's record, slices and results are kept after their last change."""
    jobs_max_bytes: int = 1024 * 1024 * 1024
    """Bytes of results and batches the jobs actor keeps, oldest dropped first."""
    logs_max_bytes: int = 256 * 1024 * 1024
    """Bytes of replica log lines the ``ACTOR_LOGS`` stream keeps, oldest dropped first."""
    logs_max_age: float = 7 * 24 * 3600.0
    """Seconds a replica log line is kept."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults < ``ACTOR_*`` variables < ``overrides`` (``None`` overrides are ignored).

        Raises :class:`BadRequest` naming the variable when a value does not parse.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if url := environ.get("NATS_URL"):
            values["nats_url"] = url
        for field in msgspec.structs.fields(cls):
            text = environ.get(f"ACTOR_{field.name.upper()}")
            if text:
                values[field.name] = text
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            settings = msgspec.convert(values, cls, strict=False, dec_hook=_to_path)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"invalid setting: {exc}") from None
        home = settings.home.expanduser()
        if home.exists() and not home.is_dir():
            raise BadRequest(f"ACTOR_HOME {str(home)!r} is not a directory")
        for url in filter(None, (u.strip() for u in (settings.nats_url or "").split(","))):
            _check_nats_url(url)
        return msgspec.structs.replace(settings, home=home)

    @property
    def policy_bucket(self) -> str:
        """The KV bucket holding the policy of the policy actor named ``policy``."""
        return "actor_" + self.policy.replace(".", "_")

    @property
    def reply_prefixes(self) -> tuple[str, ...]:
        """:attr:`reply_prefix` as a tuple of prefixes."""
        return tuple(p.strip() for p in self.reply_prefix.split(",") if p.strip())

    @property
    def public_docs(self) -> bool:
        """Whether a gateway shows its actors to strangers: as :attr:`gateway_public_docs`
        says, else only when it listens on loopback (every client is this machine's)."""
        if self.gateway_public_docs is not None:
            return self.gateway_public_docs
        return loopback_host(self.gateway_host)

    @property
    def url(self) -> str:
        """The NATS URL to use: the configured one, else the local default."""
        return self.nats_url or f"nats://127.0.0.1:{self.nats_port}"


_NATS_SCHEMES = frozenset({"nats", "tls", "ws", "wss", "nats-leaf"})


def _check_nats_url(url: str) -> None:
    """Refuse a NATS URL nats-py would choke on, with the reason (a usage error)."""
    parsed = urllib.parse.urlsplit(url if "://" in url else f"nats://{url}")
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if parsed.scheme not in _NATS_SCHEMES or not parsed.hostname or port == -1:
        raise BadRequest(
            f"invalid NATS URL {url!r}: use nats://HOST:PORT (tls://, ws://, wss:// too)"
        )


def loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address) reaches only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _to_path(type_: type, value: Any) -> Any:
    if type_ is Path and isinstance(value, str | Path):
        return Path(value)
    raise NotImplementedError(f"cannot convert {value!r} to {type_}")


_NODE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def node_name(settings: Settings) -> str:
    """This node's name: ``settings.node``, else the one stored in ``$ACTOR_HOME/node``,
    made on first use as ``<host name>-<4 hex>`` (one token: a NATS subject name), so two
    homes on one machine are two nodes. Raises :class:`BadRequest` for an invalid name."""
    if settings.node:
        if not _NODE.fullmatch(settings.node):
            raise BadRequest(f"invalid node name {settings.node!r}: 1-64 of [A-Za-z0-9_-]")
        return settings.node
    path = settings.home / "node"
    try:
        stored = path.read_text().strip()
        if _NODE.fullmatch(stored):
            return stored
    except FileNotFoundError:
        pass
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:48] or "node"
    name = f"{host}-{secrets.token_hex(2)}"
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(name + "\n")
    return name

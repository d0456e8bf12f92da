"""The bus as a trust boundary (PROTOCOL.md §5), tried as an attacker would: a plain nats-py
connection without credentials, against `actor up` on the embedded default (its own
server, users and the policy actor's auth callout). Each attack below worked before the
server had permissions: now the server refuses it, and the node is unharmed."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import nats
import nats.errors
import nats.js.errors
import psutil
import pytest
from cluster import free_port, raw_route
from processes import actor_serve
from support import close_refused_sockets, eventually
from up import Bus, embedded

from actorbus import ActorError, Client, Forbidden, Keypair, Settings, Unauthorized
from actorbus.bus import (
    EmbeddedServer,
    Keystore,
    new_token,
    sign_request,
    verify_reply,
)
from actorbus.bus.nkeys import encode_nkey_seed
from actorbus.bus.records import open_record
from actorbus.bus.server import write_config
from actorbus.bus.subjects import (
    JobsNames,
    call_subject,
    commune_bucket,
    inbox_of,
    nonce_stream,
)
from actorbus.bus.tickets import host_ticket
from actorbus.bus.workqueue import open_queue

ROOT = Path(__file__).resolve().parent.parent
POLICY = "actorbus.actors.policy:Policy"
JOBS = "actorbus.actors.jobs:Jobs"
pytestmark = pytest.mark.timeout(120)
REPLICA_TTL = 10


def deploy_config(root: Path, auth: str, ports: list[int], routes: list[int], i: int) -> Path:
    """deploy/nats.conf for node ``i`` of a cluster on loopback (its ports and store ours,
    the rest as written) beside the ``auth.conf`` it includes."""
    text = (ROOT / "deploy/nats.conf").read_text()
    for old, new in [
        ("server_name: $NODE", f"server_name: n{i}"),
        ("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{ports[i]}"),
        ("http: 127.0.0.1:8222", ""),
        ("store_dir: /data", ""),  # the store is the server's own (-sd)
        ("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{routes[i]}"),
        ("listen: 0.0.0.0:7422", f"listen: 127.0.0.1:{ports[3 + i]}"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    (root / "auth.conf").write_text(auth)
    path = root / f"n{i}.conf"
    path.write_text(text)
    return path


@contextmanager
def deployed(root: Path) -> Iterator[Bus]:
    """compose.yaml on loopback: three nats-servers from deploy/nats.conf with the auth
    block `actor nats config` prints and the route password and URLs in their
    environment, the policy actor (2 replicas), jobs and echo as `actor serve` processes
    of their own homes under a host token."""
    ports = [free_port() for _ in range(6)]  # clients, then leaf connections
    routes = [free_port() for _ in range(3)]
    password = secrets.token_hex(16)
    urls = ", ".join(f"nats-route://actorbus-route:{password}@127.0.0.1:{p}" for p in routes)
    cluster_env = {"NATS_CLUSTER_PASSWORD": password, "NATS_ROUTES": f"[{urls}]"}
    url = ",".join(f"nats://127.0.0.1:{p}" for p in ports[:3])
    token = new_token()
    common = {"ACTOR_NATS_URL": url, "ACTOR_JS_REPLICAS": "3", "ACTOR_HOST_TOKEN": token}
    common["ACTOR_LEAF_TTL"] = "8"  # a leaf's connection lasts 6 to 8 s
    bus = Bus(root / "policy", **common)
    auth = bus.actor("nats", "config")
    servers = [
        EmbeddedServer(
            root / f"n{i}",
            port=ports[i],
            extra_args=("-c", str(deploy_config(root, auth, ports, routes, i))),
        )
        for i in range(3)
    ]
    with ExitStack() as stack:
        environment = stack.enter_context(pytest.MonkeyPatch.context())
        for variable, value in cluster_env.items():  # the servers' (they inherit it)
            environment.setenv(variable, value)
        for server in servers:
            stack.enter_context(server)
        environment.undo()
        bus.leaf_port, bus.route_port = ports[3], routes[0]
        for _ in range(2):
            stack.enter_context(actor_serve("policy", bus.env, POLICY))
        for name, target in (("jobs", JOBS), ("echo", "examples/echo.py:Echo")):
            env = {**bus.env, "ACTOR_HOME": str(root / name)}
            stack.enter_context(actor_serve(name, env, target))
        yield bus


@pytest.fixture(scope="module", params=["embedded", "deployed"])
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    """Each attack runs against `actor up`'s embedded default and against the deploy
    configs (a cluster from deploy/nats.conf)."""
    root = tmp_path_factory.mktemp(request.param)
    # Replicas' credentials last seconds here (600 by default): each reconnects meanwhile.
    made = (
        embedded(root, ACTOR_REPLICA_TTL=str(REPLICA_TTL))
        if request.param == "embedded"
        else deployed(root)
    )
    with made as bus:
        bus.actor("policy", "role", "set", "public", "--allow", "echo/*")
        yield bus


class Refusals:
    """The permissions violations the server sent one connection."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.changed = anyio.Event()

    async def collect(self, exc: Exception) -> None:
        self.errors.append(str(exc).lower())
        self.changed.set()

    def of(self, subject: str) -> bool:
        return any("permissions violation" in e and f'"{subject.lower()}' in e for e in self.errors)


@asynccontextmanager
async def stranger(url: str, **options: Any) -> AsyncIterator[tuple[nats.NATS, Refusals]]:
    """A plain NATS connection without credentials (or with ``options``), and what the
    server refused it."""
    refusals = Refusals()
    nc = await nats.connect(
        servers=url.split(","), error_cb=refusals.collect, allow_reconnect=False, **options
    )
    try:
        yield nc, refusals
    finally:
        await nc.close()


async def refused(nc: nats.NATS, refusals: Refusals, *subjects: str) -> None:
    """Each of ``subjects`` was refused (the server's errors come shortly after)."""
    await nc.flush()
    with anyio.move_on_after(5):
        while not all(refusals.of(s) for s in subjects):
            refusals.changed = anyio.Event()
            await refusals.changed.wait()
    missing = [s for s in subjects if not refusals.of(s)]
    assert not missing, (missing, refusals.errors)


async def test_a_stranger_cannot_make_itself_an_admin(node: Bus) -> None:
    attacker = Keypair.generate()
    async with stranger(node.url) as (nc, refusals):
        key = f"$KV.actor_policy.admin.{attacker.address}"
        await nc.publish(key, b"1")
        await nc.publish("$JS.API.STREAM.INFO.KV_actor_policy", b"", reply=nc.new_inbox())
        await refused(nc, refusals, key, "$JS.API.STREAM.INFO.KV_actor_policy")
    async with Client(settings=node.settings) as operator:
        assert attacker.address not in await operator.call("policy", "admins")
    async with Client(attacker, settings=node.settings) as client:
        with pytest.raises(Forbidden):
            await client.call("policy", "add_user", attacker.address)


async def test_a_stranger_cannot_answer_in_an_actors_name(node: Bus) -> None:
    async with stranger(node.url) as (nc, refusals):
        await nc.subscribe("actor.echo.*", queue="actor.echo")
        await nc.subscribe("actor.echo.forward")
        fake = msgspec.json.encode({"name": "echo", "address": Keypair.generate().address})
        await nc.publish("$KV.actor_registry.echo.0123456789abcdef", fake)
        await nc.publish("$KV.actor_registry.node.fake.0123456789abcdef", fake)
        await nc.subscribe("actor.node.*.kill", queue="actor.node")
        await refused(nc, refusals, "actor.echo.*", "actor.echo.forward", "$KV.actor_registry")
        async with Client(settings=node.settings, session=True) as client:
            replies = [await client.call("echo", "forward", f"n{i}") for i in range(20)]
        assert replies == [f"n{i}" for i in range(20)]
    assert "fake" not in node.actor("ps")


@pytest.mark.parametrize(
    "subject",
    [
        "$JS.API.STREAM.PURGE.ACTOR_POLICY_AUDIT",
        "$JS.API.STREAM.DELETE.ACTOR_POLICY_AUDIT",
        "$JS.API.STREAM.DELETE.KV_actor_policy",
        "$JS.API.STREAM.DELETE.KV_actor_registry",
        "$JS.API.STREAM.PURGE.ACTOR_LOGS",
        "$JS.API.STREAM.DELETE.ACTOR_JOBS_JOBS",
        "$JS.API.STREAM.CREATE.KV_actor_policy",
    ],
)
async def test_a_stranger_cannot_delete_or_make_state(node: Bus, subject: str) -> None:
    async with stranger(node.url) as (nc, refusals):
        await nc.publish(subject, b"{}", reply=nc.new_inbox())
        await refused(nc, refusals, subject)
    async with Client(settings=node.settings) as operator:
        js = operator.nc.jetstream()
        assert (await js.stream_info("ACTOR_POLICY_AUDIT")).state.messages > 0
        assert (await js.stream_info("KV_actor_policy")).state.messages > 0


async def test_a_stranger_reads_no_one_elses_traffic(node: Bus) -> None:
    async with stranger(node.url) as (nc, refusals):
        wide = ("actor.>", "_INBOX.u.>", "_INBOX.relay.*", "actorbus.>", "$JS.>", "$KV.>")
        for subject in wide:
            await nc.subscribe(subject)
        await refused(nc, refusals, *wide)
        seen: list[str] = []

        async def spy(msg: Any) -> None:
            seen.append(msg.subject)

        await nc.subscribe("_INBOX.>", cb=spy)  # allowed: its own replies come there
        await nc.flush()
        async with Client(settings=node.settings) as client:
            assert await client.call("echo", "forward", "private") == "private"
            assert await client.call("policy", "admins")
        await anyio.sleep(0.3)
        assert seen == []


async def test_a_stranger_cannot_inject_work_logs_or_audit(node: Bus) -> None:
    line = f"forged {secrets.token_hex(4)}"
    async with stranger(node.url) as (nc, refusals):
        subjects = [
            "actorbus.jobs.jobs.work.job0123456789",
            "actorbus.logs.somenode.0.echo",
            "actorbus.audit.node.somenode",
            "actorbus.nonce.echo",
        ]
        for subject in subjects:
            await nc.publish(subject, json.dumps({"line": line}).encode())
        await refused(nc, refusals, *subjects)
    assert line not in node.actor("logs", "echo")
    assert line not in node.actor("policy", "log", "--json")


async def test_a_stranger_still_calls_by_the_protocol_alone(node: Bus) -> None:
    """No credentials: $SRV to find the actor's address, a signed request, a verified
    reply. A function the public role may not call is refused by the server itself."""
    key = Keypair.generate()
    async with stranger(node.url) as (nc, refusals):
        info = json.loads((await nc.request("$SRV.INFO.echo", b"", timeout=5)).data)
        address = info["metadata"]["address"]
        subject, body = call_subject("echo", "forward"), b'{"args":["by the book"]}'
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, max_msgs=1)
        headers = sign_request(key, subject, inbox, body)
        await nc.publish(subject, body, reply=inbox, headers=headers)
        reply = await sub.next_msg(timeout=5)
        meta = verify_reply(reply.headers, reply.data, headers["Actor-Nonce"])
        assert (meta.status, meta.key, json.loads(reply.data)) == (200, address, "by the book")
        forbidden = call_subject("policy", "users")
        await nc.publish(forbidden, b"", reply=nc.new_inbox())
        await refused(nc, refusals, forbidden)


async def test_a_connection_holds_a_bounded_number_of_subscriptions(node: Bus) -> None:
    """Issue 30: a stranger's connection was given 200,000 subscriptions (the server's
    memory went from 92 to 203 MiB). One past the limit, the server closes it."""
    closed = anyio.Event()

    async def on_closed() -> None:
        closed.set()

    async with stranger(node.url, closed_cb=on_closed) as (nc, _):
        for i in range(Settings().nats_max_subscriptions + 1):
            await nc.subscribe(f"_INBOX.many.{i}")
        with anyio.fail_after(10):
            await closed.wait()
        assert "maximum subscriptions" in str(nc.last_error).lower(), nc.last_error


@pytest.mark.parametrize("node", ["embedded"], indirect=True)
def test_the_embedded_server_opens_no_monitoring_port(node: Bus) -> None:
    """Issue 30: the embedded server's monitoring port (loopback, without authentication)
    showed anyone on the machine every connection's key and private inbox
    (``/connz?auth=1&subs=1``). It is opened only if asked for (ACTOR_NATS_MONITOR)."""
    info = json.loads((node.settings.home / "node.json").read_text())
    assert not info.get("nats_monitor")
    listening = psutil.Process(info["embedded"]).net_connections("tcp")
    ports = {c.laddr.port for c in listening if c.status == psutil.CONN_LISTEN}
    assert ports == {node.settings.nats_port}


async def test_serving_a_name_takes_a_host_and_the_names_key(node: Bus) -> None:
    """A key the policy does not list as a host cannot serve at all; a host's replica can
    claim a new name, never one bound to another key."""
    intruder = Keypair.generate()

    for name in ("squat", "echo"):
        if name == "echo":
            node.actor("policy", "host", "add", intruder.address)
        with pytest.raises(nats.errors.Error):  # refused; then bound to the echo actor's key
            await replica_of(node, intruder, name)
        close_refused_sockets()
    nc = await replica_of(node, intruder, f"squat{secrets.token_hex(3)}")
    await nc.close()
    owner = Keystore(node.settings.home).load("default")
    assert owner.address in node.actor("policy", "log", "--json")


async def test_a_host_claims_new_names_at_a_bounded_pace(node: Bus) -> None:
    """Issue 30's second attacker: a plain host claimed 1,000 fresh names in 2.9 s, each a
    policy record every replica's policy view reads when it starts. A host claims 32 at
    once, then one every 10 s (per policy replica); names it holds already are not
    counted."""
    key = Keypair.generate()
    node.actor("policy", "host", "add", key.address)
    prefix = f"many{secrets.token_hex(3)}x"
    claimed = 0
    try:
        while claimed < 80:
            await (await replica_of(node, key, f"{prefix}{claimed}")).close()
            claimed += 1
    except nats.errors.Error:  # one too many
        pass
    close_refused_sockets()  # once the refusal (which holds its socket) is gone
    assert 32 <= claimed <= 64, claimed
    await (await replica_of(node, key, f"{prefix}0")).close()  # its own: no new claim


async def test_a_hosts_name_cannot_nest_in_the_jobs_actors_subjects(node: Bus) -> None:
    """Issue 30: a jobs actor's subjects are made of its name, dots kept: a host's ticket
    for the name ``jobs.work`` with role ``jobs`` could publish into the real jobs actor's
    work queue (``actorbus.jobs.jobs.work.<job>``). A jobs or gateway name with a dot is
    refused now; the same name as a plain actor is not."""
    key = Keypair.generate()
    node.actor("policy", "host", "add", key.address)

    for refused_name, role in (("jobs.work", "jobs"), ("jobs.work", "gateway"), ("JOBS", "jobs")):
        # JOBS: its streams' names would be the jobs actor's (ACTOR_JOBS_JOBS: its queue).
        with pytest.raises(nats.errors.Error):
            await replica_of(node, key, refused_name, role)
        close_refused_sockets()
    nc = await replica_of(node, key, f"plain.x{secrets.token_hex(3)}")
    await nc.close()


async def test_a_supervisors_name_is_one_node(node: Bus) -> None:
    """Issue 30: a host's ticket for ``node.<node>.0`` as a supervisor was taken, and its
    records (``actorbus.audit.node.<node>.0``, lines under ``actorbus.logs.<node>.0``:
    node <node>'s replica 0) were read as a supervisor's own. A supervisor's name is
    ``node.`` and one token."""
    key = Keypair.generate()
    node.actor("policy", "host", "add", key.address)
    machine = f"m{secrets.token_hex(3)}"

    with pytest.raises(nats.errors.Error):
        await replica_of(node, key, f"node.{machine}.0", "node")
    close_refused_sockets()
    nc = await replica_of(node, key, f"node.{machine}", "node")
    await nc.close()
    assert f"node.{machine}.0" not in node.actor("policy", "name", "ls")


def test_a_second_home_runs_its_own_actors(node: Bus, tmp_path: Path) -> None:
    """README: a second home on the same bus, once a host, runs its own actors. Its
    `actor up` exited with a 403 on $JS.API.INFO (issue 30): it asks whether strangers
    may use JetStream, and a refusal is no longer a timeout."""
    second = Bus(tmp_path / "second", ACTOR_NATS_URL=node.url)
    second.actor("key", "new", "default")
    address = json.loads(second.actor("key", "show"))["address"]
    node.actor("policy", "host", "add", address)
    name = f"echo{secrets.token_hex(3)}"
    try:
        second.actor("up", "-d", "--no-gateway", "--name", name, "examples/echo.py:Echo")
        answer = node.actor("call", f"{name}/forward", "from the second home")
        assert json.loads(answer) == "from the second home"
    finally:
        written = second.settings.home / "node.json"
        pid = json.loads(written.read_text())["pid"] if written.exists() else 0
        stopped = second.run("down")
        if pid and psutil.pid_exists(pid):  # never left running, whatever failed
            psutil.Process(pid).kill()
    assert stopped.returncode == 0, stopped.stderr


async def _quiet(exc: Exception) -> None:
    pass


async def replica_of(node: Bus, key: Keypair, name: str, role: str = "actor") -> nats.NATS:
    """A plain nats-py connection as a replica of ``name`` (as ``role``), by a hosting
    ticket ``key`` signs for itself."""
    return await nats.connect(
        servers=node.url.split(","),
        token=host_ticket(key, name, role, key.address),
        allow_reconnect=False,
        connect_timeout=5,
        error_cb=_quiet,
        **_as_host(key),
    )


async def test_jetstream_answers_nothing_onto_the_policy(node: Bus) -> None:
    """JetStream answers on whatever reply subject a request names, so a connection that
    may ask it anything may have it write anywhere: a caller's key has no JetStream; a
    hosted replica (it reads the registry) can have it answer onto a policy key, and the
    policy actor puts its record back."""
    operator = Keystore(node.settings.home).load("default")
    policy = Keystore(node.settings.home).load("policy")
    target = f"$KV.actor_policy.admin.{operator.address}"
    info = "$JS.API.STREAM.INFO.KV_actor_registry"
    key = Keypair.generate()
    login = {"nkeys_seed_str": encode_nkey_seed(key.seed), "inbox_prefix": inbox_of(key.public_key)}
    async with stranger(node.url, **login) as (nc, refusals):
        await nc.publish(info, b"", reply=target)
        await refused(nc, refusals, info)
    node.actor("policy", "host", "add", key.address)
    ticket = host_ticket(key, f"tenant{secrets.token_hex(3)}", "actor", key.address)
    async with stranger(node.url, token=ticket, **login) as (nc, _):
        await nc.publish(info, b"", reply=target)
        await nc.flush()

    async def restored() -> None:
        async with Client(settings=node.settings) as operator_client:
            kv = await operator_client.nc.jetstream().key_value("actor_policy")
            stored = (await kv.get(f"admin.{operator.address}")).value or b""
            try:  # the junk until the policy actor has put its record back
                record = open_record("actor_policy", f"admin.{operator.address}", stored)
            except Unauthorized as exc:
                raise AssertionError(exc.message) from None
            assert record.by == policy.address

    await eventually(restored, timeout=10)
    async with Client(settings=node.settings) as operator_client:
        assert operator.address in await operator_client.call("policy", "admins")


def _as_host(key: Keypair, ticket: str = "") -> dict[str, Any]:
    """nats-py options that connect as ``key`` (with a hosting ``ticket``: as a replica)."""
    login: dict[str, Any] = {
        "nkeys_seed_str": encode_nkey_seed(key.seed),
        "inbox_prefix": inbox_of(key.public_key),
    }
    return {**login, "token": ticket} if ticket else login


def _listed_host(node: Bus, who: str, name: str = "") -> dict[str, Any]:
    """nats-py options of a fresh key an admin listed as a host: its own connection
    (``who`` is "host") or a replica it runs ("replica") of ``name`` (else a fresh one)."""
    key = Keypair.generate()
    node.actor("policy", "host", "add", key.address)
    name = name or f"tenant{secrets.token_hex(3)}"
    ticket = host_ticket(key, name, "actor", key.address)
    return _as_host(key, ticket if who == "replica" else "")


@pytest.mark.parametrize("how", ["direct get", "pull", "ack"])
@pytest.mark.parametrize("who", ["host", "replica"])
async def test_no_jetstream_answer_deletes_a_stream(node: Bus, who: str, how: str) -> None:
    """Issue 30: JetStream answers on the reply subject a request names, and nats-server
    takes some answers (a direct get's; a pull's "no messages" status; an
    acknowledgement's) as the account's own request when that subject is an API one: a
    listed host's connection (it reads the registry) or any replica it runs deleted a
    stream of its choice (the policy bucket as well as this one). Neither may ask for
    direct gets, pull or acknowledge now."""
    victim = f"VICTIM_{secrets.token_hex(3)}"
    async with Client(settings=node.settings) as operator:
        await operator.nc.jetstream().add_stream(name=victim, subjects=[f"victim.{victim}"])
    registry = "KV_actor_registry"
    async with stranger(node.url, **_listed_host(node, who)) as (nc, refusals):
        if how == "direct get":
            ask = {"seq": 1, "next_by_subj": "$KV.actor_registry.>"}
            subject = f"$JS.API.DIRECT.GET.{registry}"
        else:  # a consumer of its own (refused now, as any of the registry), pulled or acked
            durable = f"d{secrets.token_hex(3)}"
            config = {"durable_name": durable, "filter_subject": "$KV.actor_registry.none.x"}
            create = f"$JS.API.CONSUMER.DURABLE.CREATE.{registry}.{durable}"
            made = {"stream_name": registry, "config": config}
            await nc.publish(create, json.dumps(made).encode(), reply=nc.new_inbox())
            if how == "pull":
                ask, subject = (
                    {"batch": 1, "no_wait": True},
                    f"$JS.API.CONSUMER.MSG.NEXT.{registry}.{durable}",
                )
            else:  # an acknowledgement asking to be acknowledged: an empty message
                ask, subject = "-NAK", f"$JS.ACK.{registry}.{durable}.1.1.1.0.0"
        body = ask.encode() if isinstance(ask, str) else json.dumps(ask).encode()
        await nc.publish(subject, body, reply=f"$JS.API.STREAM.DELETE.{victim}")
        await refused(nc, refusals, subject)
    async with Client(settings=node.settings) as operator:
        assert (await operator.nc.jetstream().stream_info(victim)).config.name == victim
        await operator.nc.jetstream().delete_stream(victim)


@pytest.mark.parametrize("how", ["pull", "ack"])
async def test_a_jobs_actor_deletes_no_stream_with_its_own_queue(node: Bus, how: str) -> None:
    """Issue 30: a jobs actor pulls from its queue and acknowledges what it takes, as no
    other replica may. JetStream answers a pull that finds nothing, and an acknowledgement
    that names a reply subject, on that subject, and nats-server took an answer on an API
    subject as the account's own request: a host an admin let run a jobs actor deleted the
    stream of its choice (the policy's bucket, the audit). JetStream is in an account of
    its own now, where its answers land as messages."""
    victim = f"VICTIM_{secrets.token_hex(3)}"
    async with Client(settings=node.settings) as operator:
        await operator.nc.jetstream().add_stream(name=victim, subjects=[f"victim.{victim}"])
    key = Keypair.generate()
    name = f"jobs{secrets.token_hex(3)}"
    node.actor("policy", "host", "add", key.address, "--jobs", name)
    jobs = JobsNames(name)
    ticket = host_ticket(key, name, "jobs", key.address)
    async with stranger(node.url, **_as_host(key, ticket)) as (nc, refusals):
        durable = f"job_{secrets.token_hex(6)}"
        async with Client(settings=node.settings) as operator:  # as the policy actor would
            await open_queue(operator.nc, jobs.work_stream, durable, jobs.work("x"), ack_wait=30)
        if how == "pull":
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{jobs.work_stream}.{durable}"
            body = json.dumps({"batch": 1, "no_wait": True}).encode()
        else:
            subject, body = f"$JS.ACK.{jobs.work_stream}.{durable}.1.1.1.0.0", b"-NAK"
        for target in (victim, "ACTOR_POLICY_AUDIT"):
            await nc.publish(subject, body, reply=f"$JS.API.STREAM.DELETE.{target}")
        await nc.flush()
        await anyio.sleep(0.5)
        assert not refusals.errors, refusals.errors  # its own rights: allowed, and harmless
    async with Client(settings=node.settings) as operator:
        js = operator.nc.jetstream()
        assert (await js.stream_info("ACTOR_POLICY_AUDIT")).state.messages > 0
        assert (await js.stream_info(victim)).config.name == victim
        await js.delete_stream(victim)


@pytest.mark.parametrize(
    ("who", "stream"),
    [("host", "registry"), ("replica", "registry"), ("replica", "policy"), ("replica", "nonces")],
)
async def test_no_host_makes_consumers_of_shared_state(node: Bus, who: str, stream: str) -> None:
    """Issue 30's third attacker: a push consumer's deliver subject is its maker's choice,
    and one aimed where something listens never goes inactive (every replica listens for
    the policy bucket's deletion advisory). A plain host filled the registry's 1,000
    consumers in a second, and a replica the policy bucket's: long after it left, replicas
    that started could not read the policy (503) and even the operator could make none.
    A host and its replicas read the registry, the policy and the nonce window by gets,
    follow the policy by what its stream republishes, and make no consumer of them."""
    name = f"tenant{secrets.token_hex(3)}"
    shared = {
        "registry": "KV_actor_registry",
        "policy": f"KV_{node.settings.policy_bucket}",
        "nonces": nonce_stream(name),  # its own name's, which it reads by gets
    }[stream]
    async with stranger(node.url, **_listed_host(node, who, name)) as (nc, refusals):
        listened = f"$JS.EVENT.ADVISORY.STREAM.DELETED.KV_{node.settings.policy_bucket}"
        durable = f"d{secrets.token_hex(3)}"
        config = {"durable_name": durable, "ack_policy": "none", "deliver_subject": listened}
        made = json.dumps({"stream_name": shared, "config": config}).encode()
        create = f"$JS.API.CONSUMER.DURABLE.CREATE.{shared}.{durable}"
        ephemeral = f"$JS.API.CONSUMER.CREATE.{shared}"
        for subject in (create, ephemeral):
            await nc.publish(subject, made, reply=nc.new_inbox())
        await refused(nc, refusals, create, ephemeral)
        info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{shared}", b"", 5)).data)
        assert info["config"]["name"] == shared, info  # it still reads it


async def _reflect(nc: nats.NATS, name: str, body: bytes, seq: int, onto: str) -> None:
    """Have JetStream answer onto ``onto`` with ``body`` stored at sequence ``seq`` of the
    nonce stream of ``name`` (the replica ``nc``'s own): a direct get of it, its reply
    subject chosen."""
    js, stream = nc.jetstream(), nonce_stream(name)
    last = (await js.stream_info(stream)).state.last_seq
    assert last < seq, (last, seq)
    for _ in range(seq - last - 1):
        await nc.publish(f"actorbus.nonce.{name}", b"x")
    assert (await js.publish(f"actorbus.nonce.{name}", body)).seq == seq
    await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps({"seq": seq}).encode(), reply=onto)
    await nc.flush()


async def test_a_replica_cannot_freeze_a_record_its_hosts_follow(node: Bus) -> None:
    """Issue 30's third attacker: hosts follow the policy by what its bucket's stream
    republishes, and took a message's ``Nats-Sequence`` as the entry's revision. A
    replica had a direct get of its own nonce stream answer onto the changes subject of
    an admin's record: the genuine record, at a sequence one past the bucket's. The admin
    was then removed, and kept every admin right on every replica. A change is ordered by
    the version its record signs now."""
    admin = Keypair.generate()
    node.actor("policy", "admin", "add", admin.address)
    bucket = node.settings.policy_bucket
    name = f"tenant{secrets.token_hex(3)}"
    async with (
        Client(admin, settings=node.settings) as pinned,
        stranger(node.url, **_listed_host(node, "replica", name)) as (nc, _),
    ):
        assert await pinned.call("echo", "is_admin") is True
        key = f"$KV.{bucket}.admin.{admin.address}"
        ask = json.dumps({"last_by_subj": key}).encode()
        got = json.loads((await nc.request(f"$JS.API.STREAM.MSG.GET.KV_{bucket}", ask, 5)).data)
        record = base64.b64decode(got["message"]["data"])
        last = (await nc.jetstream().stream_info(f"KV_{bucket}")).state.last_seq
        changes = f"actorbus.changes.{bucket}.admin.{admin.address}"
        await _reflect(nc, name, record, last + 1, changes)
        await anyio.sleep(0.5)
        node.actor("policy", "admin", "rm", admin.address)

        async def removed() -> None:
            assert await pinned.call("echo", "is_admin") is False

        await eventually(removed, timeout=10)


async def test_forged_changes_cost_the_policys_followers_nothing(node: Bus) -> None:
    """Issue 30's third attacker: an answer landing on the policy's changes subject with a
    sequence far past the bucket's made every host read the policy again, and while it
    did, keys it did not hold were decided as ``public``: one message every 0.2 s had
    every keyed caller decided as a stranger. Hosts take no sequence from a message now:
    a key whose role refuses what ``public`` may do stays refused throughout."""
    user, role = Keypair.generate(), f"r{secrets.token_hex(3)}"
    node.actor("policy", "role", "set", role, "--allow", "echo/*", "--deny", "echo/forward")
    node.actor("policy", "user", "add", user.address, "--role", role)
    bucket = node.settings.policy_bucket
    name = f"tenant{secrets.token_hex(3)}"
    async with stranger(node.url, **_listed_host(node, "replica", name)) as (nc, _):
        last = (await nc.jetstream().stream_info(f"KV_{bucket}")).state.last_seq
        gap = f"actorbus.changes.{bucket}.gap"
        await _reflect(nc, name, b"x", last + 100, gap)
        direct = f"$JS.API.DIRECT.GET.{nonce_stream(name)}"
        ask = json.dumps({"seq": last + 100}).encode()
        async with Client(user, settings=node.settings) as caller:
            for i in range(20):  # 4 s of forged gaps, a call between each two
                await nc.publish(direct, ask, reply=gap)
                await anyio.sleep(0.2)
                with pytest.raises(Forbidden):  # as its role says, not as a stranger
                    await caller.call("echo", "forward", str(i))


async def test_a_replicas_nonce_window_deletes_no_stream(node: Bus) -> None:
    """A replica reads its replay window with batched direct gets of the nonce stream, as
    it may now (it makes no consumer of it): answered onto another stream's deletion, the
    answer is a message in the callers' account and deletes nothing."""
    victim = f"VICTIM_{secrets.token_hex(3)}"
    async with Client(settings=node.settings) as operator:
        await operator.nc.jetstream().add_stream(name=victim, subjects=[f"victim.{victim}"])
    name = f"tenant{secrets.token_hex(3)}"
    async with stranger(node.url, **_listed_host(node, "replica", name)) as (nc, refusals):
        ask = json.dumps({"seq": 1, "next_by_subj": "actorbus.nonce.>", "batch": 5}).encode()
        subject = f"$JS.API.DIRECT.GET.{nonce_stream(name)}"
        for target in (victim, "ACTOR_POLICY_AUDIT"):
            await nc.publish(subject, ask, reply=f"$JS.API.STREAM.DELETE.{target}")
        await nc.flush()
        await anyio.sleep(0.5)
        assert not refusals.errors, refusals.errors  # its own rights: allowed, and harmless
    async with Client(settings=node.settings) as operator:
        js = operator.nc.jetstream()
        assert (await js.stream_info("ACTOR_POLICY_AUDIT")).config.name == "ACTOR_POLICY_AUDIT"
        assert (await js.stream_info(victim)).config.name == victim
        await js.delete_stream(victim)


async def test_a_replica_cannot_fill_the_audit_with_jetstream_answers(node: Bus) -> None:
    """Issue 30: JetStream's answers written onto a stored subject are stored: a replica
    put 700 KB under its own registry key and had 50 gets of it answered onto an audit
    subject, 46.7 MB in 2 s, into a stream nobody may purge. A registry entry and an audit
    record are bounded now, and the answer is too big to be kept."""
    key = Keypair.generate()
    node.actor("policy", "host", "add", key.address)
    name = f"tenant{secrets.token_hex(3)}"
    async with stranger(
        node.url, **_as_host(key, host_ticket(key, name, "actor", key.address))
    ) as (
        nc,
        _,
    ):
        entry = f"$KV.actor_registry.{name}.x"
        with pytest.raises(nats.errors.Error):  # 700 KB: not stored (no ack)
            await nc.jetstream().publish(entry, b"x" * 700_000, timeout=3)
        await nc.jetstream().publish(entry, b"x" * 200_000, timeout=3)
        async with Client(settings=node.settings) as operator:
            before = (await operator.nc.jetstream().stream_info("ACTOR_POLICY_AUDIT")).state
            ask = json.dumps({"last_by_subj": entry}).encode()
            for _ in range(5):
                await nc.publish(
                    "$JS.API.STREAM.MSG.GET.KV_actor_registry", ask, reply="actorbus.audit.x"
                )
            await nc.flush()
            await anyio.sleep(1)
            after = (await operator.nc.jetstream().stream_info("ACTOR_POLICY_AUDIT")).state
        assert after.bytes - before.bytes < 100_000, (before, after)


async def test_a_replica_evicts_no_other_names_nonces(node: Bus) -> None:
    """Issue 30's third attacker: every name's nonce announcements shared one stream of
    256 MiB, the oldest dropped first, and a replica of a fresh name published 270 MB on
    its own nonce subject in a few seconds: echo's announcements were gone long before
    their window, and a replica of echo that started then would have taken a replay.
    Each name has a stream of its own now, and a flood evicts the flooder's only."""
    async with Client(settings=node.settings) as operator:
        js = operator.nc.jetstream()
        assert await operator.call("echo", "forward", "x") == "x"
        victim = "actorbus.nonce.echo"
        await anyio.sleep(0.5)  # echo announces the nonce it accepted after its reply
        stream = await js.find_stream_name_by_subject(victim)
        seq = (await js.get_last_msg(stream, victim)).seq
        name = f"tenant{secrets.token_hex(3)}"
        async with stranger(node.url, **_listed_host(node, "replica", name)) as (nc, _):
            body = b"z" * 250_000
            for i in range(1100):  # 275 MB, past the shared stream's 256 MiB
                await nc.publish(f"actorbus.nonce.{name}", body)
                if i % 50 == 49:
                    await nc.flush()
            await nc.jetstream().publish(f"actorbus.nonce.{name}", b"", timeout=10)  # all in
        assert (await js.get_msg(stream, seq)).seq == seq  # echo's window is whole


async def test_a_jobs_actor_makes_no_consumer_of_its_queue(node: Bus) -> None:
    """Issue 30's third attacker: a jobs actor made its jobs' queues (durable consumers of
    its work stream) with a config of its own; one holding up to 300,000 waiting pulls
    took 451 MiB of the server's memory. A jobs replica may make no consumer of its queue
    now; the policy actor makes each job's, with 64 waiting pulls at most, and a job
    still runs."""
    key = Keypair.generate()
    name = f"jobs{secrets.token_hex(3)}"
    node.actor("policy", "host", "add", key.address, "--jobs", name)
    work = JobsNames(name).work_stream
    ticket = host_ticket(key, name, "jobs", key.address)
    async with stranger(node.url, **_as_host(key, ticket)) as (nc, refusals):
        durable = f"job_{secrets.token_hex(6)}"
        config = {"durable_name": durable, "ack_policy": "explicit", "max_waiting": 300_000}
        made = json.dumps({"stream_name": work, "config": config}).encode()
        create = f"$JS.API.CONSUMER.DURABLE.CREATE.{work}.{durable}"
        ephemeral = f"$JS.API.CONSUMER.CREATE.{work}"
        for subject in (create, ephemeral):
            await nc.publish(subject, made, reply=nc.new_inbox())
        await refused(nc, refusals, create, ephemeral)
    async with Client(settings=node.settings) as operator:
        slow = await operator.submit("echo/sleep", [[1.0]] * 5, concurrency=1)
        js = operator.nc.jetstream()

        async def queued() -> None:  # its queue, made by the policy actor
            queues = await js.consumers_info(JobsNames("jobs").work_stream)
            assert queues and {q.config.max_waiting for q in queues} == {64}, queues

        await eventually(queued, timeout=10)
        assert (await slow.cancel())["state"] == "cancelled"


@pytest.mark.parametrize("role", ["jobs", "gateway"])
async def test_a_host_makes_no_stream_of_its_own(node: Bus, role: str) -> None:
    """Issue 30: a ticket for a new jobs or gateway name let its replica create and change
    that name's streams with any config: one capturing ``actor.>`` and ``_INBOX.>`` read
    every caller's requests and private replies. The policy actor makes them now, as it
    makes them, when the replica connects; the replica may neither create nor change
    them."""
    key = Keypair.generate()
    name = f"{role}{secrets.token_hex(3)}"
    node.actor("policy", "host", "add", key.address, f"--{role}", name)
    stream = JobsNames(name).work_stream if role == "jobs" else f"KV_{commune_bucket(name)}"
    config = json.dumps({"name": stream, "subjects": ["actor.>", "_INBOX.>"]}).encode()
    create, update = (f"$JS.API.STREAM.{verb}.{stream}" for verb in ("CREATE", "UPDATE"))
    async with stranger(node.url, **_as_host(key, host_ticket(key, name, role, key.address))) as (
        nc,
        refusals,
    ):
        await nc.publish(create, config, reply=nc.new_inbox())
        await nc.publish(update, config, reply=nc.new_inbox())
        await refused(nc, refusals, create, update)
    async with Client(settings=node.settings) as operator:
        made = await operator.nc.jetstream().stream_info(stream)
        assert "actor.>" not in made.config.subjects
        await operator.nc.jetstream().delete_stream(stream)


@pytest.mark.parametrize("role", ["jobs", "gateway"])
async def test_a_host_runs_the_jobs_actors_and_gateways_an_admin_names(
    node: Bus, role: str
) -> None:
    """Issue 30: any listed host could claim any number of new jobs and gateway names, and
    the policy actor made streams for each (three per jobs name, one reserving a GiB):
    47 names filled the node's JetStream storage. A jobs actor also pulls from its queue,
    a right no plain actor holds. Now a host runs only the names an admin lets it, and
    freeing a name deletes its streams (its next holder must not read its jobs)."""
    key = Keypair.generate()
    node.actor("policy", "host", "add", key.address)
    name = f"{role}{secrets.token_hex(3)}"
    stream = JobsNames(name).work_stream if role == "jobs" else f"KV_{commune_bucket(name)}"
    with pytest.raises(nats.errors.Error, match=r"[Aa]uthoriz"):
        await replica_of(node, key, name, role)
    close_refused_sockets()
    async with Client(settings=node.settings) as operator:
        with pytest.raises(nats.js.errors.NotFoundError):
            await operator.nc.jetstream().stream_info(stream)
    node.actor("policy", "host", "add", key.address, f"--{role}", name)
    await (await replica_of(node, key, name, role)).close()
    async with Client(settings=node.settings) as operator:
        assert (await operator.nc.jetstream().stream_info(stream)).config.name == stream
    node.actor("policy", "name", "rm", name)
    async with Client(settings=node.settings) as operator:
        with pytest.raises(nats.js.errors.NotFoundError):
            await operator.nc.jetstream().stream_info(stream)
    # Free: the next to serve it claims it, and its streams are made anew (empty).
    await (await replica_of(node, key, name, role)).close()
    async with Client(settings=node.settings) as operator:
        assert (await operator.nc.jetstream().stream_info(stream)).state.messages == 0


async def test_a_gateway_hears_only_its_own_relayed_replies(node: Bus) -> None:
    """Issue 30: a ticket with role ``gateway`` for a fresh name subscribed
    ``_INBOX.relay.>`` and read the end-to-end replies of every gateway's callers. Each
    gateway's relay inboxes carry its name now, and only it may hear them."""
    key = Keypair.generate()
    name = f"gw{secrets.token_hex(3)}"
    node.actor("policy", "host", "add", key.address, "--gateway", name)
    ticket = host_ticket(key, name, "gateway", key.address)
    async with stranger(node.url, **_as_host(key, ticket)) as (nc, refusals):
        await nc.subscribe(f"_INBOX.relay.{name}.>")  # its own
        others = ("_INBOX.relay.>", "_INBOX.relay.gateway.>", "_INBOX.relay.*.*")
        for subject in others:
            await nc.subscribe(subject)
        await refused(nc, refusals, *others)
        assert not refusals.of(f"_INBOX.relay.{name}.>")


@pytest.mark.parametrize("node", ["embedded"], indirect=True)
async def test_a_removed_hosts_replicas_are_cut_off(node: Bus) -> None:
    """Issue 30: a replica's connection never expired, and a removed host kept its
    JetStream rights 1,021 s later. Its credentials last about ``replica_ttl`` now: then
    it connects again with a fresh ticket, which is refused once its host is removed."""
    key = Keypair.generate()
    node.actor("policy", "host", "add", key.address)
    name = f"tenant{secrets.token_hex(3)}"
    closed = anyio.Event()

    async def on_closed() -> None:
        closed.set()

    nc = await nats.connect(
        servers=node.url.split(","),
        token=lambda: host_ticket(key, name, "actor", key.address),
        error_cb=_quiet,
        closed_cb=on_closed,
        max_reconnect_attempts=3,
        reconnect_time_wait=0.5,
        **_as_host(key),
    )
    try:
        await nc.subscribe(f"actor.{name}.*", queue=f"actor.{name}")
        await nc.flush()
        node.actor("policy", "host", "rm", key.address)
        with anyio.fail_after(REPLICA_TTL + 20):
            await closed.wait()  # the server ended it (nats-py does not connect again)
    finally:
        await nc.close()
    # The node's own replicas connected again each time, with fresh tickets, never exiting.
    rows = json.loads(node.actor("ps", "--json"))
    assert rows and all(row["restarts"] == 0 for row in rows), rows
    with pytest.raises(nats.errors.Error):  # and its next ticket is refused
        await replica_of(node, key, name)
    close_refused_sockets()


async def test_the_operator_keeps_every_right(node: Bus) -> None:
    """The home that started the server: its key reads the audit stream directly."""
    async with Client(settings=node.settings) as operator:
        info = await operator.nc.jetstream().stream_info("ACTOR_POLICY_AUDIT")
        assert info.config.name == "ACTOR_POLICY_AUDIT"


async def test_the_jobs_actor_has_the_rights_its_work_takes(node: Bus) -> None:
    """A job runs and a cancelled one's queue is dropped under the jobs actor's own
    rights (before: no right to purge its queue, so a cancel waited 5 s and was a 503)."""
    async with Client(settings=node.settings) as operator:
        job = await operator.submit("echo/add", [[1, 2]])
        await job.close()
        with anyio.fail_after(20):
            assert (await job.wait())["done"] == 1
        slow = await operator.submit("echo/sleep", [[2.0]] * 20, concurrency=1)
        with anyio.fail_after(4):
            assert (await slow.cancel())["state"] == "cancelled"


@pytest.mark.parametrize("node", ["deployed"], indirect=True)
def test_a_route_without_the_password_is_refused(node: Bus) -> None:
    """Issue 30: deploy/nats.conf's route port took a route connection without
    credentials, which then heard every request and private reply (``RS+ $G >``) and
    could write into the policy's bucket and the audit stream."""
    said = raw_route(node.route_port)
    assert b"Authorization Violation" in said, said
    assert b"PONG" not in said and b"RMSG" not in said, said


@pytest.mark.parametrize("node", ["deployed"], indirect=True)
def test_a_leaf_node_without_credentials_is_refused(node: Bus, tmp_path: Path) -> None:
    """A leaf connection without a key was a stranger of the hub; it is refused now
    (DESIGN: leaf ports take no connection without credentials)."""
    remote = {"urls": [f"nats-leaf://127.0.0.1:{node.leaf_port}"]}
    config = write_config(tmp_path / "leaf.conf", {"leafnodes": {"remotes": [remote]}})
    leaf = EmbeddedServer(
        tmp_path / "leaf", extra_args=("-c", str(config)), jetstream=False, monitor=True
    )
    with leaf:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            refused = "authorization violation" in leaf.log_path.read_text().lower()
            joined = httpx.get(leaf.monitor_url + "/leafz", timeout=5).json().get("leafs")
            if refused or joined:
                break
            time.sleep(0.1)
    assert refused and not joined


@pytest.mark.parametrize("node", ["deployed"], indirect=True)
async def test_a_node_joins_the_cluster_under_its_own_key(
    node: Bus, tmp_path: Path, name: str
) -> None:
    """A leaf node's connection is a client of the hub's callout: refused until an admin
    lists its key as a host, then its actors serve into the cluster, across the leaf's
    reconnections (its credentials last ``leaf_ttl``). Issue 30: a leaf connection never
    expired, so a removed host's leaf kept its rights for good; it is cut off within
    ``leaf_ttl`` now."""
    joining = Bus(
        tmp_path / "home",
        ACTOR_NATS_URL=f"nats://127.0.0.1:{free_port()}",
        ACTOR_START_WAIT="3",
        ACTOR_GATEWAY_PORT="0",
    )
    join = ("--join", f"nats-leaf://127.0.0.1:{node.leaf_port}", "--no-gateway", "-d")
    args = ("up", "examples/echo.py:Echo", "--name", name, *join)
    refused = joining.run(*args)
    assert refused.returncode != 0 and "did not connect" in refused.stderr, refused.stderr
    key = Keystore(joining.settings.home).load("default")
    node.actor("policy", "host", "add", key.address)
    joining.actor(*args)
    info = json.loads((joining.settings.home / "node.json").read_text())
    try:
        victim = f"VICTIM_{secrets.token_hex(3)}"
        async with Client(settings=node.settings) as client:
            assert await client.call(name, "forward", "from the hub") == "from the hub"
            await client.nc.jetstream().add_stream(name=victim, subjects=[f"victim.{victim}"])
            # Issue 30: the joined node could ask its hub's JetStream anything (the hub's
            # domain was open to it): it deleted the hub's streams. It reads there now.
            async with Client(settings=joining.settings) as local:
                for api in ("$JS.hub.API", "$JS.API"):  # the leaf maps the second to the first
                    with pytest.raises(nats.errors.Error):  # no answer
                        await local.nc.request(f"{api}.STREAM.DELETE.{victim}", b"", timeout=2)
            assert (await client.nc.jetstream().stream_info(victim)).config.name == victim
            await client.nc.jetstream().delete_stream(victim)
            await anyio.sleep(9)  # past one leaf_ttl: the leaf connected again
            assert await client.call(name, "forward", "still") == "still"
            node.actor("policy", "host", "rm", key.address)

            async def cut_off() -> None:
                try:
                    await client.request(name, "forward", ["gone"], timeout=1)
                except ActorError as exc:
                    assert exc.status >= 500, exc  # nobody answers it
                    return
                raise AssertionError("the removed host's leaf still serves")

            await eventually(cut_off, timeout=12)
            node.actor("policy", "host", "add", key.address)

            async def back() -> None:
                try:
                    assert await client.request(name, "forward", ["back"], timeout=1) == "back"
                except ActorError as exc:
                    raise AssertionError(exc.message) from None

            await eventually(back, timeout=15)
        joining.actor("down")  # its own key controls its node, though not an admin here
    finally:
        for pid in (info["pid"], info.get("embedded")):
            if pid and psutil.pid_exists(pid):
                psutil.Process(pid).kill()

"""Calls/s, p50 and p99 for five responders under one load generator, in one run.

    python bench/calls.py [--seconds 2] [--repeat 3] [--concurrency 1,16,64] [--only a,d]

(a) raw: a nats-py responder that echoes the body (no crypto);
(b) signed ceiling: a minimal nats-py responder that verifies the request signature and
    signs the reply with PyNaCl, nothing else;
(c) actor: our actor through one replica (`actor serve`) with the full pipeline
    (verify, freshness and cross-replica replay, bind, admission, deadline, signed reply);
(d) session: the same actor, called in a session (PROTOCOL.md §4b: an HMAC per request
    and per reply instead of ed25519);
(e) two replicas: (d) with a second replica (`actor up --replicas auto` on 2 cores);
(f) traced: (c) with OpenTelemetry spans on (the otel extra), exported to a sink here;
(g) sr25519: (c)'s actor called by an sr25519 key (PROTOCOL.md §3a: a bittensor hotkey's
    scheme) instead of an ed25519 one;
(h) sync: (c)'s actor's same function written as a ``def`` (each call handed to a worker
    thread and back);
(i) inline: the ``def`` with ``@endpoint(inline=True)`` (run on the loop, no hand-off);
(j) client: (c)'s actor called with ``Client.call`` as a user makes calls (sessions on, the
    default: each call a MAC after the first);
(k) client, signed: the same with ``Client(session=False)`` (each call signed);
(l) relayed: (c)'s actor called with end-to-end envelopes as a gateway relays them (reply
    subject ``_INBOX.relay.<gateway>.<nonce>``): each is claimed on JetStream before it runs
    (PROTOCOL.md §6), the cost (l)/(c) shows.

Each responder runs in its own process(es) against an embedded nats-server; the generator
runs here. For (b) and (c) it signs every request and verifies every reply, as a client
does; for (d) and (e) it MACs and checks MACs. Every cell is bounded in time and count.
All responders run at once, each on its own subject, and each repeat measures them in
turn: a cell is the median of its repeats, a ratio the median of the ratios within each
repeat (the machine's noise drifts; responders measured seconds apart share it). The CPU
columns are what each side spent per call (user + system, from /proc): the responder's
replicas, this generator, the nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.server
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import nacl.public
import nacl.signing
import nats
import psutil

from actorbus import Actor, Client, Settings, endpoint
from actorbus.bus import (
    EmbeddedServer,
    Keypair,
    Signer,
    SrKeypair,
    address_to_public_key,
    connect,
    sign_request,
    verify_reply,
)
from actorbus.bus.requests import request
from actorbus.bus.sessions import SESSION_FN, SessionGrant, mac_request, open_grant
from actorbus.bus.wire import relay_reply, reply_signing_bytes, request_signing_bytes, sign_relayed
from actorbus.host.stats import FunctionStats

HERE = Path(__file__).resolve()
MAX_CALLS_PER_CELL = 200_000
SUBJECTS = {
    "a": "actor.bencha.echo",
    "b": "actor.benchb.echo",
    "c": "actor.bench.echo",
    "d": "actor.bench.echo",
    "e": "actor.bench2.echo",
    "f": "actor.bench3.echo",
    "g": "actor.bench.echo",
    "h": "actor.bench.echo_sync",
    "i": "actor.bench.echo_inline",
    "j": "actor.bench.echo",
    "k": "actor.bench.echo",
    "l": "actor.bench.echo",
}
SHARED = {"d": "c", "g": "c", "h": "c", "i": "c", "j": "c", "k": "c", "l": "c"}
"""Responders that call another's actor: (d) and (g) to (l) call (c)'s."""
"""All responders run at once, each on its own subject ((d) calls (c)'s actor in a session),
so the cells of one repeat are measured minutes apart at most, not the whole run apart."""


class BenchEcho(Actor):
    """(c): the same work as the raw responders: return what was sent."""

    name = "bench"

    async def echo(self, message: str) -> str:
        return message

    def echo_sync(self, message: str) -> str:
        """(h): the same, as a def: each call runs in a worker thread."""
        return message

    @endpoint(inline=True)
    def echo_inline(self, message: str) -> str:
        """(i): the same def, run on the event loop."""
        return message

    async def sleep(self, seconds: float) -> float:
        """A slow call (bench/gateway.py's issue 30 attackers)."""
        await asyncio.sleep(min(seconds, 30.0))
        return seconds

    async def endless(self, size: int) -> AsyncIterator[str]:
        """Chunks of ``size`` characters until the caller stops (bench/gateway.py's
        stalled readers)."""
        while True:
            yield "x" * size


# -- responders (a) and (b), run as `python bench/calls.py --serve raw|signed URL` ------------


async def serve(kind: str, url: str) -> None:
    """Responder (a) or (b) on ``actor.bench<kind letter>.echo``."""
    nc = await nats.connect(url)
    key = Keypair(hashlib.sha256(b"bench signed ceiling").digest())
    verify_keys: dict[str, nacl.signing.VerifyKey] = {}

    async def raw(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(msg.data)

    async def signed(msg: nats.aio.msg.Msg) -> None:
        h = msg.headers or {}
        address = h["Actor-Key"]
        vk = verify_keys.get(address)
        if vk is None:
            vk = verify_keys[address] = nacl.signing.VerifyKey(address_to_public_key(address))
        signing = request_signing_bytes(
            msg.subject, msg.reply, h["Actor-Time"], h["Actor-Nonce"], msg.data
        )
        vk.verify(signing, bytes.fromhex(h["Actor-Signature"]))
        body = msg.data[10:-14]  # {"args":["x"],"kwargs":{}} -> "x"
        signature = key.sign(reply_signing_bytes(h["Actor-Nonce"], 200, body)).hex()
        headers = {"Actor-Status": "200", "Actor-Key": key.address, "Actor-Signature": signature}
        await nc.publish(msg.reply, body, headers=headers)

    subject = SUBJECTS["a" if kind == "raw" else "b"]
    await nc.subscribe(subject, queue=subject, cb=raw if kind == "raw" else signed)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


# -- the load generator ---------------------------------------------------------------------


async def open_session(nc: nats.NATS, key: Signer, actor: str) -> tuple[str, bytes]:
    """A session with the bench actor ``actor``: its ticket and key."""
    exchange = nacl.public.PrivateKey.generate()
    subject = f"actor.{actor}.{SESSION_FN}"
    body = b'{"args":["%s",3600]}' % bytes(exchange.public_key).hex().encode()
    sent: dict[str, str] = {}

    def headers(reply: str) -> dict[str, str]:
        sent.update(sign_request(key, subject, reply, body))
        return sent

    msg = await request(nc, subject, body, headers, 10)
    assert verify_reply(msg.headers, msg.data, sent["Actor-Nonce"]).status == 200, msg.data
    grant = SessionGrant(**json.loads(msg.data))
    return grant.ticket, open_grant(grant, exchange)


async def load(
    url: str,
    concurrency: int,
    seconds: float,
    mode: str,
    subject: str = SUBJECTS["c"],
) -> tuple[float, list[float]]:
    """Calls/s and latencies of ``concurrency`` callers of ``subject`` for ``seconds``
    (bounded in count); ``mode`` is raw, signed (ed25519), sr25519 or session (the
    primitives a client is made of), or client / client-signed (``Client.call``, its
    sessions on or off)."""
    async with AsyncExitStack() as stack:
        # The raw cell is plain nats-py's; the others are the library's, connection included.
        nc = (
            await nats.connect(url, pending_size=64 * 1024 * 1024)
            if mode == "raw"
            else await stack.enter_async_context(connect(url))
        )
        if mode == "raw":
            stack.push_async_callback(nc.close)
        return await _load(nc, concurrency, seconds, mode, subject)


async def _load(
    nc: nats.NATS, concurrency: int, seconds: float, mode: str, subject: str
) -> tuple[float, list[float]]:
    key: Signer = (
        SrKeypair.from_mini_secret(os.urandom(32)) if mode == "sr25519" else Keypair.generate()
    )
    body = b'{"args":["x"],"kwargs":{}}'
    actor, fn = subject.split(".")[1:3]
    ticket, session_key = await open_session(nc, key, actor) if mode == "session" else ("", b"")
    if mode == "relayed":
        return await _relayed(nc, key, concurrency, seconds, subject, body)

    async def primitive() -> None:
        if mode == "raw":
            await nc.request(subject, body, timeout=10)
            return
        sent: dict[str, str] = {}

        def headers(reply: str) -> dict[str, str]:
            if mode in ("signed", "sr25519"):
                sent.update(sign_request(key, subject, reply, body))
            else:
                sent.update(mac_request(session_key, key.address, ticket, subject, reply, body))
            return sent

        msg = await request(nc, subject, body, headers, 10)
        meta = verify_reply(
            msg.headers, msg.data, sent["Actor-Nonce"], session_key=session_key or None
        )
        assert meta.status == 200 and meta.by_session == (mode == "session"), msg.data

    if not mode.startswith("client"):
        return await drive(primitive, concurrency, seconds)
    with tempfile.TemporaryDirectory() as home:
        url = nc.connected_url.geturl() if nc.connected_url else ""
        settings = Settings.from_env({}, nats_url=url, home=home)
        async with Client(key, settings=settings, nc=nc, session=mode == "client") as c:
            await c.call(actor, fn, "warm")  # its lookup (and, with sessions, the first)

            async def call() -> None:
                assert await c.call(actor, fn, "x") == "x"

            return await drive(call, concurrency, seconds)


async def _relayed(
    nc: nats.NATS,
    key: Keypair | SrKeypair,
    concurrency: int,
    seconds: float,
    subject: str,
    body: bytes,
) -> tuple[float, list[float]]:
    """(l): signed requests whose replies come to a relay inbox, as a gateway sends them."""
    waiting: dict[str, asyncio.Future[nats.aio.msg.Msg]] = {}

    async def arrived(msg: nats.aio.msg.Msg) -> None:
        if (future := waiting.pop(msg.subject, None)) is not None:
            future.set_result(msg)

    sub = await nc.subscribe(relay_reply("bench", "*"), cb=arrived)

    async def relayed() -> None:
        headers = sign_relayed(key, subject, body, gateway="bench")
        reply = relay_reply("bench", headers["Actor-Nonce"])
        waiting[reply] = future = asyncio.get_running_loop().create_future()
        await nc.publish(subject, body, reply=reply, headers=headers)
        msg = await asyncio.wait_for(future, 10)
        assert verify_reply(msg.headers, msg.data, headers["Actor-Nonce"]).status == 200

    try:
        return await drive(relayed, concurrency, seconds)
    finally:
        await sub.unsubscribe()


async def drive(
    one: Callable[[], Awaitable[None]], concurrency: int, seconds: float
) -> tuple[float, list[float]]:
    """Calls/s and latencies of ``one()`` called by ``concurrency`` callers at once for
    ``seconds`` (at most MAX_CALLS_PER_CELL calls)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    budget = MAX_CALLS_PER_CELL

    async def worker() -> None:
        nonlocal budget
        while time.perf_counter() < deadline and budget > 0:
            budget -= 1
            started = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise SystemExit(f"responder did not start: {command}")
    return process


def load_options(
    doc: str, *, seconds: float = 3.0, concurrency: int = 64
) -> argparse.ArgumentParser:
    """The options of a bench that runs one load level: --seconds, --repeat, --concurrency."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=seconds, help=f"per run ({seconds:g})")
    parser.add_argument("--repeat", type=int, default=3, help="runs (the median is shown)")
    parser.add_argument("--concurrency", type=int, default=concurrency)
    return parser


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def measure(
    url: str, concurrency: int, seconds: float, letter: str, sides: list[list[psutil.Process]]
) -> tuple[float, list[float], tuple[float, float, float]]:
    before = [cpu_seconds(side) for side in sides]
    mode = MODES[letter]
    rate, latencies = asyncio.run(load(url, concurrency, seconds, mode, subject=SUBJECTS[letter]))
    spent = [cpu_seconds(side) - b for side, b in zip(sides, before, strict=True)]
    calls = max(len(latencies), 1)
    return rate, latencies, (spent[0] / calls * 1e6, spent[1] / calls * 1e6, spent[2] / calls * 1e6)


MODES = {
    "a": "raw",
    "b": "signed",
    "c": "signed",
    "d": "session",
    "e": "session",
    "f": "signed",
    "g": "sr25519",
    "h": "signed",
    "i": "signed",
    "j": "client",
    "k": "client-signed",
    "l": "relayed",
}
LABELS = {
    "a": "raw",
    "b": "signed",
    "c": "actor",
    "d": "session",
    "e": "2 replicas",
    "f": "traced",
    "g": "sr25519",
    "h": "sync",
    "i": "inline",
    "j": "client",
    "k": "client signed",
    "l": "relayed",
}
RATIOS = [
    ("c", "b"),
    ("c", "a"),
    ("b", "a"),
    ("d", "a"),
    ("d", "c"),
    ("e", "d"),
    ("f", "c"),
    ("g", "c"),
    ("h", "c"),
    ("i", "c"),
    ("j", "k"),
    ("l", "c"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per cell (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--only", default="a,b,c,d,e,f,g,h,i,j,k,l", help="responders (letters)")
    parser.add_argument("--log-level", default="INFO", help="of the actor (c, d, e)")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_loop(serve(*args.serve))
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    chosen = [letter for letter in MODES if letter in args.only.split(",")]
    home = tempfile.mkdtemp(prefix="actorbus-bench-")
    sink = otlp_sink()
    with EmbeddedServer(Path(home) / "nats") as server:
        env = dict(os.environ, ACTOR_NATS_URL=server.url, ACTOR_HOME=home)
        actor = [sys.executable, "-m", "actorbus.cli", "--log-level", args.log_level, "serve"]
        responder = [sys.executable, str(HERE), "--serve"]
        commands = {
            "a": [[*responder, "raw", server.url]],
            "b": [[*responder, "signed", server.url]],
            "c": [[*actor, f"{HERE}:BenchEcho"]],
            "e": [[*actor, f"{HERE}:BenchEcho", "--name", "bench2"]] * 2,
            "f": [[*actor, f"{HERE}:BenchEcho", "--name", "bench3"]],
        }
        processes: dict[str, list[subprocess.Popen[bytes]]] = {}
        try:
            for letter in chosen:
                started = SHARED.get(letter, letter)
                if started not in processes:
                    own = traced_env(env, sink) if letter == "f" else env
                    processes[started] = [start(command, own) for command in commands[started]]
                asyncio.run(load(server.url, 4, 0.3, MODES[letter], subject=SUBJECTS[letter]))
            report(server, chosen, levels, args, processes)
        finally:
            for group in processes.values():
                for process in group:
                    process.terminate()
            for group in processes.values():
                for process in group:
                    process.wait(30)


def report(
    server: EmbeddedServer,
    chosen: list[str],
    levels: list[int],
    args: argparse.Namespace,
    processes: dict[str, list[subprocess.Popen[bytes]]],
) -> None:
    """Each repeat measures every responder in turn; a cell is the median of its repeats,
    a ratio the median of the ratios within each repeat."""
    me = psutil.Process()
    nats_server = [psutil.Process(server.pid)] if server.pid else []
    print(
        f"{'responder':16} {'conc':>5} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f"   cpu us/call: {'responder':>9} {'generator':>9} {'nats':>6}"
    )
    for concurrency in levels:
        runs: dict[str, list[tuple[float, list[float], tuple[float, float, float]]]] = {}
        for _ in range(args.repeat):
            for letter in chosen:
                group = processes[SHARED.get(letter, letter)]
                sides = [[psutil.Process(p.pid) for p in group], [me], nats_server]
                runs.setdefault(letter, []).append(
                    measure(server.url, concurrency, args.seconds, letter, sides)
                )
        for letter in chosen:
            cells = runs[letter]
            rate = statistics.median(r for r, _, _ in cells)
            p50 = statistics.median(percentile(lat, 0.50) for _, lat, _ in cells) * 1e3
            p99 = statistics.median(percentile(lat, 0.99) for _, lat, _ in cells) * 1e3
            cpu = [statistics.median(c[i] for _, _, c in cells) for i in range(3)]
            print(
                f"{letter} {LABELS[letter]:14} {concurrency:5} {rate:9.0f} {p50:8.2f} {p99:8.2f}"
                f"   {'':13}{cpu[0]:9.0f} {cpu[1]:9.0f} {cpu[2]:6.0f}",
                flush=True,
            )
        shown = [
            f"{x}/{y} = {ratio(runs[x], runs[y]):.2f}" for x, y in RATIOS if x in runs and y in runs
        ]
        print(f"  concurrency {concurrency}: " + "   ".join(shown), flush=True)
        if "c" in runs:
            replica_us = statistics.median(c[0] for _, _, c in runs["c"])
            print(f"  {metrics_cost(replica_us)}", flush=True)


def otlp_sink() -> str:
    """An OTLP/HTTP endpoint here that takes span exports and drops them, for (f)."""

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def traced_env(env: dict[str, str], sink: str) -> dict[str, str]:
    """(f): the actor of (c) with OpenTelemetry spans on, sent to ``sink``."""
    return dict(env, OTEL_EXPORTER_OTLP_ENDPOINT=sink)


def metrics_cost(replica_us: float) -> str:
    """What the metrics a replica always keeps (actorbus.host.stats) cost a call: their
    bookkeeping per call, timed here, against the replica's CPU per call just measured.
    They cannot be switched off, so calls/s without them is estimated: a CPU-bound
    replica's rate scales with its CPU per call."""
    stats = FunctionStats()

    def one_call() -> None:
        stats.in_flight += 1
        stats.in_flight -= 1
        stats.record(200, 250_000, "")
        stats.ran(0.0001, 0.0002)

    seconds = min(timeit.repeat(one_call, number=100_000, repeat=5)) / 100_000
    cost_us = seconds * 1e6
    baseline = max(replica_us - cost_us, 1e-9)
    return (
        f"metrics: {cost_us:.2f} us of the replica's {replica_us:.0f} us CPU per call; "
        f"estimated calls/s with them / without them = {baseline / replica_us:.3f}"
    )


def ratio(xs: list[tuple[float, Any, Any]], ys: list[tuple[float, Any, Any]]) -> float:
    """The median over repeats of x's calls/s over y's in the same repeat."""
    return statistics.median(x[0] / y[0] for x, y in zip(xs, ys, strict=True))


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """The responders' event loop: uvloop's when installed (as the actor's), unless
    ACTOR_UVLOOP=0."""
    if importlib.util.find_spec("uvloop") and os.environ.get("ACTOR_UVLOOP") != "0":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


if __name__ == "__main__":
    main()

"""Calls/s, p50 and p99 for five responders under one load generator, in one run.

    python bench/calls.py [--seconds 2] [--repeat 3] [--concurrency 1,16,64] [--only a,d]

(a) raw: a nats-py responder that echoes the body (no crypto);
(b) signed ceiling: a minimal nats-py responder that verifies the request signature and
    signs the reply with PyNaCl, nothing else;
(c) actor: our actor through one replica (`actor serve`) with the full pipeline
    (verify, freshness and cross-replica replay, bind, admission, deadline, signed reply);
(d) session: the same actor, called in a session (PROTOCOL.md §4b: an HMAC per request
    and per reply instead of ed25519);
(e) two replicas: (d) with a second replica (`actor up --replicas auto` on 2 cores).

Each responder runs in its own process(es) against an embedded nats-server; the generator
runs here. For (b) and (c) it signs every request and verifies every reply, as a client
does; for (d) and (e) it MACs and checks MACs. Every cell is bounded in time and count;
figures are medians over --repeat runs. The CPU columns are what each side spent per call
(user + system, from /proc): the responder's replicas, this generator, the nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import nacl.public
import nacl.signing
import nats
import psutil

from actorbus import Actor
from actorbus.bus import EmbeddedServer, Keypair, address_to_public_key, sign_request, verify_reply
from actorbus.bus.sessions import SESSION_FN, SessionGrant, mac_request, open_grant
from actorbus.bus.wire import request_signing_bytes

HERE = Path(__file__).resolve()
MAX_CALLS_PER_CELL = 200_000


class BenchEcho(Actor):
    """(c): the same work as the raw responders: return what was sent."""

    name = "bench"

    async def echo(self, message: str) -> str:
        return message


# -- responders (a) and (b), run as `python bench/calls.py --serve raw|signed URL` ------------


async def serve(kind: str, url: str) -> None:
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
        signing = request_signing_bytes(msg.subject, h["Actor-Time"], h["Actor-Nonce"], msg.data)
        vk.verify(signing, bytes.fromhex(h["Actor-Signature"]))
        body = msg.data[10:-14]  # {"args":["x"],"kwargs":{}} -> "x"
        digest = hashlib.sha256(body).hexdigest()
        signature = key.sign(f"actorbus/1\n{h['Actor-Nonce']}\n200\n{digest}".encode()).hex()
        headers = {"Actor-Status": "200", "Actor-Key": key.address, "Actor-Signature": signature}
        await nc.publish(msg.reply, body, headers=headers)

    await nc.subscribe("actor.bench.echo", queue="actor.bench", cb=raw if kind == "raw" else signed)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


# -- the load generator ---------------------------------------------------------------------


async def open_session(nc: nats.NATS, key: Keypair) -> tuple[str, bytes]:
    """A session with the bench actor: its ticket and key."""
    exchange = nacl.public.PrivateKey.generate()
    subject = f"actor.bench.{SESSION_FN}"
    body = b'{"args":["%s",3600]}' % bytes(exchange.public_key).hex().encode()
    headers = sign_request(key, subject, body)
    msg = await nc.request(subject, body, timeout=10, headers=headers)
    assert verify_reply(msg.headers, msg.data, headers["Actor-Nonce"]).status == 200, msg.data
    grant = SessionGrant(**json.loads(msg.data))
    return grant.ticket, open_grant(grant, exchange)


async def load(
    url: str, concurrency: int, seconds: float, mode: str, key: Keypair | None = None
) -> tuple[float, list[float]]:
    """Calls/s and latencies of ``concurrency`` callers for ``seconds`` (bounded in count);
    ``mode`` is raw, signed or session."""
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    key = key or Keypair.generate()
    subject = "actor.bench.echo"
    body = b'{"args":["x"],"kwargs":{}}'
    ticket, session_key = await open_session(nc, key) if mode == "session" else ("", b"")
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    budget = MAX_CALLS_PER_CELL

    async def worker() -> None:
        nonlocal budget
        while time.perf_counter() < deadline and budget > 0:
            budget -= 1
            started = time.perf_counter()
            if mode == "raw":
                await nc.request(subject, body, timeout=10)
            else:
                if mode == "signed":
                    headers = sign_request(key, subject, body)
                else:
                    headers = mac_request(session_key, key.address, ticket, subject, body)
                msg = await nc.request(subject, body, timeout=10, headers=headers)
                meta = verify_reply(
                    msg.headers, msg.data, headers["Actor-Nonce"], session_key=session_key or None
                )
                assert meta.status == 200 and meta.by_session == (mode == "session"), msg.data
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await nc.close()
    return len(latencies) / elapsed, latencies


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


class Cell(NamedTuple):
    rate: float
    p50: float
    p99: float
    cpu: tuple[float, float, float]
    """Microseconds per call: responder, generator, nats-server."""


def measure(
    url: str, concurrency: int, seconds: float, mode: str, sides: list[list[psutil.Process]]
) -> tuple[float, list[float], tuple[float, float, float]]:
    before = [cpu_seconds(side) for side in sides]
    rate, latencies = asyncio.run(load(url, concurrency, seconds, mode))
    spent = [cpu_seconds(side) - b for side, b in zip(sides, before, strict=True)]
    calls = max(len(latencies), 1)
    return rate, latencies, (spent[0] / calls * 1e6, spent[1] / calls * 1e6, spent[2] / calls * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per cell (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--only", default="a,b,c,d,e", help="responders to run (letters)")
    parser.add_argument("--log-level", default="INFO", help="of the actor (c, d, e)")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(*args.serve))
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    home = tempfile.mkdtemp(prefix="actorbus-bench-")
    with EmbeddedServer(Path(home) / "nats") as server:
        env = dict(os.environ, ACTOR_NATS_URL=server.url, ACTOR_HOME=home)
        actor = [sys.executable, "-m", "actorbus.cli", "--log-level", args.log_level, "serve"]
        actor.append(f"{HERE}:BenchEcho")
        responder = [sys.executable, str(HERE), "--serve"]
        responders = {
            "a": ("raw", [[*responder, "raw", server.url]], "raw"),
            "b": ("signed", [[*responder, "signed", server.url]], "signed"),
            "c": ("actor", [actor], "signed"),
            "d": ("session", [actor], "session"),
            "e": ("2 replicas", [actor, actor], "session"),
        }
        chosen = [letter for letter in responders if letter in args.only.split(",")]
        results: dict[tuple[str, int], Cell] = {}
        print(
            f"{'responder':14} {'conc':>5} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
            f"   cpu us/call: {'responder':>9} {'generator':>9} {'nats':>6}"
        )
        me = psutil.Process()
        nats_server = [psutil.Process(server.pid)] if server.pid else []
        for letter in chosen:
            label, commands, mode = responders[letter]
            processes = [start(command, env) for command in commands]
            try:
                sides = [[psutil.Process(p.pid) for p in processes], [me], nats_server]
                asyncio.run(load(server.url, 4, 0.3, mode))  # warm up
                for concurrency in levels:
                    runs = [
                        measure(server.url, concurrency, args.seconds, mode, sides)
                        for _ in range(args.repeat)
                    ]
                    cell = Cell(
                        statistics.median(r for r, _, _ in runs),
                        statistics.median(percentile(lat, 0.50) for _, lat, _ in runs) * 1e3,
                        statistics.median(percentile(lat, 0.99) for _, lat, _ in runs) * 1e3,
                        tuple(statistics.median(cpu[i] for _, _, cpu in runs) for i in range(3)),  # type: ignore[arg-type]
                    )
                    results[letter, concurrency] = cell
                    print(
                        f"{letter} {label:12} {concurrency:5} {cell.rate:9.0f} {cell.p50:8.2f} "
                        f"{cell.p99:8.2f}   {'':13}{cell.cpu[0]:9.0f} {cell.cpu[1]:9.0f} "
                        f"{cell.cpu[2]:6.0f}",
                        flush=True,
                    )
            finally:
                for process in processes:
                    process.terminate()
                for process in processes:
                    process.wait(30)
        print()
        ratios = [("c", "b"), ("c", "a"), ("b", "a"), ("d", "a"), ("d", "c"), ("e", "d")]
        for concurrency in levels:
            shown = [
                f"{x}/{y} = {results[x, concurrency].rate / results[y, concurrency].rate:.2f}"
                for x, y in ratios
                if (x, concurrency) in results and (y, concurrency) in results
            ]
            print(f"concurrency {concurrency:3}: " + "   ".join(shown))


if __name__ == "__main__":
    main()

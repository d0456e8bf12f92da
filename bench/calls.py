"""Calls/s, p50 and p99 for three responders under one load generator, in one run.

    python bench/calls.py [--seconds 2] [--repeat 3] [--concurrency 1,16,64]

(a) raw: a nats-py responder that echoes the body (no crypto);
(b) signed ceiling: a minimal nats-py responder that verifies the request signature and
    signs the reply with PyNaCl, nothing else;
(c) actor: our actor through one replica (`actor serve`) with the full pipeline
    (verify, freshness and cross-replica replay, bind, admission, deadline, signed reply).

Each responder runs in its own process against an embedded nats-server; the generator runs
here. For (b) and (c) it signs every request and verifies every reply, as a client does.
Every cell is bounded in time and count; figures are medians over --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nacl.signing
import nats

from actorbus import Actor
from actorbus.bus import EmbeddedServer, Keypair, address_to_public_key, sign_request, verify_reply
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


async def load(
    url: str, concurrency: int, seconds: float, signed: bool, key: Keypair | None = None
) -> tuple[float, list[float]]:
    """Calls/s and latencies of ``concurrency`` callers for ``seconds`` (bounded in count)."""
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    key = key or Keypair.generate()
    subject = "actor.bench.echo"
    body = b'{"args":["x"],"kwargs":{}}'
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    budget = MAX_CALLS_PER_CELL

    async def worker() -> None:
        nonlocal budget
        while time.perf_counter() < deadline and budget > 0:
            budget -= 1
            started = time.perf_counter()
            if signed:
                headers = sign_request(key, subject, body)
                msg = await nc.request(subject, body, timeout=10, headers=headers)
                meta = verify_reply(msg.headers, msg.data, headers["Actor-Nonce"])
                assert meta.status == 200, msg.data
            else:
                await nc.request(subject, body, timeout=10)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per cell (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--log-level", default="INFO", help="of the actor (c)")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(*args.serve))
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    home = tempfile.mkdtemp(prefix="actorbus-bench-")
    with EmbeddedServer(Path(home) / "nats") as server:
        env = dict(os.environ, ACTOR_NATS_URL=server.url, ACTOR_HOME=home)
        responders = {
            "a raw": ([sys.executable, str(HERE), "--serve", "raw", server.url], False),
            "b signed": ([sys.executable, str(HERE), "--serve", "signed", server.url], True),
            "c actor": (
                [
                    sys.executable,
                    "-m",
                    "actorbus.cli",
                    "--log-level",
                    args.log_level,
                    "serve",
                    f"{HERE}:BenchEcho",
                ],
                True,
            ),
        }
        results: dict[tuple[str, int], tuple[float, float, float]] = {}
        print(f"{'responder':10} {'conc':>5} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for label, (command, signed) in responders.items():
            process = start(command, env)
            try:
                asyncio.run(load(server.url, 4, 0.3, signed))  # warm up
                for concurrency in levels:
                    runs = [
                        asyncio.run(load(server.url, concurrency, args.seconds, signed))
                        for _ in range(args.repeat)
                    ]
                    rate = statistics.median(r for r, _ in runs)
                    p50 = statistics.median(percentile(lat, 0.50) for _, lat in runs) * 1e3
                    p99 = statistics.median(percentile(lat, 0.99) for _, lat in runs) * 1e3
                    results[label, concurrency] = (rate, p50, p99)
                    print(
                        f"{label:10} {concurrency:5} {rate:9.0f} {p50:8.2f} {p99:8.2f}", flush=True
                    )
            finally:
                process.terminate()
                process.wait(30)
        print()
        for concurrency in levels:
            a, b, c = (results[k, concurrency][0] for k in ("a raw", "b signed", "c actor"))
            print(
                f"concurrency {concurrency:3}: c/b = {c / b:.2f}   c/a = {c / a:.2f}   "
                f"b/a = {b / a:.2f}"
            )


if __name__ == "__main__":
    main()

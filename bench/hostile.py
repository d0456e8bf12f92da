"""Valid calls/s and p99 with and without a junk flood, against one replica, in one run.

    python bench/hostile.py [--seconds 3] [--repeat 3] [--concurrency 16] [--junk badsig,bigkey]

For each repeat: valid signed calls alone at --concurrency for --seconds, then the same
while another process floods the replica from its own connection with junk requests that
carry reply subjects, in two ways:

- closed loop: 64 junk requests in flight at all times, each sent again as soon as its
  refusal arrives (a misbehaving client: as fast as the replica answers);
- open loop: junk published as fast as the flooder can, never waiting (an attacker).

Junk kinds: `badsig` (a well-formed request whose signature does not verify but is
canonical, so the replica pays a full verification: the most a stranger can make it
spend) and `bigkey` (a 5,000-character Actor-Key, refused by
its shape). Prints valid calls/s and p99, junk refused per second (counted by the replica
itself, from $SRV.STATS) and the ratio of valid throughput under each flood to alone
(target >= 0.5 on a 2-core machine, where the flooder shares the CPU). Every phase is
bounded in time and count; figures are medians over --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import nats
from calls import HERE as CALLS
from calls import load, load_options, percentile, start

from actorbus.bus import EmbeddedServer, Keypair

HERE = Path(__file__).resolve()
MAX_JUNK = 5_000_000


def junk_headers(kind: str, key: Keypair) -> dict[str, str]:
    signature = bytearray(os.urandom(64))
    # S < 2^252 < L: a canonical S, so libsodium must do the whole verification (a random
    # S is usually non-canonical and refused before any curve arithmetic).
    signature[63] &= 0x0F
    return {
        "Actor-Key": key.address if kind == "badsig" else "5" * 5_000,
        "Actor-Time": str(int(time.time() * 1000)),
        "Actor-Nonce": os.urandom(16).hex(),
        "Actor-Signature": signature.hex(),
    }


async def flood(url: str, kinds: list[str], seconds: float, mode: str) -> None:
    """Send junk requests until ``seconds`` pass: ``open`` publishes without waiting,
    ``closed`` keeps 64 requests in flight."""
    nc = await nats.connect(url, pending_size=16 * 1024 * 1024)
    key = Keypair.generate()
    body = b'{"args":["x"],"kwargs":{}}'
    # A few thousand distinct envelopes, reused: building each costs the flooder more
    # than refusing it costs the replica.
    envelopes = [junk_headers(kinds[i % len(kinds)], key) for i in range(4096)]
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    sent = 0

    async def closed_worker(offset: int) -> None:
        nonlocal sent
        i = offset
        while time.monotonic() < deadline and sent < MAX_JUNK:
            sent += 1
            i = (i + 64) % len(envelopes)
            with contextlib.suppress(nats.errors.Error):  # a refusal is what we expect
                await nc.request("actor.bench.echo", body, timeout=5, headers=envelopes[i])

    if mode == "closed":
        await asyncio.gather(*(closed_worker(i) for i in range(64)))
    else:
        while time.monotonic() < deadline and sent < MAX_JUNK:
            for headers in envelopes[:256]:
                await nc.publish(
                    "actor.bench.echo", body, reply=f"_INBOX.flood.{sent}", headers=headers
                )
                sent += 1
            envelopes = envelopes[256:] + envelopes[:256]
            await asyncio.sleep(0)
    await nc.close()


async def refused(url: str) -> int:
    """Requests the replica answered with a refusal (4xx/503), from its own stats."""
    nc = await nats.connect(url)
    try:
        reply = await nc.request("$SRV.STATS.bench", b"", timeout=5)
    finally:
        await nc.close()
    total = 0
    for endpoint in msgspec.json.decode(reply.data)["endpoints"]:
        statuses = (endpoint.get("data") or {}).get("status", {})
        total += sum(n for code, n in statuses.items() if code != "200")
    return total


def flooded(
    url: str, env: dict[str, str], args: argparse.Namespace, mode: str
) -> tuple[float, float, float]:
    """Valid calls/s, their p99 (ms) and junk refused/s while a flooder runs in ``mode``."""
    before = asyncio.run(refused(url))
    flooder = subprocess.Popen(
        [
            sys.executable,
            str(HERE),
            "--junk",
            args.junk,
            "--flood",
            url,
            str(args.seconds + 1.0),
            mode,
        ],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert flooder.stdout is not None
    flooder.stdout.readline()
    time.sleep(0.3)  # let the flood build up
    started = time.monotonic()
    try:
        rate, latencies = asyncio.run(load(url, args.concurrency, args.seconds, "signed"))
        p99 = percentile(latencies, 0.99) * 1e3
    except (nats.errors.Error, AssertionError):  # a valid call got no answer in 10 s
        rate, p99 = 0.0, float("inf")
    elapsed = time.monotonic() - started + 0.3
    flooder.wait(60)
    junk = (asyncio.run(refused(url)) - before) / elapsed
    # Let the replica work off what the flood left queued before the next phase.
    previous, current = -1, asyncio.run(refused(url))
    for _ in range(120):
        if current == previous:
            break
        time.sleep(0.5)
        previous, current = current, asyncio.run(refused(url))
    return rate, p99, junk


def main() -> None:
    parser = load_options(__doc__, concurrency=16)
    parser.add_argument("--junk", default="badsig,bigkey", help="kinds: badsig, bigkey")
    parser.add_argument(
        "--flood", nargs=3, metavar=("URL", "SECONDS", "MODE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    kinds = [k for k in args.junk.split(",") if k]
    if args.flood:
        asyncio.run(flood(args.flood[0], kinds, float(args.flood[1]), args.flood[2]))
        return
    home = tempfile.mkdtemp(prefix="actorbus-bench-")
    with EmbeddedServer(Path(home) / "nats") as server:
        env = dict(os.environ, ACTOR_NATS_URL=server.url, ACTOR_HOME=home)
        actor = start([sys.executable, "-m", "actorbus.cli", "serve", f"{CALLS}:BenchEcho"], env)
        try:
            asyncio.run(load(server.url, 4, 0.3, "signed"))  # warm up
            rows: dict[str, list[tuple[float, ...]]] = {"closed": [], "open": []}
            print(
                f"{'flood':7} {'run':>3} {'alone/s':>8} {'p99 ms':>7} {'flood/s':>8} "
                f"{'p99 ms':>8} {'junk/s':>8} {'ratio':>6}"
            )
            for run in range(args.repeat):
                for mode in rows:
                    alone, lat = asyncio.run(
                        load(server.url, args.concurrency, args.seconds, "signed")
                    )
                    p99_alone = percentile(lat, 0.99) * 1e3
                    under, p99_under, junk = flooded(server.url, env, args, mode)
                    row = (alone, p99_alone, under, p99_under, junk, under / alone)
                    rows[mode].append(row)
                    print(
                        f"{mode:7} {run:3} {row[0]:8.0f} {row[1]:7.2f} {row[2]:8.0f} "
                        f"{row[3]:8.2f} {row[4]:8.0f} {row[5]:6.2f}",
                        flush=True,
                    )
            print()
            for mode, results in rows.items():
                med = [statistics.median(r[i] for r in results) for i in range(6)]
                print(
                    f"{mode}-loop flood, medians: valid {med[0]:.0f} calls/s (p99 "
                    f"{med[1]:.2f} ms) alone, {med[2]:.0f} calls/s (p99 {med[3]:.2f} ms) "
                    f"under {med[4]:.0f} junk refused/s; ratio {med[5]:.2f} (target >= 0.5)"
                )
        finally:
            actor.terminate()
            actor.wait(30)


if __name__ == "__main__":
    main()

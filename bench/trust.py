"""What the bus as a trust boundary costs, and what it buys, in one run.

    python bench/trust.py [--seconds 3] [--repeat 3]

Two nodes run `actor up -d` of bench/calls.py's echo actor on the embedded default, side
by side, in temporary homes on free ports: one with NATS authorization (users, the policy
actor's auth callout; the default), one with `ACTOR_NATS_AUTH=0`; each repeat measures
one, then the other, so drift of a noisy machine falls on both. Signed state
(signed registry entries, policy records, logs, audit) is on in both: it is not a switch.
Against each, the home's own key (an admin) calls `bench/echo` through the Python client
at concurrency 16 and 64 for --seconds; the ratio on/off is the cost of authorization
(target >= 0.95).

Then, with authorization on, the same calls at concurrency 16 alone and while another
process floods `actor.bench.echo` open-loop (bench/hostile.py's flooder: badly signed
requests, published as fast as it can) from a connection without credentials, which the
`public` role does not let call `bench/echo`: the server refuses each publish, so the
replica never sees the flood. The ratio flooded/alone is what valid callers keep (target
>= 0.8). On a small machine the flooder's own CPU is most of its cost, so the same calls
run beside a process that only spins on one core for the same time: flooded/busy near 1
says the server's refusals cost the callers next to nothing beyond that. The same flood
against the open node (off) reaches the replica, which must check each signature: its
ratio is printed for comparison. Every phase is bounded in time and
count; a call gets 5 s and one that fails is counted as failed, not as done (the
failures are printed). Figures are medians over --repeat runs, ratios medians of per-run
ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from calls import HERE as CALLS
from calls import load_options

from actorbus import ActorError, Client, Settings

HERE = Path(__file__).resolve()
HOSTILE = HERE.parent / "hostile.py"
MAX_CALLS = 200_000
CALL_TIMEOUT = 5.0
_FLOODER = [sys.executable, str(HOSTILE), "--junk", "badsig", "--flood"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def node(auth: bool) -> Iterator[tuple[dict[str, str], Settings]]:
    """`actor up -d` of the echo actor in a home of its own; its env and settings."""
    home = tempfile.mkdtemp(prefix="actorbus-trust-")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ACTOR_", "NATS_"))},
        "ACTOR_HOME": home,
        "ACTOR_NATS_PORT": str(free_port()),
        "ACTOR_NATS_AUTH": "1" if auth else "0",
        "ACTOR_GATEWAY_PORT": "0",
        "ACTOR_LOG_LEVEL": "WARNING",
    }
    actor = [sys.executable, "-m", "actorbus.cli"]
    subprocess.run([*actor, "up", "-d", "--no-gateway", f"{CALLS}:BenchEcho"], env=env, check=True)
    info = json.loads((Path(home) / "node.json").read_text())
    try:
        yield env, Settings.from_env(env)
    finally:
        down = subprocess.run([*actor, "down"], env=env, timeout=60, check=False)
        if down.returncode != 0:  # ours, by PID, only if `down` could not stop them
            for pid in (info["pid"], info.get("embedded")):
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


async def calls(settings: Settings, concurrency: int, seconds: float) -> float:
    """Calls/s of ``concurrency`` callers of bench/echo, as the home's key (failed calls
    are printed, not counted)."""
    async with Client(settings=settings) as client:
        await warm(client)
        done = 0
        failed: dict[str, int] = {}
        deadline = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal done
            while time.monotonic() < deadline and done < MAX_CALLS:
                try:
                    await client.request("bench", "echo", ["x"], timeout=CALL_TIMEOUT)
                    done += 1
                except ActorError as exc:
                    failed[exc.message] = failed.get(exc.message, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        rate = done / (time.monotonic() - started)
        for message, count in failed.items():
            print(f"  c{concurrency}: {count} calls failed: {message}", flush=True)
        return rate


async def warm(client: Client) -> None:
    """One call through, waiting up to 30 s: on the open node a flood may have had the
    server drop the replica's connection (a slow consumer), and it is reconnecting."""
    deadline = time.monotonic() + 30.0
    while True:
        try:
            await client.request("bench", "echo", ["warm"], timeout=CALL_TIMEOUT)
            return
        except ActorError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def beside(command: list[str], env: dict[str, str], settings: Settings, seconds: float) -> float:
    """Calls/s at concurrency 16 while ``command`` runs (for ``seconds`` + 1)."""
    other = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert other.stdout is not None
    other.stdout.readline()
    time.sleep(0.3)  # let it build up
    try:
        return asyncio.run(calls(settings, 16, seconds))
    finally:
        other.wait(60)
        time.sleep(1.0)  # what a flood left queued is worked off


def flooded(env: dict[str, str], settings: Settings, seconds: float) -> float:
    """Calls/s at concurrency 16 while a stranger floods bench/echo open-loop."""
    return beside([*_FLOODER, settings.url, str(seconds + 1.0), "open"], env, settings, seconds)


def busy(env: dict[str, str], settings: Settings, seconds: float) -> float:
    """Calls/s at concurrency 16 while a process spins on one core."""
    spin = (
        f"import time\nprint(flush=True)\nt = time.time() + {seconds + 1.0}\n"
        "while time.time() < t: pass"
    )
    return beside([sys.executable, "-c", spin], env, settings, seconds)


def main() -> None:
    args = load_options(__doc__).parse_args()
    rows: dict[str, list[float]] = {}
    with node(True) as on, node(False) as off:
        for _ in range(args.repeat):
            for label, (env, settings) in (("on", on), ("off", off)):
                for concurrency in (16, 64):
                    rate = asyncio.run(calls(settings, concurrency, args.seconds))
                    rows.setdefault(f"{label} c{concurrency}", []).append(rate)
                alone = asyncio.run(calls(settings, 16, args.seconds))
                spun = busy(env, settings, args.seconds)
                under = flooded(env, settings, args.seconds)
                rows.setdefault(f"{label} alone", []).append(alone)
                rows.setdefault(f"{label} busy", []).append(spun)
                rows.setdefault(f"{label} flood", []).append(under)
                print(
                    f"auth {label}: c16 {rows[f'{label} c16'][-1]:.0f}/s, "
                    f"c64 {rows[f'{label} c64'][-1]:.0f}/s, alone {alone:.0f}/s, "
                    f"beside a busy core {spun:.0f}/s, under a stranger's flood {under:.0f}/s",
                    flush=True,
                )
    median = {k: statistics.median(v) for k, v in rows.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rows[a], rows[b], strict=True))

    print()
    for concurrency in (16, 64):
        on_rate, off_rate = median[f"on c{concurrency}"], median[f"off c{concurrency}"]
        paired = ratio(f"on c{concurrency}", f"off c{concurrency}")
        print(
            f"concurrency {concurrency}: {on_rate:.0f} calls/s with authorization, "
            f"{off_rate:.0f} without; on/off {paired:.2f} (target >= 0.95)"
        )
    print(
        f"a stranger's open-loop flood: valid callers keep {ratio('on flood', 'on alone'):.2f} "
        f"of their rate with authorization (the server refuses it; target >= 0.8), "
        f"{ratio('off flood', 'off alone'):.2f} without (the replica checks each)"
    )
    print(
        f"beside a process spinning on one core they keep {ratio('on busy', 'on alone'):.2f}; "
        f"flooded/busy {ratio('on flood', 'on busy'):.2f} (what the refusals cost beyond "
        f"the flooder's own CPU)"
    )


if __name__ == "__main__":
    main()

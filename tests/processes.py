"""Running `actor serve` in a subprocess for tests (imports nothing from actorbus, so the
protocol-only client test can use it too)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def actor_serve(
    name: str, env: dict[str, str], target: str = "examples/echo.py:Echo"
) -> Iterator[subprocess.Popen[bytes]]:
    """`actor serve TARGET --name NAME`, yielded once it printed its ready line; stopped
    with SIGTERM (and killed if it does not drain in 10 s) on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "actorbus.cli", "serve", target, "--name", name],
        cwd=ROOT,
        env=dict(os.environ, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline().startswith(b"actorbus-ready ")
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()

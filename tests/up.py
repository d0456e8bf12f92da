"""`actor up -d` as a user runs it, in a process of its own, for tests that attack a whole
node (test_trust, test_gateway_guard)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from cluster import free_port
from processes import ROOT

from actorbus import Settings

__all__ = ["Bus", "embedded"]


class Bus:
    """A bus under test: its URL, and the operator's `actor` command and settings."""

    def __init__(self, home: Path, **env: str) -> None:
        self.env = {
            **os.environ,
            "ACTOR_HOME": str(home),
            "ACTOR_DRAIN_TIMEOUT": "5",
            **env,
        }
        self.settings = Settings.from_env(self.env)
        self.url = self.settings.url
        self.leaf_port = 0
        """Where nodes join as leaf nodes (the deployed cluster only)."""

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`actor ARGS` in a process of its own."""
        return subprocess.run(
            [sys.executable, "-m", "actorbus.cli", *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=90,
        )

    def actor(self, *args: str, **env: str) -> str:
        """`actor ARGS`'s output; it must succeed."""
        done = self.run(*args, **env)
        assert done.returncode == 0, done.stderr
        return done.stdout


@contextmanager
def embedded(root: Path, **env: str) -> Iterator[Bus]:
    """`actor up -d` of the echo actor on the embedded default, on ports of its own (the
    gateway's too, unless ``env`` names one), with ``env``."""
    ports = {"ACTOR_NATS_PORT": str(free_port()), "ACTOR_GATEWAY_PORT": "0"}
    bus = Bus(root / "home", **{**ports, **env})
    bus.actor("up", "-d", "examples/echo.py:Echo")
    info = json.loads((bus.settings.home / "node.json").read_text())
    try:
        yield bus
    finally:
        subprocess.run(
            [sys.executable, "-m", "actorbus.cli", "down"], env=bus.env, timeout=60, check=False
        )
        for pid in (info["pid"], info.get("embedded") or 0):
            if pid and psutil.pid_exists(pid):
                psutil.Process(pid).kill()

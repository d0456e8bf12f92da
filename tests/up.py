"""`actor up` as a user runs it, in a process of its own: in the foreground as a terminal
runs it (:class:`Up`), or with -d (:class:`Bus`, :func:`embedded`) for tests that attack
a whole node (test_trust, test_gateway_guard) or follow README (test_readme)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from cluster import free_port
from processes import ROOT

from actorbus import Settings

__all__ = ["Bus", "Up", "embedded", "web_node"]


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
        self.route_port = 0
        """A node's route port (the deployed cluster only)."""

    def run(
        self, *args: str, input: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """`actor ARGS` in a process of its own (``input`` on its stdin)."""
        return subprocess.run(
            [sys.executable, "-m", "actorbus.cli", *args],
            cwd=ROOT,
            env={**self.env, **env},
            input=input,
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


@contextmanager
def web_node(root: Path, **limits: str) -> Iterator[tuple[Bus, int]]:
    """:func:`embedded` with its gateway on a port of its own (and ``limits``), which web
    callers without a token may reach the echo actor through; and that port."""
    port = free_port()
    with embedded(root, ACTOR_GATEWAY_PORT=str(port), **limits) as bus:
        bus.actor("policy", "role", "set", "public", "--allow", "echo/*")
        yield bus, port


class Up:
    """`actor up` in a subprocess in its own process group (as a terminal runs it), its
    stderr collected by a reader thread."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "actorbus.cli", "up", *args],
            cwd=ROOT,
            env=dict(os.environ, **env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.lines) < count:
            assert self.process.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.05)

    def stop(self) -> int:
        """Ctrl-C as a terminal sends it: SIGINT to the whole process group."""
        os.killpg(self.process.pid, signal.SIGINT)
        code = self.process.wait(30)
        self._reader.join(5)
        assert self.process.stderr is not None
        self.process.stderr.close()
        return code

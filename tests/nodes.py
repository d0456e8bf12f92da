"""Nodes for tests: each its own $ACTOR_HOME, driven through the `actor` command in its
own processes (``nodes`` fixture in conftest)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import psutil

from actorbus import Keystore, Settings

ROOT = Path(__file__).resolve().parent.parent


class Node:
    """One node: its own ACTOR_HOME on the test NATS, driven through the `actor` command."""

    def __init__(self, home: Path, nats_url: str, policy: str, jobs: str, **env: str) -> None:
        self.home = home
        self.env = {
            "ACTOR_HOME": str(home),
            "ACTOR_NATS_URL": nats_url,
            "ACTOR_POLICY": policy,
            "ACTOR_JOBS": jobs,
            "ACTOR_DRAIN_TIMEOUT": "5",
            "ACTOR_REGISTRY_TTL": "6",  # as the shared bucket (conftest)
            "ACTOR_GATEWAY_PORT": "0",  # nodes of one machine would share 8080
            **env,
        }
        self.pids: set[int] = set()

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    @property
    def address(self) -> str:
        """This home's own key (its supervisor's, the signer of its hosting tickets)."""
        return Keystore(self.home).load("default", create=True).address

    async def lets_host(self, other: Node) -> None:
        """As this node's key (an admin), let ``other``'s key host actors on this NATS:
        the policy binds its replicas' names to their keys, so callers count them."""
        await self.actor("policy", "host", "add", other.address)

    async def actor(self, *args: str, check: bool = True, **env: str) -> tuple[int, str, str]:
        """`actor ARGS` in its own process; with ``check``, a non-zero exit fails the test."""
        done = await anyio.run_process(
            [sys.executable, "-m", "actorbus.cli", *args],
            cwd=ROOT,
            env={**os.environ, **self.env, **env},
            check=False,
        )
        out, err = done.stdout.decode(), done.stderr.decode()
        assert not check or done.returncode == 0, f"actor {' '.join(args)}: {err}{out}"
        return done.returncode, out, err

    async def ps(self, **env: str) -> list[dict[str, Any]]:
        _, out, _ = await self.actor("ps", "--json", **env)
        rows: list[dict[str, Any]] = json.loads(out)
        self.pids |= {r["pid"] for r in rows if r["pid"]}
        return rows

    def node_pid(self) -> int | None:
        try:
            info = json.loads((self.home / "node.json").read_text())
        except FileNotFoundError:
            return None
        pid: int = info["pid"]
        self.pids.add(pid)
        if info.get("embedded"):
            self.pids.add(info["embedded"])  # its nats-server, if it had to be ended
        return pid

    async def stop(self) -> None:
        """`actor down`, then end (by pid) whatever we saw that is still running."""
        if self.node_pid() is not None:
            await self.actor("down", check=False)
        for pid in self.pids:
            try:
                process = psutil.Process(pid)
                if any("actorbus" in part or "nats-server" in part for part in process.cmdline()):
                    process.kill()
            except psutil.Error:
                pass


async def up(node: Node, *args: str) -> str:
    """`actor up -d ARGS`; returns its stderr."""
    _, _, err = await node.actor("up", "-d", *args)
    node.node_pid()
    return err

"""A node's start on a machine: which NATS it uses and on what port, what it remembers
across its own death, and what it leaves behind (issue 21). Real `actor` processes on the
embedded default, ports of their own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import nats
import psutil
import pytest
from cluster import free_port
from processes import ROOT
from up import Bus, embedded

from actorbus import Client
from actorbus.bus.server import EmbeddedServer


def test_a_taken_nats_port_is_said_and_another_port_serves(tmp_path: Path) -> None:
    """Before: something that is not NATS on 4222 made `actor up` fail with nats-server's
    log lines, and the embedded server could not run anywhere else but by a variable. Now
    the error names the way out, and `--nats-port` (before or after the command) is it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy, port = taken.getsockname()[1], free_port()
        bus = Bus(tmp_path / "home", ACTOR_NATS_PORT=str(busy), ACTOR_GATEWAY_PORT="0")
        done = bus.run("up", "-d", "examples/echo.py:Echo")
        assert done.returncode != 0
        last = done.stderr.strip().splitlines()[-1]
        assert f"port {busy} on 127.0.0.1 is taken by a process that is not a NATS server" in last
        assert "--nats-port PORT" in last and "Traceback" not in done.stderr
        try:
            done = bus.run("up", "-d", "examples/echo.py:Echo", "--nats-port", str(port))
            assert done.returncode == 0, done.stderr
            assert "NATS: an embedded nats-server (pid" in done.stderr
            assert f"at nats://127.0.0.1:{port}" in done.stderr
            assert "echo" in bus.actor("ls", "--nats-port", str(port))
            assert "echo" in bus.actor(f"--nats-port={port}", "ls")
            # Issue 21: `logs` of a name nobody runs printed nothing and exited 0.
            done = bus.run("logs", "ecoh", "--nats-port", str(port))
            assert (
                done.returncode == 6 and "no actor named 'ecoh' (did you mean echo?)" in done.stderr
            )
        finally:
            bus.run("down", "--nats-port", str(port))


def test_a_node_killed_9_leaves_nothing_and_comes_back(tmp_path: Path) -> None:
    """Before: a supervisor killed -9 left its embedded nats-server running, and lost what
    it ran: `actor up` needed every target again. Now its NATS and replicas end with it,
    and `actor up` with no target brings back what it ran, as scaled (after `down` too)."""
    bus = Bus(tmp_path / "home", ACTOR_NATS_PORT=str(free_port()), ACTOR_GATEWAY_PORT="0")
    bus.actor("up", "-d", "examples/echo.py:Echo", "--replicas", "2")
    try:
        bus.actor("scale", "echo", "3")
        node = json.loads((bus.settings.home / "node.json").read_text())
        pids = [r["pid"] for r in json.loads(bus.actor("ps", "--json"))]
        os.kill(node["pid"], signal.SIGKILL)
        left = psutil.wait_procs([psutil.Process(p) for p in [node["embedded"], *pids]], 20)[1]
        assert left == [], f"still running after the supervisor's death: {left}"

        for _ in range(2):  # after a crash, then after `actor down`
            done = bus.run("up", "-d")
            assert done.returncode == 0, done.stderr
            assert "bringing back what node" in done.stderr and "echo x3" in done.stderr
            want = [*["echo"] * 3, "gateway", "jobs", "policy"]
            deadline = time.monotonic() + 20  # `up -d` returned once echo answered
            while time.monotonic() < deadline:
                rows = [r for r in json.loads(bus.actor("ps", "--json")) if r["state"] == "running"]
                if sorted(r["actor"] for r in rows) == want:
                    break
                time.sleep(0.2)
            assert sorted(r["actor"] for r in rows) == want
            # ... and its previous run's registry entries are gone, not left to time out.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                entries = json.loads(bus.actor("ls", "--json"))
                listed = [e["pid"] for e in entries if not e["name"].startswith("node.")]
                if sorted(listed) == sorted(r["pid"] for r in rows):
                    break
                time.sleep(0.2)
            assert sorted(listed) == sorted(r["pid"] for r in rows)
            assert bus.run("down").returncode == 0
    finally:
        bus.run("down")


def test_startup_prints_a_unit_systemd_accepts(tmp_path: Path) -> None:
    bus = Bus(tmp_path / "home", ACTOR_NATS_PORT="4300")
    unit = bus.actor("startup")
    assert "ExecStart=" in unit and " -m actorbus.cli up" in unit
    assert f'Environment="ACTOR_HOME={bus.settings.home}"' in unit
    assert 'Environment="ACTOR_NATS_PORT=4300"' in unit
    path = tmp_path / "actorbus.service"
    path.write_text(unit)
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("no systemd-analyze to check the unit with")
    done = subprocess.run([verify, "verify", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_specs_secrets_stay_out_of_command_lines_and_the_audit_trail(tmp_path: Path) -> None:
    """The second attacker's finding: an `env` value of actors.toml was in the detached
    supervisor's command line (any local user reads it) and in the audit trail (never
    purged). And `actor kill policy` left a node that no new replica could join."""
    secret = "sk-SUPERSECRET-12345"
    manifest = tmp_path / "actors.toml"
    manifest.write_text(
        f'[[actor]]\ntarget = "{ROOT}/examples/echo.py:Echo"\nenv = {{ API_KEY = "{secret}" }}\n'
    )
    bus = Bus(tmp_path / "home", ACTOR_NATS_PORT=str(free_port()), ACTOR_GATEWAY_PORT="0")
    bus.actor("up", "-d", "-f", str(manifest))
    try:
        node = json.loads((bus.settings.home / "node.json").read_text())
        assert secret not in " ".join(psutil.Process(node["pid"]).cmdline())
        log = bus.actor("policy", "log", "--json")
        assert "API_KEY" in log and secret not in log
        done = bus.run("kill", "policy")
        assert done.returncode != 0 and "it stops with its node" in done.stderr
    finally:
        bus.run("down")


async def test_a_store_made_before_the_accounts_keeps_its_streams(tmp_path: Path) -> None:
    """Issue 30 put JetStream in an account of its own. A node's store made before keeps
    its streams under nats-server's global account, which has no JetStream now: the node
    would start with the policy, the audit and the jobs gone, and say nothing. `actor up`
    moves them to JetStream's account first."""
    home = tmp_path / "home"
    with EmbeddedServer(home / "nats") as before:  # as `actor up` ran it: one account
        nc = await nats.connect(before.url)
        kv = await nc.jetstream().create_key_value(bucket="keepsake")
        await kv.put("kept", b"since before")
        await nc.close()
    with embedded(tmp_path) as bus:
        async with Client(settings=bus.settings) as operator:
            kv = await operator.nc.jetstream().key_value("keepsake")
            assert (await kv.get("kept")).value == b"since before"
        assert (home / "nats" / "jetstream" / "jetstream" / "STATE").is_dir()

"""A node's start on a machine: which NATS it uses and on what port, what it remembers
across its own death, and what it leaves behind (issue 21). Real `actor` processes on the
embedded default, ports of their own."""

from __future__ import annotations

import socket
from pathlib import Path

from cluster import free_port
from up import Bus


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
        finally:
            bus.run("down", "--nats-port", str(port))

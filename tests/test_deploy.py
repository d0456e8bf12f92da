"""The deploy files, checked as far as this machine can without a container engine or a
Kubernetes cluster: the NATS config parses (`nats-server -t`), and every actorbus container
in compose.yaml and deploy/kubernetes runs an `actor` command that exists, with targets
that load and ACTOR_* settings that read."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from actorbus import Settings
from actorbus.bus import find_nats_server
from actorbus.cli import main
from actorbus.host.loading import load_actor_class

ROOT = Path(__file__).resolve().parent.parent


def check_actor_container(args: list[str], env: dict[str, Any]) -> None:
    assert main.get_command(click.Context(main), args[0]) is not None, args
    if args[0] == "serve":
        cwd = os.getcwd()
        os.chdir(ROOT)  # targets are relative to the image's WORKDIR, the repository here
        try:
            load_actor_class(args[1])
        finally:
            os.chdir(cwd)
    settings = Settings.from_env({k: str(v) for k, v in env.items()})
    assert settings.nats_url


def test_the_nats_config_parses(tmp_path: Path) -> None:
    """deploy/nats.conf with the auth.conf `actor nats config` prints beside it, as
    compose.yaml mounts them."""
    result = CliRunner().invoke(main, ["nats", "config"], env={"ACTOR_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    (tmp_path / "auth.conf").write_text(result.stdout)
    config = tmp_path / "nats.conf"
    config.write_text((ROOT / "deploy/nats.conf").read_text())
    cluster = {
        "NATS_CLUSTER_PASSWORD": "0123abcd",
        "NATS_ROUTES": "[nats-route://actorbus-route:0123abcd@nats-2:6222]",
    }

    def check(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [find_nats_server(), "-t", "-c", str(config)],
            env=dict(os.environ, NODE="nats-1", **env),
            capture_output=True,
            text=True,
            timeout=30,
        )

    done = check(**cluster)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "leafnodes" in config.read_text() and "auth_callout" in result.stdout
    assert '"max_subscriptions"' in result.stdout and '"max_connections"' in result.stdout
    # No route password in the environment: no server, rather than open routes.
    refused = check(NATS_ROUTES=cluster["NATS_ROUTES"])
    assert refused.returncode != 0 and "NATS_CLUSTER_PASSWORD" in refused.stderr


def test_the_nats_config_keeps_routes_and_monitoring_closed() -> None:
    """Issue 30: deploy/nats.conf took routes without credentials and answered /connz
    (every connection's key and inbox) on 0.0.0.0:8222. Tried with real servers in
    test_trust and test_cluster; here, what the file says."""
    text = (ROOT / "deploy/nats.conf").read_text()
    settings = [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert [line for line in settings if line.startswith(("http", "monitor"))] == [
        "http: 127.0.0.1:8222"
    ]
    cluster = text[text.index("\ncluster {") :]
    assert "password: $NATS_CLUSTER_PASSWORD" in cluster[: cluster.index("\n}")]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name in ("nats-1", "nats-2", "nats-3"):
        env = compose["services"][name]["environment"]
        assert "${NATS_CLUSTER_PASSWORD}@" in env["NATS_ROUTES"], env
        assert env["NATS_CLUSTER_PASSWORD"].startswith("${NATS_CLUSTER_PASSWORD:?")
        assert not any("8222" in str(port) for port in compose["services"][name].get("ports", []))


def test_compose_runs_actor_commands_that_exist() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    actors = {name: s for name, s in services.items() if s.get("build") == "."}
    assert {"policy", "jobs", "gateway", "echo"} <= actors.keys()
    assert actors["policy"]["deploy"]["replicas"] >= 2
    for service in actors.values():
        check_actor_container(service["command"], service["environment"])
    for name in ("nats-1", "nats-2", "nats-3"):
        mounts = services[name]["volumes"]
        assert any(m.startswith("./deploy/nats.conf:") for m in mounts), mounts


@pytest.mark.parametrize("path", ["deploy/kubernetes/actorbus.yaml"])
def test_kubernetes_deployments_run_actor_commands_that_exist(path: str) -> None:
    documents = list(yaml.safe_load_all((ROOT / path).read_text()))
    config = next(d["data"] for d in documents if d["kind"] == "ConfigMap")
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    assert deployments["policy"]["spec"]["replicas"] >= 2
    for deployment in deployments.values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = dict(config) | {e["name"]: e["value"] for e in container.get("env", [])}
        check_actor_container(container["args"], env)
    values_text = (ROOT / "deploy/kubernetes/nats-values.yaml").read_text()
    values = yaml.safe_load(values_text)
    assert values["config"]["merge"]["jetstream"]["domain"] == "hub"
    # Routes take a password (the chart sets it only with both user and password).
    assert values["config"]["cluster"]["routeURLs"]["user"]
    assert "--set-string config.cluster.routeURLs.password=" in values_text
    # Monitoring (the chart's probes use it) is reachable by no pod; routes by NATS's.
    (policy,) = yaml.safe_load_all(
        (ROOT / "deploy/kubernetes/nats-network-policy.yaml").read_text()
    )
    rules = policy["spec"]["ingress"]
    ports = {p["port"]: rule.get("from") for rule in rules for p in rule["ports"]}
    assert set(ports) == {4222, 6222, 7422}
    assert ports[6222] == [{"podSelector": policy["spec"]["podSelector"]}]

"""The `actor` command as a user types it: CliRunner for short commands, real processes for
`actor serve` and `actor up`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from click.testing import CliRunner
from cluster import free_port
from processes import actor_serve
from support import env_of

from actorbus import Settings
from actorbus.cli import EXIT_CODES, main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return env_of(settings)


def actor(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def echo(env: dict[str, str], name: str) -> Iterator[str]:
    with actor_serve(name, env) as process:
        yield name
        process.terminate()
        assert process.wait(10) == 0  # SIGTERM drains and exits cleanly


def test_keys(env: dict[str, str], home: Path) -> None:
    code, out, _ = actor(env, "key", "new", "alice")
    assert code == 0
    assert out.strip().startswith("5")
    address = out.strip()
    code, _, err = actor(env, "key", "new", "alice")
    assert code == EXIT_CODES[400]
    assert "already exists" in err
    code, out, _ = actor(env, "key", "show", "alice")
    shown = json.loads(out)
    assert shown["address"] == address
    assert set(shown) == {"name", "address", "public_key"}
    seed = (home / "keys" / "alice.key").read_text().strip()
    assert seed not in out
    code, out, _ = actor(env, "key", "ls", "--json")
    assert {"name": "alice", "address": address} in json.loads(out)
    # Issue 21: a mistyped key name is an error, never a new identity.
    for args, extra in (
        (("key", "sign", "echo/forward", "{}", "--key", "zzz"), {}),
        (("key", "sign", "echo/forward", "{}"), {"ACTOR_KEY": "bobb"}),
    ):
        code, _, err = actor({**env, **extra}, *args)
        assert code == EXIT_CODES[400], err
        assert "no key named" in err and "actor key new" in err and "alice" in err
    assert sorted(p.name for p in (home / "keys").iterdir()) == ["alice.key"]


def test_typos_are_one_line_usage_errors(env: dict[str, str], tmp_path: Path) -> None:
    """Issue 21: a mistyped NATS URL or a home that is a file were tracebacks; no NATS
    said nothing of what to do."""
    code, _, err = actor(env, "--nats", "nats://127.0.0.1:notaport", "ls")
    assert code == 2 and "invalid NATS URL 'nats://127.0.0.1:notaport'" in err
    file = tmp_path / "a-file"
    file.write_text("")
    code, _, err = actor(env, "--home", str(file), "ls")
    assert code == 2 and "is not a directory" in err
    nowhere = f"nats://127.0.0.1:{free_port()}"
    code, _, err = actor(env, "--nats", nowhere, "ls")
    assert code == EXIT_CODES[503]
    assert f"cannot reach NATS at {nowhere}" in err and "actor up" in err
    assert "Traceback" not in err


def test_call_prints_json_and_maps_errors_to_exit_codes(env: dict[str, str], echo: str) -> None:
    code, out, _ = actor(env, "call", f"{echo}/forward", "hi")
    assert (code, json.loads(out)) == (0, "hi")
    code, out, _ = actor(env, "call", f"{echo}/add", "1", "2.5")
    assert (code, json.loads(out)) == (0, 3.5)
    code, out, _ = actor(env, "call", f"{echo}/forward", "-k", "message=keyword")
    assert json.loads(out) == "keyword"
    # Issue 21: text for a str parameter stays text (it was a 400: expected str, got int).
    code, out, err = actor(env, "call", f"{echo}/forward", "123")
    assert (code, json.loads(out)) == (0, "123"), err
    code, out, _ = actor(env, "call", f"{echo}/forward", "-k", "message=true")
    assert json.loads(out) == "true"
    code, _, err = actor(env, "call", f"{echo}/nope")
    assert code == EXIT_CODES[404]
    assert "404" in err
    assert "error id" in err
    code, _, err = actor(env, "call", f"{echo}/add", "1", "x")
    assert code == EXIT_CODES[400]
    assert "Expected `float`" in err
    code, _, err = actor(env, "call", f"{echo}/sleep", "5", "--timeout", "0.5")
    assert code == EXIT_CODES[408]
    # Issue 21: a name the registry has never heard of is a 404, not an outage's 503.
    code, _, err = actor(env, "call", f"{echo[:-1]}/forward")
    assert code == EXIT_CODES[404]
    assert f"no actor named '{echo[:-1]}' (did you mean {echo}?)" in err
    code, _, err = actor(env, "call", "no-slash")
    assert code == 2
    assert "NAME/FN" in err


def test_ls_and_info(env: dict[str, str], echo: str) -> None:
    code, out, _ = actor(env, "ls", "--json")
    entries = [e for e in json.loads(out) if e["name"] == echo]
    assert code == 0
    assert len(entries) == 1
    assert "forward" in entries[0]["fns"]
    code, out, _ = actor(env, "info", echo)
    assert code == 0
    assert entries[0]["address"] in out
    assert "forward(message: str = 'hello') -> str  Return ``message`` unchanged." in out
    assert "add(a: float, b: float) -> float  The sum of two numbers." in out
    code, out, _ = actor(env, "info", echo, "--json")
    assert (
        json.loads(out)["functions"]["sleep"]["signature"]
        == "sleep(seconds: float (ge=0)) -> float"
    )
    code, out, _ = actor(env, "ls")
    assert echo in out and entries[0]["node"] in out
    code, _, _err = actor(env, "info", "nobody-home")
    assert code == EXIT_CODES[404]


def test_bad_settings_are_usage_errors(env: dict[str, str]) -> None:
    code, _, err = actor(dict(env, ACTOR_MAX_SKEW="soon"), "key", "ls")
    assert code == 2
    assert "max_skew" in err


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


def test_up_runs_replicas_and_restarts_a_crashed_one(env: dict[str, str], name: str) -> None:
    up = Up(env, "examples/echo.py:Echo", "--name", name, "--replicas", "2")
    try:
        up.wait_for(f"{name}[1] ready: pid")
        assert any("starting the policy actor" in line for line in up.lines)
        code, out, _ = actor(env, "ls", "--json")
        replicas = [e for e in json.loads(out) if e["name"] == name]
        assert len(replicas) == 2
        os.kill(replicas[0]["pid"], signal.SIGKILL)
        up.wait_for("restarted as pid")
        code, out, _ = actor(env, "call", f"{name}/forward", "still up")
        assert (code, json.loads(out)) == (0, "still up")
    finally:
        code = up.stop()
    assert code == 0
    assert "stopped" in up.lines[-1]


def test_up_refuses_a_bad_target(env: dict[str, str]) -> None:
    code, _, err = actor(env, "up", "examples/echo.py:Nope")
    assert code == EXIT_CODES[400]
    assert "not an actorbus Actor" in err
    code, _, err = actor(env, "up", "missing.py:Echo")
    assert code == EXIT_CODES[400]
    assert "no such file" in err


def readme_python(section: str, env: dict[str, str], gateway: str = "") -> str:
    """Run the first Python block of README's ``## <section>`` as written (its gateway
    URL made ``gateway``, if given: the test's own port); its output."""
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(rf"## {section}\n.*?```python\n(.*?)```", readme, re.S)
    assert snippet, section
    code = snippet.group(1)
    if gateway:
        code = code.replace("http://127.0.0.1:8080", gateway)
    ran = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.strip()


def test_readme_quickstart_on_the_embedded_default(tmp_path: Path) -> None:
    """README's first command with no NATS configured: `actor up` brings its own server
    (on a port of this test's: 4222 and 8080 may be the user's)."""
    port, web = free_port(), free_port()
    env = {
        "ACTOR_HOME": str(tmp_path / "home"),
        "ACTOR_NATS_PORT": str(port),
        "ACTOR_GATEWAY_PORT": str(web),
    }
    up = Up(dict(os.environ, **env), "examples/echo.py:Echo")
    try:
        up.wait_for("echo[0] ready: pid")
        where = next(line for line in up.lines if "embedded nats-server" in line)
        assert f"nats://127.0.0.1:{port}" in where
        server = int(where.split("(pid ")[1].split(")")[0])
        echo = int(next(line for line in up.lines if "echo[0] ready" in line).split("pid ")[1])
        result = CliRunner().invoke(main, ["call", "echo/forward", "hi"], env=env)
        assert (result.exit_code, json.loads(result.stdout)) == (0, "hi")
        # The README's Python quickstart, as written.
        assert readme_python("Quickstart", dict(os.environ, **env)) == "hi 3.0"
        # The gateway on 8080: discovery only for the public until the README's role change.
        up.wait_for("gateway[0] ready: pid")
        gateway = f"http://127.0.0.1:{web}"
        assert httpx.get(f"{gateway}/echo/add?a=1&b=2.5", timeout=10).status_code == 403
        result = CliRunner().invoke(
            main,
            ["policy", "role", "set", "public", "--allow", "echo/*"],
            env=env,
        )
        assert result.exit_code == 0, result.output
        for _ in range(50):  # the policy change reaches the gateway's replica through a watch
            answer = httpx.get(f"{gateway}/echo/add?a=1&b=2.5", timeout=10)
            if answer.status_code == 200:
                break
            time.sleep(0.1)
        assert answer.json() == 3.5
        assert readme_python("The HTTP gateway", dict(os.environ, **env), gateway) == "signed by me"
        up.wait_for("jobs[0] ready: pid")
        assert readme_python("Jobs", dict(os.environ, **env)) == "1001 2001.0 finished"
    finally:
        assert up.stop() == 0
    # Ctrl-C reached only the supervisor: the replicas drained against a live server
    # (which stopped last), and a normal stop prints no traceback and no reconnects.
    output = "".join(up.lines)
    assert "Traceback" not in output and "ConnectionRefused" not in output, output
    assert not psutil.pid_exists(server) and not psutil.pid_exists(echo)

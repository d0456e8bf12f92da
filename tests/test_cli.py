"""The `actor` command as a user types it: CliRunner for short commands, real processes for
`actor serve` and `actor up`."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cluster import free_port
from processes import actor_serve
from support import env_of
from up import Up

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
    assert set(shown) == {"name", "address", "scheme", "public_key"}
    seed = (home / "keys" / "alice.key").read_text().strip()
    assert seed not in out
    code, out, _ = actor(env, "key", "ls", "--json")
    assert {"name": "alice", "address": address, "scheme": "ed25519"} in json.loads(out)
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
    assert not {"figures", "on_start", "on_run"} & set(entries[0]["fns"])  # the host's own
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
    """Usage errors exit 2, as click's own do (issue 21: they were 3, a 400)."""
    code, _, err = actor(env, "up", "examples/echo.py:Nope")
    assert code == 2
    assert "not an actorbus Actor" in err
    code, _, err = actor(env, "up", "missing.py:Echo")
    assert code == 2
    assert "no such file" in err
    code, _, err = actor(env, "kill", "bad name!")
    assert code == 2 and "invalid actor name 'bad name!'" in err

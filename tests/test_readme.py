"""README.md, run as a new user follows it: its shell and Python blocks in order, on a fresh
home, so a step that breaks or that breaks an earlier one fails here (issue 21).

The runner is the user, with three differences it cannot avoid: the node's ports are this
test's (4222 and 8080 may be the user's; the blocks' 8080 becomes the gateway's port), the
first command's install is done already (its `actor up` runs as a process of the test,
stopped by Ctrl-C where README says so), and a command that follows (`logs -f`) is
watched for 3 s. Every command must succeed: blocks run under `set -euo pipefail` and curl
fails on an HTTP error. A block README marks `<!-- not run by tests/test_readme.py: why -->`
is skipped, as are the install commands and Python fragments (a class, a loop: the blocks
that do not start with an import).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
from cluster import free_port
from processes import ROOT
from up import Up

BLOCK = re.compile(
    r"(?P<skip><!-- not run by tests/test_readme\.py[^>]*-->\n)?"
    r"```(?P<lang>bash|python)\n(?P<body>.*?)```",
    re.S,
)
ASSIGNED = re.compile(r"^([A-Z_]+)=", re.M)
FOLLOWS = re.compile(r"^(?P<command>\S*actor logs .* -f)\s*(#.*)?$", re.M)


def blocks() -> list[tuple[str, str]]:
    """README's runnable blocks, in order: (language, text)."""
    found = []
    for match in BLOCK.finditer((ROOT / "README.md").read_text()):
        body = match.group("body")
        program = match.group("lang") == "bash" or body.startswith(("import ", "from "))
        if program and not match.group("skip") and "pip install" not in body:
            found.append((match.group("lang"), body))
    return found


class Reader:
    """The user at a terminal in a directory of their own, with the repository's examples
    and the `.venv/bin` README names."""

    def __init__(self, root: Path, env: dict[str, str], web: int) -> None:
        self.cwd = root / "work"
        (self.cwd / ".venv" / "bin").mkdir(parents=True)
        (self.cwd / "examples").symlink_to(ROOT / "examples")
        bin_dir = Path(sys.executable).parent
        (self.cwd / ".venv" / "bin" / "actor").symlink_to(bin_dir / "actor")
        (self.cwd / ".venv" / "bin" / "python").symlink_to(sys.executable)
        self.env = env
        self.web = web
        self.variables = root / "variables.sh"  # what earlier blocks set, as a shell keeps it
        self.variables.write_text("")

    def gateway(self, text: str) -> str:
        return re.sub(r"(localhost|127\.0\.0\.1):8080", f"127.0.0.1:{self.web}", text)

    def shell(self, body: str) -> str:
        script = self.gateway(body)
        script = FOLLOWS.sub(r"timeout 3 \g<command> || test $? = 124", script)
        # A policy change reaches the gateway through a watch, a moment after the command
        # that made it returns: a curl is tried again for up to 3 s, as a user would.
        script = re.sub(r"^curl (.*)$", r"try curl -f \1", script, flags=re.M)
        names = sorted(set(ASSIGNED.findall(body)))
        keep = "".join(f'printf "%s=%q\\n" {n} "${n}" >> {self.variables}\n' for n in names)
        prelude = (
            "set -euo pipefail\n"
            f"source {self.variables}\n"
            'try() { for _ in $(seq 30); do "$@" && return; sleep 0.1; done; "$@"; }\n'
        )
        return self.run(["bash", "-c", prelude + script + "\n" + keep], body)

    def python(self, body: str) -> str:
        return self.run([sys.executable, "-c", self.gateway(body)], body)

    def run(self, command: list[str], body: str) -> str:
        done = subprocess.run(
            command, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"README block failed:\n{body}\n{done.stderr}{done.stdout}"
        return done.stdout


def test_readme_in_order_on_a_fresh_home(tmp_path: Path) -> None:
    port, web = free_port(), free_port()
    env = {
        **os.environ,
        "ACTOR_HOME": str(tmp_path / "home"),
        "ACTOR_NATS_PORT": str(port),
        "ACTOR_GATEWAY_PORT": str(web),
    }
    reader = Reader(tmp_path, env, web)
    runnable = blocks()
    assert len(runnable) >= 10, "README's blocks were not found"

    # The first command's `actor up`, in the foreground until the Quickstart is done.
    up = Up(env, "examples/echo.py:Echo")
    try:
        up.wait_for("gateway[0] ready: pid")
        where = next(line for line in up.lines if "embedded nats-server" in line)
        assert f"nats://127.0.0.1:{port}" in where
        up.wait_for(f"gateway: http://127.0.0.1:{web}")  # said right after, by a reader thread
        server = int(where.split("(pid ")[1].split(")")[0])
        echo = int(next(line for line in up.lines if "echo[0] ready" in line).split("pid ")[1])
        quickstart, python = runnable[0][1], runnable[1][1]
        assert reader.shell(quickstart).splitlines()[:2] == ['"hi"', "3.5"]
        assert reader.python(python).strip() == "hi 3.0"
    finally:
        assert up.stop() == 0  # "Stop the first command's node with Ctrl-C"
    output = "".join(up.lines)
    assert "Traceback" not in output and "ConnectionRefused" not in output, output
    assert "WARNING" not in output, output  # a fresh start has nothing to warn of
    assert not psutil.pid_exists(server) and not psutil.pid_exists(echo)

    started = time.monotonic()
    try:
        for lang, body in runnable[2:]:
            out = reader.shell(body) if lang == "bash" else reader.python(body)
            if "sign_relayed" in body:
                assert out.strip() == "signed by me"
            if "job.results()" in body:
                assert out.strip() == "1001 2001.0 finished"
    finally:
        subprocess.run(
            [sys.executable, "-m", "actorbus.cli", "down"], env=env, timeout=60, check=False
        )
    assert time.monotonic() - started < 240

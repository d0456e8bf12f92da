"""Joining a remote NATS as a leaf node (`actor up --join nats-leaf://HOST:PORT`): the
embedded nats-server's config, made from the hub's URL and a credentials file, and the
wait until the leaf connection is up.

The leaf runs without JetStream of its own, and the JetStream requests of the actors on it
(registry, policy, logs, jobs) go to the hub's JetStream domain (``default_js_domain``),
across the leaf connection: the machine's actors join the shared bus rather than start a
bus of their own. The hub names its domain (``jetstream { domain: hub }``): NATS does not
let JetStream requests cross a leaf connection without one.
"""

from __future__ import annotations

import json
import re
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlsplit

import anyio

from .errors import BadRequest, Unavailable
from .keys import Keypair
from .nkeys import encode_nkey_seed
from .server import EmbeddedServer, write_config

__all__ = ["leaf_config", "redact", "wait_joined"]

_SCHEMES = ("nats-leaf", "tls", "ws", "wss")
_JWT = "-----BEGIN NATS USER JWT-----"
_USERINFO = re.compile(r"//[^@/\s]*@")
_DOMAIN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def redact(text: str) -> str:
    """``text`` with the user and password of any URL in it hidden."""
    return _USERINFO.sub("//***@", text)


def leaf_config(
    path: Path,
    join: str,
    credentials: Path | None,
    domain: str,
    *,
    node: str,
    key: Keypair,
) -> Path:
    """Write, at ``path`` (0600), the nats-server config that makes a server named ``node``
    a leaf node of ``join``, whose JetStream domain is ``domain``. It authenticates with
    ``key`` (the node's own, as an nkey: an actorbus hub asks its policy whether that key
    may join), or with ``credentials``: a NATS ``.creds`` file (JWT and seed), or a file
    whose one line is ``USER:PASSWORD`` or a token, readable by its owner only.
    Raises :class:`BadRequest` for a bad URL or credentials file."""
    url = urlsplit(join)
    if url.scheme not in _SCHEMES or not url.hostname:
        raise BadRequest(f"--join takes nats-leaf://HOST:PORT, not {redact(join)!r}")
    try:
        port = url.port or 7422
    except ValueError:
        raise BadRequest(f"--join {redact(join)!r}: the port is not a number") from None
    remote: dict[str, object] = {"urls": [join]}
    if credentials is None:
        remote["nkey"] = encode_nkey_seed(key.seed)
    else:
        secret = _read_secret(credentials)
        if _JWT in secret:
            remote["credentials"] = str(credentials.resolve())
        else:
            line = secret.strip()
            if not line or "\n" in line:
                raise BadRequest(
                    f"{credentials}: want one line, USER:PASSWORD or a token, or a NATS .creds file"
                )
            user, colon, password = line.partition(":")
            userinfo = (
                f"{quote(user, safe='')}:{quote(password, safe='')}" if colon else quote(line)
            )
            remote["urls"] = [f"{url.scheme}://{userinfo}@{url.hostname}:{port}{url.path}"]
    if not _DOMAIN.fullmatch(domain):
        raise BadRequest(f"invalid JetStream domain {domain!r}: 1-64 of [A-Za-z0-9_-]")
    config = {
        "server_name": node,
        "default_js_domain": {"$G": domain},
        "leafnodes": {"remotes": [remote]},
    }
    return write_config(path, config)


def _read_secret(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise BadRequest(f"cannot read credentials {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadRequest(f"credentials {path} are readable by others: chmod 600 {path}")
    return text


async def wait_joined(server: EmbeddedServer, join: str, *, wait: float) -> None:
    """Until ``server`` (started with ``monitor``) has its leaf connection to the hub;
    raises :class:`Unavailable` after ``wait`` seconds, with what its log says."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if await anyio.to_thread.run_sync(_has_leaf, server.monitor_url):
            return
        await anyio.sleep(0.1)
    said = [line for line in _log_lines(server) if "[ERR]" in line or "eafnode" in line]
    raise Unavailable(
        f"this leaf node did not connect to {redact(join)} within {wait:g} s"
        + (": " + redact(" | ".join(said[-2:])) if said else "")
    )


def _has_leaf(monitor_url: str) -> bool:
    try:
        with urllib.request.urlopen(monitor_url + "/leafz", timeout=2) as response:
            leafs = json.loads(response.read()).get("leafs") or []
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return bool(leafs)


def _log_lines(server: EmbeddedServer) -> list[str]:
    try:
        return server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []

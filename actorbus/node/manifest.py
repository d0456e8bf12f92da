"""``actors.toml``: the actors a node runs, in one file that ``actor up`` reads.

    [node]                             # optional: how a new node reaches the bus
    join = "nats-leaf://hub.example.com:7422"
    credentials = "hub.creds"          # relative to this file
    domain = "hub"                     # the hub's JetStream domain (default "hub")

    [[actor]]
    target = "examples/echo.py:Echo"   # path.py:Class or module:Class (required)
    name = "echo"                      # default: the class's name
    replicas = 2                       # or "auto": one per core
    env = { GREETING = "hi" }          # extra environment of its processes
    max_in_flight = 32                 # any of OPTIONS: settings of its replicas
    handler_timeout = 10

Everything is checked before anything starts, and an error names its line.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from ..bus import BadRequest
from ..bus.settings import Settings
from ..bus.subjects import check_name
from ..client.specs import ActorSpec, replica_count

__all__ = ["OPTIONS", "Entry", "Manifest", "load_manifest"]

OPTIONS = frozenset(
    {
        "max_in_flight",
        "max_queue",
        "max_body",
        "max_args",
        "max_headers",
        "handler_timeout",
        "drain_timeout",
        "stuck_timeout",
        "max_skew",
        "reply_prefix",
    }
)
"""Settings an actor's replicas may have of their own."""

_KEYS = frozenset({"target", "name", "replicas", "env"}) | OPTIONS
_HEADER = re.compile(r"^\s*\[\[\s*actor\s*\]\]")
_ANY_HEADER = re.compile(r"^\s*\[")


class Entry(msgspec.Struct, frozen=True):
    """One actor of a manifest, and the line of its ``target`` (for later errors)."""

    spec: ActorSpec
    line: int


class Manifest(msgspec.Struct, frozen=True):
    """A manifest's actors, and its ``[node]`` table: the remote NATS to join as a leaf
    node, its credentials file (absolute) and JetStream domain, or empty."""

    entries: list[Entry]
    join: str = ""
    credentials: str = ""
    domain: str = ""


class _Lines:
    """Where each ``[[actor]]`` table and its keys stand in the text."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.tables = [i for i, line in enumerate(self.lines) if _HEADER.match(line)]

    def of(self, table: int, key: str | None = None) -> int:
        """1-based line of table ``table``, or of ``key`` in it."""
        start = self.tables[table] if table < len(self.tables) else 0
        if key is not None:
            pattern = re.compile(rf'^\s*("?){re.escape(key)}\1\s*=')
            for i in range(start + 1, len(self.lines)):
                if _ANY_HEADER.match(self.lines[i]):
                    break
                if pattern.match(self.lines[i]):
                    return i + 1
        return start + 1


def load_manifest(path: Path) -> Manifest:
    """The actors ``path`` lists, in order (``name`` is ``""`` where the file gives none:
    the class decides), and its ``[node]`` table. Raises :class:`BadRequest` naming the
    file and line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadRequest(f"{path}: {exc}") from None
    lines = _Lines(text)

    def fail(line: int, message: str) -> BadRequest:
        return BadRequest(f"{path}:{line}: {message}")

    for key in data:
        if key not in ("actor", "node"):
            raise fail(
                _top_level_line(lines.lines, key),
                f"unknown table or key {key!r}: a manifest holds [node] and [[actor]] tables",
            )
    node = data.get("node", {})
    if not isinstance(node, dict):
        raise fail(_top_level_line(lines.lines, "node"), "node must be a table: [node]")
    for key, value in node.items():
        if key not in ("join", "credentials", "domain") or not isinstance(value, str):
            raise fail(
                _top_level_line(lines.lines, "node"),
                f"[node] takes join, credentials and domain (strings), not {key!r}",
            )
    join = node.get("join", "")
    credentials = node.get("credentials", "")
    if credentials:
        credentials = str((path.resolve().parent / credentials).resolve())
    tables = data.get("actor", [])
    if not isinstance(tables, list) or not tables:
        raise fail(1, "no [[actor]] table: nothing to run")
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        spec = _spec(table, index, lines, fail)
        if spec.name:
            if spec.name in seen:
                raise fail(
                    lines.of(index, "name"),
                    f"actor {spec.name!r} is listed twice (first at line {seen[spec.name]})",
                )
            seen[spec.name] = lines.of(index, "name")
        entries.append(Entry(spec, lines.of(index, "target")))
    return Manifest(entries, join, credentials, node.get("domain", ""))


def _spec(table: dict[str, Any], index: int, lines: _Lines, fail: Any) -> ActorSpec:
    for key in table:
        if key not in _KEYS:
            raise fail(
                lines.of(index, key),
                f"unknown key {key!r}; an actor takes {', '.join(sorted(_KEYS))}",
            )
    target = table.get("target")
    if not isinstance(target, str) or ":" not in target:
        raise fail(lines.of(index, "target"), "target must be 'path.py:Class' or 'module:Class'")
    name = table.get("name", "")
    if not isinstance(name, str):
        raise fail(lines.of(index, "name"), "name must be a string")
    if name:
        try:
            check_name(name)
        except BadRequest as exc:
            raise fail(lines.of(index, "name"), exc.message) from None
    try:
        replicas = replica_count(table.get("replicas", 1))
    except BadRequest as exc:
        raise fail(lines.of(index, "replicas"), exc.message) from None
    env = table.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) for k, v in env.items()
    ):
        raise fail(lines.of(index, "env"), "env must be a table of names to strings")
    options = {k: str(v) for k, v in table.items() if k in OPTIONS}
    for key, value in options.items():
        try:  # the replica will read it as ACTOR_<KEY>: check it reads
            Settings.from_env({f"ACTOR_{key.upper()}": value})
        except BadRequest as exc:
            raise fail(lines.of(index, key), f"{key}: {exc.message}") from None
    return ActorSpec(
        target=target,
        name=name,
        replicas=replicas,
        env={k: str(v) for k, v in env.items()},
        options=options,
    )


def _top_level_line(lines: list[str], key: str) -> int:
    pattern = re.compile(rf'^\s*\[?\s*("?){re.escape(key)}\1\s*[\]=.]')
    for i, line in enumerate(lines):
        if pattern.match(line):
            return i + 1
    return 1

"""How an `actor` process logs: lines for people, or with ``ACTOR_LOG_FORMAT=json`` one
JSON object a line for a log pipeline.

A JSON line has ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger`` and
``message``, and when known ``node``, ``actor`` and ``replica`` (which process wrote it),
``error_id`` (the id a caller got with its error: the way from a user's report to the log)
and ``trace_id`` (the W3C trace the call was part of).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

__all__ = ["json_line", "log_context", "setup_logging"]

_CONTEXT: dict[str, Any] = {}


def log_context(**fields: Any) -> None:
    """Add ``fields`` (``node``, ``actor``, ``replica``) to every JSON line from now on."""
    _CONTEXT.update({k: v for k, v in fields.items() if v not in (None, "")})


def json_line(time: float, level: str, logger: str, message: str, **fields: Any) -> str:
    """One JSON log line (see above)."""
    stamp = dt.datetime.fromtimestamp(time, dt.UTC).isoformat(timespec="milliseconds")
    line = {"time": stamp.replace("+00:00", "Z"), "level": level, "logger": logger}
    line["message"] = message
    line.update({k: v for k, v in fields.items() if v not in (None, "")})
    return json.dumps(line, ensure_ascii=False, default=str)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        extra = {key: getattr(record, key, "") for key in ("error_id", "trace_id")}
        return json_line(
            record.created, record.levelname, record.name, message, **_CONTEXT, **extra
        )


def setup_logging(level: str, form: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))

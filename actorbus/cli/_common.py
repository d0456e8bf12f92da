"""What every command module shares: settings from the context, running a coroutine with
errors mapped to exit codes, the consoles, logging setup."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import anyio
import click
from rich.console import Console
from rich.text import Text

from ..bus import ActorError, BadRequest
from ..bus.settings import Settings
from ..bus.subjects import check_name
from ..client import Client

__all__ = [
    "EXIT_CODES",
    "ask_pages",
    "ask_policy",
    "checked_name",
    "err",
    "exit_with",
    "out",
    "paged",
    "run_coroutine",
    "settings_of",
    "stop_on_signal",
]

T = TypeVar("T")

EXIT_CODES = {
    400: 3,
    401: 4,
    403: 5,
    404: 6,
    408: 7,
    413: 8,
    429: 9,
    500: 10,
    502: 11,
    503: 12,
    504: 13,
}
"""Exit code per status; 1 for any other error, 2 for usage errors (click's)."""

# Piped or redirected, a table is as wide as its content: a script gets whole addresses.
_PIPED_WIDTH = 1000
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else _PIPED_WIDTH)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else _PIPED_WIDTH)


def checked_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: an actor's name, checked before anything is asked of the bus (a
    bad one is a usage error, exit 2)."""
    try:
        return None if value is None else check_name(value)
    except BadRequest as exc:
        raise click.BadParameter(exc.message, ctx, param) from None


def exit_with(ctx: click.Context, exc: ActorError) -> NoReturn:
    """Print ``exc`` as one line and exit with its status's code."""
    err.print(Text("error ", style="red") + Text(str(exc)))
    ctx.exit(EXIT_CODES.get(exc.status, 1))
    raise AssertionError("unreachable")


_HAS_UVLOOP = (
    importlib.util.find_spec("uvloop") is not None and os.environ.get("ACTOR_UVLOOP") != "0"
)
"""The ``fast`` extra: uvloop's event loop when it is installed, unless ACTOR_UVLOOP=0."""


def run_coroutine(ctx: click.Context, main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main`` under anyio; an :class:`ActorError` (also one alone in task groups)
    becomes one line and an exit code."""
    try:
        return anyio.run(main, backend_options={"use_uvloop": _HAS_UVLOOP})
    except ActorError as exc:
        exit_with(ctx, exc)
    except BaseExceptionGroup as group:
        only = _only_error(group)
        if only is None:
            raise
        exit_with(ctx, only)


def _only_error(group: BaseExceptionGroup[BaseException]) -> ActorError | None:
    """The one :class:`ActorError` a task group raised, through nested groups, if that
    is all it raised."""
    if len(group.exceptions) != 1:
        return None
    (inner,) = group.exceptions
    if isinstance(inner, BaseExceptionGroup):
        return _only_error(inner)
    return inner if isinstance(inner, ActorError) else None


def ask_policy(ctx: click.Context, fn: str, *args: Any) -> Any:
    """The policy actor's answer to ``fn(*args)``, asked with this home's key."""
    settings = settings_of(ctx)

    async def run() -> Any:
        async with Client(settings=settings) as client:
            return await client.request(settings.policy, fn, list(args))

    return run_coroutine(ctx, run)


def paged(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--limit`` and ``--after`` for a command that lists (:func:`ask_pages`)."""
    command = click.option(
        "--after", default="", metavar="KEY", help="Start after KEY (the last one shown)."
    )(command)
    return click.option(
        "--limit", type=click.IntRange(1), default=None, help="At most this many (default: all)."
    )(command)


def ask_pages(
    ctx: click.Context,
    name: str,
    fn: str,
    *args: Any,
    limit: int | None,
    after: str,
    cursor: Callable[[Any], str] | None = None,
) -> Any:
    """The items of ``name``'s listing function ``fn`` after ``after`` (at most ``limit``),
    asked a page at a time (:meth:`Client.pages`) and joined: a dict, or a list."""
    settings = settings_of(ctx)

    async def run() -> Any:
        joined: dict[str, Any] | list[Any] | None = None
        async with Client(settings=settings) as client:
            async for page in client.pages(name, fn, *args, after=after, cursor=cursor):
                if joined is None:
                    joined = {} if isinstance(page, dict) else []
                if isinstance(joined, dict):
                    joined.update(list(page.items())[: _left(limit, len(joined))])
                else:
                    joined += page[: _left(limit, len(joined))]
                if limit is not None and len(joined) >= limit:
                    break
        return joined if joined is not None else []

    return run_coroutine(ctx, run)


def _left(limit: int | None, held: int) -> int | None:
    return None if limit is None else limit - held


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


async def stop_on_signal(stop: anyio.Event, say: Callable[[str], None] | None) -> None:
    """Set ``stop`` on SIGINT or SIGTERM (saying so, if ``say``)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if say is not None:
                say(f"got {signal.Signals(signum).name}: stopping (actors drain first)")
            stop.set()
            return

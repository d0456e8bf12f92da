"""The :class:`Actor` base class, the :func:`endpoint` decorator and argument binding.

An actor is a class whose public methods answer calls (commune style). Each served method
becomes a :class:`Function`: its parameters' type hints are turned, once, into msgspec
decoders, so a call's arguments are checked for arity and type and a mismatch is a 400.
"""

from __future__ import annotations

import collections.abc
import contextvars
import inspect
import logging
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.abc
import msgspec

from ..bus import NATS, BadRequest, Keypair, NotFound, RequestMeta, excerpt
from ..bus.settings import Settings
from ..bus.wire import JSON, MSGPACK, RawCallBody, codec_for, decode_error
from ..client.client import Client
from .policy import DEFAULT_WHITELIST
from .policy_view import PolicyView

__all__ = ["Actor", "Call", "Function", "current_call", "endpoint"]

log = logging.getLogger("actorbus.host")

F = TypeVar("F", bound=Callable[..., Any])
Hook = Callable[["Call"], Any]
"""A hook takes the :class:`Call` and may be sync or async (it runs on the event loop)."""

_OPTIONS_ATTR = "__actorbus_endpoint__"
_NOT_SERVED = frozenset({"on_start", "on_run", "on_stop", "figures"})
"""The methods every actor has that are the host's to call, never a caller's."""


class EndpointOptions(msgspec.Struct, frozen=True):
    timeout: float | None = None
    verify: Hook | str | None = None
    blacklist: Hook | str | None = None
    priority: Hook | str | None = None
    idempotent: bool = False
    expose: bool = True
    inline: bool = False


@typing.overload
def endpoint(fn: F) -> F: ...


@typing.overload
def endpoint(
    *,
    timeout: float | None = None,
    verify: Hook | str | None = None,
    blacklist: Hook | str | None = None,
    priority: Hook | str | None = None,
    idempotent: bool = False,
    expose: bool = True,
    inline: bool = False,
) -> Callable[[F], F]: ...


def endpoint(
    fn: F | None = None,
    *,
    timeout: float | None = None,
    verify: Hook | str | None = None,
    blacklist: Hook | str | None = None,
    priority: Hook | str | None = None,
    idempotent: bool = False,
    expose: bool = True,
    inline: bool = False,
) -> Any:
    """Per-function options; a plain public method is served without it.

    - ``timeout``: the handler's deadline in seconds (408 past it).
    - ``verify(call)``: extra check after the signature; raise an :class:`ActorError`
      (e.g. ``Unauthorized``) to refuse.
    - ``blacklist(call)``: return true (or ``(True, reason)``) to refuse with 403.
    - ``priority(call)``: a number; higher runs first when calls wait for a slot.
    - ``idempotent``: clients may retry the call on a lost reply.
    - ``expose=False``: keep a public method private.
    - ``inline=True``: a quick ``def`` handler runs on the event loop, not in a worker
      thread (the hand-off costs a few µs of CPU and tens of µs of latency per call);
      while it runs every other call of the replica waits, so only for work well under a
      millisecond (a run past 50 ms is logged).

    Hooks are callables or the names of methods of the actor; they run on the event loop,
    so keep them quick.
    """
    options = EndpointOptions(timeout, verify, blacklist, priority, idempotent, expose, inline)

    def mark(method: F) -> F:
        setattr(method, _OPTIONS_ATTR, options)
        return method

    return mark(fn) if fn is not None else mark


class Actor:
    """Subclass this; every public method (sync or async) is a function callers can call.

    Sync methods run in a worker thread, async ones on the event loop. ``name`` (class
    attribute) is the default actor name; the host sets ``self.name`` and
    ``self.address`` before ``on_start``. ``info``, ``schema`` and ``fns`` are built in.
    """

    name: str | None = None
    description: str = ""
    address: str = ""
    allow_fns: frozenset[str] = frozenset()
    """Functions any caller may call on this actor, on top of the default whitelist."""
    deny_fns: frozenset[str] = frozenset()
    """Functions only admins may call on this actor, whatever a role allows."""
    quotas: bool = True
    """Whether calls to this actor count against the callers' quotas."""
    rights: str = "actor"
    """What its replicas may do on the bus, which their hosting ticket asks for
    (:data:`actorbus.bus.rights.ROLES`: ``actor``, ``jobs``, ``gateway``)."""
    sessions: bool = True
    """Whether callers may open sessions (PROTOCOL.md §4b) and authenticate calls with
    them; ``False`` has every call signed (the policy actor's changes, node control)."""
    owner: str = ""
    """A key whose calls this actor takes whatever the policy says, or whether it can be
    read (a node's control actor: its home's key); the actor checks them itself."""
    whole_policy: bool = False
    """Whether its replicas hold the whole policy (the policy actor, which lists and
    counts keys), not only the records of the keys that call them."""

    # Set by the host before on_start: what an actor needs to call others and read NATS.
    client: Client
    key: Keypair
    """The actor's own key (its calls, records and seals are signed with it)."""
    settings: Settings
    nc: NATS

    async def on_start(self) -> None:
        """Called once before the actor takes calls."""

    async def on_run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Runs beside the calls for the actor's whole life (a server of its own, a
        consumer): started after :meth:`on_start`, ready once it calls
        ``task_status.started()`` (the replica reports ready only then), cancelled after the
        replica has drained its calls and before :meth:`on_stop`. The default does nothing.
        """
        task_status.started()

    async def on_stop(self) -> None:
        """Called once after the last call has drained."""

    def figures(self) -> dict[str, float]:
        """Counts of the actor's own, asked at each ``$SRV.STATS`` (so at each metrics
        scrape): name -> value, names of ``[a-z_]`` (each becomes the metric
        ``actorbus_<name>``, labelled with node, actor and replica). The default has none."""
        return {}

    @endpoint(idempotent=True)
    def fns(self) -> list[str]:
        """The functions this actor serves."""
        return sorted(self.__actorbus_functions__)

    @endpoint(idempotent=True)
    def schema(self) -> dict[str, Any]:
        """Each function's parameter and return schema (JSON Schema)."""
        return {name: f.schema for name, f in sorted(self.__actorbus_functions__.items())}

    @endpoint(idempotent=True)
    def whitelist(self) -> list[str]:
        """Functions every caller may call here."""
        return sorted((DEFAULT_WHITELIST | self.allow_fns) & set(self.__actorbus_functions__))

    @endpoint(idempotent=True)
    def blacklist(self) -> list[str]:
        """Functions only admins may call here."""
        return sorted(self.deny_fns)

    @endpoint(idempotent=True)
    def is_admin(self, key: str | None = None) -> bool:
        """Whether ``key`` (default: the caller) is a policy admin."""
        policy = self.__actorbus_policy__
        return policy is not None and (key or current_call().caller) in policy.state.admins

    @endpoint(idempotent=True)
    def info(self) -> dict[str, Any]:
        """The actor's name, address, description and functions."""
        return {
            "name": self.name or actor_name(type(self)),
            "address": self.address,
            "description": self.description or (inspect.getdoc(type(self)) or ""),
            "fns": self.fns(),
        }

    __actorbus_functions__: dict[str, Function]
    __actorbus_policy__: PolicyView | None = None


_ITERATORS = {
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
    collections.abc.Iterator,
    collections.abc.Iterable,
    collections.abc.Generator,
}


def _item_type(hint: Any) -> Any:
    """What a generator annotated ``AsyncIterator[T]`` (or the like) yields: ``T``."""
    args = typing.get_args(hint)
    return args[0] if typing.get_origin(hint) in _ITERATORS and args else Any


def actor_name(cls: type[Actor], override: str | None = None) -> str:
    """The name an actor class serves under: ``override``, its ``name``, or the class name."""
    return override or cls.name or cls.__name__.lower()


class Param(msgspec.Struct):
    name: str
    kind: inspect._ParameterKind
    required: bool
    decoders: dict[str, Any]


class Function:
    """One served method: its options, decoders per parameter, and schema."""

    def __init__(self, name: str, method: Callable[..., Any], options: EndpointOptions) -> None:
        self.name = name
        self.method = method
        self.options = options
        target = inspect.unwrap(method)
        self.is_stream = inspect.isasyncgenfunction(target) or inspect.isgeneratorfunction(target)
        """A generator: each item it yields is a chunk of a streamed reply."""
        self.is_async = inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)
        if options.inline and self.is_async:
            raise TypeError(f"{name}: inline=True is for def handlers (async ones run on the loop)")
        signature = inspect.signature(method)
        try:
            hints = typing.get_type_hints(target, include_extras=True)
        except Exception as exc:
            log.warning("%s: type hints not resolvable (%s); arguments are unchecked", name, exc)
            hints = {}
        self.positional: list[Param] = []
        self.by_name: dict[str, Param] = {}
        self.var_positional: Param | None = None
        self.var_keyword: Param | None = None
        properties: dict[str, Any] = {}
        required: list[str] = []
        for p in signature.parameters.values():
            type_ = hints.get(p.name, Any)
            param = Param(p.name, p.kind, p.default is inspect.Parameter.empty, _decoders(type_))
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                self.var_positional = param
                continue
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                self.var_keyword = param
                continue
            if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                self.positional.append(param)
            if p.kind is not inspect.Parameter.POSITIONAL_ONLY:
                self.by_name[p.name] = param
            properties[p.name] = _schema(type_)
            if param.required:
                required.append(p.name)
        self.schema: dict[str, Any] = {
            "signature": _signature(name, signature, hints),
            "doc": inspect.getdoc(method) or "",
            "params": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": self.var_keyword is not None,
            },
            "returns": _schema(
                _item_type(hints.get("return", Any)) if self.is_stream else hints.get("return", Any)
            ),
            "idempotent": options.idempotent,
            "stream": self.is_stream,
        }

    def bind(self, body: RawCallBody, content_type: str) -> tuple[list[Any], dict[str, Any]]:
        """Decode and bind a call's arguments; raises :class:`BadRequest` on any mismatch."""
        args, kwargs = body.args, body.kwargs
        if len(args) > len(self.positional) and self.var_positional is None:
            raise BadRequest(
                f"{self.name}() takes at most {len(self.positional)} positional "
                f"arguments, got {len(args)}"
            )
        bound_args: list[Any] = []
        for i, raw in enumerate(args):
            param = self.positional[i] if i < len(self.positional) else self.var_positional
            assert param is not None
            bound_args.append(_decode(param, raw, content_type))
        given = {p.name for p in self.positional[: len(args)]}
        bound_kwargs: dict[str, Any] = {}
        for key, raw in kwargs.items():
            param = self.by_name.get(key)
            if param is None:
                if self.var_keyword is None:
                    raise BadRequest(
                        f"{self.name}() got an unexpected keyword argument {excerpt(key)}"
                    )
                param = self.var_keyword
            elif key in given:
                raise BadRequest(f"{self.name}() got multiple values for argument {key!r}")
            bound_kwargs[key] = _decode(param, raw, content_type)
        for param in self.positional[len(args) :]:
            if param.required and param.name not in bound_kwargs:
                raise BadRequest(f"{self.name}() missing required argument {param.name!r}")
        for name, param in self.by_name.items():
            kw_only = param.kind is inspect.Parameter.KEYWORD_ONLY
            if kw_only and param.required and name not in bound_kwargs:
                raise BadRequest(f"{self.name}() missing required argument {name!r}")
        return bound_args, bound_kwargs


_CONSTRAINTS = ("gt", "ge", "lt", "le", "multiple_of", "pattern", "min_length", "max_length")


def _type_name(type_: Any) -> str:
    if typing.get_origin(type_) is typing.Annotated:  # float with Meta(ge=0): "float (ge=0)"
        base, *extras = typing.get_args(type_)
        limits = [
            f"{name}={value!r}"
            for meta in extras
            if isinstance(meta, msgspec.Meta)
            for name in _CONSTRAINTS
            if (value := getattr(meta, name)) is not None
        ]
        return _type_name(base) + (f" ({', '.join(limits)})" if limits else "")
    if type_ is type(None):
        return "None"
    if isinstance(type_, type):
        return type_.__name__
    return str(type_).replace("typing.", "")


def _signature(name: str, signature: inspect.Signature, hints: dict[str, Any]) -> str:
    """``name(a: int, b: str = 'x') -> bool``, from the resolved type hints."""
    params = []
    kinds = [p.kind for p in signature.parameters.values()]
    for p in signature.parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.VAR_POSITIONAL not in kinds and "*" not in params:
            params.append("*")
        stars = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        text = stars + p.name
        if p.name in hints:
            text += f": {_type_name(hints[p.name])}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        params.append(text)
    returns = f" -> {_type_name(hints['return'])}" if "return" in hints else ""
    return f"{name}({', '.join(params)}){returns}"


def _decoders(type_: Any) -> dict[str, Any]:
    decoders: dict[str, Any] = {}
    for content_type in (JSON, MSGPACK):
        try:
            decoders[content_type] = codec_for(content_type).decoder(type_)
        except TypeError:
            log.warning("type %r is not checkable by msgspec; accepting any value", type_)
            decoders[content_type] = codec_for(content_type).decoder(Any)
    return decoders


def _decode(param: Param, raw: msgspec.Raw, content_type: str) -> Any:
    try:
        return param.decoders[content_type].decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise BadRequest(f"argument {param.name!r}: {decode_error(exc)}") from None
    except RecursionError:
        raise BadRequest(f"argument {param.name!r}: nested too deeply") from None


def _schema(type_: Any) -> dict[str, Any]:
    try:
        schema: dict[str, Any] = msgspec.json.schema(type_)
    except TypeError:
        return {}
    return schema


def collect_functions(actor: Actor) -> dict[str, Function]:
    """The functions ``actor`` serves: public methods, with their :func:`endpoint` options."""
    functions: dict[str, Function] = {}
    for name in dir(type(actor)):
        if name.startswith("_") or name in _NOT_SERVED:
            continue
        attribute = getattr(type(actor), name)
        if not callable(attribute) or isinstance(attribute, type):
            continue
        options = getattr(attribute, _OPTIONS_ATTR, EndpointOptions())
        if not options.expose:
            continue
        functions[name] = Function(name, getattr(actor, name), options)
    return functions


_CURRENT: contextvars.ContextVar[Call] = contextvars.ContextVar("actorbus_call")


def current_call() -> Call:
    """The call a handler is answering (its verified ``caller``, ``fn``, ...).

    Raises :class:`LookupError` outside a handler. Works in sync handlers too (worker
    threads inherit the context).
    """
    return _CURRENT.get()


class Call:
    """One request as it moves through the pipeline; hooks receive it.

    ``caller`` is the verified address of the signer, or of the key a trusted
    ``forwarder`` (a gateway) calls for, or of the owner of the job (``job``) a delegate
    (the jobs actor, as ``forwarder``) runs with the owner's delegation;
    ``args``/``kwargs`` are bound and decoded once the call has been routed.
    """

    __slots__ = (
        "actor",
        "args",
        "caller",
        "chunks",
        "content_type",
        "deadline",
        "fn",
        "forwarder",
        "function",
        "job",
        "kwargs",
        "meta",
        "nonce",
        "priority",
        "rate",
        "received",
        "replied",
        "reply_to",
        "session_key",
        "span",
        "stage",
        "started",
        "subject",
        "trace",
        "window",
    )

    def __init__(self, actor: str, subject: str, fn: str, reply_to: str, received: float) -> None:
        self.actor = actor
        self.subject = subject
        self.fn = fn
        self.reply_to = reply_to
        self.received = received
        self.caller = ""
        self.forwarder = ""
        self.job = ""
        self.nonce = ""
        self.content_type = JSON
        self.meta: RequestMeta | None = None
        self.function: Function | None = None
        self.args: list[Any] = []
        self.kwargs: dict[str, Any] = {}
        self.deadline = received
        self.priority = 0.0
        self.rate: float | None = None
        self.replied = False
        self.window: int | None = None
        """The chunks a streaming caller lets the actor send ahead (``Actor-Stream``)."""
        self.chunks: int | None = None
        """Chunks sent so far once a streamed reply began (its end is signed over them)."""
        self.session_key: bytes | None = None
        """The key of the session the call came in (its reply is authenticated with it)."""
        self.started = 0.0
        """When a worker began to run it (monotonic; 0: it never ran)."""
        self.trace: dict[str, str] = {}
        """Its trace headers, well-formed (``bus.tracing``): its handler runs in that trace."""
        self.span: Any = None
        """With spans on: the replica's span of the call, ended with its reply."""
        self.stage: Any = None
        """With spans on: the span of the stage it is in (accept, then handler)."""


async def run_hook(hook: Callable[[Call], Any], call: Call) -> Any:
    result = hook(call)
    if inspect.isawaitable(result):
        result = await result
    return result


def resolve_hook(actor: Actor, hook: Hook | str | None) -> Callable[[Call], Any] | None:
    if hook is None or callable(hook):
        return hook
    method = getattr(actor, hook, None)
    if not callable(method):
        raise NotFound(f"hook {hook!r} is not a method of {type(actor).__name__}")
    return typing.cast(Callable[[Call], Any], method)

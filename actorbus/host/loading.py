"""Loading an actor class from ``path/to/file.py:Class`` or ``package.module:Class``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from ..bus import BadRequest
from .actor import Actor

__all__ = ["load_actor_class"]


def load_actor_class(target: str) -> type[Actor]:
    """The :class:`Actor` subclass ``target`` names; raises :class:`BadRequest` with the
    reason (bad form, missing file or module, import error, not an Actor)."""
    module_part, sep, class_name = target.rpartition(":")
    if not sep or not module_part or not class_name:
        raise BadRequest(f"target {target!r} is not 'path.py:Class' or 'module:Class'")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part).resolve()
        if not path.is_file():
            raise BadRequest(f"no such file: {module_part}")
        # Let the file import its neighbours, as `python path.py` would.
        sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise BadRequest(f"cannot import {module_part}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise BadRequest(f"importing {module_part} failed: {exc!r}") from exc
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise BadRequest(f"cannot import module {module_part!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Actor)):
        raise BadRequest(f"{class_name!r} in {module_part} is not an actorbus Actor subclass")
    return cls

"""A generic registry of named component factories (one instance per kind).

Modelled on timm's model registry: ``register`` / ``build`` / ``list`` with fnmatch wildcards /
``is_registered``. A duplicate name is an error, never a silent overwrite; an unknown name is
answered with the close matches.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import DuplicateComponentError, UnknownComponentError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    name: str  # registry name, e.g. "logmel_cnn" or "face_cnn"
    factory: Callable[..., Any]  # called with the recipe's options as keyword arguments
    plugin: str = ""  # plugin (entry-point name) that registered it
    summary: str = ""  # one line shown by `liser list`
    tags: dict[str, Any] = field(default_factory=dict)  # e.g. {"modality": "face"}

    def signature(self) -> inspect.Signature:
        return inspect.signature(self.factory)


class Registry:
    """Named factories for one kind of component (teachers, students, losses, datasets, ...).

    Example::

        >>> students = Registry("student")
        >>> @students.register("tiny")
        ... def tiny(width: int = 8):
        ...     return {"width": width}
        >>> students.build("tiny", width=4)
        {'width': 4}
        >>> students.list("t*")
        ['tiny']
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._current_plugin = ""

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        name: str,
        factory: Callable[..., Any] | None = None,
        *,
        summary: str | None = None,
        plugin: str | None = None,
        **tags: Any,
    ):
        """Register ``factory`` under ``name``; usable as a decorator when ``factory`` is None."""

        def add(fn: Callable[..., Any]):
            if not name or not isinstance(name, str):
                raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
            if not _NAME.fullmatch(name) or ".." in name:  # names become file and folder names
                raise ValueError(
                    f"{self.kind} name {name!r} is not allowed: letters, digits and _ . + - only "
                    "(it names files and folders of a run)"
                )
            if name in self._entries:
                other = self._entries[name].plugin or "?"
                raise DuplicateComponentError(
                    f"{self.kind} {name!r} is already registered by plugin {other!r}; "
                    f"refusing to overwrite it (from plugin {plugin or self._current_plugin or '?'!r})"
                )
            doc = summary if summary is not None else (inspect.getdoc(fn) or "").split("\n")[0]
            self._entries[name] = Entry(
                name=name, factory=fn, plugin=plugin or self._current_plugin, summary=doc, tags=tags
            )
            return fn

        return add if factory is None else add(factory)

    # -- look-up ------------------------------------------------------------------------------
    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(self.kind, name, self._entries) from None

    def build(self, name: str, **options: Any) -> Any:
        """Call the factory registered under ``name`` with ``options``."""
        return self.get(name).factory(**options)

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching the fnmatch ``pattern`` (``*``, ``?``, ``[..]``)."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def is_registered(self, name: str) -> bool:
        return name in self._entries

    __contains__ = is_registered

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.list())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"

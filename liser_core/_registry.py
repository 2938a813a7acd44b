"""A generic registry of named component factories (one instance per kind).

Modelled on timm's model registry: ``register`` / ``build`` / ``list`` with fnmatch wildcards /
``is_registered``. An unknown name is answered with the close matches.

Every component has a *qualified name* ``PLUGIN:NAME`` (``losses:dkd``, ``acme:dkd``) that
always names it, and a bare ``NAME`` that names it while no other plugin registers the same
name. Two plugins registering one name is a *clash*: both are kept, and the bare name is
refused with the qualified choices (:class:`~liser_core.errors.AmbiguousComponentError`),
unless one third-party component declared ``override=True`` against first-party ones
(docs/plugins.md, "Names"). One plugin registering a name twice is an error
(:class:`~liser_core.errors.DuplicateComponentError`), never a silent overwrite.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import AmbiguousComponentError, DuplicateComponentError, UnknownComponentError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
SEP = ":"  # PLUGIN:NAME


def split_name(name: str) -> tuple[str, str]:
    """``"acme:dkd"`` -> ``("acme", "dkd")``; ``"dkd"`` -> ``("", "dkd")``."""
    plugin, _, bare = str(name).rpartition(SEP)
    return plugin, bare


def bare_name(name: str) -> str:
    """The registry name without its plugin: ``"losses:dkd"`` -> ``"dkd"``."""
    return split_name(name)[1]


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    name: str  # registry name, e.g. "logmel_cnn" or "face_cnn"
    factory: Callable[..., Any]  # called with the recipe's options as keyword arguments
    plugin: str = ""  # plugin (entry-point name) that registered it
    summary: str = ""  # one line shown by `liser list`
    tags: dict[str, Any] = field(default_factory=dict)  # e.g. {"modality": "face"}
    first_party: bool = False  # registered by a plugin of LiSER's own distribution
    override: bool = False  # declared to take the bare name from first-party components
    #: the package that provides it, ``{"name": distribution, "version": ...}`` ({} outside one):
    #: a saved component records it, and is refused by another package's plugin of the same name
    package: dict[str, str] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        """``PLUGIN:NAME``; just ``NAME`` for a component registered outside any plugin."""
        return f"{self.plugin}{SEP}{self.name}" if self.plugin else self.name

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
        self._entries: dict[str, Entry] = {}  # qualified name -> entry
        self._current_plugin = ""
        self._current_first_party = False
        self._current_package: dict[str, str] = {}

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        name: str,
        factory: Callable[..., Any] | None = None,
        *,
        summary: str | None = None,
        plugin: str | None = None,
        override: bool = False,
        **tags: Any,
    ):
        """Register ``factory`` under ``name``; usable as a decorator when ``factory`` is None.

        ``override=True`` (third-party plugins only) declares that the bare ``name`` should
        mean this component even though a first-party plugin registers it too; the
        first-party one stays reachable by its qualified name (docs/plugins.md, "Names").
        A component is registered under the plugin being loaded: ``plugin`` may only repeat
        that name (a plugin registering under another plugin's name took it over: its
        components, and that plugin's own failing to load as "duplicates").
        """

        def add(fn: Callable[..., Any]):
            if not name or not isinstance(name, str):
                raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
            if not callable(fn):  # refused here, where the plugin that did it fails to load naming why
                raise ValueError(f"{self.kind} {name!r}: its factory {fn!r} is not callable (register a class or function)")
            if not _NAME.fullmatch(name) or ".." in name:  # names become file and folder names
                raise ValueError(
                    f"{self.kind} name {name!r} is not allowed: letters, digits and _ . + - only "
                    "(it names files and folders of a run)"
                )
            if plugin is not None and plugin != self._current_plugin:
                loading = f"plugin {self._current_plugin!r}" if self._current_plugin else "code outside any plugin"
                raise ValueError(
                    f"{self.kind} {name!r}: {loading} cannot register it under plugin {plugin!r}; a plugin registers "
                    "components under its own name only (docs/plugins.md, Names)"
                )
            owner = self._current_plugin
            first_party = self._current_first_party
            entry = Entry(name=name, factory=fn, plugin=owner, summary="", tags=tags,
                          first_party=first_party, override=bool(override) and not first_party,
                          package=dict(self._current_package))
            if entry.qualified in self._entries:
                raise DuplicateComponentError(
                    f"{self.kind} {name!r} is already registered by plugin {owner or '?'!r}; "
                    "refusing to overwrite it (one plugin registered the name twice)"
                )
            doc = summary if summary is not None else (inspect.getdoc(fn) or "").split("\n")[0]
            self._entries[entry.qualified] = replace(entry, summary=doc)
            return fn

        return add if factory is None else add(factory)

    # -- look-up ------------------------------------------------------------------------------
    def candidates(self, name: str) -> list[Entry]:
        """The entries ``name`` can mean: the one qualified entry, or every entry of a bare name."""
        if SEP in str(name):
            return [self._entries[name]] if name in self._entries else []
        return sorted((e for e in self._entries.values() if e.name == name), key=lambda e: e.qualified)

    def get(self, name: str) -> Entry:
        """The entry ``name`` (``NAME`` or ``PLUGIN:NAME``) means, as a recipe names it.

        A bare name registered by several plugins raises :class:`AmbiguousComponentError`
        listing the qualified names, unless exactly one third-party entry declared
        ``override=True`` and every other one is first-party.
        """
        found = self.candidates(name)
        if len(found) == 1:
            return found[0]
        if not found:
            raise UnknownComponentError(self.kind, name, self.list()) from None
        overriders = [e for e in found if e.override]
        if len(overriders) == 1 and all(e.first_party for e in found if e is not overriders[0]):
            return overriders[0]
        raise AmbiguousComponentError(self.kind, name, [e.qualified for e in found])

    def get_recorded(self, name: str, plugins: Iterable[str] | None = None) -> Entry:
        """The entry a *stored record* (a run's recipe, a saved component) means by ``name``.

        A bare name in a record was unique when it was written. When it is ambiguous now, it
        means the candidate of a plugin in ``plugins`` (the plugins the record's run loaded),
        else the first-party one (which is what a bare name meant when a third-party package
        could not register a first-party name); otherwise :class:`AmbiguousComponentError`.
        """
        found = self.candidates(name)
        if len(found) > 1 and plugins is not None:
            allowed = set(plugins)
            found = [e for e in found if e.plugin in allowed] or found
        if len(found) > 1:
            found = [e for e in found if e.first_party] or found
        if len(found) == 1:
            return found[0]
        return self.get(name)  # unknown or still ambiguous: the recipe rule's error

    def canonical(self, name: str | Entry) -> str:
        """The form a fingerprint hashes: the bare name for first-party components and for names
        no other plugin registers, ``PLUGIN:NAME`` for a third-party component whose name is
        clashed. So recipes that said ``dkd`` when it was unique, and ``losses:dkd`` now, have
        the same fingerprint; ``acme:dkd`` another."""
        entry = name if isinstance(name, Entry) else self.get(name)
        if entry.first_party or len(self.candidates(entry.name)) == 1:
            return entry.name
        return entry.qualified

    def clashes(self) -> dict[str, list[Entry]]:
        """Bare names registered by more than one plugin -> their entries."""
        out: dict[str, list[Entry]] = {}
        for e in self:
            out.setdefault(e.name, []).append(e)
        return {n: es for n, es in out.items() if len(es) > 1}

    def build(self, name: str, **options: Any) -> Any:
        """Call the factory registered under ``name`` with ``options``."""
        return self.get(name).factory(**options)

    def display_name(self, entry: Entry) -> str:
        """The bare name when it is unique, else the qualified one."""
        return entry.name if len(self.candidates(entry.name)) == 1 else entry.qualified

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching the fnmatch ``pattern`` (``*``, ``?``, ``[..]``): bare names,
        and the qualified names of clashing ones (``acme:dkd``, ``losses:dkd``)."""
        return sorted(
            self.display_name(e) for e in self._entries.values()
            if fnmatch.fnmatchcase(e.name, pattern) or fnmatch.fnmatchcase(e.qualified, pattern)
        )

    def qualified_names(self) -> set[str]:
        """Every entry's qualified name."""
        return set(self._entries)

    def remove(self, qualified: Iterable[str]) -> None:
        """Drop entries by qualified name (a plugin that failed half-way)."""
        for q in qualified:
            self._entries.pop(q, None)

    def is_registered(self, name: str) -> bool:
        """Whether ``name`` (bare or qualified) names at least one entry."""
        return bool(self.candidates(name))

    __contains__ = is_registered

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: (e.name, e.qualified)))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"

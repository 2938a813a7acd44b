"""Exceptions that LiSER raises on purpose.

:class:`UsageError` and its subclasses are the user's to fix (a recipe key, a component name, a
path): the CLI prints their one-line message and exits with status 2, never a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "AmbiguousComponentError", "ComponentError", "ConfigError", "DuplicateComponentError", "EnvironmentFault",
    "LiserError", "PluginLoadError",
    "UnknownComponentError", "UsageError", "close_matches", "one_line", "plural",
]


class LiserError(Exception):
    """Base class of every error LiSER raises on purpose."""


class UsageError(LiserError):
    """Something the user gave is wrong; the CLI exits with status 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A recipe or override is invalid; ``key`` is the full dotted path of the culprit."""

    def __init__(self, key: str, reason: str, suggestions: Iterable[str] = ()):
        self.key = key
        self.reason = reason
        self.suggestions = tuple(suggestions)
        msg = f"{key}: {reason}" if key else reason
        if self.suggestions:
            msg += "; did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
        super().__init__(msg)


class UnknownComponentError(UsageError, KeyError):
    """A registry was asked for a name it does not hold."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        self.kind, self.name = kind, name
        self.suggestions = tuple(close_matches(name, known))
        msg = f"unknown {kind} {name!r}"
        if self.suggestions:
            msg += "; did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
        else:
            msg += f"; registered {plural(kind)}: " + (", ".join(known) if known else "none")
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class AmbiguousComponentError(UnknownComponentError):
    """A bare name that several plugins register; the message lists the qualified choices."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        self.kind, self.name = kind, name
        self.suggestions = self.choices = tuple(sorted(choices))
        msg = (f"{kind} {name!r} is registered by {len(self.choices)} plugins; name one of: "
               + ", ".join(self.choices))
        UsageError.__init__(self, msg)


class ComponentError(LiserError):
    """A component (teacher, student, loss, dataset...) raised, or returned something it must
    not, while LiSER called it; the message names the component, its plugin and recipe key."""


class EnvironmentFault(LiserError):
    """The machine, not the recipe: a full or read-only disk, a killed worker process. The
    message names the path or process and what to do; the CLI prints it in one line (status 1)."""


class DuplicateComponentError(LiserError):
    """Two plugins tried to register the same name in one registry."""


class PluginLoadError(UsageError):
    """A plugin could not be loaded and strict loading was asked for."""


def plural(kind: str) -> str:
    """``loss`` -> ``losses``, ``teacher`` -> ``teachers``."""
    return kind + ("es" if kind.endswith("s") else "s")


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates closest to ``word`` (difflib ratio >= 0.6), best first."""
    return difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.6)


def one_line(exc: BaseException) -> str:
    """An exception's message folded onto one line (YAML errors span several)."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())

"""``liser show NAME`` (and ``liser list -v``): a component's options, types, defaults and docs."""

from __future__ import annotations

import inspect
import typing
from typing import Any

from liser_core.config import INJECTED_OPTIONS


def _type_name(t: Any) -> str:
    if t is inspect.Parameter.empty:
        return "-"
    if isinstance(t, type):
        return t.__name__
    return str(t).replace("typing.", "").replace("collections.abc.", "")


def options(entry, kind: str) -> list[tuple[str, str, str]]:
    """(name, type, default) of each option a recipe may set (injected ones left out)."""
    sig = entry.signature()
    fn = entry.factory.__init__ if isinstance(entry.factory, type) else entry.factory
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - annotations that do not resolve are shown as written
        hints = {}
    rows = []
    for name, p in sig.parameters.items():
        if name in INJECTED_OPTIONS.get(kind, ()) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = "(required)" if p.default is p.empty else repr(p.default)
        rows.append((name, _type_name(hints.get(name, p.annotation)), default))
    return rows


def describe(host, kind: str, name: str) -> str:
    entry = host.registries[kind].get(name)
    info = next((p for p in host.plugins if p.name == entry.plugin), None)
    where = entry.plugin + (f" ({info.distribution} {info.version})" if info and info.distribution else "")
    lines = [f"{kind} {name}  -- {entry.summary}".rstrip(" -"), f"  plugin: {where}"]
    target = entry.factory
    lines.append(f"  factory: {getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}")
    if entry.tags:
        lines.append("  tags: " + ", ".join(f"{k}={v}" for k, v in entry.tags.items()))
    injected = [n for n in INJECTED_OPTIONS.get(kind, ()) if n in entry.signature().parameters]
    rows = options(entry, kind)
    lines.append("  options:" if rows else "  options: none")
    if rows:
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            lines.append(f"    {r[0]:<{w[0]}}  {r[1]:<{w[1]}}  = {r[2]}")
    if injected:
        lines.append(f"  set by LiSER: {', '.join(injected)}")
    doc = inspect.getdoc(target) or ""
    if doc:
        lines.append("")
        lines += ["  " + line if line else "" for line in doc.splitlines()]
    return "\n".join(lines)


def find(host, name: str, kinds) -> list[str]:
    """The kinds that have a component called ``name``."""
    return [k for k in kinds if name in host.registries[k]]

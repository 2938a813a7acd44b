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
    # the plugin that provides it: a shadowed package of the same entry-point name provides nothing
    info = next((p for p in host.plugins if p.name == entry.plugin and p.status == "loaded"), None)
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
    if kind in ("student", "teacher"):
        lines.append(f"  taps: {taps_line(entry, kind)}")
    doc = inspect.getdoc(target) or ""
    if doc:
        lines.append("")
        lines += ["  " + line if line else "" for line in doc.splitlines()]
    return "\n".join(lines)


def taps_line(entry, kind: str) -> str:
    """The feature taps a student or teacher declares (``taps``, :mod:`liser_core.taps`), as
    built with its default options; any submodule path works as a tap too."""
    declared = getattr(entry.factory, "taps", None)
    if not isinstance(declared, dict):
        required = [n for n, _, d in options(entry, kind) if d == "(required)"]
        if required:
            return f"declared when built (depends on its options; required: {', '.join(required)}); any submodule path"
        import torch

        from liser_core.labels import label_space

        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                inject = {"label_space": label_space("ravdess8")} if "label_space" in entry.signature().parameters else {}
                declared = getattr(entry.factory(**inject), "taps", None)
        except Exception as exc:  # noqa: BLE001 - a component that cannot be built bare says why
            return f"unknown (building it with default options failed: {type(exc).__name__}); any submodule path"
    names = ", ".join(declared or {})
    return f"{names} (default options); any submodule path too" if names else "none declared; any submodule path"


def find(host, name: str, kinds) -> list[str]:
    """The kinds that have a component called ``name``."""
    return [k for k in kinds if name in host.registries[k]]

"""What a result was computed from: the comparable part of a resolved recipe, its fingerprint,
and the keys where two recipes differ.

The same definitions serve resuming a run (same recipe: continue; another: refuse, naming the
keys), ``liser bench`` (a combination whose recipe changed is stale and rerun) and
``liser summarize`` (runs are averaged only within one recipe).

Example::

    >>> diff_keys({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}})
    ['b.c']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

#: Recipe keys that change where a run goes and what it reports to, not what it computes.
#: (``threads`` is not one of them: CPU kernels split their sums by thread, so a run resumed
#: with another thread count would not compute what the uninterrupted one does.)
RESUME_FREE_KEYS = ("run_dir", "device", "loggers")
#: Keys that do not change results beyond the last bits: also the run's name, where teacher
#: outputs are cached, and the thread count (what results are grouped and compared by).
RESULT_FREE_KEYS = (*RESUME_FREE_KEYS, "threads", "name", "store", "store_dtype")


def plain_config(cfg: Any) -> dict[str, Any]:
    """A DictConfig (or mapping) as plain, resolved containers with enums as their values."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return json.loads(json.dumps(cfg, default=str))


def comparable(cfg: Any, drop: Iterable[str] = RESUME_FREE_KEYS) -> dict[str, Any]:
    """The recipe without ``drop`` (dotted keys: ``data.options.fold`` drops one leaf)."""
    d = plain_config(cfg)
    for key in drop:
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(leaf, None)
    return d


def fingerprint(cfg: Any, versions: Mapping[str, str] | None = None, drop: Iterable[str] = RESULT_FREE_KEYS) -> str:
    """sha256 (hex) of the comparable recipe and the code versions that run it."""
    body = {"recipe": comparable(cfg, drop), "versions": dict(sorted((versions or {}).items()))}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted key paths where two plain configs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(root)"]

"""Typed YAML files with precise errors: a dataclass schema, YAML read with a safe loader (no
tag can import or run code), ``key=value`` overrides, and checks that name the full key path of
any culprit (``distil.losses.0.options.temperatur``) with the close matches.

:func:`load` reads a file onto the schema's defaults, applies overrides and type-checks;
:func:`check_call_options` checks a mapping of options against a function's signature and
annotations. ``liser_core.config`` holds LiSER's recipe schema and uses both.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import functools
import inspect
import os
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf import errors as oc_errors

from .errors import ConfigError, close_matches, one_line

__all__ = ["MAX_VALUES", "check_call_options", "load", "parse_override", "plain", "safe_load"]


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1: no tags that build objects) with YAML 1.2's floats in
    exponent form: ``1e-3`` and ``3e-3`` are numbers, as in every other YAML and JSON reader
    (YAML 1.1 needs a dot, ``1.0e-3``, and reads ``1e-3`` as text)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` for recipes, grids and run records (:class:`_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass

#: A recipe is a few hundred values; more means YAML aliases expanding (a "billion laughs").
MAX_VALUES = 100_000

@functools.lru_cache(maxsize=8)
def _schema_cached(schema_type: type) -> DictConfig:
    return OmegaConf.structured(schema_type)


def _schema(schema_type: type) -> DictConfig:
    """The typed defaults (a fresh copy: callers merge into it)."""
    return _schema_cached(schema_type).copy()


def _suggest(schema: DictConfig, full_key: str) -> list[str]:
    parent, _, leaf = str(full_key).rpartition(".")
    node = OmegaConf.select(schema, parent) if parent else schema
    if isinstance(node, ListConfig) and len(node) == 0:
        return []
    if isinstance(node, ListConfig):
        node = node[0]
    if isinstance(node, DictConfig):
        return close_matches(leaf, [str(k) for k in node.keys()])
    return []


def _translate(exc: oc_errors.OmegaConfBaseException, where: str, schema: DictConfig) -> ConfigError:
    key = str(getattr(exc, "full_key", "") or "")
    msg = str(getattr(exc, "msg", exc)).splitlines()[0]
    if isinstance(exc, oc_errors.ConfigKeyError):
        leaf = key.rpartition(".")[2]
        return ConfigError(key, f"unknown key {leaf!r}{where}", _suggest(schema, key))
    if isinstance(exc, oc_errors.MissingMandatoryValue):
        return ConfigError(key, f"missing required value{where}")
    return ConfigError(key, f"{msg}{where}")


def parse_override(text: str) -> tuple[str, Any]:
    """``"distil.epochs=5"`` -> ``("distil.epochs", 5)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(text, "override must look like key=value (e.g. distil.epochs=5)")
    try:
        value = safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"cannot parse value {raw!r}: {exc}") from None
    return key, value


def load(
    schema_type: type,
    path: str | Path | None,
    overrides: list[str] = (),
    *,
    check_values: Callable[[DictConfig], None] | None = None,
    fast: bool = True,
) -> DictConfig:
    """Read a YAML file, merge it onto the defaults of the dataclass ``schema_type``, apply
    ``key=value`` overrides, type-check, then call ``check_values`` (rules a type cannot say).

    Example::

        >>> @dataclasses.dataclass
        ... class Train:
        ...     epochs: int = 1
        >>> load(Train, None, ["epochs=3"]).epochs
        3
    """
    schema = _schema(schema_type)
    check_values = check_values or (lambda cfg: None)
    if overrides and fast:  # the fast way: overrides applied to the YAML's containers, one merge
        try:
            return _load_fast(schema_type, path, list(overrides), schema, check_values)
        except Exception:  # noqa: BLE001 - the slow way below says precisely what is wrong
            pass
    cfg = schema.copy()
    where = ""
    if path is not None:
        path = Path(path)
        where = f" (in {path})"
        if not path.is_file():
            raise ConfigError("", f"recipe {str(path)!r} does not exist")
        try:
            user = safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError("", f"{path}: invalid YAML: {one_line(exc)}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError("", f"{path}: not a YAML recipe (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
        _check_size(user, str(path))
        if user is None:
            user = {}
        if not isinstance(user, dict):
            raise ConfigError("", f"{path}: a recipe must be a mapping at top level")
        _check_keys(user, schema_type, "")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(user))
        except oc_errors.OmegaConfBaseException as exc:
            raise _translate(exc, where, schema) from None
    for text in overrides:
        key, value = parse_override(text)
        ann = _annotation_of(schema_type, key)
        if ann is not None:
            _check_scalar(key, value, ann)
            _check_value_keys(value, ann, key)  # unknown keys inside the value, named with their full path
        try:
            _apply_override(cfg, key, value, schema)
        except oc_errors.OmegaConfBaseException as exc:
            err = _translate(exc, f" (override {text!r})", schema)
            if not err.key:
                err = ConfigError(key, err.reason)
            raise err from None
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(missing[0], f"missing required value{where}")
        OmegaConf.resolve(cfg)
    except oc_errors.OmegaConfBaseException as exc:  # ${...}: recursive, or naming nothing
        raise _translate(exc, where, schema) from None
    check_values(cfg)
    return cfg


def _check_size(obj: Any, where: str) -> None:
    """Refuse YAML whose aliases expand a small file into a huge structure, before anything
    copies it (OmegaConf would expand every alias)."""
    count, stack = 0, [obj]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError("", f"{where}: expands to more than {MAX_VALUES:,} values (YAML aliases?); not a recipe")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


@functools.lru_cache(maxsize=64)
def _read_yaml(path: str, mtime_ns: int, size: int) -> Any:
    return safe_load(Path(path).read_text())


def _load_fast(schema_type: type, path: str | Path | None, overrides: list[str], schema: DictConfig,
               check_values: Callable[[DictConfig], None]) -> DictConfig:
    """:func:`load` for valid input, in one OmegaConf merge instead of one per override
    (a grid resolves hundreds of recipes). Overrides follow the same rules, applied to plain
    containers: a mapping for a typed node merges key by key, one for a free-form node
    (component ``options``) or a list replaces it. Anything unusual raises, and the caller
    takes the slow way, which names the problem."""
    user: Any = {}
    if path is not None:
        st = os.stat(path)
        raw = _read_yaml(str(path), st.st_mtime_ns, st.st_size)
        _check_size(raw, str(path))
        user = copy.deepcopy(raw) or {}
    if not isinstance(user, dict):
        raise ValueError("not a mapping")
    for text in overrides:
        key, value = parse_override(text)
        _set_plain(user, key.split("."), value, schema_type)
    _check_keys(user, schema_type, "")
    # into a deep copy of the defaults, in place: the same result as OmegaConf.merge, which copies
    # node by node as it goes (~40 % of a grid's planning time)
    cfg = OmegaConf.unsafe_merge(copy.deepcopy(schema), OmegaConf.create(user))
    if OmegaConf.missing_keys(cfg):
        raise ValueError("missing values")
    OmegaConf.resolve(cfg)
    check_values(cfg)
    return cfg


def _set_plain(node: Any, parts: list[str], value: Any, typ: Any) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        child_type = typ
        child = node[int(head)] if head.isdigit() else None
        if child is None:
            raise KeyError(head)
        if not rest:
            node[int(head)] = value
            return
        _set_plain(child, rest, value, child_type)
        return
    if not isinstance(node, dict):
        raise TypeError(head)
    field_type = _field_type(typ, head)
    if not rest:
        if isinstance(value, dict) and dataclasses.is_dataclass(field_type):  # typed: key by key
            node.setdefault(head, {})
            if not isinstance(node[head], dict):
                raise TypeError(head)
            for k, v in value.items():
                _set_plain(node[head], [str(k)], v, field_type)
            return
        node[head] = value
        return
    if head not in node:
        if not dataclasses.is_dataclass(field_type) and field_type is not dict:
            raise KeyError(head)
        node[head] = {}
    if typing.get_origin(field_type) is list:
        (field_type,) = typing.get_args(field_type)
    _set_plain(node[head], rest, value, field_type)


@functools.cache
def _hints(obj: Any) -> dict[str, Any]:
    """``typing.get_type_hints``, once per class or function (it evaluates string annotations)."""
    return typing.get_type_hints(obj)


def _field_type(typ: Any, name: str) -> Any:
    if dataclasses.is_dataclass(typ):
        hints = _hints(typ)
        if name not in hints:
            raise KeyError(name)
        return hints[name]
    return Any  # a free-form mapping (component options, loggers)


def _apply_override(cfg: DictConfig, key: str, value: Any, schema: DictConfig) -> None:
    """Set ``key`` to ``value``. A mapping given for a typed node (``distil``, ``student``...) is
    applied key by key, so unnamed fields keep their values; a mapping given for a free-form
    node (component ``options``) replaces it whole, so switching components cannot leave the
    old component's options behind."""
    _check_override_path(cfg, key, schema)
    target = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    if isinstance(value, dict) and isinstance(target, DictConfig):
        if OmegaConf.get_type(target) not in (dict, None):
            for k, v in value.items():
                _apply_override(cfg, f"{key}.{k}", v, schema)
            return
        OmegaConf.update(cfg, key, value, merge=False)
        return
    OmegaConf.update(cfg, key, value, merge=True)


def _check_keys(user: Any, schema_type: Any, path: str) -> None:
    """Unknown keys anywhere in typed nodes, with their full path (OmegaConf loses the path of
    keys inside list items)."""
    if not (isinstance(user, dict) and dataclasses.is_dataclass(schema_type)):
        return
    hints = _hints(schema_type)
    for k, v in user.items():
        here = f"{path}.{k}" if path else str(k)
        if k not in hints:
            raise ConfigError(here, f"unknown key {k!r}", close_matches(str(k), hints))
        ann = hints[k]
        _check_scalar(here, v, ann)
        origin = typing.get_origin(ann)
        if origin is list and isinstance(v, list):
            (elem,) = typing.get_args(ann) or (Any,)
            for i, item in enumerate(v):
                _check_keys(item, elem, f"{here}.{i}")
        else:
            _check_keys(v, ann, here)


def _check_value_keys(value: Any, ann: Any, path: str) -> None:
    """:func:`_check_keys` for an override's value at ``path`` (a list of typed items, or one)."""
    if typing.get_origin(ann) is list and isinstance(value, list):
        (elem,) = typing.get_args(ann) or (Any,)
        for i, item in enumerate(value):
            _check_keys(item, elem, f"{path}.{i}")
    else:
        _check_keys(value, ann, path)


def _annotation_of(schema_type: type, key: str) -> Any:
    """The schema's annotation for a dotted key (None below free-form nodes or unknown keys)."""
    typ: Any = schema_type
    for part in key.split("."):
        if typing.get_origin(typ) is list:
            if not part.isdigit():
                return None
            (typ,) = typing.get_args(typ)
            continue
        if not dataclasses.is_dataclass(typ) or part not in _hints(typ):
            return None
        typ = _hints(typ)[part]
    return typ


def _check_scalar(key: str, value: Any, ann: Any) -> None:
    """A number field given text (``lr: '0.01'``) is an error, not a silent conversion; an
    ``${...}`` interpolation is left to OmegaConf."""
    if not isinstance(value, str) or value.startswith("${"):
        return
    args = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
    if any(a in (int, float) for a in args) and str not in args:
        raise ConfigError(key, f"{value!r} is text; a number goes here (write it without quotes)")


def _check_override_path(cfg: DictConfig, key: str, schema: DictConfig) -> None:
    """Overrides may not invent keys in typed nodes (OmegaConf would add them silently in lists)."""
    node: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(here, f"no list item {part!r} (the list has {len(node)} items)")
            node = node[int(part)]
        elif isinstance(node, DictConfig):
            typed = OmegaConf.get_type(node) not in (dict, None)
            if part not in node:
                if typed:
                    raise ConfigError(
                        here, "unknown key", close_matches(part, [str(k) for k in node.keys()])
                    )
                return  # free-form mapping (component options): new keys allowed here
            node = node._get_node(part)
            if not isinstance(node, (DictConfig, ListConfig)):
                if depth != len(parts) - 1:
                    raise ConfigError(here, "is a value, not a mapping")
                return
        else:
            return


def _type_ok(value: Any, ann: Any) -> bool:
    if ann is inspect.Parameter.empty or ann is Any:
        return True
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(ann))
    if origin is typing.Literal:
        return value in typing.get_args(ann)
    if ann is type(None):
        return value is None
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann in (str, bool):
        return isinstance(value, ann)
    if origin in (list, tuple, collections.abc.Sequence) or ann in (list, tuple):
        if not isinstance(value, (list, tuple, ListConfig)):
            return False
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        return all(_type_ok(v, args[0]) for v in value) if args else True
    if origin is dict or ann is dict:
        return isinstance(value, (dict, DictConfig))
    return True  # annotations we do not understand are not checked


def _type_name(ann: Any) -> str:
    if typing.get_origin(ann) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def check_call_options(
    fn: Callable, name: str, options: dict, options_key: str, kind: str, injected: tuple[str, ...] = ()
) -> None:
    """Check ``options`` (found at ``options_key``) against the signature and annotations of
    ``fn`` (a function or a class), the factory of the ``kind`` called ``name``: unknown options,
    wrong types and missing required ones. ``injected`` are arguments the caller supplies itself."""
    sig = inspect.signature(fn)
    try:
        hints = _hints(fn.__init__ if isinstance(fn, type) else fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations are not checked
        hints = {}
    params = {
        n: p
        for n, p in sig.parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in injected
    }
    takes_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    for opt, value in options.items():
        if opt in injected:
            raise ConfigError(f"{options_key}.{opt}", f"is set by LiSER for every {kind}; remove it")
        if opt not in params:
            if takes_any:
                continue
            raise ConfigError(
                f"{options_key}.{opt}",
                f"unknown option for {kind} {name!r} (options: {', '.join(params) or 'none'}; "
                f"to replace them all: {options_key}={{...}})",
                close_matches(opt, params),
            )
        ann = hints.get(opt, params[opt].annotation)
        if not _type_ok(value, ann):
            raise ConfigError(
                f"{options_key}.{opt}",
                f"{value!r} is not a valid {_type_name(ann)} for {kind} {name!r}",
            )
    for n, p in params.items():
        if p.default is p.empty and n not in options:
            raise ConfigError(f"{options_key}.{n}", f"missing required option of {kind} {name!r}")


def plain(node) -> Any:
    """A DictConfig/ListConfig as plain Python containers (tuples stay lists)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node

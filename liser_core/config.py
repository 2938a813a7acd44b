"""Recipes: the typed schema, YAML loading, ``key=value`` overrides and validation.

A recipe is a small YAML diff over the defaults below. Everything is checked before any work
starts: an unknown key, a wrong type, a missing value, an unknown component or component
option, or a path that does not exist raises :class:`~liser_core.errors.ConfigError` naming the
full key path (``distil.losses.0.options.temperatur``) and the close matches.
YAML is read with a safe loader: no tag can import or run code.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import functools
import inspect
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf import errors as oc_errors

from .data import SPLITS
from .errors import ConfigError, UnknownComponentError, close_matches, one_line


class StoreDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


class Precision(str, Enum):
    fp32 = "fp32"  # full precision
    bf16 = "bf16"  # autocast to bfloat16 (CUDA with bf16 support, recent CPUs)
    fp16 = "fp16"  # autocast to float16 with a gradient scaler (CUDA)


class DuplicatePolicy(str, Enum):
    skip = "skip"  # leave out pool clips that repeat another clip's content, and training copies of test clips
    warn = "warn"  # keep them, with a warning in metrics.json
    error = "error"  # refuse to run


class BadClipPolicy(str, Enum):
    skip = "skip"  # log the file and reason, count it in the report, go on
    raise_ = "raise"  # stop the run naming the file and reason


@dataclass
class DataConfig:
    name: str = MISSING  # registered dataset, e.g. synth_av
    options: dict[str, Any] = field(default_factory=dict)  # the dataset factory's options
    bad_clips: BadClipPolicy = BadClipPolicy.skip  # unreadable/silent/broken clips: skip | raise
    duplicates: DuplicatePolicy = DuplicatePolicy.skip  # the same content in two splits: skip | warn | error
    workers: int | None = None  # processes decoding clips read from files; None: from the CPU count; 0: in process
    cache: bool = True  # decode (and resample) each clip read from a file once, across epochs, stages and runs
    cache_dir: str | None = None  # the decoded-clip cache; None: $LISER_CACHE_DIR/decoded
    cache_max_gb: float = 50.0  # least recently used entries are removed past this size


VALIDATION_METRICS = ("uar", "accuracy", "macro_f1", "loss")


@dataclass
class EarlyStopConfig:
    #: a validation metric (uar | accuracy | macro_f1 | loss) to keep the best epoch by; None: off
    metric: str | None = None
    patience: int = 0  # stop after this many epochs without improvement; 0: run every epoch
    restore_best: bool = True  # end with the best epoch's weights (else the last epoch's)


@dataclass
class ValidationConfig:
    #: where validation clips come from: none | labeled | teacher (never the test split): whole
    #: speakers of that split held out of it, so validation is speaker-disjoint from training
    source: str = "none"
    speakers: float = 0.2  # share of the source split's speakers held out (at least one)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 5.0  # max gradient norm; 0 disables clipping
    nonfinite_patience: int = 5  # NaN/Inf losses skipped (with a warning) before the run stops
    checkpoint_every: int = 0  # also save a resumable checkpoint every N optimiser steps (0: epoch ends only)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)


@dataclass
class LabelMapConfig:
    merge: dict[str, str] = field(default_factory=dict)  # teacher class -> student class
    drop: list[str] = field(default_factory=list)  # teacher classes removed (mass renormalised)


@dataclass
class TeacherConfig:
    name: str = MISSING  # registered teacher, e.g. face_cnn
    options: dict[str, Any] = field(default_factory=dict)  # the teacher factory's options
    checkpoint: str | None = None  # directory of a saved teacher; None: fit on the teacher split
    weight: float = 1.0  # share of this teacher in the combined targets
    label_map: LabelMapConfig = field(default_factory=LabelMapConfig)
    fit: TrainConfig = field(default_factory=TrainConfig)
    #: use it even though its fit set shares speakers or clips with the test split (refused
    #: otherwise); every report of the run then says so
    allow_test_overlap: bool = False
    #: seed of its initial weights and fit; None: drawn from its recipe block and its fit set, so
    #: that it is fitted once per fit set and reused across a grid (runs with a store)
    seed: int | None = None


@dataclass
class LossConfig:
    name: str = MISSING  # registered loss, e.g. kl
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AugmentConfig:
    name: str = MISSING  # registered augmentation, e.g. gain
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudentTrainConfig(TrainConfig):
    #: applied in order to each training batch of the student's audio (never to a teacher's
    #: input, never at evaluation), e.g. [{name: gain}, {name: noise, options: {snr_db: [10, 30]}}]
    augment: list[AugmentConfig] = field(default_factory=list)


@dataclass
class StudentConfig:
    name: str = MISSING  # registered student, e.g. logmel_cnn
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistilConfig(StudentTrainConfig):
    losses: list[LossConfig] = field(default_factory=list)
    #: how several teachers' targets combine: a registered combiner (per_class, arithmetic,
    #: geometric, or a plugin's), with its options
    combination: str = "per_class"
    combination_options: dict[str, Any] = field(default_factory=dict)
    include_labeled: bool = True  # also distil on the labeled split (its labels feed `ce`)


@dataclass
class FinetuneConfig(StudentTrainConfig):
    epochs: int = 0  # 0 skips the stage


@dataclass
class BaselineConfig(StudentTrainConfig):
    enabled: bool = False  # also train the same student on the labeled split alone


@dataclass
class EvaluateConfig:
    split: str = "test"
    batch_size: int = 64


@dataclass
class RecipeConfig:
    name: str = "liser"  # run name (logs, wandb)
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | cuda:N | mps | auto
    precision: Precision = Precision.fp32  # autocast in training and inference: fp32 | bf16 | fp16
    threads: int | None = None  # torch CPU threads; None: this process's CPUs less the decoding workers (on CPU, results depend on it)
    run_dir: str | None = None  # default: runs/<name>-<timestamp>
    store: str | None = None  # teacher-output store folder: each teacher labels each clip once, ever
    store_dtype: StoreDtype = StoreDtype.float32  # precision of stored teacher outputs
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    teachers: list[TeacherConfig] = field(default_factory=list)
    student: StudentConfig = field(default_factory=StudentConfig)
    distil: DistilConfig = field(default_factory=DistilConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    loggers: dict[str, dict[str, Any]] = field(default_factory=lambda: {"run_dir": {}})


#: Factory arguments the engine supplies itself; a recipe may not set them.
INJECTED_OPTIONS = {
    "dataset": ("seed",),
    "teacher": ("label_space",),
    "student": ("label_space",),
    "loss": (),
    "logger": (),
    "combiner": (),
    "augmentation": ("sample_rate",),
}


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _schema_cached() -> DictConfig:
    return OmegaConf.structured(RecipeConfig)


def _schema() -> DictConfig:
    """The typed defaults (a fresh copy: callers merge into it)."""
    return _schema_cached().copy()


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
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"cannot parse value {raw!r}: {exc}") from None
    return key, value


def load_recipe(path: str | Path | None, overrides: list[str] = (), *, fast: bool = True) -> DictConfig:
    """Read a recipe, merge it onto the schema defaults, apply overrides and type-check.

    Example::

        >>> cfg = load_recipe("recipes/synth_kd.yaml", ["distil.epochs=1"])  # doctest: +SKIP
        >>> cfg.distil.epochs
        1
    """
    schema = _schema()
    if overrides and fast:  # the fast way: overrides applied to the YAML's containers, one merge
        try:
            return _load_fast(path, list(overrides), schema)
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
            user = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError("", f"{path}: invalid YAML: {one_line(exc)}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError("", f"{path}: not a YAML recipe (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
        _check_size(user, str(path))
        if user is None:
            user = {}
        if not isinstance(user, dict):
            raise ConfigError("", f"{path}: a recipe must be a mapping at top level")
        _check_keys(user, RecipeConfig, "")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(user))
        except oc_errors.OmegaConfBaseException as exc:
            raise _translate(exc, where, schema) from None
    for text in overrides:
        key, value = parse_override(text)
        ann = _annotation_of(key)
        if ann is not None:
            _check_scalar(key, value, ann)
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
    _check_values(cfg)
    return cfg


#: A recipe is a few hundred values; more means YAML aliases expanding (a "billion laughs").
MAX_VALUES = 100_000


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


def _check_values(cfg: DictConfig) -> None:
    """Values a type cannot express: numbers in range, no text where a number goes."""
    if not 0 <= int(cfg.seed) < 2**31:
        raise ConfigError("seed", f"{cfg.seed} is not in [0, 2**31)")
    blocks = {"distil": cfg.distil, "finetune": cfg.finetune, "baseline": cfg.baseline}
    blocks |= {f"teachers.{i}.fit": t.fit for i, t in enumerate(cfg.teachers)}
    for key, b in blocks.items():
        for name, ok, rule in (
            ("epochs", b.epochs >= 0, ">= 0"), ("batch_size", b.batch_size >= 1, ">= 1"), ("lr", b.lr > 0, "> 0"),
            ("weight_decay", b.weight_decay >= 0, ">= 0"), ("grad_clip", b.grad_clip >= 0, ">= 0"),
            ("nonfinite_patience", b.nonfinite_patience >= 0, ">= 0"), ("checkpoint_every", b.checkpoint_every >= 0, ">= 0"),
        ):
            value = b[name]
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key}.{name}", f"{value} is not a finite number")
            if not ok:
                raise ConfigError(f"{key}.{name}", f"{value} must be {rule}")
    if cfg.evaluate.batch_size < 1:
        raise ConfigError("evaluate.batch_size", f"{cfg.evaluate.batch_size} must be >= 1")
    for i, t in enumerate(cfg.teachers):
        if not math.isfinite(t.weight):
            raise ConfigError(f"teachers.{i}.weight", f"{t.weight} is not a finite number")
    for i, loss in enumerate(cfg.distil.losses):
        if not math.isfinite(loss.weight) or loss.weight < 0:
            raise ConfigError(f"distil.losses.{i}.weight", f"{loss.weight} must be a finite number >= 0")
    seen = {}
    for i, t in enumerate(cfg.teachers):
        block = json.dumps(plain(t), sort_keys=True, default=str)
        if block in seen:
            raise ConfigError(f"teachers.{i}", f"is the same teacher as teachers.{seen[block]} (same name, options and settings)")
        seen[block] = i


@functools.lru_cache(maxsize=64)
def _read_yaml(path: str, mtime_ns: int, size: int) -> Any:
    return yaml.safe_load(Path(path).read_text())


def _load_fast(path: str | Path | None, overrides: list[str], schema: DictConfig) -> DictConfig:
    """``load_recipe`` for valid input, in one OmegaConf merge instead of one per override
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
        _set_plain(user, key.split("."), value, RecipeConfig)
    _check_keys(user, RecipeConfig, "")
    cfg = OmegaConf.merge(schema, OmegaConf.create(user))
    if OmegaConf.missing_keys(cfg):
        raise ValueError("missing values")
    OmegaConf.resolve(cfg)
    _check_values(cfg)
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


def _annotation_of(key: str) -> Any:
    """The schema's annotation for a dotted key (None below free-form nodes or unknown keys)."""
    typ: Any = RecipeConfig
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


# ---------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------


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


def check_options(
    registry, name: str, options: dict, key: str, kind: str, options_key: str | None = None
) -> None:
    """Check ``options`` (found at ``options_key``) against the signature of ``registry[name]``."""
    options_key = options_key or f"{key}.options"
    try:
        entry = registry.get(name)
    except UnknownComponentError as exc:
        raise ConfigError(f"{key}.name", str(exc)) from None
    sig = entry.signature()
    try:
        fn = entry.factory.__init__ if isinstance(entry.factory, type) else entry.factory
        hints = _hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations are not checked
        hints = {}
    params = {
        n: p
        for n, p in sig.parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in INJECTED_OPTIONS[kind]
    }
    takes_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    for opt, value in options.items():
        if opt in INJECTED_OPTIONS[kind]:
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


def validate_components(cfg: DictConfig, registries) -> None:
    """Every component named in the recipe exists and accepts its options; paths exist."""
    check_options(registries.dataset, cfg.data.name, plain(cfg.data.options), "data", "dataset")
    for i, t in enumerate(cfg.teachers):
        check_options(registries.teacher, t.name, plain(t.options), f"teachers.{i}", "teacher")
        if t.checkpoint is not None and not Path(t.checkpoint).exists():
            raise ConfigError(f"teachers.{i}.checkpoint", f"path {t.checkpoint!r} does not exist")
        if t.weight < 0:
            raise ConfigError(f"teachers.{i}.weight", "must be >= 0")
    check_options(registries.student, cfg.student.name, plain(cfg.student.options), "student", "student")
    for i, loss in enumerate(cfg.distil.losses):
        check_options(registries.loss, loss.name, plain(loss.options), f"distil.losses.{i}", "loss")
    if not cfg.distil.losses and cfg.distil.epochs > 0:
        raise ConfigError("distil.losses", "distillation needs at least one loss (e.g. kl)")
    if cfg.teachers and all(t.weight == 0 for t in cfg.teachers):
        raise ConfigError("teachers", "every teacher has weight 0")
    if cfg.distil.combination not in registries.combiner:
        raise ConfigError("distil.combination", f"unknown combiner {cfg.distil.combination!r} (registered: "
                          f"{', '.join(registries.combiner.list())})", close_matches(str(cfg.distil.combination), registries.combiner.list()))
    check_options(registries.combiner, cfg.distil.combination, plain(cfg.distil.combination_options),
                  "distil.combination", "combiner", "distil.combination_options")
    for stage in ("distil", "finetune", "baseline"):
        for i, aug in enumerate(cfg[stage].augment):
            check_options(registries.augmentation, aug.name, plain(aug.options), f"{stage}.augment.{i}", "augmentation")
    for name, opts in cfg.loggers.items():
        check_options(registries.logger, str(name), plain(opts or {}), f"loggers.{name}", "logger", f"loggers.{name}")
    for stage in ("distil", "finetune", "baseline"):
        sc = cfg[stage]
        for k in ("epochs", "batch_size"):
            if sc[k] < (1 if k == "batch_size" else 0):
                raise ConfigError(f"{stage}.{k}", f"must be {'>= 1' if k == 'batch_size' else '>= 0'}")
        if sc.lr <= 0:
            raise ConfigError(f"{stage}.lr", "must be > 0")
    _check_validation(cfg)
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError("threads", "must be >= 1, or null for automatic")
    if cfg.data.workers is not None and cfg.data.workers < 0:
        raise ConfigError("data.workers", "must be >= 0 (0: decode in the main process), or null for automatic")
    if cfg.data.cache_max_gb <= 0:
        raise ConfigError("data.cache_max_gb", "must be > 0")
    if cfg.evaluate.split not in SPLITS:
        raise ConfigError("evaluate.split", f"{cfg.evaluate.split!r} is not a split", close_matches(str(cfg.evaluate.split), SPLITS))
    dev = str(cfg.device)
    if not (dev in ("cpu", "cuda", "mps", "auto") or dev.startswith("cuda:")):
        raise ConfigError("device", f"{dev!r} is not cpu, cuda, cuda:N, mps or auto",
                          close_matches(dev, ["cpu", "cuda", "mps", "auto"]))



def _check_validation(cfg: DictConfig) -> None:
    v = cfg.validation
    if v.source not in ("none", "labeled", "teacher"):
        why = "never the test split: scores on it would no longer be an estimate" if v.source == "test" else "a split"
        raise ConfigError("validation.source", f"{v.source!r}: choose none, labeled or teacher ({why})",
                          close_matches(str(v.source), ["none", "labeled", "teacher"]))
    if not 0 < v.speakers < 1:
        raise ConfigError("validation.speakers", f"{v.speakers} is not a share in (0, 1)")
    blocks = {s: cfg[s] for s in ("distil", "finetune", "baseline")} | {f"teachers.{i}.fit": t.fit for i, t in enumerate(cfg.teachers)}
    for key, block in blocks.items():
        es = block.early_stop
        if es.metric is None:
            continue
        if es.metric not in VALIDATION_METRICS:
            raise ConfigError(f"{key}.early_stop.metric", f"{es.metric!r} is not one of {', '.join(VALIDATION_METRICS)}",
                              close_matches(str(es.metric), VALIDATION_METRICS))
        if es.patience < 0:
            raise ConfigError(f"{key}.early_stop.patience", "must be >= 0")
        if v.source == "none":
            raise ConfigError(f"{key}.early_stop.metric", "needs a validation split: set validation.source (labeled or teacher)")


def plain(node) -> Any:
    """A DictConfig/ListConfig as plain Python containers (tuples stay lists)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node

"""Recipes: the typed schema, loading (:mod:`liser_common.typedyaml`) and validation.

A recipe is a small YAML diff over the defaults below. Everything is checked before any work
starts: an unknown key, a wrong type, a missing value, an unknown component or component
option, or a path that does not exist raises :class:`~liser_core.errors.ConfigError` naming the
full key path (``distil.losses.0.options.temperatur``) and the close matches.
YAML is read with a safe loader: no tag can import or run code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig

from liser_common import typedyaml
from liser_common.typedyaml import parse_override, plain  # noqa: F401 - part of this module's API

from .data import SPLITS
from .errors import ConfigError, UnknownComponentError, close_matches


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


#: What to do with unreadable/silent/broken clips: ``skip`` logs the file and reason, counts it in
#: the report and goes on; ``raise`` stops the run naming the file and reason. Built with the
#: functional API so that the member *name* is ``raise`` (a keyword in class syntax): OmegaConf
#: before 2.4 accepts an enum's names only, not its values (hydra-core, which some packages pull
#: in, pins omegaconf < 2.4).
BadClipPolicy = Enum("BadClipPolicy", {"skip": "skip", "raise": "raise"}, type=str)


@dataclass
class DataConfig:
    name: str = MISSING  # registered dataset, e.g. synth_av
    options: dict[str, Any] = field(default_factory=dict)  # the dataset factory's options
    bad_clips: BadClipPolicy = BadClipPolicy.skip  # unreadable/silent/broken clips: skip | raise
    duplicates: DuplicatePolicy = DuplicatePolicy.skip  # the same content in two splits: skip | warn | error
    #: also treat near copies of test clips (re-encoded, resampled, remuxed, trimmed <= 0.5 s,
    #: gain-changed: an audio fingerprint, docs/soundness.md) as duplicates, by the same policy
    near_duplicates: bool = True
    near_threshold: float = 0.72  # fingerprint similarity at or above which a clip is a near copy
    workers: int | None = None  # processes decoding clips read from files; None: from the CPU count; 0: in process
    cache: bool = True  # decode (and resample) each clip read from a file once, across epochs, stages and runs
    cache_dir: str | None = None  # the decoded-clip cache; None: $LISER_CACHE_DIR/decoded
    cache_max_gb: float = 50.0  # least recently used entries are removed past this size
    feature_cache: bool = True  # fixed frontends (log-mel) computed once per clip (liser_core.features); bit-identical


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
    #: a registered optimizer (adamw, sgd, or a plugin's), given lr and weight_decay above
    optimizer: str = "adamw"
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    #: a registered learning-rate schedule (warmup_cosine, constant, or a plugin's), stepped per step
    scheduler: str = "warmup_cosine"
    scheduler_options: dict[str, Any] = field(default_factory=dict)


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
    #: run it on every distillation batch (eval mode, no gradient), on the student's augmented
    #: view, instead of labeling each clip once into the store (the default); its feature taps
    #: may then be read at full time resolution
    online: bool = False


@dataclass
class LossConfig:
    name: str = MISSING  # registered loss, e.g. kl
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    #: learning rate of this term's own parameters (adapters) in a parameter group of their own;
    #: None: the stage's lr, in the student's group
    lr: float | None = None


@dataclass
class AugmentConfig:
    name: str = MISSING  # registered augmentation, e.g. gain
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudentTrainConfig(TrainConfig):
    #: applied in order to each training batch of the student's audio (never to a teacher's
    #: input, never at evaluation), e.g. [{name: gain}, {name: noise, options: {snr_db: [10, 30]}}]
    augment: list[AugmentConfig] = field(default_factory=list)
    #: how the training clips are cut into each epoch's batches: a registered sampler (random,
    #: class_balanced, duration_buckets, dynamic, or a plugin's), with its options
    sampler: str = "random"
    sampler_options: dict[str, Any] = field(default_factory=dict)


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
    "optimizer": ("params", "lr", "weight_decay"),
    "scheduler": ("optimizer", "total_steps"),
    "sampler": (),
}

#: The default components of a training block; a block that names them behaves as before they
#: were components (the engine's order of batches, AdamW with a warm-up and a cosine decay).
DEFAULT_SAMPLER = "random"


def load_recipe(path: str | Path | None, overrides: list[str] = (), *, fast: bool = True) -> DictConfig:
    """Read a recipe, merge it onto the schema defaults, apply overrides and check every value.

    Example::

        >>> cfg = load_recipe("recipes/synth_kd.yaml", ["distil.epochs=1"])  # doctest: +SKIP
        >>> cfg.distil.epochs
        1
    """
    return typedyaml.load(RecipeConfig, path, overrides, check_values=_check_values, fast=fast)


def check_options(
    registry, name: str, options: dict, key: str, kind: str, options_key: str | None = None
) -> None:
    """Check ``options`` (found at ``options_key``) against the signature of ``registry[name]``."""
    try:
        entry = registry.get(name)
    except UnknownComponentError as exc:
        raise ConfigError(f"{key}.name", str(exc)) from None
    typedyaml.check_call_options(entry.factory, name, options, options_key or f"{key}.options", kind, INJECTED_OPTIONS[kind])


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
        if loss.lr is not None and (not math.isfinite(loss.lr) or loss.lr <= 0):
            raise ConfigError(f"distil.losses.{i}.lr", f"{loss.lr} must be a finite number > 0 (or null: the stage's lr)")
    seen = {}
    for i, t in enumerate(cfg.teachers):
        block = json.dumps(plain(t), sort_keys=True, default=str)
        if block in seen:
            raise ConfigError(f"teachers.{i}", f"is the same teacher as teachers.{seen[block]} (same name, options and settings)")
        seen[block] = i


def component_sites(cfg: DictConfig) -> list[tuple[str, str, str]]:
    """``(recipe key of the name, kind, name)`` of every component a recipe names:
    ``("distil.losses.0.name", "loss", "dkd")``; a logger's key is ``loggers.<name>``."""
    sites = [("data.name", "dataset", str(cfg.data.name))]
    sites += [(f"teachers.{i}.name", "teacher", str(t.name)) for i, t in enumerate(cfg.teachers)]
    sites.append(("student.name", "student", str(cfg.student.name)))
    sites += [(f"distil.losses.{i}.name", "loss", str(lc.name)) for i, lc in enumerate(cfg.distil.losses)]
    sites.append(("distil.combination", "combiner", str(cfg.distil.combination)))
    for stage in ("distil", "finetune", "baseline"):
        sites += [(f"{stage}.augment.{i}.name", "augmentation", str(a.name)) for i, a in enumerate(cfg[stage].augment)]
    for key, block in training_blocks(cfg).items():
        sites += [(f"{key}.optimizer", "optimizer", str(block.optimizer)),
                  (f"{key}.scheduler", "scheduler", str(block.scheduler))]
    for stage in ("distil", "finetune", "baseline"):
        sites.append((f"{stage}.sampler", "sampler", str(cfg[stage].sampler)))
    sites += [(f"loggers.{name}", "logger", str(name)) for name in cfg.loggers]
    return sites


def training_blocks(cfg: DictConfig) -> dict[str, Any]:
    """Recipe key -> every training block (``distil``, ``finetune``, ``baseline``,
    ``teachers.N.fit``)."""
    blocks = {s: cfg[s] for s in ("distil", "finetune", "baseline")}
    return blocks | {f"teachers.{i}.fit": t.fit for i, t in enumerate(cfg.teachers)}


def _check_named(registries, kind: str, name: str, options: dict, key: str) -> None:
    """A component named by a plain ``key`` (``distil.optimizer``) with options at ``key_options``."""
    try:
        registries[kind].get(name)
    except UnknownComponentError as exc:
        raise ConfigError(key, str(exc)) from None
    check_options(registries[kind], name, options, key, kind, f"{key}_options")


def _rename(cfg: DictConfig, key: str, new: str) -> None:
    """Set the component name at ``key`` (a logger's name is its key in ``loggers``)."""
    if key.startswith("loggers."):
        old = key[len("loggers."):]
        if old != new:
            cfg.loggers = {(new if k == old else k): v for k, v in cfg.loggers.items()}
        return
    parent, _, leaf = key.rpartition(".")
    node = cfg
    for part in parent.split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    node[leaf] = new


def canonicalise_names(cfg: DictConfig, registries) -> None:
    """Rewrite each (valid) component name in place to the form fingerprints hash
    (:meth:`Registry.canonical <liser_core._registry.Registry.canonical>`): ``losses:dkd`` and a
    unique ``dkd`` become ``dkd``, ``acme:dkd`` stays ``acme:dkd``."""
    for key, kind, name in component_sites(cfg):
        _rename(cfg, key, registries[kind].canonical(name))


def qualified_config(cfg: DictConfig, registries) -> DictConfig:
    """A copy of a validated recipe with every component as ``PLUGIN:NAME``: what run records
    store, so that what they name cannot change with what is installed later."""
    out = cfg.copy()
    for key, kind, name in component_sites(out):
        _rename(out, key, registries[kind].get_recorded(name).qualified)
    return out


def components_record(cfg: DictConfig, registries) -> dict[str, str]:
    """Recipe key of each component (``student``, ``distil.losses.0``, ``loggers.run_dir``) ->
    its qualified name: what ``manifest.json`` records and :func:`qualify_recorded` reads."""
    out = {}
    for key, kind, name in component_sites(cfg):
        try:
            out[key[: -len(".name")] if key.endswith(".name") else key] = registries[kind].get_recorded(name).qualified
        except UnknownComponentError:  # a component the run could not build is not recorded
            continue
    return out


def qualify_recorded(cfg: DictConfig, registries, plugins=None, components=None) -> None:
    """Read a recipe saved with a run (``state/recipe.yaml``, ``config.yaml``) as the run
    meant it: each bare name becomes the qualified name the run recorded for that key
    (``components``, from its ``manifest.json``; refused by validation when that plugin is not
    loaded now), else, for runs that recorded none, the candidate of a plugin the run
    loaded (``plugins``), else the first-party one (:meth:`Registry.get_recorded`). A name
    that is still ambiguous or unknown is left for validation to refuse."""
    components = components or {}
    for key, kind, name in component_sites(cfg):
        if ":" in name:
            continue
        recorded = components.get(key[: -len(".name")] if key.endswith(".name") else key)
        try:
            if recorded and recorded.rpartition(":")[2] == name:
                # the component the run used, installed or not: gone, validation refuses it by that name
                # (another package's component of the same bare name must not continue the run)
                _rename(cfg, key, recorded)
            else:
                _rename(cfg, key, registries[kind].get_recorded(name, plugins).qualified)
        except UnknownComponentError:
            continue


def run_record(recipe: str | Path | None) -> tuple[list[str], dict[str, str]] | None:
    """``(plugins loaded, component key -> qualified name)`` from the ``manifest.json`` of the
    run directory a recipe was saved in (``RUN/state/recipe.yaml`` or ``RUN/config.yaml``);
    None for a recipe that is not a run's."""
    if recipe is None:
        return None
    path = Path(recipe)
    run_dir = path.parent.parent if path.parent.name == "state" else path.parent
    manifest = run_dir / "manifest.json"
    if path.name not in ("recipe.yaml", "config.yaml") or not manifest.is_file():
        return None
    try:
        record = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    plugins = [p.get("name") for p in record.get("plugins", []) if isinstance(p, dict) and p.get("status") == "loaded"]
    components = record.get("components") if isinstance(record.get("components"), dict) else {}
    return plugins, components


def validate_components(cfg: DictConfig, registries) -> None:
    """Every component named in the recipe exists and accepts its options; paths exist.

    Names are then rewritten to the form fingerprints hash (:func:`canonicalise_names`); an
    ambiguous bare name (two plugins register it) is refused with the qualified choices.
    """
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
    try:
        registries.combiner.get(str(cfg.distil.combination))
    except UnknownComponentError as exc:
        raise ConfigError("distil.combination", str(exc)) from None
    check_options(registries.combiner, cfg.distil.combination, plain(cfg.distil.combination_options),
                  "distil.combination", "combiner", "distil.combination_options")
    for stage in ("distil", "finetune", "baseline"):
        for i, aug in enumerate(cfg[stage].augment):
            check_options(registries.augmentation, aug.name, plain(aug.options), f"{stage}.augment.{i}", "augmentation")
    for key, block in training_blocks(cfg).items():
        _check_named(registries, "optimizer", str(block.optimizer), plain(block.optimizer_options), f"{key}.optimizer")
        _check_named(registries, "scheduler", str(block.scheduler), plain(block.scheduler_options), f"{key}.scheduler")
    for stage in ("distil", "finetune", "baseline"):
        _check_named(registries, "sampler", str(cfg[stage].sampler), plain(cfg[stage].sampler_options), f"{stage}.sampler")
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
    canonicalise_names(cfg, registries)



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


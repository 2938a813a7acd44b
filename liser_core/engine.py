"""The engine: builds a run's components from the registries and runs its stages.

Stages, in order (each can be skipped by its recipe block):

``teach``     load each teacher's checkpoint, or fit it on the corpus's ``teacher`` split
              (never on ``test``);
``label``     run every teacher once over the unlabeled pool (+ the labeled split) and keep its
              logits and embeddings; label maps project them onto the student's classes;
``distil``    train the student on those targets with the recipe's weighted loss terms;
``finetune``  optionally train it further on the labeled split alone;
``baseline``  optionally train the same student on the labeled split alone, for comparison;
``evaluate``  score every teacher, the baseline and the student on the test split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import logging.handlers
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from . import checkpoint, guards, provenance, rundir
from ._plugins import PluginHost
from .clipcache import ClipCache
from .components import BatchTargets, Loss, Student, Teacher, blame, checked_output, loss_value
from .config import (
    BadClipPolicy,
    Combination,
    DuplicatePolicy,
    Precision,
    StoreDtype,
    TrainConfig,
    load_recipe,
    plain,
    validate_components,
)
from .data import SPLITS, Batch, Clip, ClipDataset, Corpus
from .distributed import SINGLE, DistContext, from_env
from .errors import ConfigError, UsageError
from .identity import digests_of
from .labels import LabelMap, LabelSpace
from .metrics import classification_metrics
from .progress import progress
from .store import TeacherStore, clip_key, teacher_meta, weights_digest
from .training import TrainingInterrupted, collect, train
from .trainstate import Checkpointer, read_complete_dir, write_complete_dir

log = logging.getLogger("liser")


@dataclass
class EvalResult:
    """One model scored on one split, in the student's label space."""

    model: str  # teacher key, "student" or "baseline"
    role: str  # teacher | student | baseline
    split: str
    metrics: dict[str, float]  # accuracy (WA), uar (UA), macro_f1
    confusion: torch.Tensor  # (C, C) counts, rows = true class
    label_space: LabelSpace
    probs: torch.Tensor  # (N, C) predicted distribution per clip
    clip_ids: list[str]
    num_parameters: int = 0


@dataclass
class TargetTable:
    """Every teacher's outputs on the distillation set, row i = clip i of that set."""

    logits: dict[str, torch.Tensor]
    embeddings: dict[str, torch.Tensor]
    label_maps: dict[str, LabelMap]
    weights: dict[str, float]
    combination: str

    def batch(self, index: torch.Tensor, device: torch.device) -> BatchTargets:
        idx = index.cpu()
        return BatchTargets(
            logits={k: v[idx].to(device) for k, v in self.logits.items()},
            embeddings={k: v[idx].to(device) for k, v in self.embeddings.items()},
            label_maps=self.label_maps,
            weights=self.weights,
            combination=self.combination,
        )


@dataclass
class RunContext:
    """Everything a run has built; hooks receive it as ``run``."""

    config: DictConfig
    run_dir: Path
    host: PluginHost
    device: torch.device
    dist: DistContext = SINGLE  # this process's rank in a torchrun job
    resumed: bool = False  # continues an interrupted run from its saved state
    corpus: Corpus | None = None
    teachers: dict[str, Teacher] = field(default_factory=dict)
    teacher_configs: dict[str, Any] = field(default_factory=dict)
    label_maps: dict[str, LabelMap] = field(default_factory=dict)
    student: Student | None = None
    baseline: Student | None = None
    losses: dict[str, tuple[float, Loss]] = field(default_factory=dict)
    targets: TargetTable | None = None
    evaluations: list[EvalResult] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: short markers every table shows next to this run's scores (e.g. "test_overlap")
    flags: list[str] = field(default_factory=list)
    #: the splits as the run uses them (after the duplicate guard), and each clip's content digests
    splits: dict[str, list[Clip]] = field(default_factory=dict)
    digests: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    #: per teacher: mapped, merged, dropped and unreachable classes (guards.label_map_report)
    label_map_report: dict[str, Any] = field(default_factory=dict)
    #: sha256 of the resolved recipe (less where/how fast it runs) and the code versions
    fingerprint: str = ""

    @property
    def label_space(self) -> LabelSpace:
        return self.corpus.label_space

    def split(self, role: str) -> list[Clip]:
        """The clips of one split as this run uses them (duplicates left out)."""
        if role in self.splits:
            return self.splits[role]
        return list(self.corpus.split(role))

    def results(self) -> dict[str, dict[str, Any]]:
        return {e.model: {"role": e.role, **e.metrics} for e in self.evaluations}

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} asked for, but CUDA is not available here")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device", "'mps' asked for, but MPS is not available here")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_component(registry, name: str, options: dict, key: str = "", **inject: Any):
    """Build a registered component and remember how (``liser_spec``) so it can be saved.

    A factory that rejects its options (``TypeError``/``ValueError``) is reported as a
    :class:`ConfigError` at ``key``, the recipe path of those options.
    """
    try:
        module = registry.build(name, **options, **inject)
    except ConfigError as exc:  # a composite component validating its parts (e.g. fusion)
        raise ConfigError(f"{key}.{exc.key}" if key else exc.key, exc.reason, exc.suggestions) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, f"{registry.kind} {name!r} rejected its options: {exc}") from exc
    if isinstance(module, torch.nn.Module):
        where = key[: -len(".options")] if key.endswith(".options") else key
        module.liser_spec = {
            "name": name, "options": options, "kind": registry.kind, "plugin": registry.get(name).plugin, "key": where,
        }
    return module


RESUME_MODES = ("auto", "resume", "restart", "overwrite")


class Engine:
    """Runs one validated recipe. Use :func:`run` unless you need the stages one by one.

    ``resume``: ``auto`` continues an unfinished run found in the run directory if its recipe
    is the same, runs a finished one of the same recipe again, and refuses a run of a different
    recipe; ``resume`` requires an unfinished run to continue; ``restart`` discards the saved
    state first; ``overwrite`` moves a run already there aside and starts afresh. A run
    directory that is neither empty nor LiSER's is refused, and one another process runs in is
    refused naming it (:mod:`liser_core.rundir`).
    """

    def __init__(self, config: DictConfig, host: PluginHost, *, resume: str = "auto"):
        if resume not in RESUME_MODES:
            raise ValueError(f"resume must be one of {RESUME_MODES}, not {resume!r}")
        self.resume = resume
        self.cfg = config
        self.host = host
        self.reg = host.registries
        run_dir = Path(config.run_dir) if config.run_dir else Path("runs") / (
            f"{config.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        )
        dist_ctx, device = from_env(resolve_device(str(config.device)))
        self.dist = dist_ctx
        self.run = RunContext(config=config, run_dir=run_dir, host=host, device=device, dist=dist_ctx)
        self._loggers: list[Any] = []
        self._datasets: list[ClipDataset] = []  # to collect the clips skipped as bad
        self.precision = Precision(config.precision).value
        self.state_dir = run_dir / "state"
        self._state: dict[str, Any] = {}
        self._dropped: list[guards.Duplicate] = []  # clips the duplicate guard left out
        self._clip_cache: ClipCache | None = None  # decoded clips of file-based corpora
        self._content_keys: dict[str, str] = {}  # clip id -> content + decoding key (file-based corpora)
        self._workers = 0
        self.threads = torch.get_num_threads()
        self._lock: rundir.RunLock | None = None
        self._finished = False  # liser_run_end sent

    # -- run state: what lets an interrupted run continue ---------------------------------------
    def _comparable_config(self) -> dict[str, Any]:
        return provenance.comparable(self.cfg)

    def _notify(self, hook: str, **kwargs: Any) -> None:
        if self.dist.is_main:  # plugins (loggers, uploaders) see one run, not one per rank
            self.host.notify(hook, **kwargs)

    def _open_state(self) -> None:
        self._state = self.dist.on_main(self._decide_state)
        self.run.resumed = self._state["resumed"] > 0
        if self._state["threads"] != self.threads:  # threads: null, resumed where another count is chosen
            log.warning(
                "continuing with the %d thread(s) the run started with (here the choice would be %d): "
                "CPU results depend on the thread count", self._state["threads"], self.threads,
            )
            self._set_threads(self._state["threads"])

    def _decide_state(self) -> dict[str, Any]:
        """Decide between a fresh start and continuing the run saved in ``run_dir/state``
        (rank 0, holding the run directory's lock; nothing else LiSER did not write is touched)."""
        run_dir = self.run.run_dir
        status_file = self.state_dir / "run.json"
        prev = None
        if status_file.is_file():
            try:
                prev = json.loads(status_file.read_text())
            except ValueError as exc:
                raise UsageError(f"{status_file}: unreadable run state ({exc}); use --restart to discard it") from None
        config = self._comparable_config()
        unfinished = prev is not None and prev.get("status") != "complete"
        differ = sorted(provenance.diff_keys(prev.get("config", {}), config)) if prev is not None else []
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0  # torchrun --max-restarts
        if self.resume == "resume":
            if not unfinished:
                why = "has no saved run state" if prev is None else "holds a run that already completed"
                raise UsageError(f"--resume: {run_dir} {why}; nothing to resume")
        elif self.resume == "restart" and not restarted:
            prev = None  # discard this run's saved state (LiSER's own files only)
        elif differ:
            what = "an unfinished" if unfinished else "a finished"
            advice = (
                f"continue it with `liser run --resume {run_dir}`, discard its state with --restart"
                if unfinished else "run it again with its own recipe, or --overwrite to move it aside (nothing is deleted)"
            )
            raise UsageError(
                f"{run_dir} holds {what} run of a different recipe (differs at: {', '.join(differ[:6])}); "
                f"{advice}, or choose another run_dir"
            )
        elif not unfinished:
            prev = None  # the same recipe, finished: run it again in place
        if prev is None:
            rundir.clear_state(self.state_dir)
        rundir.claim(run_dir, self.run.fingerprint)
        self._state = {
            "status": "running",
            "config": config,
            "threads": int(prev.get("threads") or self.threads) if prev else self.threads,
            "completed": list(prev.get("completed", [])) if prev else [],
            "resumed": (prev.get("resumed", 0) + 1) if prev else 0,
            "world_size": self.dist.world_size,
        }
        if prev is not None:
            log.warning(
                "resuming the unfinished run in %s (status %s; stages done: %s)",
                run_dir, prev.get("status"), ", ".join(self._state["completed"]) or "none",
            )
        checkpoint.atomic_write_text(self.state_dir / "recipe.yaml", config_yaml(self.cfg))
        self._save_state()
        return self._state

    def _save_state(self, **changes: Any) -> None:
        self._state.update(changes)
        if self.dist.is_main:
            checkpoint.atomic_write_json(self.state_dir / "run.json", self._state)

    def _checkpointer(self, stage: str, model: str):
        ckpt = Checkpointer(self.state_dir / "train" / f"{stage}-{model}", enabled=self.dist.is_main)

        def saved(path: Path, progress) -> None:
            self._notify(
                "liser_checkpoint", run=self.run, stage=stage, model=model, path=path,
                step=progress.step, finished=progress.finished,
            )

        return {"checkpointer": ckpt, "on_checkpoint": saved, "precision": self.precision, "dist": self.dist}

    # -- orchestration --------------------------------------------------------------------------
    def validate(self) -> RunContext:
        """Build every component, apply the soundness guards and run each component once on a
        tiny batch of the corpus (:mod:`liser_core.preflight`). Writes nothing: this is
        ``liser run --dry-run``, and how every run starts."""
        seed_everything(int(self.cfg.seed))
        self.run.fingerprint = provenance.fingerprint(self.cfg, provenance.code_versions(self.host))
        self.prepare()
        from .preflight import probe

        probe(self)
        return self.run

    def execute(self) -> RunContext:
        run = self.run
        root = logging.getLogger("liser")
        old_level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        # what validation logs reaches log.txt once the run directory may be written
        early = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1)
        early.setLevel(logging.INFO)
        root.addHandler(early)
        handler: logging.Handler | None = None
        error: BaseException | None = None
        started = False
        try:
            self.validate()
            if self.dist.is_main:  # the run directory: LiSER's or empty, and this process's alone
                rundir.check_claim(run.run_dir)
                if self.resume == "overwrite" and rundir.is_run_dir(run.run_dir):
                    probe_lock = rundir.RunLock(run.run_dir)
                    probe_lock.acquire()  # not while another process runs in it
                    probe_lock.release()
                    aside = rundir.move_aside(run.run_dir)
                    log.warning("--overwrite: the run that was in %s is now in %s", run.run_dir, aside)
                self._lock = rundir.RunLock(run.run_dir)
                self._lock.acquire()
            self._open_state()  # refuses a different recipe before it writes anything
            if self._lock is not None:
                self._lock.announce()
            log_name = "log.txt" if self.dist.is_main else f"log.rank{self.dist.rank}.txt"
            handler = logging.FileHandler(run.run_dir / log_name, mode="a")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            handler.setLevel(logging.INFO)
            early.setTarget(handler)
            early.flush()
            root.removeHandler(early)
            root.addHandler(handler)
            started = True
            if self.dist.is_main:
                self._start_loggers()
                checkpoint.atomic_write_json(
                    run.run_dir / "splits.json",
                    guards.splits_record(run.splits, run.digests, corpus=run.corpus.name, dropped=self._dropped),
                )
            log.info(
                "run dir %s  device %s  seed %d%s", run.run_dir, run.device, self.cfg.seed,
                f"  rank {self.dist.rank} of {self.dist.world_size}" if self.dist.enabled else "",
            )
            self._notify("liser_run_start", run=run)
            self._stage("teach", self.teach)
            if run.teachers and (self.cfg.distil.epochs > 0):
                self._stage("label", self.label)
            if self.cfg.distil.epochs > 0:
                self._stage("distil", self.distil)
            if self.cfg.finetune.epochs > 0:
                self._stage("finetune", self.finetune)
            if self.cfg.baseline.enabled:
                self._stage("baseline", self.train_baseline)
            self._stage("evaluate", self.evaluate)
            self._finish(None)  # the reports first: a run is complete once they are on disk
            self._save_state(status="complete")
        except BaseException as exc:
            error = exc
            if self._state:
                self._save_state(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            if isinstance(exc, KeyboardInterrupt) and self._state:
                log.warning(
                    "interrupted: continue with `liser run --resume %s`%s", run.run_dir,
                    f" (checkpoint {exc.checkpoint})" if isinstance(exc, TrainingInterrupted) and exc.checkpoint else "",
                )
            raise
        finally:
            if started and not self._finished:
                self._finish(error)
            if started:
                self._stop_loggers()
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            for h in (early, handler):
                if h is not None:
                    root.removeHandler(h)
                    h.close()
            root.setLevel(old_level)
        return run

    def _finish(self, error: BaseException | None) -> None:
        """Bad clips into the diagnostics, then ``liser_run_end`` (the reports are written)."""
        run = self.run
        self._finished = True
        skipped = {k: v for ds in self._datasets for k, v in ds.skipped.items()}
        if self.dist.enabled and error is None:  # every rank's bad clips, in the one report
            skipped = {k: v for part in self.dist.gather(skipped) for k, v in part.items()}
        if skipped:
            run.diagnostics["skipped_clips"] = skipped
            log.warning("%d clip(s) skipped as bad (data.bad_clips=skip): see metrics.json", len(skipped))
        self._notify("liser_run_end", run=run, results=run.results(), error=error)

    def _stage(self, name: str, fn: Callable[[], None]) -> None:
        log.info("== stage %s ==", name)
        self._notify("liser_stage_start", run=self.run, stage=name)
        # each stage draws from its own seed: a stage's result does not depend on how many
        # random numbers earlier stages happened to use (e.g. the baseline on distil.epochs)
        seed_everything(int(self.cfg.seed) * 1000 + _STAGE_SEEDS[name])
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        if name not in self._state.get("completed", []):
            self._save_state(completed=[*self._state.get("completed", []), name])
        self.run.stage_seconds[name] = seconds
        log.info("stage %s done in %.1fs", name, seconds)
        self._notify("liser_stage_end", run=self.run, stage=name, seconds=seconds)

    def _start_loggers(self) -> None:
        for name, opts in self.cfg.loggers.items():
            try:
                logger = build_component(self.reg.logger, str(name), plain(opts or {}), f"loggers.{name}")
                self.host.pm.register(logger, name=f"logger:{name}")
                self._loggers.append(logger)
            except Exception as exc:  # noqa: BLE001 - a logger never stops a run
                self.run.warn(f"logger {name!r} could not start and is off for this run: {exc}")

    def _stop_loggers(self) -> None:
        for logger in self._loggers:
            if self.host.pm.is_registered(logger):
                self.host.pm.unregister(logger)
        self._loggers.clear()

    # -- prepare: build everything, check what can be checked before any training -------------
    def prepare(self) -> None:
        self.prepare_data()
        self._prepare_components()

    def prepare_data(self) -> None:
        """Build the corpus and apply the data guards (digests, duplicates, missing clips, shared
        speakers); the data path (cache, workers, threads). Nothing is written."""
        run, cfg = self.run, self.cfg
        t0 = time.perf_counter()
        run.corpus = build_component(
            self.reg.dataset, cfg.data.name, plain(cfg.data.options), "data.options", seed=int(cfg.seed)
        )
        if not isinstance(run.corpus, Corpus):
            raise UsageError(f"dataset {cfg.data.name!r} did not return a Corpus")
        log.info(
            "corpus %s (%s): %s  [%.1fs]",
            run.corpus.name,
            run.label_space.name,
            ", ".join(f"{s} {len(run.corpus.split(s))}" for s in SPLITS),
            time.perf_counter() - t0,
        )
        self._guard_data()
        self._setup_data_path()
        if not run.split(cfg.evaluate.split):
            raise ConfigError("evaluate.split", f"corpus {run.corpus.name!r} has no {cfg.evaluate.split!r} clips")

    def _prepare_components(self) -> None:
        run, cfg = self.run, self.cfg
        names = [t.name for t in cfg.teachers]
        for i, tc in enumerate(cfg.teachers):
            key = tc.name if names.count(tc.name) == 1 else f"{tc.name}.{i}"
            if tc.checkpoint:
                teacher = checkpoint.load_component(tc.checkpoint, self.reg.teacher, kind="teacher")
                teacher.liser_spec |= {"kind": "teacher", "plugin": self.reg.teacher.get(teacher.liser_spec["name"]).plugin,
                                       "key": f"teachers.{i}"}
            else:  # its initial weights depend on its own recipe block, not on the run's seed
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(_teacher_seed(tc))
                    teacher = build_component(
                        self.reg.teacher, tc.name, plain(tc.options), f"teachers.{i}.options", label_space=run.label_space
                    )
            try:
                run.label_maps[key] = LabelMap(
                    teacher.label_space,
                    run.label_space,
                    merge=plain(tc.label_map.merge),
                    drop=tuple(tc.label_map.drop),
                )
            except ValueError as exc:
                raise ConfigError(f"teachers.{i}.label_map", str(exc)) from None
            run.teachers[key] = teacher.to(run.device)
            run.teacher_configs[key] = tc
        self._guard_teachers()

        if self.dist.enabled:  # every rank needs a part of every global batch
            blocks = {"distil": cfg.distil, "finetune": cfg.finetune, "baseline": cfg.baseline}
            blocks |= {f"teachers.{i}.fit": tc.fit for i, tc in enumerate(cfg.teachers)}
            for key, block in blocks.items():
                if block.batch_size < self.dist.world_size:
                    raise ConfigError(
                        f"{key}.batch_size",
                        f"{block.batch_size} is smaller than the number of processes ({self.dist.world_size})",
                    )
        seed = int(cfg.seed)
        torch.manual_seed(seed + 1)
        opts = plain(cfg.student.options)
        run.student = build_component(self.reg.student, cfg.student.name, opts, "student.options", label_space=run.label_space)
        run.student.to(run.device)
        if cfg.baseline.enabled:  # same initial weights as the distilled student
            torch.manual_seed(seed + 1)
            run.baseline = build_component(
                self.reg.student, cfg.student.name, opts, "student.options", label_space=run.label_space
            ).to(run.device)
        for i, lc in enumerate(cfg.distil.losses):
            loss = build_component(self.reg.loss, lc.name, plain(lc.options), f"distil.losses.{i}.options")
            key = lc.name if lc.name not in run.losses else f"{lc.name}.{i}"
            if loss.needs_teacher and not run.teachers and cfg.distil.epochs > 0:
                raise ConfigError(f"distil.losses.{i}", f"loss {lc.name!r} needs a teacher; the recipe has none")
            try:
                loss.bind(run.student.embedding_dim, {k: t.embedding_dim for k, t in run.teachers.items()})
            except (KeyError, ValueError) as exc:
                raise ConfigError(f"distil.losses.{i}.options", str(exc).strip("'\"")) from None
            run.losses[key] = (float(lc.weight), loss.to(run.device))
        log.info(
            "student %s: %s parameters; teachers: %s",
            cfg.student.name,
            f"{run.student.num_parameters():,}",
            ", ".join(f"{k} ({_count(t):,})" for k, t in run.teachers.items()) or "none",
        )

    # -- soundness guards (liser_core/guards.py, docs/soundness.md) -----------------------------
    def _guard_data(self) -> None:
        """Content digests of every clip; duplicates across splits left out of the pool (and test
        copies out of every training split); missing expected speakers and clips; speakers shared
        with the test split; an empty pool. Nothing here reads audio but file bytes."""
        run, cfg = self.run, self.cfg
        corpus = run.corpus
        t0 = time.perf_counter()
        raw = {s: list(corpus.split(s)) for s in SPLITS}
        digests = {s: digests_of(raw[s], corpus) for s in SPLITS}
        dups = guards.find_duplicates(raw, digests)
        policy = DuplicatePolicy(cfg.data.duplicates).value
        splits, self._dropped = raw, []
        if dups:
            run.diagnostics["duplicates"] = [d.__dict__ for d in dups]
            if policy == "error":
                raise ConfigError(
                    "data.duplicates",
                    f"{len(dups)} clip(s) repeat another clip's content, e.g. {dups[0].describe()} "
                    "(duplicates: skip leaves them out of training)",
                )
            if policy == "skip":
                splits, self._dropped = guards.drop_duplicates(raw, dups)
            dropped = {(d.split, d.clip_id) for d in self._dropped}
            if self._dropped:
                run.warn(
                    f"{len(self._dropped)} clip(s) left out as duplicates by content, e.g. {self._dropped[0].describe()} "
                    "(splits.json lists them)"
                )
            for d in dups:
                if (d.split, d.clip_id) not in dropped:
                    run.warn(f"duplicate content: {d.describe()}")
            keep = {s: {c.clip_id for c in splits[s]} for s in SPLITS}
            digests = {s: [d for c, d in zip(raw[s], digests[s]) if c.clip_id in keep[s]] for s in SPLITS}
        run.splits, run.digests = splits, digests
        log.info("content digests of %d clips in %.1fs", sum(map(len, digests.values())), time.perf_counter() - t0)
        missing = getattr(corpus, "missing", None)
        for w in [*guards.missing_warnings(missing() if callable(missing) else None), *(getattr(corpus, "notes", None) or [])]:
            run.warn(w)
        test = {c.speaker for c in run.split(cfg.evaluate.split)}
        for s in ("labeled", "unlabeled"):  # the teacher split is the fit guard's (_guard_teachers)
            shared = sorted({c.speaker for c in run.split(s)} & test)
            if s != cfg.evaluate.split and shared:
                run.warn(
                    f"speakers {shared[:5]} appear in both {s!r} and the test split: results are NOT speaker-independent"
                )
        if cfg.teachers and cfg.distil.epochs > 0 and not run.split("unlabeled"):
            run.warn(
                "the unlabeled pool is empty (e.g. label_fraction 1.0 without unlabeled_from): distillation "
                "learns from the labeled clips only"
            )

    def _fits_in_run(self, key: str) -> bool:
        teacher, tc = self.run.teachers[key], self.run.teacher_configs[key]
        return not tc.checkpoint and not teacher.pretrained and teacher.fittable

    def _fit_clips(self, key: str) -> tuple[list[Clip], list[tuple[str, ...]], Counter]:
        """The teacher split as the teacher ``key`` is fitted on it: each label taken through its
        label map by name into the teacher's own classes; clips of classes it cannot represent
        left out (and counted)."""
        targets = self.run.label_maps[key].fit_targets()
        clips, digests, excluded = [], [], Counter()
        for c, d in zip(self.run.split("teacher"), self.run.digests["teacher"]):
            t = targets.get(c.label) if c.label is not None else None
            if t is None:
                excluded[str(c.label)] += 1
                continue
            clips.append(dataclasses.replace(c, label=t))
            digests.append(d)
        return clips, digests, excluded

    def _guard_teachers(self) -> None:
        """A teacher fitted on test speakers or clips (in this run, or recorded in its card) is
        refused unless ``allow_test_overlap``; the label-map report; fit sets that lose classes."""
        run, cfg = self.run, self.cfg
        split = cfg.evaluate.split
        test, test_d = run.split(split), run.digests[split]
        corpus = run.corpus.name
        for i, (key, teacher) in enumerate(run.teachers.items()):
            tc = run.teacher_configs[key]
            fit_sets = list(teacher.card.fit_sets)
            if self._fits_in_run(key):
                clips, digests, excluded = self._fit_clips(key)
                if excluded:
                    log.warning(
                        "teacher %s cannot represent %s: %d clip(s) of the teacher split left out of its fit",
                        key, ", ".join(f"{c} ({n})" for c, n in sorted(excluded.items())), sum(excluded.values()),
                    )
                    run.diagnostics.setdefault("fit_excluded", {})[key] = dict(sorted(excluded.items()))
                if run.split("teacher") and not clips:
                    raise ConfigError(
                        f"teachers.{i}.label_map",
                        f"teacher {tc.name!r} ({teacher.label_space.name}) can represent no class of the teacher split",
                    )
                fit_sets.append(guards.FitSet.of(corpus, "teacher", clips, digests).to_dict())
            speakers, clip_ids = guards.fit_overlap(fit_sets, corpus, test, test_d)
            if speakers or clip_ids:
                msg = guards.describe_overlap(key, speakers, clip_ids, split)
                if not tc.allow_test_overlap:
                    raise ConfigError(
                        f"teachers.{i}",
                        f"{msg}: its labels would leak the test split into the student; fit it without them, "
                        f"or set teachers.{i}.allow_test_overlap=true to go on (flagged in every table)",
                    )
                run.warn(f"!!! {msg} (allow_test_overlap): this run's scores are NOT a fair estimate")
                if "test_overlap" not in run.flags:
                    run.flags.append("test_overlap")
            elif not any(f.get("corpus") == corpus for f in fit_sets):
                seen = [e for e in teacher.card.trained_on if e.partition("[")[0] == corpus]
                if seen:  # trained on this corpus, but which speakers is not recorded
                    run.warn(
                        f"!!! teacher {key!r} was trained on {', '.join(seen)} but its card does not record which "
                        f"speakers or clips: LiSER cannot check that they are not in the {split} split"
                    )
        if run.teachers:
            report, warnings = guards.label_map_report(
                run.label_maps, self._teacher_weights(), Combination(cfg.distil.combination).value, run.label_space
            )
            run.label_map_report = report
            for line in guards.describe_label_maps(report):
                log.info(line)
            for w in warnings:
                run.warn(w)

    def _teacher_weights(self) -> dict[str, float]:
        total = sum(float(self.run.teacher_configs[k].weight) for k in self.run.teachers)
        return {k: float(self.run.teacher_configs[k].weight) / total for k in self.run.teachers}

    # -- datasets -------------------------------------------------------------------------------
    def _dataset(self, clips, rate: int, *, labels=True, frames=False, space: LabelSpace | None = None) -> ClipDataset:
        ds = ClipDataset(
            clips,
            space or self.run.label_space,
            rate,
            with_labels=labels,
            with_frames=frames,
            loader=getattr(self.run.corpus, "load", None),
            on_bad_clip=BadClipPolicy(self.cfg.data.bad_clips).value,
            cache=self._clip_cache,
            cache_key=self._content_key if self._clip_cache is not None else None,
            workers=self._workers,
            pin_memory=self.run.device.type == "cuda",
        )
        self._datasets.append(ds)
        return ds

    def _setup_data_path(self) -> None:
        """Content keys of clips read from files (their file digests and how they are decoded:
        what the store and the decoded-clip cache key on), the cache, the decoding workers."""
        run, cfg = self.run, self.cfg
        lazy = any(c.audio is None for s in SPLITS for c in run.split(s)[:1])
        workers = cfg.data.workers
        if workers is None:  # leave a core to the model; none when the clips are in memory
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            workers = min(4, max(0, cpus // self.dist.world_size - 1)) if lazy else 0
        self._workers = int(workers)
        self._set_threads()
        if not lazy:
            return
        signature = getattr(run.corpus, "decode_signature", None)
        fallback = {"dataset": cfg.data.name, "options": plain(cfg.data.options)}  # a corpus that cannot say
        for s in SPLITS:
            for clip, digests in zip(run.split(s), run.digests[s]):
                if clip.audio is None:
                    self._content_keys[clip.clip_id] = ClipCache.key(digests, signature(clip) if signature else fallback)
        if cfg.data.cache:
            from .identity import cache_dir

            root = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else cache_dir() / "decoded"
            self._clip_cache = ClipCache(root, max_bytes=int(cfg.data.cache_max_gb * 2**30))
        log.info(
            "decoding: %d worker(s); decoded clips %s", self._workers,
            f"cached in {self._clip_cache.root}" if self._clip_cache else "not cached (data.cache: off)",
        )

    def _set_threads(self, threads: int | None = None) -> None:
        """torch's CPU threads: the recipe's, else this process's share of the CPUs less its
        decoding workers (more threads than free cores make small models many times slower)."""
        if threads is None:
            threads = self.cfg.threads
        if threads is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            threads = max(1, min(8, cpus // self.dist.world_size - self._workers))
        self.threads = int(threads)
        torch.set_num_threads(self.threads)

    def _content_key(self, clip: Clip) -> str | None:
        """A file-based clip's key in the decoded-clip cache and the teacher store."""
        return self._content_keys.get(clip.clip_id)

    def _store_key(self, clip: Clip) -> str:
        """A clip's key in the teacher store: by content (and decoding) only, never by its
        path, split, fold or label fraction."""
        return self._content_keys.get(clip.clip_id) or clip_key(clip)

    def _native_rate(self) -> int:
        for s in ("labeled", "unlabeled", "test", "teacher"):
            clips = self.run.split(s)
            if clips:
                return clips[0].sample_rate
        return 16000

    def _teacher_dataset(self, teacher: Teacher, clips, *, labels=True, space: LabelSpace | None = None) -> ClipDataset:
        return self._dataset(
            clips, teacher.sample_rate or self._native_rate(), labels=labels, frames=teacher.needs_frames, space=space
        )

    # -- stages ---------------------------------------------------------------------------------
    def teach(self) -> None:
        run = self.run
        teach_clips = run.split("teacher")
        for i, (key, teacher) in enumerate(run.teachers.items()):
            tc = run.teacher_configs[key]
            if tc.checkpoint:
                log.info("teacher %s: loaded from %s", key, tc.checkpoint)
                continue
            if teacher.pretrained:
                log.info("teacher %s: pretrained (%s), used as is", key, teacher.card.source or teacher.card.backbone)
                continue
            if not teacher.fittable:
                raise ConfigError(f"teachers.{i}.checkpoint", f"teacher {tc.name!r} cannot be fitted in a run; give it a checkpoint")
            if not teach_clips:
                raise ConfigError(
                    f"teachers.{i}.checkpoint",
                    f"corpus {run.corpus.name!r} has no teacher split to fit {tc.name!r} on; give a checkpoint",
                )
            # labels reach the teacher through its label map, by name, in its own class order
            fit_clips, fit_digests, excluded = self._fit_clips(key)
            ds = self._teacher_dataset(teacher, fit_clips, space=teacher.label_space)
            fit_key = self._fit_key(key, fit_clips, ds.sample_rate)
            seed = int(tc.seed) if tc.seed is not None else int(fit_key[:8], 16)
            cached = self._fitted_dir(fit_key, provenance.code_versions(self.host))
            reused = cached is not None and (cached / checkpoint.CONFIG_NAME).is_file()
            if reused:
                checkpoint.load_weights(teacher, cached, f"teacher {tc.name!r}")
                teacher.eval()
                log.info("teacher %s: fitted on this fit set before: weights reused from %s [%s]", key, cached, fit_key[:12])
            else:
                log.info(
                    "teacher %s: fitting on %d clips of the teacher split%s [%s]", key, len(ds),
                    f" ({sum(excluded.values())} of classes it cannot represent left out)" if excluded else "",
                    fit_key[:12],
                )
                self._fit(key, teacher, ds, seed)
                if cached is not None and self.dist.is_main:  # the next run with this fit set reuses it
                    self._save_teacher(teacher, cached, {"fit_key": fit_key})
            run.diagnostics.setdefault("teacher_fits", {})[key] = {"fit_key": fit_key, "reused": reused}
            teacher.card = dataclasses.replace(
                teacher.card,
                trained_on=tuple(dict.fromkeys((*teacher.card.trained_on, f"{run.corpus.name}[teacher]"))),
                source=f"fitted in run {run.run_dir}",
                num_parameters=_count(teacher),
                fit_sets=(*teacher.card.fit_sets, guards.FitSet.of(run.corpus.name, "teacher", fit_clips, fit_digests).to_dict()),
            )
            if self.dist.is_main:
                out = rundir.inside(run.run_dir, run.run_dir / "teachers" / rundir.safe_name(key, "teacher"))
                self._save_teacher(teacher, out, {"card": teacher.card.to_dict()})

    def _fit(self, key: str, teacher: Teacher, ds: ClipDataset, seed: int) -> None:
        """Fit one teacher on its dataset, from its own seed (not the run's)."""
        fit: TrainConfig = self.run.teacher_configs[key].fit
        seed_everything(seed)

        def step(batch: Batch):
            with blame(teacher, "fit_loss"):
                return teacher.fit_loss(batch)

        train(
            [teacher],
            step,
            lambda epoch, skip: ds.loader(
                fit.batch_size, shuffle=True, seed=seed + 100 + epoch, drop_last=_lone(ds, fit.batch_size),
                skip_batches=skip, dist=self.dist,
            ),
            _steps(len(ds), fit.batch_size),
            fit,
            device=self.run.device,
            name=f"teacher {key}",
            params=teacher.trainable_parameters(),
            on_epoch_end=self._epoch_hook("teach", key),
            **self._checkpointer("teach", key),
        )

    def _save_teacher(self, teacher: Teacher, directory: Path, extra: dict) -> None:
        checkpoint.save_component(
            teacher, directory, kind="teacher", name=teacher.liser_spec["name"],
            options=teacher.liser_spec["options"], label_space=teacher.label_space, extra=extra,
        )

    def _fit_key(self, key: str, clips: list[Clip], rate: int) -> str:
        """What a fitted teacher is a function of: its recipe block (name, options, label map,
        fit settings, seed), its initial weights, its inputs (rate, frames, precision), and each
        fit clip's content and label. Equal keys (and code), equal fitted teachers."""
        tc, teacher = self.run.teacher_configs[key], self.run.teachers[key]
        block = provenance.plain_config(tc)
        for k in ("checkpoint", "weight", "allow_test_overlap"):
            block.pop(k, None)
        for k in ("checkpoint_every", "nonfinite_patience"):
            block["fit"].pop(k, None)
        body = {
            "block": block,
            "init": weights_digest(teacher),
            "inputs": {"rate": rate, "frames": teacher.needs_frames, "precision": self.precision},
            "fit_set": sorted(f"{self._store_key(c)}:{c.label}" for c in clips),
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    def _fitted_dir(self, fit_key: str, versions: dict[str, str]) -> Path | None:
        """Where teachers fitted in runs are kept for reuse: ``<store>/fitted/<fit key + code>``
        (another LiSER or plugin version fits again)."""
        if not self.cfg.store:
            return None
        code = hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16]
        return Path(self.cfg.store).expanduser() / "fitted" / f"{fit_key[:48]}-{code}"

    def _distil_clips(self) -> tuple[list[Clip], list[str | None]]:
        """Pool clips with labels hidden, then labeled clips; and the pool's hidden truth."""
        pool = self.run.split("unlabeled")
        truth = [c.label for c in pool]
        clips = [dataclasses.replace(c, label=None) for c in pool]
        if self.cfg.distil.include_labeled:
            clips += self.run.split("labeled")
        return clips, truth

    def label(self) -> None:
        run, cfg = self.run, self.cfg
        clips, truth = self._distil_clips()
        saved = self.state_dir / "label"
        restored = None
        if "label" in self._state.get("completed", []) and saved.is_dir():
            try:
                tensors, meta = read_complete_dir(saved)
                restored = tensors["logits"], tensors["embeddings"]
                if set(restored[0]) != set(run.teachers) or any(len(v) != len(clips) for v in restored[0].values()):
                    raise ValueError("it does not hold this run's teachers and clips")
                run.diagnostics.update(meta.get("diagnostics", {}))
                log.info("teacher targets of %d clips restored from %s", len(clips), saved)
            except (UsageError, ValueError, KeyError) as exc:  # damaged (e.g. killed in its rewrite): recompute
                log.warning("%s cannot be used (%s); labeling again", saved, exc)
                restored = None
        logits, embs = restored if restored is not None else self._label_all(clips)
        run.targets = TargetTable(
            logits=logits,
            embeddings=embs,
            label_maps=run.label_maps,
            weights=self._teacher_weights(),
            combination=Combination(cfg.distil.combination).value,
        )
        # Diagnostic only: how often the combined targets agree with the pool's hidden labels.
        usable = ~torch.isnan(next(iter(logits.values()))).any(1)
        known = [i for i, t in enumerate(truth) if t is not None and usable[i]]
        if known:
            probs = run.targets.batch(torch.tensor(known), torch.device("cpu")).probs(1.0)
            ids = torch.tensor([run.label_space.index(truth[i]) for i in known])
            agree = (probs.argmax(-1) == ids).float().mean().item()
            run.diagnostics["pool_target_accuracy"] = agree
            log.info("combined teacher targets match the pool's hidden labels on %.1f%% of clips", 100 * agree)
        if self.dist.is_main and restored is None:  # written once, not again on every resume
            write_complete_dir(
                saved, {"logits": logits, "embeddings": embs}, {"diagnostics": {k: v for k, v in run.diagnostics.items() if k == "store"}}
            )

    def _label_all(self, clips: list[Clip]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        run, cfg = self.run, self.cfg
        logits, embs = {}, {}
        store = self._store(shared=self.dist.enabled)  # ranks share their labels through a store
        keys = [self._store_key(c) for c in clips] if store else None
        for key, teacher in run.teachers.items():
            teacher.eval()
            ds = self._teacher_dataset(teacher, clips, labels=False)
            t0 = time.perf_counter()
            if store is None:
                lo, em, _, idx = collect(
                    _teacher_call(teacher), ds.loader(cfg.evaluate.batch_size), run.device, self.precision, f"labeling ({key})"
                )
                log.info("teacher %s labeled %d clips in %.1fs", key, len(ds), time.perf_counter() - t0)
            else:
                lo, em, idx = self._label_with_store(store, keys, key, teacher, clips, ds.sample_rate)
            # rows of clips skipped as bad stay NaN; those clips are skipped in distil too
            logits[key] = torch.full((len(ds), lo.shape[1]), float("nan")).index_copy_(0, idx, lo)
            embs[key] = torch.full((len(ds), em.shape[1]), float("nan")).index_copy_(0, idx, em)
        return logits, embs

    def _store(self, *, shared: bool = False) -> TeacherStore | None:
        """The recipe's teacher store; with ``shared``, the run's own when the recipe has none."""
        root = self.cfg.store or (self.state_dir / "store" if shared else None)
        return TeacherStore(root, dtype=StoreDtype(self.cfg.store_dtype).value) if root else None

    def _label_with_store(self, store, keys, key, teacher, clips, sample_rate, diagnostic: str = "store"):
        """Label only the clips the store lacks for this teacher's fingerprint, then read all."""
        run, cfg = self.run, self.cfg
        # what a clip's store key leaves out and the outputs depend on: nothing for clips held in
        # memory (keyed by their samples), the decoding for file-based clips (in their key)
        meta = teacher_meta(teacher, sample_rate=sample_rate)
        fp = meta["fingerprint"]
        # rank 0 decides what is missing before any rank writes, so all ranks share one to-do list
        todo = self.dist.on_main(lambda: store.missing(fp, keys, embeddings=True))
        t0 = time.perf_counter()
        mine = self.dist.shard(todo)  # each rank labels its share into its own shards
        if mine:
            sub = self._teacher_dataset(teacher, [clips[i] for i in mine], labels=False)
            with store.writer(fp, meta=meta) as writer, torch.no_grad():
                loader = sub.loader(cfg.evaluate.batch_size)
                for batch in progress(loader, total=len(loader), desc=f"labeling ({key})", unit="batch"):
                    if batch is None:
                        continue  # bad clips are skipped, never stored
                    out = _teacher_call(teacher)(batch.to(run.device))
                    writer.add_many(
                        [keys[mine[i]] for i in batch.index.tolist()], out.logits.float().cpu(), out.embedding.float().cpu()
                    )
        self.dist.barrier()  # every rank's shards are complete ...
        gone = set(self.dist.on_main(lambda: store.missing(fp, keys, embeddings=True)))  # ... rank 0 indexes them
        present = [i for i in range(len(clips)) if i not in gone]
        if not present:
            raise ValueError("no clip could be used: every clip was skipped as bad")
        lo, em = store.load(fp, [keys[i] for i in present])
        reused = len(clips) - len(todo)
        log.info(
            "teacher %s: %d clips from the store, %d labeled now%s (%.1fs) [%s]",
            key, reused, len(todo), f" ({len(mine)} by this rank)" if self.dist.enabled else "",
            time.perf_counter() - t0, fp[:12],
        )
        run.diagnostics.setdefault(diagnostic, {})[key] = {"fingerprint": fp, "from_store": reused, "labeled": len(todo)}
        return lo, em, torch.tensor(present)

    def distil(self) -> None:
        run, cfg = self.run, self.cfg
        student = run.student
        clips = self._distil_clips()[0]  # cheap: no audio is read; same order as in label
        ds = self._dataset(clips, student.sample_rate)
        loss_modules = [m for _, m in run.losses.values()]

        classes = len(run.label_space)

        def step(batch: Batch):
            with blame(student, "forward"):
                out = student(batch.audio, batch.lengths)
            out = checked_output(student, out, len(batch), classes, student.embedding_dim)
            targets = run.targets.batch(batch.index, run.device) if run.targets else None
            terms, total = {}, 0.0
            for name, (w, loss) in run.losses.items():
                value = loss_value(loss, out, batch, targets)
                if value is None:
                    continue
                terms[name] = value.detach()
                total = total + w * value
            if not torch.is_tensor(total):
                if not self.dist.enabled:
                    raise UsageError("no loss term applies to this batch: add `ce` or a teacher")
                total = out.logits.sum() * 0.0  # this rank's part has nothing to learn; others may
            return total, terms

        log.info("distilling student on %d clips (%d unlabeled)", len(ds), len(run.split("unlabeled")))
        train(
            [student, *loss_modules],
            step,
            lambda epoch, skip: ds.loader(
                cfg.distil.batch_size,
                shuffle=True,
                seed=int(cfg.seed) + 1000 + epoch,
                drop_last=_lone(ds, cfg.distil.batch_size),
                skip_batches=skip,
                dist=self.dist,
            ),
            _steps(len(ds), cfg.distil.batch_size),
            cfg.distil,
            device=run.device,
            name="student (distil)",
            on_epoch_end=self._epoch_hook("distil", "student"),
            **self._checkpointer("distil", "student"),
        )
        self._save_student()

    def _supervised(self, student: Student, cfg: TrainConfig, stage: str, model: str) -> None:
        labeled = self.run.split("labeled")
        if not labeled:
            raise ConfigError(f"{stage}.epochs", f"corpus {self.run.corpus.name!r} has no labeled split")
        ds = self._dataset(labeled, student.sample_rate)

        def step(batch: Batch):
            with blame(student, "forward"):
                out = student(batch.audio, batch.lengths)
            loss = F.cross_entropy(out.logits, batch.labels)
            return loss, {"ce": loss.detach()}

        train(
            [student],
            step,
            lambda epoch, skip: ds.loader(
                cfg.batch_size,
                shuffle=True,
                seed=int(self.cfg.seed) + 2000 + epoch,
                drop_last=_lone(ds, cfg.batch_size),
                skip_batches=skip,
                dist=self.dist,
            ),
            _steps(len(ds), cfg.batch_size),
            cfg,
            device=self.run.device,
            name=f"{model} ({stage})",
            on_epoch_end=self._epoch_hook(stage, model),
            **self._checkpointer(stage, model),
        )

    def finetune(self) -> None:
        self._supervised(self.run.student, self.cfg.finetune, "finetune", "student")
        self._save_student()

    def train_baseline(self) -> None:
        self._supervised(self.run.baseline, self.cfg.baseline, "baseline", "baseline")

    def evaluate(self) -> None:
        run, cfg = self.run, self.cfg
        split = cfg.evaluate.split
        clips = run.split(split)
        store = self._store()  # teachers' test outputs are kept like their labels of the pool
        keys = [self._store_key(c) for c in clips] if store and run.teachers else None
        scored: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # teacher -> (logits, labels, idx)
        for key, teacher in run.teachers.items():
            if teacher.card.overlaps(run.corpus.name, split):
                run.warn(
                    f"!!! teacher {key!r} was trained on {run.corpus.name} ({', '.join(teacher.card.trained_on)}): "
                    f"its {split} scores are NOT a fair estimate"
                )
            teacher.eval()
            ds = self._teacher_dataset(teacher, clips)
            if store is not None:
                lo, _, idx = self._label_with_store(store, keys, key, teacher, clips, ds.sample_rate, "store_test")
                labels = torch.tensor([run.label_space.index(clips[i].label) for i in idx.tolist()])
            else:
                lo, labels, idx = self._predict(_teacher_call(teacher), ds)
            probs = run.label_maps[key].project(torch.softmax(lo, -1))
            self._record(key, "teacher", split, probs, labels, [clips[i].clip_id for i in idx], _count(teacher))
            scored[key] = (lo, labels, idx)
        if len(scored) > 1:
            self._record_targets(scored, clips, split)
        student_trained = cfg.distil.epochs > 0 or cfg.finetune.epochs > 0
        for role, model in (("baseline", run.baseline), ("student", run.student)):
            if model is None or (role == "student" and not student_trained):
                continue
            model.eval()
            ds = self._dataset(clips, model.sample_rate)
            lo, labels, idx = self._predict(_student_call(model), ds)
            ids = [clips[i].clip_id for i in idx]
            self._record(role, role, split, torch.softmax(lo, -1), labels, ids, model.num_parameters())
        counts = {len(e.clip_ids) for e in run.evaluations}
        if counts and min(counts) < len(clips):
            run.warn(
                f"{len(clips) - min(counts)} of the {len(clips)} {split} clips could not be used (bad clips: see "
                f"diagnostics.skipped_clips): scores are over {min(counts)} clips"
            )

    def _record_targets(self, scored: dict, clips: list[Clip], split: str) -> None:
        """The teachers' combined targets (what the student learns from, at temperature 1)
        scored like a model: the ceiling of what distillation passes on, on the same clips."""
        run = self.run
        common = sorted(set.intersection(*(set(idx.tolist()) for _, _, idx in scored.values())))
        if not common:
            return
        logits, labels = {}, None
        for key, (lo, lab, idx) in scored.items():
            pos = {int(i): r for r, i in enumerate(idx.tolist())}
            rows = torch.tensor([pos[i] for i in common])
            logits[key] = lo[rows]
            labels = lab[rows]
        probs = BatchTargets(
            logits=logits, embeddings={}, label_maps=run.label_maps, weights=self._teacher_weights(),
            combination=Combination(self.cfg.distil.combination).value,
        ).probs(1.0)
        n_params = sum(_count(t) for t in run.teachers.values())
        self._record("targets", "targets", split, probs, labels, [clips[i].clip_id for i in common], n_params)

    def _predict(self, forward, ds: ClipDataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, labels, dataset indices) of every usable clip of ``ds``, in dataset order;
        with several processes each rank scores its share and the results are gathered."""
        loader = ds.loader(self.cfg.evaluate.batch_size, dist=self.dist)
        if not self.dist.enabled:
            lo, _, labels, idx = collect(forward, loader, self.run.device, self.precision)
            return lo, labels, idx
        try:
            lo, _, labels, idx = collect(forward, loader, self.run.device, self.precision)
        except ValueError:  # this rank's share held no usable clip
            lo, labels, idx = None, None, None
        parts = [p for p in self.dist.gather((lo, labels, idx)) if p[0] is not None]
        if not parts:
            raise ValueError("no clip could be used: every clip was skipped as bad")
        lo, labels, idx = (torch.cat(t) for t in zip(*parts))
        order = torch.argsort(idx)
        return lo[order], labels[order], idx[order]

    def _record(self, model, role, split, probs, labels, clip_ids, n_params) -> None:
        metrics, confusion = classification_metrics(probs, labels, len(self.run.label_space))
        result = EvalResult(
            model=model,
            role=role,
            split=split,
            metrics=metrics,
            confusion=confusion,
            label_space=self.run.label_space,
            probs=probs,
            clip_ids=clip_ids,
            num_parameters=n_params,
        )
        self.run.evaluations.append(result)
        log.info(
            "%-10s %-12s WA %.3f  UAR %.3f  macro-F1 %.3f",
            role, model, metrics["accuracy"], metrics["uar"], metrics["macro_f1"],
        )
        self._notify("liser_evaluation", run=self.run, result=result)

    def _save_student(self) -> None:
        if not self.dist.is_main:
            return
        try:  # the training clip length, for windowing long inputs at inference
            longest = max((c.seconds for c in self.run.split("labeled")), default=None)
        except ValueError:  # lazily loaded clips without a known duration
            longest = None
        self.run.student.save_pretrained(self.run.run_dir / "student", train_seconds=longest)

    def _epoch_hook(self, stage: str, model: str):
        def hook(epoch: int, metrics: dict[str, float], replayed: bool = False) -> None:
            self._notify(
                "liser_epoch_end", run=self.run, stage=stage, model=model, epoch=epoch, metrics=metrics, replayed=replayed
            )

        return hook


def _teacher_seed(tc) -> int:
    """The seed of a teacher's initial weights: from its recipe block (its own ``seed`` if set)."""
    if tc.seed is not None:
        return int(tc.seed)
    block = provenance.plain_config(tc)
    return int(hashlib.sha256(json.dumps({k: block.get(k) for k in ("name", "options")}, sort_keys=True).encode()).hexdigest()[:8], 16)


def _teacher_call(teacher: Teacher):
    def forward(batch: Batch):
        with blame(teacher, "forward"):
            return teacher(batch)

    return forward


def _student_call(student: Student):
    def forward(batch: Batch):
        with blame(student, "forward"):
            return student(batch.audio, batch.lengths)

    return forward


_STAGE_SEEDS = {"teach": 1, "label": 2, "distil": 3, "finetune": 4, "baseline": 5, "evaluate": 6}


def _lone(ds, batch_size: int) -> bool:
    """Drop a final training batch of a single clip: normalisation over a batch of one (e.g.
    BatchNorm on pooled vectors) cannot train on it; the clip is in another batch next epoch."""
    return len(ds) > 1 and len(ds) % batch_size == 1


def _steps(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prepare_config(recipe: str | os.PathLike | None, overrides: list[str], host: PluginHost) -> DictConfig:
    """Load, override and fully validate a recipe against the host's registries."""
    cfg = load_recipe(recipe, list(overrides))
    validate_components(cfg, host.registries)
    return cfg


def run(
    recipe: str | os.PathLike | None,
    overrides: list[str] = (),
    *,
    host: PluginHost | None = None,
) -> RunContext:
    """Run a recipe end to end and return its :class:`RunContext`.

    Example::

        >>> ctx = run("recipes/synth_kd.yaml", ["distil.epochs=1"])  # doctest: +SKIP
        >>> ctx.results()["student"]["uar"]  # doctest: +SKIP
    """
    from ._plugins import load_plugins

    host = host or load_plugins()
    cfg = prepare_config(recipe, list(overrides), host)
    return Engine(cfg, host).execute()


def config_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)

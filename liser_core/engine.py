"""The engine: validates a recipe, claims its run directory and runs the stages in order.

Building the corpus and the components is :mod:`liser_core.prepare`; the stages, one module
each, and their order are :mod:`liser_core.stages`; what they share is
:class:`liser_core.context.RunContext` (``engine.run``). The engine's public methods
(``dataset``, ``teacher_dataset``, ``checkpointer``, ``epoch_hook``, ``store``, ``store_key``,
``record``, ``save_student``, ``teacher_weights``) are the services the stages use.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from liser_cache.clipcache import ClipCache
from liser_cache.store import TeacherStore, clip_key
from liser_common import provenance, rundir
from liser_common.distributed import from_env
from liser_common.metrics import classification_metrics, per_group_metrics
from liser_common.trainstate import Checkpointer

from . import checkpoint, guards, prepare
from ._plugins import PluginHost
from .components import Teacher
from .config import (
    BadClipPolicy,
    Precision,
    StoreDtype,
    load_recipe,
    plain,
    qualify_recorded,
    run_record,
    validate_components,
)
from .context import EvalResult, RunContext
from .data import Clip, ClipDataset
from .errors import ConfigError, UsageError
from .labels import LabelSpace
from .prepare import build_component  # noqa: F401 - also imported from here
from .stages import STAGES, Stage
from .training import TrainingInterrupted, seed_everything

log = logging.getLogger("liser")


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


RESUME_MODES = ("auto", "resume", "restart", "overwrite")


class Engine:
    """Runs one validated recipe. Use :func:`run` unless you need the stages one by one.

    ``resume``: ``auto`` continues an unfinished run found in the run directory if its recipe
    is the same, runs a finished one of the same recipe again, and refuses a run of a different
    recipe; ``resume`` requires an unfinished run to continue; ``restart`` discards the saved
    state first; ``overwrite`` moves a run already there aside and starts afresh. A run
    directory that is neither empty nor LiSER's is refused, and one another process runs in is
    refused naming it (:mod:`liser_common.rundir`).
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
        self.state: dict[str, Any] = {}
        self.dropped: list[guards.Duplicate] = []  # clips the duplicate guard left out
        self.clip_cache: ClipCache | None = None  # decoded clips of file-based corpora
        self.content_keys: dict[str, str] = {}  # clip id -> content + decoding key (file-based corpora)
        self.workers = 0
        self.threads = torch.get_num_threads()
        self._lock: rundir.RunLock | None = None
        self._finished = False  # liser_run_end sent

    # -- run state: what lets an interrupted run continue ---------------------------------------
    def _comparable_config(self) -> dict[str, Any]:
        return provenance.comparable(self.cfg)

    def notify(self, hook: str, **kwargs: Any) -> None:
        if self.dist.is_main:  # plugins (loggers, uploaders) see one run, not one per rank
            self.host.notify(hook, **kwargs)

    def _open_state(self) -> None:
        self.state = self.dist.on_main(self._decide_state)
        self.run.resumed = self.state["resumed"] > 0
        if self.state["threads"] != self.threads:  # threads: null, resumed where another count is chosen
            log.warning(
                "continuing with the %d thread(s) the run started with (here the choice would be %d): "
                "CPU results depend on the thread count", self.state["threads"], self.threads,
            )
            self.set_threads(self.state["threads"])

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
        self.state = {
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
                run_dir, prev.get("status"), ", ".join(self.state["completed"]) or "none",
            )
        checkpoint.atomic_write_text(self.state_dir / "recipe.yaml", config_yaml(self.cfg))
        self._save_state()
        return self.state

    def _save_state(self, **changes: Any) -> None:
        self.state.update(changes)
        if self.dist.is_main:
            checkpoint.atomic_write_json(self.state_dir / "run.json", self.state)

    def checkpointer(self, stage: str, model: str):
        ckpt = Checkpointer(self.state_dir / "train" / f"{stage}-{model}", enabled=self.dist.is_main)

        def saved(path: Path, progress) -> None:
            self.notify(
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
        self.run.fingerprint = provenance.fingerprint(self.cfg, self.host.code_versions())
        self.run.code = self.host.code_sources()
        self.prepare()
        from .preflight import probe

        probe(self)
        return self.run

    def execute(self) -> RunContext:
        """Validate, claim the run directory, run the stages in order, write the reports."""
        run, runlog = self.run, _RunLog()
        error: BaseException | None = None
        started = False
        try:
            self.validate()
            self._claim_run_dir()
            self._open_state()  # refuses a different recipe before it writes anything
            if self._lock is not None:
                self._lock.announce()
            runlog.to_file(run.run_dir / ("log.txt" if self.dist.is_main else f"log.rank{self.dist.rank}.txt"))
            started = True
            if self.dist.is_main:
                self._start_loggers()
                checkpoint.atomic_write_json(
                    run.run_dir / "splits.json",
                    guards.splits_record(run.splits, run.digests, corpus=run.corpus.name, dropped=self.dropped),
                )
            log.info(
                "run dir %s  device %s  seed %d%s", run.run_dir, run.device, self.cfg.seed,
                f"  rank {self.dist.rank} of {self.dist.world_size}" if self.dist.enabled else "",
            )
            self.notify("liser_run_start", run=run)
            for stage in STAGES:
                if stage.when(self):
                    self._stage(stage)
            self._finish(None)  # the reports first: a run is complete once they are on disk
            self._save_state(status="complete")
        except BaseException as exc:
            error = exc
            self._interrupted(exc)
            raise
        finally:
            if started and not self._finished:
                self._finish(error)
            if started:
                self._stop_loggers()
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            runlog.close()
        return run

    def _claim_run_dir(self) -> None:
        """The run directory: LiSER's or empty, and this process's alone (its lock)."""
        run_dir = self.run.run_dir
        if self.dist.is_main:
            rundir.check_claim(run_dir)
            if self.resume == "overwrite" and rundir.is_run_dir(run_dir):
                probe_lock = rundir.RunLock(run_dir)
                probe_lock.acquire()  # not while another process runs in it
                probe_lock.release()
                aside = rundir.move_aside(run_dir)
                log.warning("--overwrite: the run that was in %s is now in %s", run_dir, aside)
            self._lock = rundir.RunLock(run_dir)
            self._lock.acquire()

    def _interrupted(self, exc: BaseException) -> None:
        if not self.state:
            return
        self._save_state(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        if isinstance(exc, KeyboardInterrupt):
            log.warning(
                "interrupted: continue with `liser run --resume %s`%s", self.run.run_dir,
                f" (checkpoint {exc.checkpoint})" if isinstance(exc, TrainingInterrupted) and exc.checkpoint else "",
            )

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
        self.notify("liser_run_end", run=run, results=run.results(), error=error)

    def _stage(self, stage: Stage) -> None:
        name = stage.name
        log.info("== stage %s ==", name)
        self.notify("liser_stage_start", run=self.run, stage=name)
        seed_everything(int(self.cfg.seed) * 1000 + stage.salt)  # see liser_core.stages
        t0 = time.perf_counter()
        stage.run(self)
        seconds = time.perf_counter() - t0
        if name not in self.state.get("completed", []):
            self._save_state(completed=[*self.state.get("completed", []), name])
        self.run.stage_seconds[name] = seconds
        log.info("stage %s done in %.1fs", name, seconds)
        self.notify("liser_stage_end", run=self.run, stage=name, seconds=seconds)

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
        """Build the corpus and every component and apply the soundness guards
        (:mod:`liser_core.prepare`). Nothing is written."""
        prepare.data(self)
        prepare.components(self)

    def prepare_data(self) -> None:
        prepare.data(self)

    def teacher_weights(self) -> dict[str, float]:
        total = sum(float(self.run.teacher_configs[k].weight) for k in self.run.teachers)
        return {k: float(self.run.teacher_configs[k].weight) / total for k in self.run.teachers}

    # -- datasets -------------------------------------------------------------------------------
    def dataset(self, clips, rate: int, *, labels=True, frames=False, space: LabelSpace | None = None) -> ClipDataset:
        ds = ClipDataset(
            clips,
            space or self.run.label_space,
            rate,
            with_labels=labels,
            with_frames=frames,
            loader=getattr(self.run.corpus, "load", None),
            on_bad_clip=BadClipPolicy(self.cfg.data.bad_clips).value,
            cache=self.clip_cache,
            cache_key=self._content_key if self.clip_cache is not None else None,
            workers=self.workers,
            pin_memory=self.run.device.type == "cuda",
        )
        self._datasets.append(ds)
        return ds

    def set_threads(self, threads: int | None = None) -> None:
        """torch's CPU threads: the recipe's, else this process's share of the CPUs less its
        decoding workers (more threads than free cores make small models many times slower)."""
        if threads is None:
            threads = self.cfg.threads
        if threads is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            threads = max(1, min(8, cpus // self.dist.world_size - self.workers))
        self.threads = int(threads)
        torch.set_num_threads(self.threads)

    def _content_key(self, clip: Clip) -> str | None:
        """A file-based clip's key in the decoded-clip cache and the teacher store."""
        return self.content_keys.get(clip.clip_id)

    def store_key(self, clip: Clip) -> str:
        """A clip's key in the teacher store: by content (and decoding) only, never by its
        path, split, fold or label fraction."""
        return self.content_keys.get(clip.clip_id) or clip_key(clip)

    def native_rate(self) -> int:
        for s in ("labeled", "unlabeled", "test", "teacher"):
            clips = self.run.split(s)
            if clips:
                return clips[0].sample_rate
        return 16000

    def teacher_dataset(self, teacher: Teacher, clips, *, labels=True, space: LabelSpace | None = None) -> ClipDataset:
        return self.dataset(
            clips, teacher.sample_rate or self.native_rate(), labels=labels, frames=teacher.needs_frames, space=space
        )

    # -- stages ---------------------------------------------------------------------------------
    def store(self, *, shared: bool = False) -> TeacherStore | None:
        """The recipe's teacher store; with ``shared``, the run's own when the recipe has none."""
        root = self.cfg.store or (self.state_dir / "store" if shared else None)
        return TeacherStore(root, dtype=StoreDtype(self.cfg.store_dtype).value) if root else None

    def record(self, model, role, split, probs, labels, clip_ids, n_params) -> None:
        metrics, confusion = classification_metrics(probs, labels, len(self.run.label_space))
        by_id = {c.clip_id: c for c in self.run.split(split)}
        speakers = [str(by_id[c].speaker) if c in by_id else "" for c in clip_ids]
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
            labels=labels,
            speakers=speakers,
            per_speaker=per_group_metrics(probs, labels, speakers, len(self.run.label_space)),
        )
        self.run.evaluations.append(result)
        log.info(
            "%-10s %-12s WA %.3f  UAR %.3f  macro-F1 %.3f",
            role, model, metrics["accuracy"], metrics["uar"], metrics["macro_f1"],
        )
        self.notify("liser_evaluation", run=self.run, result=result)

    def save_student(self) -> None:
        if not self.dist.is_main:
            return
        try:  # the training clip length, for windowing long inputs at inference
            longest = max((c.seconds for c in self.run.split("labeled")), default=None)
        except ValueError:  # lazily loaded clips without a known duration
            longest = None
        self.run.student.save_pretrained(self.run.run_dir / "student", train_seconds=longest)

    def epoch_hook(self, stage: str, model: str):
        def hook(epoch: int, metrics: dict[str, float], replayed: bool = False) -> None:
            self.notify(
                "liser_epoch_end", run=self.run, stage=stage, model=model, epoch=epoch, metrics=metrics, replayed=replayed
            )

        return hook


def prepare_config(recipe: str | os.PathLike | None, overrides: list[str], host: PluginHost) -> DictConfig:
    """Load, override and fully validate a recipe against the host's registries. A recipe saved
    in a run directory (``--resume``) names its components as that run did (``run_record``)."""
    cfg = load_recipe(recipe, list(overrides))
    record = run_record(recipe)
    if record is not None:
        qualify_recorded(cfg, host.registries, *record)
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


class _RunLog:
    """The run's log: INFO and up, held in memory from validation on (nothing may be written
    yet), then into the run directory's log file with everything held."""

    def __init__(self) -> None:
        self.root = logging.getLogger("liser")
        self.old_level = self.root.level
        if self.root.getEffectiveLevel() > logging.INFO:
            self.root.setLevel(logging.INFO)
        self.early = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1)
        self.early.setLevel(logging.INFO)
        self.root.addHandler(self.early)
        self.handler: logging.Handler | None = None

    def to_file(self, path: Path) -> None:
        self.handler = logging.FileHandler(path, mode="a")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.early.setTarget(self.handler)
        self.early.flush()
        self.root.removeHandler(self.early)
        self.root.addHandler(self.handler)

    def close(self) -> None:
        for h in (self.early, self.handler):
            if h is not None:
                self.root.removeHandler(h)
                h.close()
        self.root.setLevel(self.old_level)

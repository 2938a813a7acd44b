"""The engine: validates a recipe, claims its run directory and runs the stages in order.

Building the corpus and the components is :mod:`liser_core.prepare`; the stages, one module
each, and their order are :mod:`liser_core.stages`; what they share is
:class:`liser_core.context.RunContext` (``engine.run``). The engine's public methods
(``dataset``, ``teacher_dataset``, ``checkpointer``, ``epoch_hook``, ``store``, ``store_key``,
``record``, ``save_student``, ``teacher_weights``) are the services the stages use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import logging.handlers
import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from liser_cache.clipcache import ClipCache
from liser_cache.identity import digests_of
from liser_cache.store import TeacherStore, clip_key
from liser_common import provenance, rundir
from liser_common.distributed import from_env
from liser_common.metrics import classification_metrics, per_group_metrics
from liser_common.trainstate import Checkpointer

from . import checkpoint, features, guards, prepare
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
from .context import EvalResult, ReadOnlyDict, RunContext
from .data import Batch, Clip, ClipDataset
from .errors import ComponentError, ConfigError, EnvironmentFault, LiserError, UsageError
from .features import FeatureCache
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



def data_changes(run_dir: Path, cfg: DictConfig, registries, state: dict[str, Any] | None = None,
                 corpora: dict | None = None) -> list[str]:
    """The clips of a finished run's corpus that changed since it ran (empty when none, or when
    nothing can change: a generated corpus is a function of the recipe and the code, compared
    elsewhere). For a corpus read from files (``state/run.json``'s ``corpus_files``) the corpus
    is listed again -- content digests come from the digest cache, a file is read again only
    when its stat changed -- and its splits compared with the run's ``splits.json`` (less the
    duplicates it left out; its validation clips as clips of ``validation.source``).
    ``corpora`` memoizes the listing per data block and seed (a grid's runs share corpora)."""
    if state is None:
        try:
            state = json.loads((run_dir / "state" / "run.json").read_text())
        except (OSError, ValueError):
            return []
    if not isinstance(state, dict) or not state.get("corpus_files"):
        return []
    try:
        record = json.loads((run_dir / "splits.json").read_text())
        before = record["splits"]
        dropped = {(d["split"], d["clip_id"]) for d in record.get("dropped_duplicates") or []}
    except (OSError, ValueError, KeyError, TypeError):
        return []  # no record to compare with (metrics.json and the rest are checked where they are read)
    key = json.dumps([provenance.plain_config(cfg.data), int(cfg.seed)], sort_keys=True, default=str)
    if corpora is None or key not in corpora:
        previous = logging.root.manager.disable
        logging.disable(logging.INFO)  # listed to compare, not to run: its summary line is not news
        try:
            corpus = prepare.new_corpus(registries, cfg)
        finally:
            logging.disable(previous)
        raw = {s: list(corpus.split(s)) for s in guards.SPLITS}
        memo = corpora.setdefault("\0digests", {}) if corpora is not None else None  # each file looked up once
        listing = corpus.name, raw, {s: digests_of(raw[s], corpus, memo=memo) for s in guards.SPLITS}
        if corpora is not None:
            corpora[key] = listing
    else:
        listing = corpora[key]
    name, raw, digests = listing
    keep = {s: [i for i, c in enumerate(raw[s]) if (s, c.clip_id) not in dropped] for s in guards.SPLITS}
    now = guards.splits_record({s: [raw[s][i] for i in keep[s]] for s in keep},
                               {s: [digests[s][i] for i in keep[s]] for s in keep}, corpus=name)["splits"]
    source = str(cfg.validation.source)
    return guards.splits_changed(before, now, validation_from=None if source == "none" else source)


class OtherRecipeError(UsageError):
    """The run directory holds a run of another recipe (nothing was run or written)."""


class Engine:
    """Runs one validated recipe. Use :func:`run` unless you need the stages one by one.

    ``resume``: ``auto`` continues an unfinished run found in the run directory if its recipe
    is the same, leaves a finished one of the same recipe alone (:attr:`already_complete`;
    nothing is run) and refuses a run of a different recipe; ``resume`` requires an unfinished
    run of the same recipe to continue (only :data:`~liser_common.provenance.RESUME_FREE_KEYS`
    may differ, recorded per stage, never into the recorded recipe); ``restart`` discards the
    saved state first; ``overwrite`` moves a run already there aside and starts afresh. A run
    directory that is neither empty nor LiSER's is refused, and one another process runs in is
    refused naming it (:mod:`liser_common.rundir`). What can be checked without the corpus
    (the run directory, the resume target, room to write) is checked before it is built
    (:meth:`check_start`).
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
        self.corpus_files = False  # whether any clip is read from a file (its data can change under a run)
        #: what an interrupted run tells the user to run next (a grid's driver: its own command)
        self.resume_hint: str | None = None
        self._input_digests: dict[str, str] | None = None  # files the recipe names by path, by content
        self.clip_cache: ClipCache | None = None  # decoded clips of file-based corpora
        self.content_keys: dict[str, str] = {}  # clip id -> content + decoding key (file-based corpora)
        self.feature_cache: FeatureCache | None = None  # fixed frontends' features (liser_core.features)
        self._feature_keys: dict[int, list[str]] = {}  # id(dataset) -> store key of each of its clips
        self.workers = 0
        self.threads = torch.get_num_threads()
        self._lock: rundir.RunLock | None = None
        self._finished = False  # liser_run_end sent
        #: the run directory already holds a finished run of this recipe: nothing was run
        self.already_complete = False

    # -- run state: what lets an interrupted run continue ---------------------------------------
    def _comparable_config(self) -> dict[str, Any]:
        return provenance.comparable(self.cfg)

    def notify(self, hook: str, **kwargs: Any) -> None:
        if self.dist.is_main:  # plugins (loggers, uploaders) see one run, not one per rank
            self.host.notify(hook, **kwargs)

    def _open_state(self) -> None:
        self.state = self.dist.on_main(self._decide_state)
        self.run.resumed = self.state["resumed"] > 0
        if self.run.resumed:  # what earlier sessions warned of and flagged (a stage done then is not run again)
            said = [w for w in self.state.get("warnings") or () if isinstance(w, str)]
            self.run.warnings[:] = said + [w for w in self.run.warnings if w not in said]
            self.run.flags[:] = list(dict.fromkeys([*(f for f in self.state.get("flags") or () if isinstance(f, str)),
                                                    *self.run.flags]))
        if self.state["threads"] != self.threads:  # threads: null, resumed: the count it started with
            log.warning(
                "continuing with the %d thread(s) the run started with (here the choice would be %d): "
                "CPU results depend on the thread count", self.state["threads"], self.threads,
            )
            self.set_threads(self.state["threads"])

    def _saved_state(self) -> dict[str, Any] | None:
        """``state/run.json`` of the run in the run directory, or None (read only). Unreadable,
        it is refused, except under --restart and --overwrite, which discard it anyway."""
        status_file = self.state_dir / "run.json"
        if not status_file.is_file():
            return None
        try:
            prev = json.loads(status_file.read_text())
            if not isinstance(prev, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            if self.resume in ("restart", "overwrite"):
                return None
            raise UsageError(f"{status_file}: unreadable run state ({exc}); use --restart to discard it") from None
        return prev

    def _verdict(self, prev: dict[str, Any] | None) -> str:
        """What to do with the run saved in the run directory: ``fresh`` (none, or discard
        it), ``continue`` (an unfinished run of this recipe) or ``complete`` (a finished run of
        this recipe: nothing to do); refuses (UsageError) a different recipe, exactly alike for
        ``--resume`` and a rerun, naming the keys that differ."""
        run_dir = self.run.run_dir
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0  # torchrun --max-restarts
        unfinished = prev is not None and prev.get("status") != "complete"
        if self.resume == "resume" and not unfinished:
            why = "has no saved run state" if prev is None else "holds a run that already completed"
            raise UsageError(f"--resume: {run_dir} {why}; nothing to resume")
        if self.resume == "overwrite" and not restarted:
            return "fresh"  # the run there is moved aside first
        if prev is None or (self.resume == "restart" and not restarted):
            return "fresh"  # discard this run's saved state (LiSER's own files only)
        # both sides less the keys a resume may change (older runs recorded some of them) and what is
        # at its default (a recipe recorded before a setting existed); for a finished run, less what
        # does not change results either (name, store: "nothing to do", not "another recipe")
        free = provenance.RESUME_FREE_KEYS if unfinished else (*provenance.RESUME_FREE_KEYS, *provenance.RESULT_FREE_KEYS)
        schema = OmegaConf.get_type(self.cfg)
        differ = sorted(provenance.diff_keys(provenance.recipe_view(prev.get("config", {}), free, schema),
                                             provenance.recipe_view(self.cfg, free)))
        given = getattr(self, "resume_overrides", None)  # --resume RUN_DIR key=value...: the keys given
        edited = [d for d in differ if given is not None and not any(
            d == g or d.startswith(g + ".") or g.startswith(d + ".") for g in given)]
        if edited and self.resume == "resume":  # not from an override: the run's own state/recipe.yaml changed
            raise OtherRecipeError(
                f"{run_dir}/state/recipe.yaml differs from the recipe its run state records (at: "
                f"{', '.join(edited[:6])}{', ...' if len(edited) > 6 else ''}): it was changed since the run "
                "started; put it back, or discard the run's state with `liser run RECIPE run_dir=... --restart`"
            )
        changed = provenance.changed_inputs(prev.get("inputs"), self._inputs()) if not differ else []
        if changed:  # the same recipe, but a file it names by path has other contents now
            what = "an unfinished" if unfinished else "a finished"
            raise OtherRecipeError(
                f"{run_dir} holds {what} run of this recipe, but {', '.join(changed)} changed since it started (the "
                "file there has other contents): its results are not those of the file as it is now; put the file "
                "back, or run it again with --restart (or choose another run_dir)"
            )
        if differ:
            what = "an unfinished" if unfinished else "a finished"
            free = ", ".join(provenance.RESUME_FREE_KEYS)
            advice = (
                f"continue it with `liser run --resume {run_dir}` (its own recipe; only {free} may be "
                "given anew), discard its state with --restart"
                if unfinished else "run it again with its own recipe, or --overwrite to move it aside (nothing is deleted)"
            )
            raise OtherRecipeError(
                f"{run_dir} holds {what} run of a different recipe (differs at: {', '.join(differ[:6])}"
                f"{', ...' if len(differ) > 6 else ''}); {advice}, or choose another run_dir"
            )
        return "continue" if unfinished else "complete"

    def _inputs(self) -> dict[str, str]:
        """The content digests of the files the recipe names by path (teacher checkpoints):
        :func:`liser_common.provenance.input_digests`, once per engine."""
        if self._input_digests is None:
            self._input_digests = provenance.input_digests(self.cfg)
        return self._input_digests

    def _check_same_data(self) -> None:
        """An unfinished run continues only on the clips it started with: the splits just built
        (ids, labels, content digests) against the run's ``splits.json``; a clip changed, gone or
        new is refused naming it (its earlier stages -- fits, labels -- saw other data)."""
        run_dir = self.run.run_dir
        prev = self._saved_state()
        if prev is None or prev.get("status") == "complete" or self.resume in ("restart", "overwrite"):
            return
        try:
            before = json.loads((run_dir / "splits.json").read_text()).get("splits") or {}
        except (OSError, ValueError, AttributeError):
            return  # killed before it was written: nothing was computed from the data yet
        now = guards.splits_record(self.run.splits, self.run.digests, corpus=self.run.corpus.name,
                                   dropped=self.dropped)["splits"]
        if diff := guards.splits_changed(before, now):
            raise OtherRecipeError(
                f"{run_dir}: the corpus changed since this run started: {len(diff)} clip(s) of its splits differ "
                f"(e.g. {diff[0]}); its earlier stages saw the data as it was: put the files back, or "
                "run it again on the data as it is now with --restart"
            )

    def _check_finished_data(self, prev: dict[str, Any]) -> None:
        """A finished run is "nothing to do" only on the data it ran on (:func:`data_changes`)."""
        run_dir = self.run.run_dir
        if diff := data_changes(run_dir, self.cfg, self.reg, prev):
            raise OtherRecipeError(
                f"{run_dir} holds a finished run of this recipe, but the corpus changed since it ran: {len(diff)} "
                f"clip(s) differ (e.g. {diff[0]}): its results are not those of the data as it is now; put the files "
                "back, or run it again on the data as it is now with --restart (or choose another run_dir)"
            )

    def settings(self) -> dict[str, Any]:
        """This session's values of the keys a resume may change (recorded per stage)."""
        cfg = self.cfg
        return {
            "device": str(self.run.device),
            "threads": self.threads,
            "data.workers": self.workers,
            "data.feature_cache": bool(cfg.data.feature_cache),
            "loggers": sorted(str(k) for k in (cfg.loggers or {})),
            "run_dir": str(self.run.run_dir),
            "code": self._code_label(),
        }

    def _code_label(self) -> str:
        """This session's code (LiSER and plugin versions, git commits): ``code_string``."""
        if getattr(self, "_code", None) is None:
            self._code = provenance.code_string(self.host.code_sources())
        return self._code

    def check_start(self) -> str:
        """The checks that need no corpus, before it is built (read only, nothing written): the
        run directory (a file, someone else's folder), the resume target, a finished run of this
        recipe, a different recipe, and whether the run directory, store and cache can be
        written. Returns the verdict (see :meth:`_verdict`)."""
        run_dir = self.run.run_dir
        if self.resume == "resume" and not (run_dir / "state" / "run.json").is_file():
            why = "does not exist" if not run_dir.exists() else "has no saved run state (state/run.json)"
            raise UsageError(f"--resume: {run_dir} {why}; nothing to resume")
        rundir.check_claim(run_dir)
        verdict = self._verdict(self._saved_state())
        if verdict == "complete":
            return verdict
        for path, what, hint in self._write_targets():
            rundir.check_writable(path, what, hint)
        self._check_cache_dir()
        self._check_free(0, 0)  # the reports' share; the models' once they are built (check_room)
        return verdict

    def _check_cache_dir(self) -> None:
        """``data.cache_dir`` is a folder the decoded-clip cache owns (it trims what it holds):
        one holding other files is refused, naming some, before anything is written."""
        cfg = self.cfg
        cache_dir = cfg.data.get("cache_dir") if "data" in cfg else None
        if not cache_dir or not cfg.data.get("cache", True):
            return
        foreign = ClipCache(Path(str(cache_dir)).expanduser()).foreign()
        if foreign:
            raise ConfigError("data.cache_dir", f"{cache_dir} holds files LiSER did not write (e.g. {', '.join(foreign)}): "
                              "the decoded-clip cache removes what it trims there; choose an empty folder or one "
                              "LiSER's cache made")

    def _check_free(self, models: int, store: int) -> None:
        """Room for ``models`` bytes of checkpoints and weights plus the reports in the run
        directory, and ``store`` bytes plus a margin in the teacher store."""
        rundir.check_free(self.run.run_dir, models + (8 << 20), "run_dir", "free space there or choose another run_dir")
        if self.cfg.store:
            rundir.check_free(Path(str(self.cfg.store)), store + (1 << 20), "store",
                              "free space there, or set store=PATH elsewhere")

    def _write_targets(self) -> list[tuple[Path, str, str]]:
        """The folders a run writes in: (path, what, what to do if it cannot)."""
        cfg = self.cfg
        out = [(self.run.run_dir, "run_dir", "choose another run_dir (run_dir=PATH) or make room / fix its permissions")]
        if cfg.store:
            out.append((Path(str(cfg.store)), "store", "set store=PATH to a writable folder, or store=null"))
        cache_dir = cfg.data.get("cache_dir") if "data" in cfg else None
        if cache_dir and cfg.data.get("cache", True):
            out.append((Path(str(cache_dir)), "data.cache_dir", "set data.cache_dir to a writable folder, or data.cache=false"))
        return out

    def check_room(self) -> None:
        """A free-space estimate for the checkpoints and reports (run directory) and the teacher
        store, checked once the components are built and before anything is written."""
        run = self.run
        floats = sum(p.numel() for t in run.teachers.values() for p in t.parameters())
        floats += sum(p.numel() for m in (run.student, run.baseline) if m is not None for p in m.parameters())
        # weights + two Adam moments, two checkpoints kept per loop, and the saved weights
        models = floats * 4 * 3 * 2 + floats * 4
        n = sum(len(run.split(s)) for s in ("teacher", "labeled", "unlabeled", "test"))
        store = n * max(1, len(run.label_space)) * 4 * max(1, len(run.teachers))  # float32 targets
        self._check_free(models, store)

    def _decide_state(self) -> dict[str, Any]:
        """Decide between a fresh start and continuing the run saved in ``run_dir/state``
        (rank 0, holding the run directory's lock; nothing else LiSER did not write is touched).
        A resumed run keeps the recipe it was started with (``config``, ``state/recipe.yaml``);
        what it changes of :data:`~liser_common.provenance.RESUME_FREE_KEYS` is recorded per
        stage (``stage_settings``)."""
        run_dir = self.run.run_dir
        prev = self._saved_state()
        verdict = self._verdict(prev)
        if verdict == "complete":  # finished while this process was building the corpus
            raise UsageError(
                f"{run_dir} holds a finished run of this recipe; nothing to do (--restart runs it again, "
                "--overwrite moves it aside first)"
            )
        if verdict == "fresh":
            prev = None
            rundir.clear_state(self.state_dir)
        rundir.claim(run_dir, self.run.fingerprint)
        threads = self.threads
        if prev is not None and self.cfg.threads is None and prev.get("threads"):
            threads = int(prev["threads"])  # threads: null continues with the count it started with
        self.state = {
            "status": "running",
            "config": prev.get("config", self._comparable_config()) if prev else self._comparable_config(),
            "threads": threads,
            "completed": list(prev.get("completed", [])) if prev else [],
            "resumed": (prev.get("resumed", 0) + 1) if prev else 0,
            "world_size": self.dist.world_size,
            "stage_settings": dict(prev.get("stage_settings", {})) if prev else {},
            # what earlier sessions spent per stage, warned of and flagged (kept across resumes)
            "stage_seconds": dict(prev.get("stage_seconds") or {}) if prev else {},
            "warnings": list(prev.get("warnings") or []) if prev else [],
            "flags": list(prev.get("flags") or []) if prev else [],
            "announced": dict(prev.get("announced") or {}) if prev else {},  # the last epoch told to hooks, per model
            "feature_cache": dict(prev.get("feature_cache") or {}) if prev else {},  # earlier sessions' counts
            "inputs": prev.get("inputs", self._inputs()) if prev else self._inputs(),  # files named by path, by content
            "corpus_files": bool(prev.get("corpus_files", self.corpus_files) if prev else self.corpus_files),
            "sessions": [*(prev.get("sessions", []) if prev else []), {**self.settings(), "threads": threads}],
        }
        if prev is not None:
            log.warning(
                "resuming the unfinished run in %s (status %s; stages done: %s)",
                run_dir, prev.get("status"), ", ".join(self.state["completed"]) or "none",
            )
            changed = {
                k: v for k, v in self.state["sessions"][-1].items()
                if k != "run_dir" and prev.get("sessions") and prev["sessions"][-1].get(k) != v
            }
            code_before = prev["sessions"][-1].get("code") if prev.get("sessions") else None
            changed.pop("code", None)
            if changed:
                log.warning(
                    "resumed with %s (recorded per stage in state/run.json; the recipe stays as it was started)",
                    ", ".join(f"{k}={v}" for k, v in changed.items()),
                )
            before = prev["sessions"][-1] if prev.get("sessions") else {}
            for key in ("threads", "device"):  # they change the numbers: the run's record says so, not only the log
                if key in changed:
                    self.run.warn(f"resumed with {key}={changed[key]} (its earlier stages ran with {key}={before.get(key)}):"
                                  " floating-point results depend on it, so these scores are not those of an "
                                  "uninterrupted run (the same to the last bits at most)")
            if code_before is not None and provenance.code_identity(code_before) != provenance.code_identity(
                    self._code_label()):
                self.run.flag("mixed_code", f"resumed under other code: its earlier stages ran with {code_before}, "
                                            f"the rest runs with {self._code_label()} (recorded per stage in "
                                            "state/run.json)")
        recipe_file = self.state_dir / "recipe.yaml"
        if prev is None or not recipe_file.is_file():  # the recipe as started: never rewritten on resume
            checkpoint.atomic_write_text(recipe_file, config_yaml(self.cfg))
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
        prepare.check_fittable(self)
        return self.run

    def execute(self) -> RunContext:
        """Validate, claim the run directory, run the stages in order, write the reports."""
        run = self.run
        if self.dist.on_main(self.check_start) == "complete":  # before the corpus is built
            self.already_complete = True
            prev = self._saved_state() or {}
            self.dist.on_main(lambda: self._check_finished_data(prev))
            before = (prev.get("sessions") or [{}])[-1].get("code")
            other = (f" (it ran under other code: {before}; this is {self._code_label()})"
                     if before and provenance.code_identity(before) != provenance.code_identity(self._code_label()) else "")
            log.warning(
                "%s holds a finished run of this recipe%s: nothing to do (--restart runs it again in place, "
                "--overwrite moves it aside first)", run.run_dir, other,
            )
            return run
        runlog = _RunLog()
        error: BaseException | None = None
        started = False
        old_term = _sigterm_as_interrupt()
        try:
            self.validate()
            self.dist.on_main(self._check_same_data)  # a resume continues on the clips it started with
            self.dist.on_main(self.check_room)  # every rank gets its refusal: none waits for rank 0
            self._claim_run_dir()
            self._open_state()  # refuses a different recipe before it writes anything
            runlog.gate.pass_on()  # valid: what validation said goes to the console now
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
            fault = environment_fault(exc, run.run_dir)
            if fault is not None:
                error = fault
                raise fault from exc
            raise
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
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
        try:
            self._save_state(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        except OSError as err:  # a full or read-only disk: the error that follows says so
            log.warning("could not record the run state (%s): %s", self.state_dir / "run.json", err)
        if isinstance(exc, KeyboardInterrupt):
            log.warning(
                "interrupted: continue with %s%s", self.resume_hint or f"`liser run --resume {self.run.run_dir}`",
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
        fc = self.feature_cache
        if fc is not None and fc.hits + fc.misses:
            before = self.state.get("feature_cache") if isinstance(self.state.get("feature_cache"), dict) else {}
            counts = {"hits": fc.hits, "misses": fc.misses, "from_disk": fc.disk_hits}
            total = {k: int(before.get(k, 0)) + v for k, v in counts.items()}  # every session of a resumed run
            run.diagnostics["feature_cache"] = {**total, "folder": str(fc.disk.root) if fc.disk is not None else None}
            if self.dist.is_main and self.state:
                self._save_state(feature_cache=total)
            log.info("fixed frontend features: %d computed, %d from the cache (%d of them from disk)",
                     fc.misses, fc.hits, fc.disk_hits)
        if self.clip_cache is not None:  # which folder served decoded clips (hits are counted in the workers)
            run.diagnostics["clip_cache"] = {"folder": str(self.clip_cache.root)}
        self.notify("liser_run_end", run=run, results=run.results(), error=error)

    def _stage(self, stage: Stage) -> None:
        name = stage.name
        log.info("== stage %s ==", name)
        self.notify("liser_stage_start", run=self.run, stage=name)
        seed_everything(int(self.cfg.seed) * 1000 + stage.salt)  # see liser_core.stages
        done_before = name in self.state.get("completed", [])
        t0 = time.perf_counter()
        # a stage's time over every session of the run (state/run.json stage_seconds): one resumed
        # mid-stage adds this session's to what the earlier ones spent; one done before keeps its own
        spent = dict(self.state.get("stage_seconds") or {})
        try:
            stage.run(self)
        except BaseException:
            if not done_before:
                spent[name] = float(spent.get(name, 0.0)) + time.perf_counter() - t0
                with contextlib.suppress(Exception):  # the error, not a failed bookkeeping write, is the news
                    self._save_state(stage_seconds=spent, warnings=list(self.run.warnings), flags=list(self.run.flags))
            raise
        if not done_before:  # what it ran with: threads, device...
            spent[name] = float(spent.get(name, 0.0)) + time.perf_counter() - t0
            settings = {**self.state.get("stage_settings", {}), name: self.settings()}
            self._save_state(completed=[*self.state.get("completed", []), name], stage_settings=settings,
                             stage_seconds=spent, warnings=list(self.run.warnings), flags=list(self.run.flags))
        seconds = float(spent.get(name, time.perf_counter() - t0))
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
        self._say_shadowed()

    def _say_shadowed(self) -> None:
        """A component of a plugin whose name another package also declares (``shadowed``, not
        loaded): which package's code ran is in the run's record, not only in the load log."""
        from .config import component_sites

        shadowed = {p.name: p for p in self.host.plugins if p.status == "shadowed"}
        if not shadowed:
            return
        loaded = {p.name: p for p in self.host.plugins if p.status == "loaded"}
        said = set()
        for key, kind, name in component_sites(self.cfg):
            try:
                plugin = self.reg[kind].get_recorded(name).plugin
            except Exception:  # noqa: BLE001 - validated before: a name that resolves no more is not this check's
                continue
            if plugin in shadowed and plugin not in said and plugin in loaded:
                said.add(plugin)
                self.run.warn(f"{key.removesuffix('.name')}: plugin {plugin!r} is declared by {loaded[plugin].distribution} "
                              f"{loaded[plugin].version} (loaded, whose code runs) and by {shadowed[plugin].distribution} "
                              f"{shadowed[plugin].version} (shadowed, not loaded): uninstall one or rename its entry point")

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

    def feature_clips(self, ds: ClipDataset, batch: Batch):
        """Around a training or validation forward: the batch's clips named to the feature
        cache, so a fixed frontend run on ``batch.audio`` itself computes each clip once
        (liser_core.features); a no-op without the cache."""
        if self.feature_cache is None:
            return features.clips(None, None, batch.audio, batch.sample_rate)
        keys = self._feature_keys.get(id(ds))
        if keys is None:
            keys = self._feature_keys[id(ds)] = [self.store_key(c) for c in ds.clips]
        return features.clips(self.feature_cache, [keys[i] for i in batch.index.tolist()], batch.audio,
                              batch.sample_rate)

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
        # loggers get a copy whose metrics are read-only: what they do to it never reaches the run's record
        view = dataclasses.replace(result, metrics=ReadOnlyDict(result.metrics), probs=result.probs.clone(),
                                   per_speaker={k: ReadOnlyDict(v) for k, v in result.per_speaker.items()})
        self.notify("liser_evaluation", run=self.run, result=view)

    def save_student(self) -> None:
        if not self.dist.is_main:
            return
        try:  # the training clip length, for windowing long inputs at inference
            longest = max((c.seconds for c in self.run.split("labeled")), default=None)
        except ValueError:  # lazily loaded clips without a known duration: the longest the student was given
            longest = self.run.labeled_seconds_seen
        if longest is None:
            self.run.warn("the student's training clip length is unknown (no labeled clip was distilled on in this "
                      "session): its config.json records no train_seconds, so `liser predict` and `liser serve` "
                      "score long inputs in one window unless --window is given")
        self.run.student.save_pretrained(self.run.run_dir / "student", train_seconds=longest)
        self._say_stale_exports(self.run.run_dir / "student")

    def _say_stale_exports(self, folder: Path) -> None:
        """Exports left in the student folder by an earlier run of it (--restart) are of other
        weights: each is named in the run's warnings (predict and serve refuse a stale ONNX
        file; a TorchScript or ExecuTorch file would be shipped as it is)."""
        from .export import export_mismatch

        for side in sorted(folder.glob("*.json")):
            target = side.with_suffix("")
            if side.name in ("config.json", "quantization.json") or not target.is_file():
                continue
            try:
                meta = json.loads(side.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict) and {"format", "weights_sha256"} <= meta.keys():
                why = export_mismatch(folder, target)
                if why:
                    self.run.warn(f"{target} is an export of earlier weights ({why}): export it again "
                                  f"(liser export {folder}{' --format ' + str(meta['format']) if meta['format'] != 'onnx' else ''})")

    def epoch_hook(self, stage: str, model: str):
        key = f"{stage}/{model}"

        def hook(epoch: int, metrics: dict[str, float], replayed: bool = False) -> None:
            announced = self.state.setdefault("announced", {})
            if not replayed and epoch <= int(announced.get(key, -1)):
                # told to hooks by an earlier session whose checkpoint of it was not on disk yet (a kill
                # in between): the same epoch again, bit for bit, so a replay (loggers count it once)
                replayed = True
            self.notify(
                "liser_epoch_end", run=self.run, stage=stage, model=model, epoch=epoch, metrics=ReadOnlyDict(metrics),
                replayed=replayed,
            )
            if not replayed:
                self._save_state(announced={**announced, key: epoch})

        return hook


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop): handled like Ctrl-C -- the training loop saves a
    checkpoint after its step, the run is recorded ``interrupted`` -- and the CLI exits 143."""

    signum = signal.SIGTERM


def _sigterm_as_interrupt():
    """While a run goes (main thread only): SIGTERM raises :class:`Terminated` where it is
    not handled more gently (the training loop's flag). Returns the handler to restore."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminated(signum, frame):
        raise Terminated("terminated (SIGTERM)")

    return signal.signal(signal.SIGTERM, terminated)


#: OSError numbers that are the machine's, not LiSER's: what to do about each
_ENV_ERRNOS = {
    errno.ENOSPC: "no space left on the device: free space there, then continue with `liser run --resume {run_dir}`",
    errno.EDQUOT: "disk quota exceeded: free space there, then continue with `liser run --resume {run_dir}`",
    errno.EROFS: "read-only file system: point the path at a writable folder (run_dir, store, data.cache_dir)",
    errno.EACCES: "permission denied: fix its permissions or point the path elsewhere",
}


def environment_fault(exc: BaseException, run_dir: Path) -> EnvironmentFault | None:
    """An exception (or one it was raised from) that is the environment's fault -- a full or
    read-only disk, a killed decoding worker -- as one line naming the path and what to do;
    None for anything else."""
    if isinstance(exc, (LiserError, KeyboardInterrupt)) and not isinstance(exc, ComponentError):
        return None
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if isinstance(e, RuntimeError) and "DataLoader worker" in text:
            first = text.strip().splitlines()[0] if text.strip() else "DataLoader worker died"
            return EnvironmentFault(
                f"a decoding worker died ({first.rstrip('. ')}): out of memory, or killed? Try fewer "
                f"data.workers (or data.workers=0); continue with `liser run --resume {run_dir}`"
            )
        if isinstance(e, OSError) and e.errno in _ENV_ERRNOS:
            where = e.filename or run_dir
            return EnvironmentFault(f"{where}: {_ENV_ERRNOS[e.errno].format(run_dir=run_dir)}")
        if "No space left on device" in text:  # safetensors and others that lose the errno
            return EnvironmentFault(f"{run_dir}: {_ENV_ERRNOS[errno.ENOSPC].format(run_dir=run_dir)}")
        e = e.__cause__ or e.__context__
    return None


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


class ConsoleGate(logging.Handler):
    """Holds what validation logs to the console: a recipe refused during validation prints
    only its error line (the CLI's), not the lines that led to it. Released -- the held lines
    printed, the console handlers back in place -- when validation passes, or once it has run
    for ``patience`` seconds (a long corpus scan is not left silent; ``LISER_LOG_PATIENCE``,
    default 5)."""

    def __init__(self, patience: float | None = None) -> None:
        super().__init__(logging.INFO)
        if patience is None:
            try:
                patience = float(os.environ.get("LISER_LOG_PATIENCE", "5"))
            except ValueError:
                patience = 5.0
        self.patience = patience
        self.root = logging.getLogger("liser")
        self.console = [h for h in self.root.handlers if getattr(h, "_liser_console", False)]
        self.held: list[logging.LogRecord] = []
        self.t0 = time.perf_counter()
        self.open = not self.console
        for h in self.console:
            self.root.removeHandler(h)
        if not self.open:
            self.root.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.held.append(record)
        if time.perf_counter() - self.t0 > self.patience:
            self.pass_on()

    def pass_on(self) -> None:
        """Print what was held and give the console back. (Not ``release``: logging.Handler's
        own ``release`` frees its lock after every record.)"""
        if self.open:
            return
        self.open = True
        self.root.removeHandler(self)
        for h in self.console:
            self.root.addHandler(h)
            for record in self.held:
                if record.levelno >= h.level:
                    h.handle(record)
        self.held = []

    def drop(self) -> None:
        """Validation refused: drop what was held, give the console back."""
        self.held = []
        self.pass_on()


class _RunLog:
    """The run's log: INFO and up, held in memory from validation on (nothing may be written
    yet), then into the run directory's log file with everything held. The console's share is
    held by a :class:`ConsoleGate` until validation passes."""

    def __init__(self) -> None:
        self.root = logging.getLogger("liser")
        self.old_level = self.root.level
        if self.root.getEffectiveLevel() > logging.INFO:
            self.root.setLevel(logging.INFO)
        self.early = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1)
        self.early.setLevel(logging.INFO)
        self.root.addHandler(self.early)
        self.handler: logging.Handler | None = None
        self.gate = ConsoleGate()

    def to_file(self, path: Path) -> None:
        self.handler = logging.FileHandler(path, mode="a")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.early.setTarget(self.handler)
        self.early.flush()
        self.root.removeHandler(self.early)
        self.root.addHandler(self.handler)

    def close(self) -> None:
        self.gate.drop()  # a run that never got as far as its log file: only its error is said
        for h in (self.early, self.handler):
            if h is not None:
                self.root.removeHandler(h)
                h.close()
        self.root.setLevel(self.old_level)

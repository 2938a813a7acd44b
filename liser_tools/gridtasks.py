"""One task of a grid, in whatever process an executor runs it (:mod:`liser_tools.taskgraph`).

A task is a JSON-able dict; :func:`run_task` runs it and returns a dict (never raises, except
on Ctrl-C): ``{"id", "ok", "rows", "error", "seconds", "where"}``. Three kinds:

``fit``    the teach stage of one combination's recipe restricted to one teacher: fits it (or
           finds it) in the store's ``fitted/`` folder;
``label``  teach (the fitted teacher from the store) and a labeling pass of that teacher over
           the combination's distillation clips and test clips, into the store: only the clips
           the store lacks for it;
``run``    the combination's run, as ``liser run`` does (resuming its run directory when it was
           interrupted); its teachers then come from the store. Returns its results.csv rows.

Every task works in its own run directory (``run_dir`` in ``overrides``) and logs to its own
file (``log``). For tests, ``LISER_TEST_KILL_TASK=<task id>:<marker file>`` makes that task
SIGKILL its own process once (when the marker file does not exist yet: it is created first)
right after the first checkpoint of its distillation (or, for fits, of its teacher fit) is on
disk -- a deterministic point to test retries and resume; ``LISER_TEST_FAIL_TASK=<task id>``
makes that task fail with an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("liser.bench")

KILL_ENV = "LISER_TEST_KILL_TASK"
FAIL_ENV = "LISER_TEST_FAIL_TASK"  # "<task id>": that task raises (a failure for good, for tests)

_HOSTS: dict[tuple, Any] = {}


def _host(plugins: dict | None):
    from liser_core._plugins import load_plugins

    plugins = plugins or {}
    key = (tuple(plugins.get("only") or ()), tuple(plugins.get("block") or ()))
    if key not in _HOSTS:
        _HOSTS[key] = load_plugins(only=list(key[0]), block=list(key[1]), strict=False)
    return _HOSTS[key]


def run_task(spec: dict) -> dict:
    """Run one task (see the module doc); the outcome as a dict, errors included."""
    from liser_core.errors import one_line

    t0 = time.perf_counter()
    where = f"{socket.gethostname()} pid {os.getpid()}"
    result: dict[str, Any] = {"id": spec["id"], "ok": False, "rows": [], "error": "", "where": where}
    handler = _log_to(spec.get("log"))
    try:
        log.info("task %s (%s) starts on %s, attempt %s", spec["id"], spec.get("title", ""), where, spec.get("attempt", 1))
        result["rows"], result["info"] = _run(spec)
        result["ok"] = True
        log.info("task %s done in %.1fs", spec["id"], time.perf_counter() - t0)
    except KeyboardInterrupt:
        log.warning("task %s interrupted", spec["id"])
        raise
    except Exception as exc:  # noqa: BLE001 - the driver marks the combination failed with this line
        result["error"] = one_line(exc) or type(exc).__name__
        log.exception("task %s failed", spec["id"])
    finally:
        result["seconds"] = time.perf_counter() - t0
        if handler is not None:
            logging.getLogger("liser").removeHandler(handler)
            logging.getLogger("liser").setLevel(handler.previous_level)  # type: ignore[attr-defined]
            handler.close()
    return result


def _log_to(path: str | None) -> logging.Handler | None:
    if not path:
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("liser")  # liser and liser.bench
    handler.previous_level = root.level  # type: ignore[attr-defined]
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def _run(spec: dict) -> tuple[list[dict], dict]:
    from omegaconf import OmegaConf

    from liser_core.engine import Engine, OtherRecipeError, prepare_config

    if os.environ.get(FAIL_ENV) == spec["id"]:
        raise RuntimeError(f"injected failure of task {spec['id']} ({FAIL_ENV})")
    host = _host(spec.get("plugins"))
    if spec.get("code"):
        from liser_common.provenance import code_identity, code_string

        here = code_string(host.code_sources())
        if code_identity(here) != spec["code"]:
            raise RuntimeError(f"this worker runs other code ({here}) than the grid's driver ({spec['code']}): its "
                               "results would not be the grid's; start the workers with the driver's checkout or "
                               "installation (the same LiSER and plugin versions and commits)")
    cfg = prepare_config(spec["recipe"], list(spec["overrides"]), host)
    expected = spec.get("fingerprint")
    if expected and spec["kind"] == "run":
        from liser_common.provenance import fingerprint

        got = fingerprint(cfg, host.code_versions())
        if got != expected:  # the recipe file edited since the grid started, or other versions on this worker
            raise RuntimeError(f"the recipe resolves to fingerprint {got[:12]} on this worker, {expected[:12]} when the "
                               f"grid started: {spec['recipe']} (or a file it names) was edited since, or this worker "
                               "runs other LiSER or plugin versions; put the recipe back (or rerun the grid to "
                               "take the edit), and install the same versions everywhere")
    if spec.get("teacher") is not None:
        OmegaConf.set_readonly(cfg, False)
        restrict_to_teacher(cfg, int(spec["teacher"]))
    hint = "the same `liser bench` command (it resumes this task and the grid)"  # a grid's task: not liser run
    with _stages(spec["kind"]), _kill_once(spec, host):
        engine = Engine(cfg, host, resume=spec.get("resume", "auto"))
        engine.resume_hint = hint
        try:
            ctx = engine.execute()
        except OtherRecipeError as exc:
            # the grid's own folder holds saved state that is not this task's: a fit or labeling
            # task's folder is known by its teacher, fit set and clips, not by the combination it
            # is built "as in" (the same fit or pass as in another combination: an edited grid, a
            # resumed one); a run's, by its combination, whose recipe the grid was edited to change
            # while it was unfinished. Its saved state is discarded (LiSER's own files only); what a
            # fit or labeling pass had finished is in the store and is reused from there.
            log.info("%s: its folder holds another recipe's state (%s); starting it afresh", spec["id"], exc)
            engine = Engine(cfg, host, resume="restart")
            engine.resume_hint = hint
            ctx = engine.execute()
        if engine.already_complete and spec["kind"] == "run":
            # finished earlier, but its rows never reached results.csv (the driver stopped): run
            # it again in place for its rows
            log.warning("%s: a finished run whose rows are missing; running it again", ctx.run_dir)
            engine = Engine(cfg, host, resume="restart")
            engine.resume_hint = hint
            ctx = engine.execute()
    info = {"teacher_fits": ctx.diagnostics.get("teacher_fits", {}), "store": ctx.diagnostics.get("store", {})}
    if spec["kind"] != "run":
        return [], info
    from liser_tools.bench import rows_of_run

    return rows_of_run(spec["key"], ctx), info


def restrict_to_teacher(cfg, index: int) -> None:
    """A fit or labeling task's recipe: the combination's, with teacher ``index`` alone, and
    without the loss terms bound to another teacher (``options.teacher``: they could not bind;
    the taps they read are then labeled by the runs, through the store)."""
    keep = cfg.teachers[index]
    gone = {t.name for j, t in enumerate(cfg.teachers) if j != index} - {keep.name}
    cfg.teachers = [keep]
    losses = [lc for lc in cfg.distil.losses if (lc.get("options") or {}).get("teacher") not in gone]
    if len(losses) != len(cfg.distil.losses):
        from liser_core.config import LossConfig

        cfg.distil.losses = losses or [LossConfig(name="ce")]


def _label_task_stage(engine) -> None:
    """A labeling task's stage: the teacher over the distillation clips and the test clips,
    into the store (what the run's label and evaluate stages would label)."""
    from liser_core.stages import label

    if engine.cfg.distil.epochs > 0:
        label.run(engine)
    test = engine.run.split(engine.cfg.evaluate.split)
    if test and engine.run.teachers:
        label.label_clips(engine, test, [(k, t, None) for k, t in engine.run.teachers.items()], engine.store(), "store_test")


@contextlib.contextmanager
def _stages(kind: str):
    """The engine's stage list for a task of ``kind`` (a fit or labeling task runs only its part).

    The engine reads its module's ``STAGES`` when it runs; a worker runs one task at a time, so
    setting it for the task's duration is safe there."""
    import liser_core.engine as engine_module
    from liser_core.stages import STAGES, Stage

    teach = next(s for s in STAGES if s.name == "teach")
    label_salt = next(s.salt for s in STAGES if s.name == "label")
    chosen = {"fit": (teach,), "label": (teach, Stage("label", _label_task_stage, label_salt))}.get(kind, STAGES)
    saved = engine_module.STAGES
    engine_module.STAGES = chosen
    try:
        yield
    finally:
        engine_module.STAGES = saved


@contextlib.contextmanager
def _kill_once(spec: dict, host):
    """For tests: SIGKILL this process once after the task's first training checkpoint."""
    target = os.environ.get(KILL_ENV, "")
    task_id, _, marker = target.partition(":")
    if not target or task_id != spec["id"] or not marker or Path(marker).exists():
        yield
        return
    from liser_core import hookimpl

    class _Killer:
        @hookimpl
        def liser_checkpoint(self, run, stage, model, path, step, finished):
            if stage in ("distil", "teach") and not Path(marker).exists():
                Path(marker).write_text(f"killed task {spec['id']} at {stage} step {step} (pid {os.getpid()})\n")
                os.kill(os.getpid(), signal.SIGKILL)

    killer = _Killer()
    host.pm.register(killer, name=f"test-kill-{spec['id']}")
    try:
        yield
    finally:
        host.pm.unregister(killer)

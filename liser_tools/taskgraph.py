"""A grid as a task graph: teacher fits, labeling passes and student runs, run by an executor.

``liser bench GRID --workers N`` (or ``--executor ray|slurm``) turns the combinations still to
run into tasks (:func:`build_graph`):

- one **fit** task per teacher and fit set (the teacher's fit block, the digests of the clips
  of its fit split, the precision): the teach stage of one combination restricted to that
  teacher; it leaves the fitted teacher in the store's ``fitted/`` folder;
- one **label** task per fitted teacher and set of clips (distillation clips + test clips),
  after its fit: that teacher over the clips the store lacks for it. Labeling tasks of the same
  teacher run one after another (each depends on the previous one), so no clip is labeled by a
  teacher twice, and never twice at the same time;
- one **run** task per combination, after the labeling tasks of its teachers: the ordinary run,
  whose teachers and labels then come from the store.

Without a store (``store: false``) there is nothing to share: only run tasks. Combinations done
with their current fingerprint are not tasks at all (as in the sequential runner).

The driver (:func:`run_graph`) alone writes ``results.csv`` (after every finished run),
``leaderboard.md`` and the report; tasks return their rows. It holds a lock on the output
folder (a second driver is refused), writes ``grid-status.json`` after every change (read by
``liser bench GRID --status`` from another shell) and one progress line per change. A task whose
worker died (SIGKILL, lost node, preemption) is retried up to ``retries`` times, resuming its
run directory from its last checkpoint; a task that fails (raises) fails for good: its
combination is ``failed`` with the task's one-line error, as is every task that needs it, and
the others go on. Ctrl-C cancels what runs (each run saves its state as interrupted) and leaves
the grid for the same command to resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from liser_core.checkpoint import atomic_write_text
from liser_core.errors import UsageError

from .executors import Executor, Resources

log = logging.getLogger("liser.bench")

STATUS_NAME = "grid-status.json"
LOCK_NAME = ".liser-bench.lock"
TASKS_DIR = "tasks"


# -- the driver's lock ---------------------------------------------------------------------------


#: the first columns of a LiSER ``results.csv`` (an output folder from before the lock file)
RESULTS_HEAD = "combination,model,"


def check_grid_output(output: Path) -> None:
    """Refuse (naming the folder) an output folder that holds files and is not a ``liser bench``
    output: LiSER writes ``results.csv``, ``leaderboard.md`` and more there, and replaces only
    its own. Its own: the folder has the driver's lock file, or a ``results.csv`` LiSER wrote
    (grids from before the lock file)."""
    output = Path(output)
    if not output.exists():
        return
    if not output.is_dir():
        raise UsageError(f"-o {output}: exists and is not a folder; choose another output folder")
    if (output / LOCK_NAME).is_file() or not any(not p.name.startswith(".") for p in output.iterdir()):
        return  # LiSER's, or nothing but hidden files (.gitkeep, .DS_Store)
    try:
        with open(output / "results.csv", encoding="utf-8") as f:
            ours = f.readline().startswith(RESULTS_HEAD)
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise UsageError(f"-o {output}: a folder with files that is not a liser bench output (no {LOCK_NAME}, no "
                         "results.csv of LiSER's); LiSER writes results.csv, leaderboard.md and runs/ there and "
                         "replaces only its own files: choose an empty or new folder")


class GridLock:
    """One driver per output folder: an exclusive ``flock`` on ``OUTPUT/.liser-bench.lock``,
    held while the driver runs and released by the kernel if it dies (``flock`` works on local
    filesystems and NFSv4; on a filesystem without it, run one driver per folder by hand)."""

    def __init__(self, output: Path):
        self.path = Path(output) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        check_grid_output(self.path.parent)  # a user's folder is refused before the lock file is made
        self._made = not self.path.parent.exists()  # then a refusal leaves no folder behind
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self.holder(fd)
            os.close(fd)
            raise UsageError(f"{self.path.parent} is in use by another liser bench ({holder}); wait for it, follow it "
                             "with --status, or choose another output folder (-o)") from None
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd

    @staticmethod
    def holder(fd: int) -> str:
        try:
            h = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            h = {}
        return f"pid {h.get('pid', '?')} on {h.get('host', '?')} since {h.get('started', '?')}"

    def held_by_other(self) -> str | None:
        """Who holds the lock (another process), or None: for ``--status``."""
        import fcntl

        if not self.path.is_file():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return self.holder(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            if getattr(self, "_made", False) and [p.name for p in self.path.parent.iterdir()] == [LOCK_NAME]:
                self.path.unlink()  # nothing was written (refused before any work): no folder left
                self.path.parent.rmdir()
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> GridLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# -- the graph ------------------------------------------------------------------------------------


@dataclass
class Task:
    """One node of the graph (see the module doc)."""

    id: str
    kind: str  # fit | label | run
    title: str
    spec: dict
    deps: list[str] = field(default_factory=list)
    key: str | None = None  # the combination, for run tasks
    work: float = 1.0  # relative amount of work (clip passes), for the ETA
    state: str = "todo"  # todo | running | done | failed
    attempts: int = 0
    error: str = ""
    seconds: float = 0.0
    started: float | None = None
    ended: float | None = None
    where: str = ""

    def public(self) -> dict:
        d = asdict(self)
        d.pop("spec")
        return d


def _digest(text: str, n: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def build_graph(grid, host, items: list[dict], overrides: dict[str, list[str]], *, threads: int | None = None,
                plugins: dict | None = None) -> list[Task]:
    """The tasks for :func:`liser_tools.bench.plan`'s ``items`` not done (see the module doc).

    ``overrides``: each combination's full override list (:func:`liser_tools.bench.after_axes`);
    ``threads``: torch threads per task (None: the recipe's)."""
    from liser_cache.identity import digests_of
    from liser_core.config import plain
    from liser_core.data import SPLITS
    from liser_core.engine import build_component
    from liser_core.stages.teach import fit_block

    out = Path(grid.output)
    tasks: dict[str, Task] = {}
    corpora: dict[str, dict[str, list[str]]] = {}
    last_label: dict[str, str] = {}  # teacher identity -> its latest labeling task (a chain)
    extra_threads = [f"threads={threads}"] if threads else []
    from liser_common.provenance import code_identity, code_string

    # the driver's code: a worker running other code (another checkout or install on the cluster's
    # path) refuses the task rather than return rows of other code under this grid's board
    common = {"recipe": str(grid.recipe), "plugins": plugins or {},
              "code": code_identity(code_string(host.code_sources()))}

    def spec(task_id: str, kind: str, title: str, combo: str, run_dir: Path, **more: Any) -> dict:
        ovr = [*overrides[combo], f"run_dir={run_dir}", *([f"store={grid.store_dir()}"] if grid.store else []),
               *extra_threads]
        return {"id": task_id, "kind": kind, "title": title, "overrides": ovr,
                "log": str(out / TASKS_DIR / "logs" / f"{task_id}.log"), **common, **more}

    for it in items:
        if it["state"] == "done":
            continue
        cfg, key = it["config"], it["key"]
        deps: list[str] = []
        split_n = 1
        if grid.store and cfg.teachers:
            data_key = json.dumps({"name": cfg.data.name, "options": plain(cfg.data.options), "seed": int(cfg.seed)},
                                  sort_keys=True, default=str)
            if data_key not in corpora:  # clips are known by content (as the store keys them)
                corpus = build_component(host.registries.dataset, cfg.data.name, plain(cfg.data.options),
                                         "data.options", seed=int(cfg.seed))
                corpora[data_key] = {s: [",".join(d) for d in digests_of(corpus.split(s), corpus)] for s in SPLITS}
            split = corpora[data_key]
            distil = split["unlabeled"] + (split["labeled"] if cfg.distil.include_labeled else [])
            clipset = sorted(set(distil + split[cfg.evaluate.split]))
            split_n = max(1, len(distil))
            for i, tc in enumerate(cfg.teachers):
                if tc.checkpoint:
                    ident = json.dumps({"name": tc.name, "options": plain(tc.options), "checkpoint": str(tc.checkpoint)},
                                       sort_keys=True, default=str)
                    fit_id = None
                else:
                    ident = json.dumps({"block": fit_block(tc), "precision": str(cfg.precision),
                                        "fit_set": sorted(split["teacher"]), **fit_validation(cfg, tc, split)},
                                       sort_keys=True, default=str)
                    fit_id = f"fit-{tc.name}-{_digest(ident)}"
                    if fit_id not in tasks:
                        tasks[fit_id] = Task(fit_id, "fit", f"fit {tc.name} (as in {key})",
                                             spec(fit_id, "fit", f"fit {tc.name}", key, out / TASKS_DIR / fit_id, teacher=i),
                                             work=float(tc.fit.epochs) * max(1, len(split["teacher"])))
                label_id = f"label-{tc.name}-{_digest(ident + '|' + ','.join(clipset))}"
                if label_id not in tasks:
                    chain = [d for d in (fit_id, last_label.get(ident)) if d]
                    tasks[label_id] = Task(label_id, "label", f"label {len(clipset)} clips with {tc.name} (as in {key})",
                                           spec(label_id, "label", f"label with {tc.name}", key,
                                                out / TASKS_DIR / label_id, teacher=i),
                                           deps=chain, work=float(len(clipset)))
                    last_label[ident] = label_id
                deps.append(label_id)
        run_id = f"run-{_digest(key)}"
        from liser_tools.bench import run_dir_of

        epochs = int(cfg.distil.epochs) + int(cfg.finetune.epochs) + (int(cfg.baseline.epochs) if cfg.baseline.enabled else 0)
        tasks[run_id] = Task(run_id, "run", key, spec(run_id, "run", key, key, run_dir_of(grid, key), key=key,
                                                       fingerprint=it["fingerprint"],
                                                       resume="restart" if it["state"] == "stale" else "auto"),
                             deps=sorted(set(deps)), key=key, work=float(max(1, epochs)) * split_n)
    return list(tasks.values())


# -- status ---------------------------------------------------------------------------------------


def _counts(tasks: list[Task]) -> dict[str, int]:
    c = {"done": 0, "running": 0, "failed": 0, "todo": 0}
    for t in tasks:
        c[t.state] = c.get(t.state, 0) + 1
    return c


def eta_seconds(tasks: list[Task], capacity: int) -> float | None:
    """What is left, in seconds: the work of the tasks not done, at the seconds per unit of work
    measured on the finished tasks of the same kind (of any kind before one of its own has
    finished), spread over ``capacity`` workers. None before any task finished."""
    done = [t for t in tasks if t.state == "done" and t.seconds > 0]
    if not done:
        return None
    rate_all = sum(t.seconds for t in done) / sum(t.work for t in done)
    rates = {}
    for kind in {t.kind for t in done}:
        mine = [t for t in done if t.kind == kind]
        rates[kind] = sum(t.seconds for t in mine) / sum(t.work for t in mine)
    left = 0.0
    now = time.time()
    for t in tasks:
        if t.state in ("todo", "running"):
            cost = t.work * rates.get(t.kind, rate_all)
            if t.state == "running" and t.started:
                cost = max(0.0, cost - (now - t.started))
            left += cost
    return left / max(1, capacity)


def progress_line(tasks: list[Task], capacity: int) -> str:
    from liser_tools.bench import _clock

    c = _counts(tasks)
    eta = eta_seconds(tasks, capacity)
    runs = [t for t in tasks if t.kind == "run"]
    return (f"grid: {c['done']} done, {c['running']} running, {c['failed']} failed, {c['todo']} to do "
            f"({sum(t.state == 'done' for t in runs)}/{len(runs)} runs); "
            + (f"about {_clock(eta)} left" if eta is not None else "ETA after the first task"))


def write_status(output: Path, tasks: list[Task], *, state: str, executor: str, capacity: int,
                 started: float, skipped: int) -> None:
    body = {
        "state": state, "executor": executor, "capacity": capacity, "driver": {"pid": os.getpid(), "host": socket.gethostname()},
        "started": started, "updated": time.time(), "skipped": skipped, "counts": _counts(tasks),
        "eta_seconds": eta_seconds(tasks, capacity), "tasks": [t.public() for t in tasks],
    }
    atomic_write_text(Path(output) / STATUS_NAME, json.dumps(body, indent=1, default=str) + "\n")


def format_status(output: Path) -> str:
    """``liser bench GRID --status``: the state of a grid, running or not, from its files."""
    from liser_tools.bench import _clock, read_results

    output = Path(output)
    if not output.is_dir():
        raise UsageError(f"--status: {output} is not a folder (no grid has run there; -o names a grid's output folder)")
    lines = []
    holder = GridLock(output).held_by_other()
    path = output / STATUS_NAME
    status = json.loads(path.read_text()) if path.is_file() else None
    if holder:
        lines.append(f"{output}: running ({holder})")
    elif status is not None:
        died = status["state"] == "running"  # no driver holds the lock, yet its last word was "running"
        lines.append(f"{output}: not running (last driver: "
                     + ("died while running: killed or its machine lost; tasks below as it last saw them"
                        if died else status["state"])
                     + f", {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status['updated']))})")
    else:
        lines.append(f"{output}: not running")
    rows = read_results(output / "results.csv")
    lines.append(f"results.csv: {len({r['combination'] for r in rows})} combination(s) with rows")
    if not holder:  # the last driver's tasks, not this grid file's state (which an edit may have changed)
        lines.append("what this grid's combinations need now (done, stale, to do): liser bench GRID --list")
    if status is None:
        lines.append("no task-graph status (the grid was run sequentially, or not yet)")
        return "\n".join(lines)
    tasks = status["tasks"]
    c = status["counts"]
    by_kind = {k: sum(1 for t in tasks if t["kind"] == k) for k in ("fit", "label", "run")}
    eta = status.get("eta_seconds")
    lines.append(f"executor: {status['executor']}; tasks: {len(tasks)} ({by_kind['fit']} fits, {by_kind['label']} "
                 f"labeling passes, {by_kind['run']} runs; {status.get('skipped', 0)} combination(s) were done before)")
    lines.append(f"done {c['done']}, running {c['running']}, failed {c['failed']}, to do {c['todo']}"
                 + (f"; about {_clock(eta)} left" if eta is not None and holder else ""))
    now = time.time() if holder else float(status["updated"])  # a dead driver's clock stopped when it died
    for t in tasks:
        if t["state"] == "running":
            what = "running " if holder else "was running"
            lines.append(f"  {what}  {t['title']}  (attempt {t['attempts']}, on {t['where'] or 'a worker not yet known'}, "
                         f"{_clock(now - (t['started'] or now))})")
    for t in tasks:
        if t["state"] == "failed":
            lines.append(f"  failed   {t['title']}: {t['error']}")
    lines.append(f"task logs: {output / TASKS_DIR / 'logs'}")
    return "\n".join(lines)


# -- the driver -----------------------------------------------------------------------------------


def run_graph(grid, host, executor: Executor, *, other_code: str | None = None, retries: int = 2,
              plugins: dict | None = None, progress: bool = True, poll_s: float = 2.0) -> dict:
    """Run the grid's combinations not done as a task graph on ``executor`` (module doc);
    returns {"ran", "skipped", "replaced", "failed": {combination: error}, "results", "tasks"}.
    Holds the output folder's lock from the first check to the last write."""
    from liser_tools.bench import (
        after_axes,
        claim_output,
        combination_key,
        current_rows,
        read_results,
        validated_plan,
        write_leaderboard,
        write_results,
    )

    if retries < 0:
        raise UsageError("--retries must be >= 0")
    lock = GridLock(grid.output)
    lock.acquire()  # before anything is checked or written: a second driver is refused at once
    try:
        executor.start()  # a cluster that cannot be reached is refused before any work
    except BaseException:
        lock.release()
        raise
    try:
        todo = validated_plan(grid, host, other_code)
        claim_output(grid)
        combos = grid.combinations()
        overrides = {combination_key(chosen): ovr for (chosen, _), ovr in zip(combos, after_axes(grid, combos))}
        # torch threads per task: the executor's share (a threads= on the command line wins; one
        # local worker keeps the recipe's, as the sequential runner)
        threads = getattr(executor, "task_threads", lambda: None)()
        if any(o.startswith("threads=") for o in grid.cli_overrides) or (executor.name == "local" and executor.capacity == 1):
            threads = None
        tasks = build_graph(grid, host, todo, overrides, threads=threads, plugins=plugins)
        return _drive(grid, executor, tasks, todo, retries=retries, progress=progress, poll_s=poll_s,
                      read_results=read_results, write_results=write_results, current_rows=current_rows,
                      write_leaderboard=write_leaderboard)
    finally:
        try:
            executor.close()
        finally:
            lock.release()


def threads_of(task: Task) -> int:
    """The torch threads a task was given (its ``threads=`` override), 1 if none."""
    given = [o for o in task.spec["overrides"] if o.startswith("threads=")]
    return int(given[-1].split("=", 1)[1]) if given and given[-1].split("=", 1)[1].isdigit() else 1


def _drive(grid, executor: Executor, tasks: list[Task], todo: list[dict], *, retries: int, progress: bool, poll_s: float,
           read_results, write_results, current_rows, write_leaderboard) -> dict:
    output = Path(grid.output)
    output.mkdir(parents=True, exist_ok=True)
    results_path = output / "results.csv"
    rows = read_results(results_path)
    by_id = {t.id: t for t in tasks}
    started = time.time()
    skipped = sum(1 for it in todo if it["state"] == "done")
    replaced = [it["key"] for it in todo if it["state"] == "stale"]
    for it in todo:
        if it["state"] == "stale":
            log.warning("%s: its rows are stale (%s); running it again", it["key"], it["why"])
    n_kinds = {k: sum(1 for t in tasks if t.kind == k) for k in ("fit", "label", "run")}
    log.info("grid: %d task(s): %d teacher fit(s), %d labeling pass(es), %d run(s) (%d combination(s) done before) on %s",
             len(tasks), n_kinds["fit"], n_kinds["label"], n_kinds["run"], skipped, executor.describe())
    last_line = ""

    def status(state: str) -> None:
        nonlocal last_line
        write_status(output, tasks, state=state, executor=executor.describe(), capacity=executor.capacity,
                     started=started, skipped=skipped)
        counts = json.dumps(_counts(tasks))
        if progress and counts != last_line:  # one line per change of the counts
            print(progress_line(tasks, executor.capacity), file=sys.stderr, flush=True)
            last_line = counts

    def fail(task: Task, error: str) -> None:
        task.state, task.error = "failed", error
        log.error("%s failed: %s", task.title, error)
        for t in tasks:  # what needs it cannot run
            if t.state == "todo" and task.id in t.deps:
                fail(t, f"needs {task.title}, which failed: {error}")

    try:
        status("running")
        while any(t.state in ("todo", "running") for t in tasks):
            running = sum(1 for t in tasks if t.state == "running")
            ready = [t for t in tasks if t.state == "todo" and all(by_id[d].state == "done" for d in t.deps)]
            ready.sort(key=lambda t: ("fit", "label", "run").index(t.kind))  # fits first: they unblock the most
            batch = ready[: max(0, executor.capacity - running)]
            if batch:
                for t in batch:
                    t.state, t.attempts, t.started = "running", t.attempts + 1, time.time()
                    t.spec["attempt"] = t.attempts
                executor.submit([(t.id, dict(t.spec), Resources(cpus=threads_of(t))) for t in batch])
                for t in batch:  # where each runs now (a retry: its new worker, not the one that died)
                    t.where = executor.where(t.id) or ""
                status("running")
            if not running and not batch:
                raise RuntimeError("task graph stuck: tasks wait for tasks that cannot run")  # a bug, not a user error
            for outcome in executor.wait(poll_s):
                t = by_id[outcome.task_id]
                t.ended = time.time()
                t.seconds += t.ended - (t.started or t.ended)
                t.where = outcome.where
                if outcome.lost is not None:
                    if t.attempts <= retries:
                        log.warning("%s: lost (%s); retrying (attempt %d of %d), resuming its run directory",
                                    t.title, outcome.lost, t.attempts + 1, retries + 1)
                        t.state = "todo"
                        t.spec["resume"] = "auto"  # continue from the checkpoint it left
                    else:
                        fail(t, f"lost {t.attempts} time(s), last: {outcome.lost}")
                elif not outcome.result.get("ok"):
                    fail(t, outcome.result.get("error") or "failed without a message (see its log)")
                else:
                    t.state = "done"
                    if t.kind == "run":
                        rows = [r for r in rows if r["combination"] != t.key] + list(outcome.result.get("rows") or [])
                        write_results(results_path, rows)  # after every run: an interrupted grid keeps what it has
                        for it in todo:  # its rows are this recipe's now
                            if it["key"] == t.key:
                                it["state"], it["why"] = "done", ""
                    log.info("%s done in %.0fs (%s)", t.title, t.seconds, t.where)
            status("running")
        final = "finished" if not any(t.state == "failed" for t in tasks) else "finished with failures"
        status(final)
    except BaseException:  # Ctrl-C (or a driver error): stop what runs; the same command resumes
        executor.cancel()
        for t in tasks:
            if t.state == "running":
                t.state = "todo"
        status("interrupted")
        raise
    finally:  # never rows of an earlier recipe beside new ones; an incomplete board says so
        write_leaderboard(grid, *current_rows(todo, rows))
    failed = {t.key or t.title: t.error for t in tasks if t.state == "failed" and t.kind == "run"}
    for t in tasks:
        if t.state == "failed" and t.kind != "run" and not any(t.id in u.deps for u in tasks):
            failed[t.title] = t.error
    return {"ran": sum(1 for t in tasks if t.kind == "run" and t.state == "done"), "skipped": skipped,
            "replaced": replaced, "failed": failed, "results": str(results_path),
            "tasks": {k: sum(1 for t in tasks if t.kind == k) for k in ("fit", "label", "run")}}


# -- the command line -----------------------------------------------------------------------------

#: keys of a grid's ``executor:`` block (defaults for the options of the same name)
EXECUTOR_KEYS = ("workers", "retries", "address", "partition", "cpus_per_task", "gpus_per_task", "timeout_min",
                 "mem_gb", "cluster")


def add_executor_args(p) -> None:
    """``liser bench``'s options for running a grid as a task graph."""
    from .executors import CLASHES, executor_names

    g = p.add_argument_group(
        "many workers, GPUs and machines",
        "With --workers N > 1 or --executor ray|slurm the grid runs as a task graph: one task per teacher fit and "
        "fit set, per labeling pass and per combination, each fit and labeling pass once grid-wide; the driver alone "
        "writes results.csv and the board. Defaults come from the grid's `executor:` block "
        f"({', '.join(EXECUTOR_KEYS)}); see docs/leaderboard.md.",
    )
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local: N worker processes, torch threads split between them, one GPU each where there are "
                   "GPUs (default 1: the combinations one after another in this process, as before); ray/slurm: at "
                   "most N tasks at once")
    g.add_argument("--executor", default=None, choices=executor_names() + sorted(CLASHES),  # a clash: refused naming both
                   help="where the tasks run: local (default), ray (a Ray cluster), slurm (job arrays via submitit)")
    g.add_argument("--address", default=None, help="ray: the cluster (auto, HOST:PORT; local starts a private one)")
    g.add_argument("--partition", default=None, help="slurm: the partition")
    g.add_argument("--cpus-per-task", dest="cpus_per_task", type=int, default=None,
                   help="ray/slurm: CPUs per task (its torch threads; default 1)")
    g.add_argument("--gpus-per-task", dest="gpus_per_task", type=int, default=None, help="ray/slurm: GPUs per task")
    g.add_argument("--timeout-min", dest="timeout_min", type=int, default=None, help="slurm: time limit per task")
    g.add_argument("--mem-gb", dest="mem_gb", type=float, default=None, help="slurm: memory per task")
    g.add_argument("--cluster", default=None, choices=("slurm", "local"),
                   help="slurm: submitit's backend (default: Slurm where sbatch exists; local: subprocesses here)")
    g.add_argument("--retries", type=int, default=None,
                   help="times a task whose worker died (killed, node lost, preempted) is run again, resuming its "
                   "run (default 2)")
    g.add_argument("--status", action="store_true",
                   help="print the state of this grid's output folder (a running grid's tasks: done, running, failed, "
                   "to do, ETA) and exit; works from another shell while it runs")


def fit_validation(cfg, tc, split: dict[str, list[str]]) -> dict:
    """What of the validation setup a fitted teacher depends on (as its fit key does): the
    speakers held out of the teacher split (``validation.source: teacher``), or the validation
    clips that pick its best epoch (``fit.early_stop``); drawn from the run's seed. {} when
    neither: the fit is shared across validation settings."""
    source = str(cfg.validation.source)
    if source == "none" or (source != "teacher" and tc.fit.early_stop.metric is None):
        return {}
    return {"validation": {"source": source, "speakers": float(cfg.validation.speakers), "seed": int(cfg.seed),
                           "clips": sorted(split.get(source, []))}}


def executor_options(args, grid) -> dict:
    """The executor options: the command line's, else the grid's ``executor:`` block's."""
    from liser_core.errors import ConfigError, close_matches

    block = getattr(grid, "executor", None) or {}
    if not isinstance(block, dict):
        raise ConfigError("executor", f"must map options ({', '.join(EXECUTOR_KEYS)}) to values")
    for k in block:
        if k not in EXECUTOR_KEYS:
            raise ConfigError(f"executor.{k}", "unknown key", close_matches(str(k), EXECUTOR_KEYS))
    opts = {k: block.get(k) for k in EXECUTOR_KEYS}
    where = {k: f"executor.{k}" for k in EXECUTOR_KEYS}  # the key to name in an error: the grid's or the option
    for k in EXECUTOR_KEYS:
        v = getattr(args, k, None)
        if v is not None:
            opts[k], where[k] = v, f"--{k.replace('_', '-')}"
    for k, typ, low in (("workers", int, 1), ("cpus_per_task", int, 1), ("timeout_min", int, 1), ("retries", int, 0),
                        ("gpus_per_task", int, 0), ("mem_gb", float, 0)):
        v = opts[k]
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (typ is int and v != int(v)):
            raise ConfigError(where[k], f"{v!r} is not {'a whole number' if typ is int else 'a number'}")
        if v < low or (k == "mem_gb" and v == 0):
            raise ConfigError(where[k], f"must be {'>' if k == 'mem_gb' else '>='} {low}")
        opts[k] = typ(v)
    for k in ("address", "partition", "cluster"):
        if opts[k] is not None and not isinstance(opts[k], str):
            raise ConfigError(where[k], f"{opts[k]!r} is not text")
    if opts["cluster"] not in (None, "slurm", "local"):
        raise ConfigError(where["cluster"], f"{opts['cluster']!r}: choose slurm or local", close_matches(
            str(opts["cluster"]), ["slurm", "local"]))
    from liser_tools.executors import executor_names, takes_option

    chosen = getattr(args, "executor", None) or "local"
    if chosen in executor_names():
        for k in ("address", "partition", "cluster", "timeout_min", "mem_gb", "gpus_per_task"):
            if where[k].startswith("--") and not takes_option(chosen, k):  # given for another executor
                users = [n for n in executor_names() if n != chosen and takes_option(n, k)]
                raise ConfigError(where[k], f"does not apply to --executor {chosen} (it is an option of "
                                            f"{', '.join(users) or 'other executors'})")
    return opts


def uses_graph(args, grid) -> bool:
    """Whether ``liser bench`` runs the grid as a task graph (else sequentially, in-process)."""
    opts = executor_options(args, grid)
    return (getattr(args, "executor", None) or "local") != "local" or int(opts["workers"] or 1) > 1


def cmd_graph(args, grid, host) -> int:
    """``liser bench GRID --workers N | --executor ray|slurm``."""
    from .executors import make_executor

    opts = executor_options(args, grid)
    name = getattr(args, "executor", None) or "local"
    retries = 2 if opts["retries"] is None else int(opts["retries"])
    build = {k: v for k, v in opts.items() if v is not None and k != "retries"}
    if name == "slurm":
        build.setdefault("folder", Path(grid.output) / "slurm")
    executor = make_executor(name, **build)
    plugins = {"only": [p for p in getattr(args, "plugins", []) if not p.startswith("no:")],
               "block": [p[3:] for p in getattr(args, "plugins", []) if p.startswith("no:")]}
    out = run_graph(grid, host, executor, other_code=getattr(args, "other_code", None), retries=retries, plugins=plugins)
    print(json.dumps(out))
    print(f"leaderboard: {Path(grid.output) / 'leaderboard.md'}")
    if out["failed"]:
        for what, error in out["failed"].items():
            print(f"liser: failed: {what}: {error}", file=sys.stderr)
        return 1
    return 0

"""liser bench as a task graph (issue 25): local workers, Ray, submitit; faults, the lock, --status."""

import csv
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from liser_cache.store import TeacherStore
from liser_core import load_plugins
from liser_core.errors import UsageError
from liser_core.testing import TINY_OVERRIDES, TINY_RECIPE
from liser_tools.bench import load_grid, run_dir_of
from liser_tools.executors import LocalExecutor, RayExecutor, SlurmExecutor
from liser_tools.gridtasks import FAIL_ENV, KILL_ENV
from liser_tools.taskgraph import STATUS_NAME, GridLock, format_status, run_graph

LOSSES = {"kl": ["distil.losses=[{name: kl}, {name: ce, weight: 0.5}]"], "ce": ["distil.losses=[{name: ce}]"]}


def write_grid(folder, *, store=True, epochs=2):
    """Two combinations (one seed, two losses) of the tiny recipe: two teachers to fit."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(TINY_RECIPE)
    grid = {"recipe": "tiny.yaml", "overrides": [*TINY_OVERRIDES, f"distil.epochs={epochs}"], "store": store,
            "repeat": ["seed"], "axes": {"loss": LOSSES, "seed": {"s0": ["seed=0"]}}}
    (folder / "grid.yaml").write_text(yaml.safe_dump(grid))
    return folder / "grid.yaml"


def scores(out):
    rows = list(csv.DictReader(open(out / "results.csv")))
    return {(r["combination"], r["model"]): (r["uar"], r["accuracy"], r["macro_f1"]) for r in rows}


def status(out):
    return {t["id"]: t for t in json.loads((out / STATUS_NAME).read_text())["tasks"]}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """The tiny grid on 2 local workers, undisturbed (shared by the tests that compare with it)."""
    base = tmp_path_factory.mktemp("graph")
    grid = load_grid(write_grid(base), base / "out")
    out = run_graph(grid, load_plugins(), LocalExecutor(workers=2), progress=False, poll_s=0.5)
    return base / "out", out


def test_two_local_workers_fit_and_label_once_with_dependencies_respected(two_workers):
    out, result = two_workers
    assert result["failed"] == {} and result["ran"] == 2
    assert result["tasks"] == {"fit": 2, "label": 2, "run": 2}  # two teachers, one fit set, one clip set
    tasks = status(out)
    for t in tasks.values():  # every task started after each task it needs had ended
        assert t["state"] == "done" and t["attempts"] == 1
        for dep in t["deps"]:
            assert tasks[dep]["ended"] <= t["started"], (t["id"], dep)
    assert {t["kind"] for t in tasks.values() if not t["deps"]} == {"fit"}
    # each teacher fitted once (in its fit task), reused by both runs; each clip labeled once per teacher
    fitted = [p for p in (out / "store" / "fitted").iterdir() if not p.name.startswith(".")]
    assert len(fitted) == 2
    for key in ("loss=kl,seed=s0", "loss=ce,seed=s0"):
        diag = json.loads((run_dir_of(load_grid(out.parent / "grid.yaml", out), key) / "metrics.json").read_text())["diagnostics"]
        assert all(f["reused"] and "/tasks/fit-" in f["fitted_in"] for f in diag["teacher_fits"].values())
        assert all(s["labeled"] == 0 for s in diag["store"].values())  # the labeling tasks did it
    store = TeacherStore(out / "store")
    infos = [store.info(fp) for fp in store.fingerprints()]
    assert len(infos) == 2 and all(i["rows"] == i["clips"] > 0 for i in infos)  # no clip twice
    assert len(scores(out)) == 2 * 4  # per run: the student, two teachers, their combined targets
    assert (out / "leaderboard.md").is_file()
    assert all((out / "tasks" / "logs" / f"{t}.log").stat().st_size > 0 for t in tasks)


def test_a_killed_worker_is_retried_and_resumes_with_the_same_scores(two_workers, tmp_path, monkeypatch):
    base = tmp_path
    grid = load_grid(write_grid(base), base / "out")
    victim = "run-" + __import__("hashlib").sha256(b"loss=kl,seed=s0").hexdigest()[:12]
    marker = tmp_path / "killed.txt"
    monkeypatch.setenv(KILL_ENV, f"{victim}:{marker}")  # SIGKILL after its first distil checkpoint
    out = run_graph(grid, load_plugins(), LocalExecutor(workers=2), progress=False, poll_s=0.5)
    assert marker.is_file() and "at distil" in marker.read_text()
    assert out["failed"] == {} and out["ran"] == 2
    tasks = status(base / "out")
    assert tasks[victim]["attempts"] == 2 and tasks[victim]["state"] == "done"
    log = (run_dir_of(grid, "loss=kl,seed=s0") / "log.txt").read_text()
    assert "resum" in log.lower()  # the second attempt continued the run from its checkpoint
    assert scores(base / "out") == scores(two_workers[0])  # as if nothing had happened


def test_a_task_that_fails_marks_its_combination_failed_and_the_others_go_on(tmp_path, monkeypatch):
    grid = load_grid(write_grid(tmp_path, store=False, epochs=1), tmp_path / "out")
    victim = "run-" + __import__("hashlib").sha256(b"loss=ce,seed=s0").hexdigest()[:12]
    monkeypatch.setenv(FAIL_ENV, victim)
    out = run_graph(grid, load_plugins(), LocalExecutor(workers=2), progress=False, poll_s=0.5)
    assert out["tasks"] == {"fit": 0, "label": 0, "run": 2}  # no store: nothing to share
    assert out["failed"] == {"loss=ce,seed=s0": f"injected failure of task {victim} ({FAIL_ENV})"}
    assert {c for c, _ in scores(tmp_path / "out")} == {"loss=kl,seed=s0"}
    text = format_status(tmp_path / "out")
    assert "not running (last driver: finished with failures" in text
    assert f"failed   loss=ce,seed=s0: injected failure of task {victim}" in text
    # the same command again runs only what failed
    monkeypatch.delenv(FAIL_ENV)
    again = run_graph(grid, load_plugins(), LocalExecutor(workers=2), progress=False, poll_s=0.5)
    assert again["ran"] == 1 and again["skipped"] == 1 and again["failed"] == {}


def test_ray_executor_on_a_real_local_cluster(two_workers, tmp_path):
    pytest.importorskip("ray")
    grid = load_grid(write_grid(tmp_path), tmp_path / "out")
    out = run_graph(grid, load_plugins(), RayExecutor(address="local", cpus=2, cpus_per_task=1), progress=False,
                    poll_s=0.5)
    assert out["failed"] == {} and out["tasks"] == {"fit": 2, "label": 2, "run": 2}
    assert {t["where"] for t in status(tmp_path / "out").values()} == {"ray"}
    assert scores(tmp_path / "out") == scores(two_workers[0])  # one thread per task in both
    with pytest.raises(UsageError, match=r"0 GPU\(s\); a task asks for 1 CPU\(s\) and 1 GPU\(s\).*so none could run"):
        RayExecutor(address="local", cpus=2, gpus_per_task=1).start()  # it would have waited forever


def test_executor_options_are_checked_where_they_come_from(tmp_path, capsys):
    """The grid's executor: block is type-checked naming its key; an option of another executor
    on the command line is refused; --cluster slurm without Slurm and --status on a folder that
    does not exist are one line; all exit 2, nothing written."""
    import shutil

    from liser_tools.cli import main

    path = write_grid(tmp_path)
    raw = yaml.safe_load(path.read_text())
    cases = [({"workers": "two"}, [], "executor.workers: 'two' is not a whole number"),
             ({"workers": 0}, [], "executor.workers: must be >= 1"),
             ({"cluster": "lokal"}, ["--executor", "slurm"], "executor.cluster: 'lokal': choose slurm or local"),
             ({"workers": float("inf")}, [], "executor.workers: inf is not a whole number"),
             ({}, ["--address", "local"], "--address: does not apply to --executor local (it is an option of ray)"),
             ({}, ["--partition", "gpu", "--workers", "2"], "--partition: does not apply to --executor local (it is an "
                                                            "option of slurm)"),
             ({}, ["--status", "-o", str(tmp_path / "nowhere")], "is not a folder (no grid has run there"),
             ({}, ["--address", "auto", "--list"], "--address: does not apply to --executor local"),
             ({}, ["--mem-gb", "4", "--plan"], "--mem-gb: does not apply to --executor local")]
    if shutil.which("srun") is None:
        cases.append(({}, ["--executor", "slurm", "--cluster", "slurm"], "--cluster slurm: no Slurm here"))
    for block, args, says in cases:
        path.write_text(yaml.safe_dump({**raw, **({"executor": block} if block else {})}))
        assert main(["bench", str(path), "-o", str(tmp_path / "out"), *args]) == 2, (block, args)
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_submitit_executor_with_its_local_executor(tmp_path):
    pytest.importorskip("submitit")
    grid = load_grid(write_grid(tmp_path, store=False, epochs=1), tmp_path / "out")
    ex = SlurmExecutor(folder=tmp_path / "out" / "slurm", cluster="local", workers=2, timeout_min=10, poll_s=0.3)
    out = run_graph(grid, load_plugins(), ex, progress=False, poll_s=0.5)
    assert out["failed"] == {} and out["ran"] == 2
    tasks = status(tmp_path / "out")
    assert all(t["where"].startswith("slurm job ") for t in tasks.values())
    jobs = {t["where"].split()[-1] for t in tasks.values()}
    assert all((tmp_path / "out" / "slurm" / j).is_dir() for j in jobs)  # submitit's own job folders
    assert len(scores(tmp_path / "out")) == 2 * 4


def liser(*args, cwd):
    return subprocess.run([sys.executable, "-m", "liser_tools.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_two_drivers_on_one_output_folder_are_refused(tmp_path):
    path = write_grid(tmp_path)
    out = tmp_path / "out"
    with GridLock(out):  # another driver holds the folder
        with pytest.raises(UsageError, match="in use by another liser bench"):
            run_graph(load_grid(path, out), load_plugins(), LocalExecutor(workers=2), progress=False)
        for extra in ([], ["--workers", "2"]):  # sequential or task graph: refused alike, exit 2, one line
            r = liser("bench", str(path), "-o", str(out), *extra, cwd=tmp_path)
            assert r.returncode == 2, r.stderr
            assert r.stderr.count("\n") == 1 and "in use by another liser bench (pid" in r.stderr
        running = liser("bench", str(path), "-o", str(out), "--status", cwd=tmp_path)
        assert running.returncode == 0 and f"{out}: running (pid {os.getpid()}" in running.stdout
    assert not (out / "results.csv").exists() and not (out / "runs").exists()  # nothing written


def test_status_reads_the_grid_from_another_process(two_workers):
    out = two_workers[0]
    r = liser("bench", str(out.parent / "grid.yaml"), "-o", str(out), "--status", cwd=out.parent)
    assert r.returncode == 0, r.stderr
    assert f"{out}: not running (last driver: finished" in r.stdout
    assert "tasks: 6 (2 fits, 2 labeling passes, 2 runs" in r.stdout
    assert "done 6, running 0, failed 0, to do 0" in r.stdout


@pytest.mark.parametrize("args, key", [(["--workers", "0"], "--workers"), (["--retries", "-1"], "--retries"),
                                       (["--executor", "ray", "--address", "127.0.0.1:1"], "--executor ray: no Ray cluster")])
def test_bad_executor_options_are_one_line_and_exit_2(tmp_path, args, key):
    path = write_grid(tmp_path)
    r = liser("bench", str(path), "-o", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert r.returncode == 2 and key in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_a_grid_executor_block_with_an_unknown_key_is_refused(tmp_path):
    path = write_grid(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["executor"] = {"partiton": "gpu"}
    path.write_text(yaml.safe_dump(raw))
    r = liser("bench", str(path), "-o", str(tmp_path / "out"), "--workers", "2", cwd=tmp_path)
    assert r.returncode == 2 and "executor.partiton" in r.stderr and "partition" in r.stderr, r.stderr


def test_concurrent_writers_of_one_fitted_teacher_leave_one_whole_entry(tmp_path):
    """Processes publishing the same fit at once (as workers on a shared filesystem could): one
    entry, whole and loadable, no error, no leftover temporary folder."""
    code = r"""
import sys, time, torch
from pathlib import Path
from liser_core import load_plugins
from liser_core.engine import build_component
from liser_core.labels import LabelSpace
from liser_core.stages.teach import _publish_fit
host = load_plugins()
torch.manual_seed(int(sys.argv[2]))
t = build_component(host.registries.teacher, "audio_cnn", {"channels": [4, 8], "hidden": 16},
                    label_space=LabelSpace("two", ("neutral", "happy")))
barrier = Path(sys.argv[3])
Path(f"{barrier}.ready{sys.argv[2]}").write_text("ready")
while not barrier.exists():
    time.sleep(0.01)
_publish_fit(None, t, Path(sys.argv[1]), {"writer": sys.argv[2]}, {"fit_key": "k", "code": "c"})
"""
    target = tmp_path / "store" / "fitted" / "k-c"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target), str(i), str(go)]) for i in range(3)]
    while not all((tmp_path / f"go.ready{i}").exists() for i in range(3)):  # all imported, waiting
        assert all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.write_text("go")  # all three publish at once
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    from liser_core import checkpoint

    config = checkpoint.read_component_config(target, "teacher")
    assert config["writer"] in {"0", "1", "2"}
    assert checkpoint.read_marker(target)["fit_key"] == "k"
    assert [p.name for p in target.parent.iterdir()] == ["k-c"]


def test_ctrl_c_on_the_driver_cancels_and_the_same_command_resumes(two_workers, tmp_path):
    import signal

    path = write_grid(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "liser_tools.cli", "bench", str(path), "-o", str(out), "--workers", "2"]
    driver = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 240
    while True:  # until a student run is under way
        assert driver.poll() is None and time.monotonic() < deadline
        try:
            tasks = json.loads((out / STATUS_NAME).read_text())["tasks"]
        except (FileNotFoundError, ValueError):
            tasks = []
        if any(t["kind"] == "run" and t["state"] == "running" for t in tasks):
            break
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C in its terminal: the driver and its workers
    _, err = driver.communicate(timeout=180)
    assert driver.returncode == 130 and "liser: interrupted" in err
    state = json.loads((out / STATUS_NAME).read_text())
    assert state["state"] == "interrupted" and state["counts"]["running"] == 0
    assert state["counts"]["todo"] >= 1  # what ran is left to do ...
    assert "**Incomplete:" in (out / "leaderboard.md").read_text()  # ... and the board says what it lacks
    said = [line for log in out.rglob("log.txt") for line in log.read_text().splitlines() if "interrupted: continue" in line]
    assert all("the same `liser bench` command" in line and "liser run --resume" not in line for line in said)
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert scores(out) == scores(two_workers[0])  # ... and the same command finishes it, same scores


def test_a_fit_or_label_task_keeps_one_teacher_and_drops_losses_bound_to_the_others(tmp_path):
    from omegaconf import OmegaConf

    from liser_core.engine import prepare_config
    from liser_tools.gridtasks import restrict_to_teacher

    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    host = load_plugins()
    losses = "distil.losses=[{name: kl}, {name: feature_matching, options: {teacher: face_cnn}}]"
    cfg = prepare_config(tmp_path / "tiny.yaml", [*TINY_OVERRIDES, losses], host)
    OmegaConf.set_readonly(cfg, False)
    restrict_to_teacher(cfg, 1)
    assert [t.name for t in cfg.teachers] == ["audio_cnn"] and [lc.name for lc in cfg.distil.losses] == ["kl"]
    cfg = prepare_config(tmp_path / "tiny.yaml", [*TINY_OVERRIDES, losses.replace("{name: kl}, ", "")], host)
    OmegaConf.set_readonly(cfg, False)
    restrict_to_teacher(cfg, 1)  # nothing left: a plain ce term, so the recipe still binds
    assert [lc.name for lc in cfg.distil.losses] == ["ce"]
    cfg = prepare_config(tmp_path / "tiny.yaml", [*TINY_OVERRIDES, losses], host)
    OmegaConf.set_readonly(cfg, False)
    restrict_to_teacher(cfg, 0)  # the face teacher's own loss stays
    assert [t.name for t in cfg.teachers] == ["face_cnn"] and len(cfg.distil.losses) == 2


def test_executors_are_a_registry_a_plugin_can_add_to():
    from liser_core.errors import ConfigError
    from liser_tools import executors

    class Inline(executors.Executor):
        name = "inline"

        def __init__(self, workers: int = 1):
            self.capacity = workers

        def submit(self, tasks):
            self.done = [executors.Outcome(task_id, result={"id": task_id, "ok": True}) for task_id, _, _ in tasks]

        def wait(self, timeout):
            return self.done

        def cancel(self):
            pass

    executors.register_executor("inline", Inline)
    try:
        ex = executors.make_executor("inline", workers=3, address="ignored")  # options it does not take: dropped
        assert isinstance(ex, Inline) and ex.capacity == 3 and "inline" in executors.executor_names()
    finally:
        del executors.EXECUTORS["inline"]
    with pytest.raises(ConfigError, match="unknown executor 'rey'.*ray"):
        executors.make_executor("rey")
    # a name is never taken over: a package registering "local" ran every grid on its executor
    with pytest.raises(ValueError, match="executor 'local' is already registered .by liser.: an executor's name "
                                         "cannot be taken over"):
        executors.register_executor("local", Inline)
    assert executors.EXECUTORS["local"] is executors.LocalExecutor
    local = executors.make_executor("local", workers=2, threads=None)
    assert local.capacity == 2 and local.threads == max(1, len(os.sched_getaffinity(0)) // 2)


def test_the_sequential_runner_and_two_workers_give_identical_scores(two_workers, tmp_path):
    """The same grid at one torch thread per run (TINY_OVERRIDES: threads=1), sequentially in one
    process (teachers fitted and labels stored inside the runs) and as a task graph on 2 workers
    (fit and labeling tasks with one teacher each): the same fitted teachers, the same scores."""
    from liser_tools.bench import run_grid

    grid = load_grid(write_grid(tmp_path), tmp_path / "out")
    assert run_grid(grid, load_plugins())["ran"] == 2
    assert scores(tmp_path / "out") == scores(two_workers[0])
    fitted = sorted(p.name for p in (tmp_path / "out" / "store" / "fitted").iterdir() if not p.name.startswith("."))
    assert fitted == sorted(p.name for p in (two_workers[0] / "store" / "fitted").iterdir() if not p.name.startswith("."))


def test_an_edited_grid_on_the_same_folder_reruns_what_changed_and_reuses_the_fits(two_workers, caplog):
    """Last in this file: it edits the shared grid's folder. One value changed in one
    combination: its rows are stale (the changed key named) and it runs again, while the fit and
    labeling tasks, now built "as in" another combination than before, start their folders
    afresh and take the fitted teachers from the store (they had refused: "a different recipe")."""
    import logging

    out = two_workers[0]
    path = write_grid(out.parent)
    grid = yaml.safe_load(path.read_text())
    grid["axes"]["loss"]["kl"] = ["distil.losses=[{name: kl}, {name: ce, weight: 0.6}]"]
    del grid["axes"]["loss"]["ce"]  # the first combination needing the fits is now another one
    grid["axes"]["loss"]["ce2"] = ["distil.losses=[{name: ce, weight: 1.5}]"]
    edited = path  # the grid file edited in place: the same grid (another file is refused: test_bench)
    edited.write_text(yaml.safe_dump(grid))
    fitted = sorted(p.name for p in (out / "store" / "fitted").iterdir())
    with caplog.at_level(logging.INFO, logger="liser"):
        result = run_graph(load_grid(edited, out), load_plugins(), LocalExecutor(workers=2), progress=False, poll_s=0.5)
    assert result["failed"] == {} and result["ran"] == 2 and result["replaced"] == ["loss=kl,seed=s0"]
    assert "loss=kl,seed=s0: its rows are stale (the recipe changed at distil.losses" in caplog.text
    assert sorted(p.name for p in (out / "store" / "fitted").iterdir()) == fitted  # no teacher fitted again


def test_an_executor_name_two_packages_declare_is_refused_not_first_on_the_path(tmp_path, monkeypatch, caplog):
    """Two packages declaring the entry point `fast`: whichever came first on sys.path ran the
    grid; one declaring `local` was silently ignored. A clashed name is refused naming both
    packages; a package declaring LiSER's name is not loaded, with a warning naming it."""
    import logging

    from liser_core.errors import ConfigError
    from liser_tools import executors

    monkeypatch.setattr(executors, "EXECUTORS", dict(executors.EXECUTORS))
    monkeypatch.setattr(executors, "OWNERS", dict(executors.OWNERS))
    monkeypatch.setattr(executors, "CLASHES", {})
    monkeypatch.setattr(executors, "_WARNED", set())
    for dist, eps in (("exa", {"fast": "exa_mod:Fast", "local": "exa_mod:Fast"}), ("exb", {"fast": "exb_mod:Fast"})):
        site = tmp_path / dist
        info = site / f"{dist}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text("[liser.executors]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
        (site / f"{dist}_mod.py").write_text("from liser_tools.executors import LocalExecutor as Fast\n")
        monkeypatch.syspath_prepend(str(site))
    with caplog.at_level(logging.WARNING):
        names = executors.executor_names()
    assert "fast" not in names and executors.EXECUTORS["local"] is executors.LocalExecutor
    assert "executor 'fast' is declared by exb and exa: neither is loaded" in caplog.text or \
        "executor 'fast' is declared by exa and exb: neither is loaded" in caplog.text
    assert "executor 'local' of exa not loaded: the name is liser's" in caplog.text
    with pytest.raises(ConfigError, match="executor 'fast' is declared by .*: which one is meant cannot be told"):
        executors.make_executor("fast")
    # the command line lets the clashed name through to that refusal (argparse said "invalid choice")
    from liser_tools.cli import build_parser

    assert build_parser().parse_args(["bench", "g.yaml", "--executor", "fast"]).executor == "fast"


def test_status_of_a_driver_that_died_says_so_and_stops_its_clocks(tmp_path):
    """--status after the driver was SIGKILLed said "last driver: running" and counted its tasks'
    time up for ever: it says the driver died and shows the tasks as it last saw them."""
    out = tmp_path / "out"
    out.mkdir()
    updated = time.time() - 3600
    (out / STATUS_NAME).write_text(json.dumps({
        "state": "running", "updated": updated, "executor": "local (2 at once)", "skipped": 0, "eta_seconds": 60,
        "counts": {"done": 0, "running": 1, "failed": 0, "todo": 1},
        "tasks": [{"id": "run-1", "kind": "run", "state": "running", "title": "loss=kl,seed=s0", "attempts": 1,
                   "where": "", "started": updated - 100, "error": ""},
                  {"id": "run-2", "kind": "run", "state": "todo", "title": "loss=ce,seed=s0", "attempts": 0,
                   "where": "", "started": None, "error": ""}]}))
    text = format_status(out)
    assert "not running (last driver: died while running: killed or its machine lost" in text
    assert "was running  loss=kl,seed=s0  (attempt 1, on a worker not yet known, 0:01:40)" in text
    assert "about" not in text  # no time left to promise


def test_a_fit_task_is_one_per_validation_setup_its_teacher_depends_on():
    """The grid's fit tasks are identified as the fit key is: validation clips that pick the best
    epoch (fit.early_stop), or speakers held out of the teacher split, make another fit."""
    from liser_core.config import load_recipe
    from liser_tools.taskgraph import fit_validation

    split = {"teacher": ["t1", "t2"], "labeled": ["l1", "l2"]}

    def ident(*overrides):
        cfg = load_recipe("recipes/synth_kd.yaml", list(overrides))
        return fit_validation(cfg, cfg.teachers[0], split)

    assert ident() == {} and ident("validation.source=labeled") == {}  # the fit does not look at validation
    stop = "teachers.0.fit.early_stop.metric=uar"
    a, b = ident("validation.source=labeled", stop), ident("validation.source=labeled", "validation.speakers=0.5", stop)
    assert a and b and a != b and a["validation"]["clips"] == ["l1", "l2"]
    assert ident("validation.source=teacher") != ident("validation.source=teacher", "validation.speakers=0.5")


def test_status_names_the_worker_a_task_runs_on_now():
    """--status said "on a worker not yet known" for a first attempt's whole run, and a retried
    task "on local worker 0 (pid OLD)", the worker that had died: the driver asks the executor
    where each task runs when it submits it."""
    import types

    from liser_tools.executors import Executor, LocalExecutor, _Slot

    ex = LocalExecutor(workers=2)
    ex._slots = [_Slot(process=types.SimpleNamespace(pid=111), task=None, env={"LISER_WORKER": "0"}),
                 _Slot(process=types.SimpleNamespace(pid=222), task="run:b", env={"LISER_WORKER": "1"})]
    assert ex.where("run:b") == "local worker 1 (pid 222)" and ex.where("run:a") == ""
    assert Executor.where(ex, "run:b") == ""  # the interface's default: an executor that cannot tell

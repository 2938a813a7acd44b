"""The run's lifecycle: a resumed run is one recipe, a finished run is finished, a card a user
edited is kept, SIGTERM is a Ctrl-C, the environment's faults (read-only or full disks, a killed
decoding worker) are one line, and what needs no corpus is checked before it is built."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from faults import (
    REPO,
    RESUME_OVERRIDES,
    SIGNAL_AT,
    assert_same_weights,
    eval_metrics,
    run_cli,
    run_here,
    weights,
)

#: killed once a stage has ended (before the next one, or before the reports after the last)
KILL_AT_STAGE_END = '''\
import os
import signal

from liser_core import hookimpl


@hookimpl
def liser_stage_end(stage):
    if stage == {stage!r}:
        os.kill(os.getpid(), signal.SIGKILL)
'''

#: SIGTERM when a stage starts (outside any training loop)
TERM_AT_STAGE_START = '''\
import os
import signal

from liser_core import hookimpl


@hookimpl
def liser_stage_start(stage):
    if stage == {stage!r}:
        os.kill(os.getpid(), signal.SIGTERM)
'''

#: the file system of every path under {where} reports {free} bytes free
DISK_FULL = '''\
import collections
import shutil

_usage = collections.namedtuple("usage", "total used free")
_real = shutil.disk_usage


def _full(path):
    return _usage(10**9, 10**9 - {free}, {free}) if str(path).startswith({where!r}) else _real(path)


shutil.disk_usage = _full
'''

#: the disk fills up while a training checkpoint is written (its marker, the last file)
ENOSPC_IN_CHECKPOINT = '''\
import errno
import os

from liser_common import trainstate


def _full(folder, marker):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "COMPLETE.json"))


trainstate._write_marker = _full
'''


#: every decoding worker is killed (as by the OOM killer) when it is handed its first clip
KILL_DECODING_WORKER = '''\
import os
import signal

import torch

from liser_core import data

_real = data._Marked.__getitem__


def _dying(self, i):
    if torch.utils.data.get_worker_info() is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(self, i)


data._Marked.__getitem__ = _dying
'''

#: a corpus of files (clips in memory never start decoding workers)
FILE_RECIPE = """\
name: files
threads: 1
data: {{name: ravdess, options: {{root: {root}, min_seconds: 0.2, expect_complete: false, teacher_speakers: [9],
  label_fraction: 0.5}}, cache: false}}
teachers: [{{name: audio_cnn, fit: {{epochs: 1, batch_size: 8}}, options: {{channels: [4, 8], hidden: 16}}}}]
student: {{name: logmel_cnn, options: {{channels: [4, 8]}}}}
distil: {{epochs: 1, batch_size: 8, losses: [{{name: kl}}, {{name: ce, weight: 0.5}}]}}
loggers: {{run_dir: {{confusion_png: false}}}}
"""


def run(recipe, run_dir, *extra, **kw):
    return run_cli(["run", str(recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}", *extra], **kw)


def lines(p: subprocess.CompletedProcess) -> list[str]:
    return p.stderr.strip().splitlines()


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def kill_in_distil(recipe, run_dir, tmp_path, *extra):
    plugin = SIGNAL_AT.format(stage="distil", model="student", step=2, signal="SIGKILL")
    killed = run(recipe, run_dir, *extra, site=tmp_path / "site-kill", plugin=plugin)
    assert killed.returncode == -9, killed.stderr[-2000:]


def test_resume_with_an_override_that_changes_results_is_refused_and_free_ones_are_recorded(tiny_recipe, tmp_path, capsys):
    run_dir = tmp_path / "run"
    kill_in_distil(tiny_recipe, run_dir, tmp_path)  # threads=1 (RESUME_OVERRIDES)
    recipe_before = (run_dir / "state" / "recipe.yaml").read_bytes()
    for override, key in (("seed=5", "seed"), ("distil.lr=0.01", "distil.lr"), ("distil.epochs=31", "distil.epochs")):
        p = run_here(["run", "--resume", str(run_dir), override], capsys)  # refusals: in this process
        assert p.returncode == 2, p.stderr[-2000:]
        assert len(lines(p)) == 1 and f"(differs at: {key})" in lines(p)[0], p.stderr
    (run_dir / "state" / "recipe.yaml").write_text(recipe_before.decode().replace("seed: 0", "seed: 7"))
    p = run_here(["run", "--resume", str(run_dir)], capsys)  # the run's own recipe edited by hand: said so, not "use --resume"
    assert p.returncode == 2 and len(lines(p)) == 1, p.stderr[-2000:]
    assert "state/recipe.yaml differs from the recipe its run state records (at: seed)" in lines(p)[0]
    (run_dir / "state" / "recipe.yaml").write_bytes(recipe_before)
    state = json.loads((run_dir / "state" / "run.json").read_text())
    assert state["status"] == "running" and state["config"]["seed"] == 0  # refused: nothing written
    p = run_cli(["run", "--resume", str(run_dir), "threads=2"])  # cannot change results: allowed
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed with threads=2" in p.stderr
    state = json.loads((run_dir / "state" / "run.json").read_text())
    assert state["status"] == "complete" and state["config"]["seed"] == 0
    assert (run_dir / "state" / "recipe.yaml").read_bytes() == recipe_before  # the recipe as started
    assert "threads: 1" in (run_dir / "config.yaml").read_text()
    settings = state["stage_settings"]
    assert settings["teach"]["threads"] == 1 and settings["label"]["threads"] == 1
    assert settings["distil"]["threads"] == 2 and settings["evaluate"]["threads"] == 2
    assert [s["threads"] for s in state["sessions"]] == [1, 2]


def test_a_resume_that_leaves_threads_to_liser_keeps_the_count_it_started_with(tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    kill_in_distil(tiny_recipe, run_dir, tmp_path)  # threads=1 (RESUME_OVERRIDES)
    p = run(tiny_recipe, run_dir, "threads=null")  # LiSER would choose min(8, CPUs)
    assert p.returncode == 0, p.stderr[-2000:]
    if len(os.sched_getaffinity(0)) > 1:
        assert "continuing with the 1 thread(s) the run started with" in p.stderr
    state = json.loads((run_dir / "state" / "run.json").read_text())
    assert state["threads"] == 1 and state["stage_settings"]["distil"]["threads"] == 1


def test_a_finished_run_is_finished_and_a_card_edited_by_hand_is_never_overwritten(tiny_recipe, tmp_path, capsys):
    run_dir = tmp_path / "run"
    here = ["run", str(tiny_recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}"]  # no kill: in this process
    assert run(tiny_recipe, run_dir).returncode == 0
    card = run_dir / "student" / "README.md"
    new = run_dir / "student" / "README.liser-new.md"
    mine = card.read_text() + "\n## My notes\nkeep me\n"
    card.write_text(mine)
    before = tree(run_dir)

    again = run_here(here, capsys)  # the same command: finished, nothing to do
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(lines(again)) == 1 and "holds a finished run of this recipe: nothing to do" in lines(again)[0]
    assert tree(run_dir) == before

    restarted = run_here([*here, "--restart"], capsys)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert card.read_text() == mine and new.is_file() and "## My notes" not in new.read_text()
    assert f"{card} was changed since LiSER wrote it" in restarted.stderr and str(new) in restarted.stderr

    # killed after the last stage, before the reports; the resume writes them, the card is kept
    new.unlink()
    plugin = KILL_AT_STAGE_END.format(stage="evaluate")
    killed = run(tiny_recipe, run_dir, "--restart", site=tmp_path / "site-kill", plugin=plugin)
    assert killed.returncode == -9
    resumed = run_cli(["run", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert card.read_text() == mine and new.is_file()


def test_a_card_liser_wrote_and_nobody_changed_is_replaced(tmp_path):
    from liser_common.rundir import write_editable

    assert write_editable(tmp_path, "student/README.md", "one\n") == tmp_path / "student" / "README.md"
    assert write_editable(tmp_path, "student/README.md", "two\n") == tmp_path / "student" / "README.md"
    assert (tmp_path / "student" / "README.md").read_text() == "two\n"
    (tmp_path / "student" / "README.md").write_text("edited\n")
    assert write_editable(tmp_path, "student/README.md", "three\n").name == "README.liser-new.md"
    assert (tmp_path / "student" / "README.md").read_text() == "edited\n"
    (tmp_path / "other.md").write_text("not LiSER's")  # no record of it: a user's file
    assert write_editable(tmp_path, "other.md", "x").name == "other.liser-new.md"
    assert (tmp_path / "other.md").read_text() == "not LiSER's"


def test_sigterm_saves_a_checkpoint_records_interrupted_and_resume_continues(straight, liser_process, tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", str(tiny_recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}"]
    stopped = liser_process(args, fault=("distil", "student", 2, "SIGTERM"))
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "SIGTERM: saving a resumable checkpoint" in stopped.stderr
    assert f"liser run --resume {run_dir}" in stopped.stderr and "Traceback" not in stopped.stderr
    state = json.loads((run_dir / "state" / "run.json").read_text())
    assert state["status"] == "interrupted" and state["completed"] == ["teach", "label"]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"  # resumable, not failed
    assert (run_dir / "state/train/distil-student/step-000000003/COMPLETE.json").is_file()
    resumed = liser_process(["run", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(weights(straight, "student"), weights(run_dir, "student"))
    assert eval_metrics(run_dir) == eval_metrics(straight)


def test_sigterm_outside_training_records_interrupted_and_resume_continues(tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    stopped = run(tiny_recipe, run_dir, site=tmp_path / "site-term", plugin=TERM_AT_STAGE_START.format(stage="label"))
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr and f"liser run --resume {run_dir}" in stopped.stderr
    state = json.loads((run_dir / "state" / "run.json").read_text())
    assert state["status"] == "interrupted" and state["completed"] == ["teach"]
    resumed = run_cli(["run", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "state" / "run.json").read_text())["status"] == "complete"


def _as_unprivileged(args: list[str]) -> subprocess.CompletedProcess:
    """``liser ARGS`` with file permissions enforced (as root: without the capabilities that
    bypass them, through util-linux ``setpriv``)."""
    cmd = [sys.executable, "-m", "liser_tools.cli", *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions cannot be enforced")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_a_read_only_store_or_run_dir_is_one_line_before_any_work(tiny_recipe, tmp_path):
    store, parent = tmp_path / "store", tmp_path / "ro"
    store.mkdir()
    parent.mkdir()
    store.chmod(0o555)
    parent.chmod(0o555)
    try:
        base = ["run", str(tiny_recipe), *RESUME_OVERRIDES]
        p = _as_unprivileged([*base, f"run_dir={tmp_path / 'run'}", f"store={store}"])
        assert p.returncode == 2 and len(lines(p)) == 1, p.stderr[-2000:]
        assert f"store {store} cannot be written" in lines(p)[0] and "store=" in lines(p)[0]
        assert not (tmp_path / "run").exists() and list(store.iterdir()) == []
        p = _as_unprivileged([*base, f"run_dir={parent / 'run'}"])
        assert p.returncode == 2 and len(lines(p)) == 1, p.stderr[-2000:]
        assert f"run_dir {parent / 'run'} (in {parent}) cannot be written" in lines(p)[0]
    finally:
        store.chmod(0o755)
        parent.chmod(0o755)


def test_a_full_run_dir_or_store_is_one_line_before_any_work(tiny_recipe, tmp_path):
    run_dir, store = tmp_path / "run", tmp_path / "store"
    full = DISK_FULL.format(free=1000, where=str(tmp_path))  # where the run dir would be made
    p = run(tiny_recipe, run_dir, site=tmp_path / "site-full", plugin=full)
    assert p.returncode == 2 and len(lines(p)) == 1, p.stderr[-2000:]
    assert f"run_dir {run_dir}: only 1000 B free on its file system" in lines(p)[0]
    assert not run_dir.exists()
    store.mkdir()
    full = DISK_FULL.format(free=1000, where=str(store))
    p = run(tiny_recipe, run_dir, f"store={store}", site=tmp_path / "site-full2", plugin=full)
    assert p.returncode == 2 and len(lines(p)) == 1, p.stderr[-2000:]
    assert f"store {store}: only 1000 B free on its file system" in lines(p)[0] and "store=PATH" in lines(p)[0]
    assert not run_dir.exists() and list(store.iterdir()) == []
    # room for the reports (8 MB) but not for the models' checkpoints: found once they are built
    full = DISK_FULL.format(free=(8 << 20) + 1000, where=str(tmp_path))
    p = run(tiny_recipe, run_dir, site=tmp_path / "site-full3", plugin=full)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert f"run_dir {run_dir}: only 8.0 MB free on its file system, about 8.1 MB needed" in lines(p)[-1]
    assert not run_dir.exists()


def test_the_disk_filling_up_during_a_run_is_one_line_with_the_resume_hint(tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    p = run(tiny_recipe, run_dir, "-q", site=tmp_path / "site-enospc", plugin=ENOSPC_IN_CHECKPOINT)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    last = lines(p)[-1]
    assert "COMPLETE.json: no space left on the device" in last and f"liser run --resume {run_dir}" in last
    assert json.loads((run_dir / "state" / "run.json").read_text())["status"] == "failed"


def test_a_killed_decoding_worker_is_one_line_with_the_resume_hint_and_resume_works(tmp_path):
    from liser_plugins.corpora import fixtures

    root = tmp_path / "RAVDESS"
    for a in (1, 2, 3, 9):
        for e in range(1, 9):
            fixtures.write_wav(root / f"Actor_{a:02d}/03-01-{e:02d}-01-01-01-{a:02d}.wav", rate=16000, seconds=0.4,
                               freq=110 + 23 * e + 3 * a, seed=100 * a + e)
    recipe, run_dir = tmp_path / "files.yaml", tmp_path / "run"
    recipe.write_text(FILE_RECIPE.format(root=root))
    p = run_cli(["run", str(recipe), f"run_dir={run_dir}", "data.workers=1"], site=tmp_path / "site-worker",
                plugin=KILL_DECODING_WORKER)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    last = lines(p)[-1]
    assert last.startswith("liser: error: a decoding worker died (DataLoader worker (pid") and "data.workers" in last
    assert f"liser run --resume {run_dir}" in last
    assert json.loads((run_dir / "state" / "run.json").read_text())["status"] == "failed"
    resumed = run_cli(["run", "--resume", str(run_dir), "data.workers=0"])  # the hint, with no workers
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((run_dir / "state" / "run.json").read_text())
    assert state["status"] == "complete" and state["stage_settings"]["teach"]["data.workers"] == 0


def test_a_dead_worker_wrapped_as_a_teachers_failure_is_still_one_line(tmp_path):
    """What the DataLoader raises when a worker dies, under the teacher's wrapper as it reaches
    the engine from a teacher's forward pass: one line naming it, what to do, the resume hint."""
    from liser_core.engine import environment_fault
    from liser_core.errors import ComponentError, EnvironmentFault

    try:
        try:
            raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
        except RuntimeError as exc:
            raise ComponentError("teacher 'face_cnn' (plugin builtin) failed in forward: ...") from exc
    except ComponentError as exc:
        fault = environment_fault(exc, tmp_path / "run")
    assert isinstance(fault, EnvironmentFault)
    assert "\n" not in str(fault) and "DataLoader worker (pid 4242) is killed by signal: Killed" in str(fault)
    assert "data.workers" in str(fault) and f"liser run --resume {tmp_path / 'run'}" in str(fault)
    assert environment_fault(ComponentError("teacher failed in forward: shapes"), tmp_path) is None


def test_a_bad_run_dir_or_resume_target_is_refused_before_the_corpus_is_built(tiny_recipe, tmp_path, capsys):
    file_dir = tmp_path / "a-file"
    file_dir.write_text("x")
    here = ["run", str(tiny_recipe), *RESUME_OVERRIDES]  # refusals: in this process
    p = run_here([*here, f"run_dir={file_dir}"], capsys)  # INFO on the console: building the corpus would log lines
    assert p.returncode == 2 and len(lines(p)) == 1 and "is a file, not a folder" in lines(p)[0], p.stderr
    assert file_dir.read_text() == "x"
    missing = tmp_path / "nowhere"
    p = run_here([*here, f"run_dir={missing}", "--resume"], capsys)
    assert p.returncode == 2 and len(lines(p)) == 1, p.stderr
    assert f"--resume: {missing} does not exist; nothing to resume" in lines(p)[0]
    p = run_here(["run", "--resume", str(missing)], capsys)  # the run directory alone
    assert p.returncode == 2 and len(lines(p)) == 1, p.stderr
    assert f"--resume: {missing} does not exist; nothing to resume" in lines(p)[0]
    assert not missing.exists()


def test_an_unreadable_run_state_is_refused_and_restart_discards_it(tiny_recipe, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "state").mkdir(parents=True)
    (run_dir / "liser-run.json").write_text('{"liser_run": 1}')
    (run_dir / "state" / "run.json").write_text("garbage{")  # what a broken disk or a hand edit leaves
    p = run_here(["run", str(tiny_recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}"], capsys)
    assert p.returncode == 2 and len(lines(p)) == 1 and "unreadable run state" in lines(p)[0], p.stderr
    assert "use --restart to discard it" in lines(p)[0]
    p = run(tiny_recipe, run_dir, "--restart")  # was refused with the same line
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((run_dir / "state" / "run.json").read_text())["status"] == "complete"

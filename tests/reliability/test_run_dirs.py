"""Run directories: never delete a user's files, one process at a time, paths inside, the last
writes durable, a damaged state recomputed, the umask respected (the thread count on resume:
``test_lifecycle.py``)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from faults import RESUME_OVERRIDES, eval_metrics, run_cli, run_here

from liser_common.rundir import RunLock, inside, safe_name
from liser_core import load_plugins
from liser_core.errors import UsageError

SIGNAL_AT_STAGE_END = '''\
import os
import signal

from liser_core import hookimpl


@hookimpl
def liser_stage_end(stage):
    if stage == {stage!r}:
        os.kill(os.getpid(), signal.SIGKILL)
'''

#: killed right after the checkpoint that ends an epoch, before that epoch's history line
KILL_AFTER_EPOCH_CHECKPOINT = '''\
import os
import signal

from liser_core import hookimpl


@hookimpl
def liser_checkpoint(stage, model, step, finished):
    if (stage, model, step) == ("distil", "student", 3):  # epoch 1 of 2 ends at step 3
        os.kill(os.getpid(), signal.SIGKILL)
'''


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def recipe(tmp_path):
    from liser_core.testing import TINY_RECIPE

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


def run(recipe, run_dir, *extra, **kw):
    return run_cli(["run", str(recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}", *extra], **kw)


def test_a_folder_that_is_not_a_run_is_refused_and_left_alone(recipe, tmp_path, capsys):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("\\section{Intro}")
    (folder / "state").mkdir()
    (folder / "state" / "important.txt").write_text("keep me")
    before = tree(folder)
    p = run_here(["run", str(recipe), *RESUME_OVERRIDES, f"run_dir={folder}"], capsys)  # refusals: in this process
    assert p.returncode == 2 and "is not empty and is not a LiSER run directory" in p.stderr.strip().splitlines()[-1]
    assert tree(folder) == before and sorted(os.listdir(folder)) == ["chapter1.tex", "state"]
    file_dir = tmp_path / "a-file"
    file_dir.write_text("x")
    p = run_here(["run", str(recipe), *RESUME_OVERRIDES, f"run_dir={file_dir}"], capsys)
    assert p.returncode == 2 and "is a file" in p.stderr and file_dir.read_text() == "x"


def test_another_recipe_over_a_finished_run_is_refused_unless_overwrite_which_keeps_everything(recipe, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(recipe, run_dir).returncode == 0
    (run_dir / "state" / "important.txt").write_text("mine")
    (run_dir / "student" / "thesis.tex").write_text("mine")
    (run_dir / "teachers" / "face_cnn" / "mydata.csv").write_text("mine")
    before = tree(run_dir)
    p = run_here(["run", str(recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}", "distil.epochs=3"], capsys)
    assert p.returncode == 2
    line = p.stderr.strip().splitlines()[-1]
    assert "holds a finished run of a different recipe (differs at: distil.epochs)" in line and "--overwrite" in line
    assert tree(run_dir) == before  # nothing touched
    # a result-free key (name, store) or a default written out is the same recipe: nothing to do
    p = run_here(["run", str(recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}", "name=renamed",
                  f"store={tmp_path / 'store'}", "store_dtype=float32"], capsys)
    assert p.returncode == 0 and "nothing to do" in p.stderr + p.stdout, p.stderr[-2000:]
    assert tree(run_dir) == before
    p = run_here(["run", str(recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}", "distil.losses.0.weight=0.9"], capsys)
    assert p.returncode == 2 and "(differs at: distil.losses.0.weight)" in p.stderr  # named down to the item
    p = run(recipe, run_dir, "distil.epochs=3", "--overwrite")
    assert p.returncode == 0, p.stderr[-2000:]
    (aside,) = tmp_path.glob("run.replaced-*")
    assert tree(aside) == before  # the old run, whole, user files included
    assert json.loads((run_dir / "state" / "run.json").read_text())["config"]["distil"]["epochs"] == 3


def test_the_same_recipe_again_keeps_files_liser_did_not_write(recipe, tmp_path):
    run_dir = tmp_path / "run"
    assert run(recipe, run_dir).returncode == 0
    mine = {"state/important.txt": "a", "student/thesis.tex": "b", "teachers/face_cnn/mydata.csv": "c", "notes.md": "d"}
    for rel, text in mine.items():
        (run_dir / rel).write_text(text)
    assert run(recipe, run_dir, "--restart").returncode == 0  # run again in place: LiSER's files replaced, only those
    for rel, text in mine.items():
        assert (run_dir / rel).read_text() == text, rel
    assert (run_dir / "student" / "model.safetensors").is_file()


def test_a_second_process_on_a_live_run_dir_is_refused_naming_the_holder(recipe, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = RunLock(run_dir)
    lock.acquire()  # as a running `liser run` holds it
    lock.announce()
    try:
        p = run(recipe, run_dir)
    finally:
        lock.release()
    assert p.returncode == 2
    assert f"is in use by another liser run (pid {os.getpid()} on" in p.stderr.strip().splitlines()[-1]
    assert sorted(os.listdir(run_dir)) == [".liser.lock"]  # nothing else written
    assert run(recipe, run_dir).returncode == 0  # free again: a dead holder leaves no stale lock


def test_names_cannot_climb_out_of_the_run_dir(tmp_path):
    host = load_plugins()
    with pytest.raises(ValueError, match="not allowed"):
        host.registries.teacher.register("../../evil", lambda label_space: None)
    with pytest.raises(UsageError, match="cannot name a file"):
        safe_name("../evil")
    (tmp_path / "out").mkdir()
    with pytest.raises(UsageError, match="outside"):
        inside(tmp_path / "run", tmp_path / "run" / ".." / "out")
    os.symlink(tmp_path / "out", tmp_path / "link")
    with pytest.raises(UsageError, match="outside"):
        inside(tmp_path / "run", tmp_path / "run" / ".." / "link" / "x")


def test_a_run_killed_after_its_last_stage_is_complete_only_with_its_reports(recipe, tmp_path, straight):
    run_dir = tmp_path / "run"
    killed = run(recipe, run_dir, site=tmp_path / "site", plugin=SIGNAL_AT_STAGE_END.format(stage="evaluate"))
    assert killed.returncode == -9
    assert json.loads((run_dir / "state" / "run.json").read_text())["status"] != "complete"
    assert not (run_dir / "metrics.json").exists()
    resumed = run(recipe, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "state" / "run.json").read_text())["status"] == "complete"
    assert eval_metrics(run_dir) == eval_metrics(straight)


def test_a_kill_between_an_epoch_checkpoint_and_its_history_line_loses_no_line(recipe, tmp_path, straight):
    run_dir = tmp_path / "run"
    killed = run(recipe, run_dir, site=tmp_path / "site", plugin=KILL_AFTER_EPOCH_CHECKPOINT)
    assert killed.returncode == -9
    assert run(recipe, run_dir).returncode == 0

    def epochs(d):
        return sorted((h["stage"], h["model"], h["epoch"]) for h in map(json.loads, (d / "history.jsonl").read_text().splitlines()))

    assert epochs(run_dir) == epochs(straight)  # every epoch once, the lost line recovered


def test_a_damaged_label_state_is_recomputed_not_fatal(recipe, tmp_path, straight):
    from faults import SIGNAL_AT

    run_dir = tmp_path / "run"
    killed = run(recipe, run_dir, site=tmp_path / "site",
                 plugin=SIGNAL_AT.format(stage="distil", model="student", step=2, signal="SIGKILL"))
    assert killed.returncode == -9
    target = next((run_dir / "state" / "label").glob("*.safetensors"))
    target.write_bytes(target.read_bytes()[:100])  # what a kill inside its rewrite would leave
    resumed = run(recipe, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "cannot be used" in resumed.stderr and "labeling again" in resumed.stderr
    assert eval_metrics(run_dir) == eval_metrics(straight)


def test_files_and_folders_respect_the_umask(recipe, tmp_path):
    run_dir = tmp_path / "run"
    p = run_cli(["run", str(recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}"], umask=0o022)
    assert p.returncode == 0, p.stderr[-2000:]
    for rel in ("metrics.json", "config.yaml", "splits.json", "student/model.safetensors", "state/run.json"):
        assert stat.S_IMODE((run_dir / rel).stat().st_mode) == 0o644, rel
    for rel in ("student", "teachers/face_cnn", "state/label"):
        assert stat.S_IMODE((run_dir / rel).stat().st_mode) == 0o755, rel


"""Checkpoint files under faults: a kill in the middle of a write, a copy cut short, a pickle
planted where weights belong. Half-written files are never loaded; pickles never unpickled."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from faults import (
    DIE_IN_WRITE,
    RESUME_OVERRIDES,
    assert_same_weights,
    eval_metrics,
    run_cli,
    weights,
)

from liser_common.trainstate import MARKER, Checkpointer, Progress, check_complete
from liser_core import checkpoint, load_plugins
from liser_core.errors import UsageError
from liser_core.labels import RAVDESS8


def test_kill_during_a_checkpoint_write_resumes_from_the_previous_good_one(straight, tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", str(tiny_recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}"]
    # completeness markers written in this run: face_cnn 4 (a step and an epoch end, twice),
    # audio_cnn 1, the label stage's targets 1, distil steps 2 and 3; the 9th, distil's step 4,
    # dies after its files and before its marker
    died = run_cli(args, site=tmp_path / "site", plugin=DIE_IN_WRITE.format(n=9))
    assert died.returncode == 137, died.stderr[-2000:]
    train_dir = run_dir / "state" / "train"
    leftovers = [p for p in train_dir.rglob(".step-*.tmp") if p.is_dir()]
    assert leftovers and not (leftovers[0] / MARKER).exists()  # the half-written one
    assert all(check_complete(p) is None for p in train_dir.rglob("step-*") if p.is_dir())

    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert not list(train_dir.rglob(".step-*.tmp"))  # cleaned up by the next save
    assert_same_weights(weights(straight, "student"), weights(run_dir, "student"))
    assert eval_metrics(run_dir) == eval_metrics(straight)


def _saved(tmp_path, steps=(2, 4)):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=3)
    for step in steps:
        model.weight.data.fill_(float(step))
        opt.zero_grad()
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        ckpt.save(Progress(step=step, epoch=0, batch=step), [model], opt, sched)
    return ckpt, model, opt, sched


def test_a_checkpoint_cut_short_is_passed_over_for_the_previous_one(tmp_path, caplog):
    ckpt, model, opt, sched = _saved(tmp_path)
    newest = tmp_path / "ckpt" / "step-000000004"
    data = (newest / "modules.safetensors").read_bytes()
    (newest / "modules.safetensors").write_bytes(data[: len(data) // 2])  # a copy cut short
    assert "bytes" in check_complete(newest)
    progress, *_ = ckpt.load([model], opt, sched)
    assert progress.step == 2
    assert "ignoring checkpoint" in caplog.text and "step-000000004" in caplog.text
    shutil.rmtree(newest)
    (tmp_path / "ckpt" / "step-000000009").mkdir()  # a folder without its marker
    assert ckpt.latest().name == "step-000000002"


def test_every_checkpoint_file_is_checked_against_its_marker(tmp_path):
    _saved(tmp_path, steps=(1,))
    d = tmp_path / "ckpt" / "step-000000001"
    state = json.loads((d / "state.json").read_text())
    state["progress"]["step"] = 99
    (d / "state.json").write_text(json.dumps(state))  # same size would still fail the checksum
    assert "checksum" in check_complete(d) or "bytes" in check_complete(d)


class Payload:
    """Unpickling this runs code: it would create the file ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _evil(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"weight": Payload(marker)}, f)


def test_a_pickle_in_a_training_checkpoint_is_refused_and_never_run(tmp_path):
    ckpt, model, opt, sched = _saved(tmp_path, steps=(1,))
    d = tmp_path / "ckpt" / "step-000000001"
    marker = tmp_path / "pwned"
    _evil(d / "modules.safetensors", marker)
    # an attacker can rewrite the completeness marker too
    from liser_common.trainstate import _sha256

    m = json.loads((d / MARKER).read_text())
    m["files"]["modules.safetensors"] = {"bytes": (d / "modules.safetensors").stat().st_size, "sha256": _sha256(d / "modules.safetensors")}
    (d / MARKER).write_text(json.dumps(m))
    with pytest.raises(UsageError, match=r"modules\.safetensors: not a valid safetensors file .*looks like a pickle"):
        ckpt.load([model], opt, sched)
    assert not marker.exists()


def test_a_pickle_as_component_weights_is_refused_and_never_run(tmp_path):
    host = load_plugins()
    teacher = host.registries.teacher.build("audio_cnn", label_space=RAVDESS8, channels=[4, 8], hidden=16)
    d = checkpoint.save_component(teacher, tmp_path / "teacher", kind="teacher", name="audio_cnn",
                                  options={"channels": [4, 8], "hidden": 16}, label_space=RAVDESS8)
    marker = tmp_path / "pwned"
    _evil(d / checkpoint.WEIGHTS_NAME, marker)
    with pytest.raises(UsageError, match="never unpickles"):
        checkpoint.load_component(d, host.registries.teacher, kind="teacher")
    assert not marker.exists()


def test_a_pickled_teacher_checkpoint_in_a_recipe_exits_2(tmp_path, tiny_recipe):
    host = load_plugins()
    teacher = host.registries.teacher.build("audio_cnn", label_space=RAVDESS8)
    d = checkpoint.save_component(teacher, tmp_path / "teacher", kind="teacher", name="audio_cnn",
                                  options={}, label_space=RAVDESS8)
    marker = tmp_path / "pwned"
    _evil(d / checkpoint.WEIGHTS_NAME, marker)
    p = run_cli(["run", str(tiny_recipe), *RESUME_OVERRIDES, f"run_dir={tmp_path / 'run'}",
                 f"teachers=[{{name: audio_cnn, checkpoint: {d}}}]"])
    assert p.returncode == 2, p.stderr[-2000:]
    assert "never unpickles" in p.stderr and "Traceback" not in p.stderr
    assert not marker.exists()


def test_the_same_weights_saved_again_are_the_same_bytes(tmp_path):
    """safetensors writes its metadata in a hash map's random order: the same tensors saved twice
    were two files of different SHA-256 (a resumed run's student against the uninterrupted
    one's). The header is written sorted: one SHA-256, and the file reads back as it was."""
    import hashlib

    from safetensors import safe_open

    from liser_core import load_plugins
    from liser_core.checkpoint import save_component
    from liser_core.labels import RAVDESS8

    torch.manual_seed(0)
    model = load_plugins().registries.student.build("logmel_cnn", label_space=RAVDESS8, channels=[4, 8])
    digests = set()
    for i in range(8):
        out = save_component(model, tmp_path / f"s{i}", kind="student", name="logmel_cnn", options={"channels": [4, 8]},
                             label_space=RAVDESS8)
        digests.add(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
        assert json.loads((out / "config.json").read_text())["weights_sha256"] in digests
    assert len(digests) == 1
    with safe_open(str(tmp_path / "s0" / "model.safetensors"), "pt") as f:
        assert set(f.metadata()) == {"format", "liser"}
        assert all(torch.equal(f.get_tensor(k), v) for k, v in model.state_dict().items())

"""Exact resume: a run killed (SIGKILL) or interrupted (Ctrl-C) mid-training and continued
computes bit for bit what the uninterrupted run computes — weights, loss history, metrics."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from faults import RESUME_OVERRIDES, assert_same_weights, eval_metrics, run_here, weights

from liser_common.trainstate import Checkpointer
from liser_core.config import TrainConfig
from liser_core.training import TrainingInterrupted, train


def _history(run_dir):
    """Per-epoch losses of every training loop, from the run's log (seconds left out)."""
    lines = (run_dir / "log.txt").read_text().splitlines()
    return sorted({ln.split(": ", 1)[1].rsplit(")", 1)[0] for ln in lines if " epoch " in ln and "loss" in ln})


@pytest.mark.parametrize(
    "fault",
    [
        ("distil", "student", 4, "SIGKILL"),  # mid-epoch 2 of distillation
        ("teach", "face_cnn", 1, "SIGKILL"),  # mid teacher fitting
        ("baseline", "baseline", 2, "SIGKILL"),  # the last stage that trains
    ],
    ids=["distil", "teach", "baseline"],
)
def test_kill_and_resume_equals_the_uninterrupted_run(straight, liser_process, tiny_recipe, tmp_path, fault):
    run_dir = tmp_path / "run"
    args = ["run", str(tiny_recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}"]
    killed = liser_process(args, fault=fault)
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = json.loads((run_dir / "state" / "run.json").read_text())
    assert state["status"] == "running"  # SIGKILL: nothing could record the end
    stage = fault[0]
    assert stage not in state["completed"]

    resumed = liser_process(["run", str(tiny_recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the unfinished run" in resumed.stderr
    assert f"resuming from {run_dir / 'state' / 'train' / f'{stage}-{fault[1]}' / f'step-{fault[2]:09d}'}" in resumed.stderr

    assert_same_weights(weights(straight, "student"), weights(run_dir, "student"))
    if stage == "teach":
        assert_same_weights(weights(straight, "teachers/face_cnn"), weights(run_dir, "teachers/face_cnn"))
    assert eval_metrics(run_dir) == eval_metrics(straight)
    assert _history(run_dir) == _history(straight)
    assert json.loads((run_dir / "state" / "run.json").read_text())["status"] == "complete"


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(straight, liser_process, tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", str(tiny_recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}"]
    # SIGINT right after the step-2 checkpoint: the loop finishes step 3, saves, stops
    stopped = liser_process(args, fault=("distil", "student", 2, "SIGINT"))
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "Ctrl-C: saving a resumable checkpoint" in stopped.stderr
    assert f"liser run --resume {run_dir}" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    state = json.loads((run_dir / "state" / "run.json").read_text())
    assert state["status"] == "interrupted" and state["completed"] == ["teach", "label"]
    assert (run_dir / "state/train/distil-student/step-000000003/COMPLETE.json").is_file()

    resumed = liser_process(["run", "--resume", str(run_dir)])  # the run dir alone is enough
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "step 3" in resumed.stderr
    assert_same_weights(weights(straight, "student"), weights(run_dir, "student"))
    assert eval_metrics(run_dir) == eval_metrics(straight)


def test_resume_refuses_a_different_recipe_and_restart_discards(liser_process, tiny_recipe, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["run", str(tiny_recipe), *RESUME_OVERRIDES, f"run_dir={run_dir}"]
    assert liser_process(args, fault=("distil", "student", 2, "SIGKILL")).returncode == -9
    other = run_here([*args, "seed=1", "distil.lr=0.01"], capsys)  # refusals: in this process
    assert other.returncode == 2
    assert "unfinished run of a different recipe (differs at: distil.lr, seed)" in other.stderr
    assert "Traceback" not in other.stderr
    (tmp_path / "empty").mkdir()
    nothing = run_here(["run", "--resume", str(tmp_path / "empty")], capsys)
    assert nothing.returncode == 2 and "no saved run state" in nothing.stderr
    fresh = liser_process([*args, "seed=1", "--restart", "distil.epochs=1", "baseline.enabled=false"])
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "resuming" not in fresh.stderr
    again = run_here(["run", "--resume", str(run_dir)], capsys)
    assert again.returncode == 2 and "already completed" in again.stderr


# -- the training loop itself, every RNG in play ---------------------------------------------------
class Noisy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))


def _loop(tmp_path, stop_after=None, every=2):
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = Noisy()
    x = torch.randn(40, 4)
    y = torch.randint(0, 3, (40,))
    calls = {"n": 0}

    def step(batch):
        calls["n"] += 1
        if stop_after is not None and calls["n"] == stop_after:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, delivered mid-step
        # python's and numpy's RNGs feed the loss too, so their states must be restored
        scale = 1.0 + 0.1 * random.random() + 0.1 * float(np.random.rand())
        logits = model.net(batch.audio)
        loss = torch.nn.functional.cross_entropy(logits, batch.labels) * scale
        return loss, {"ce": loss.detach()}

    from liser_core.data import Batch

    def loader(epoch, skip):
        order = torch.randperm(40, generator=torch.Generator().manual_seed(epoch)).tolist()
        chunks = [order[i : i + 8] for i in range(0, 40, 8)][skip:]
        return [Batch(audio=x[c], lengths=torch.full((len(c),), 4), sample_rate=1, labels=y[c], clip_ids=[], index=torch.tensor(c)) for c in chunks]

    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.01, checkpoint_every=every)
    ckpt = Checkpointer(tmp_path / "ckpt")
    hist = train([model], step, loader, 5, cfg, device=torch.device("cpu"), name="noisy", checkpointer=ckpt)
    return model, hist


def test_training_loop_resumes_bit_exactly_with_every_rng(tmp_path):
    ref_model, ref_hist = _loop(tmp_path / "a")
    with pytest.raises(TrainingInterrupted) as e:
        _loop(tmp_path / "b", stop_after=7)  # epoch 2, batch 2: not on a step-checkpoint boundary
    assert e.value.checkpoint.name == "step-000000007"
    model, hist = _loop(tmp_path / "b")
    for a, b in zip(ref_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in hist] == [
        {k: v for k, v in h.items() if k != "seconds"} for h in ref_hist
    ]
    # a finished loop, run again, restores its final weights and trains no further
    model2, hist2 = _loop(tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(ref_model.state_dict().values(), model2.state_dict().values()))
    assert len(hist2) == 3

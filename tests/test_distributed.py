"""Several processes (torchrun, gloo on CPU): sharded labeling, data-parallel distillation and
gathered evaluation give what one process gives with the same global batch size; a failing
rank ends the job with its error, and the run continues from its last checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from liser_cache.store import TeacherStore
from liser_core.testing import TINY_OVERRIDES, TINY_RECIPE, write_dist_info

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: students without batch statistics or dropout: on CPU, BatchNorm cannot be synchronised
#: across processes, and dropout masks are drawn per process (see docs/distributed.md)
DDP_OVERRIDES = [
    *TINY_OVERRIDES,
    "student.options={channels: [4, 8], norm: group, dropout: 0.0}",
    "distil.epochs=2",
    "distil.batch_size=8",
    "distil.checkpoint_every=1",
    "distil.losses=[{name: kl, options: {temperature: 2.0}}, {name: feature_matching, weight: 0.1}]",
    "evaluate.batch_size=3",  # uneven parts: ranks score 2 and 1 clips of each batch
]

FAIL_ON_RANK_1 = '''
import os

from liser_core import training

_real = training._reduce_step
_calls = [0]


def _failing(*args, **kwargs):
    _calls[0] += 1
    if os.environ.get("RANK") == "1" and _calls[0] == {step} and not os.path.exists({once!r}):
        open({once!r}, "w").close()  # strikes once
        raise RuntimeError("injected failure on rank 1")
    return _real(*args, **kwargs)


training._reduce_step = _failing
'''


def _cli(args, env=None):
    return subprocess.run([sys.executable, "-m", "liser_tools.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Teachers fitted once (one process), then loaded from their checkpoints by every run."""
    d = tmp_path_factory.mktemp("ddp")
    recipe = d / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    p = _cli(["run", str(recipe), *TINY_OVERRIDES, "distil.epochs=0", "baseline.enabled=false", f"run_dir={d / 'fit'}"])
    assert p.returncode == 0, p.stderr[-3000:]
    t = d / "fit" / "teachers"
    return recipe, [
        f"teachers=[{{name: face_cnn, checkpoint: {t / 'face_cnn'}, weight: 0.7}},"
        f" {{name: audio_cnn, checkpoint: {t / 'audio_cnn'}, weight: 0.3}}]"
    ]


def _store(path):
    store = TeacherStore(path)
    out = {}
    for fp in store.fingerprints():
        keys = sorted(store._refresh(fp).entries)
        out[fp] = dict(zip(keys, zip(*store.load(fp, keys))))
    return out


def test_two_processes_give_the_store_and_metrics_of_one(teachers, tmp_path):
    recipe, tov = teachers
    one = _cli(["run", str(recipe), *DDP_OVERRIDES, *tov, f"run_dir={tmp_path / 'one'}", f"store={tmp_path / 's1'}"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli(["run", str(recipe), *DDP_OVERRIDES, *tov, f"run_dir={tmp_path / 'two'}", f"store={tmp_path / 's2'}",
                "--nproc", "2"])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 1 of 2" in (tmp_path / "two" / "log.rank1.txt").read_text()
    assert "12 by this rank" in (tmp_path / "two" / "log.txt").read_text()  # 24 pool clips, half each

    s1, s2 = _store(tmp_path / "s1"), _store(tmp_path / "s2")
    assert s1.keys() == s2.keys() and len(s1) == 2  # same teachers, same fingerprints
    for fp in s1:
        assert s1[fp].keys() == s2[fp].keys() and len(s1[fp]) == 24 + 8  # pool + labeled, test
        for key, (lo, em) in s1[fp].items():
            torch.testing.assert_close(s2[fp][key][0], lo, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(s2[fp][key][1], em, atol=1e-5, rtol=1e-4)

    a = load_file(str(tmp_path / "one" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "student" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)

    import json

    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    flat = ("accuracy", "uar", "macro_f1", "num_parameters", "num_clips")
    assert {k: m1["student"][k] for k in flat} == pytest.approx({k: m2["student"][k] for k in flat}, abs=1e-6)
    assert m1["student"]["per_speaker"] == m2["student"]["per_speaker"]  # gathered predictions: same per speaker
    for t in ("face_cnn", "audio_cnn"):
        assert m1["teachers"][t]["uar"] == pytest.approx(m2["teachers"][t]["uar"], abs=1e-6)
        assert m1["teachers"][t]["num_clips"] == m2["teachers"][t]["num_clips"] == 8
    h1 = [json.loads(x) for x in (tmp_path / "one" / "history.jsonl").read_text().splitlines()]
    h2 = [json.loads(x) for x in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    assert [h.get("loss") for h in h1] == pytest.approx([h.get("loss") for h in h2], rel=1e-4)


def test_a_failing_rank_ends_the_job_with_its_error_and_the_run_resumes(teachers, tmp_path):
    recipe, tov = teachers
    site = tmp_path / "site"
    site.mkdir()
    (site / "fail_rank1.py").write_text(FAIL_ON_RANK_1.format(step=2, once=str(tmp_path / "struck")))
    write_dist_info(site, "fail-rank1", "0.1", {"fail_rank1": "fail_rank1"})
    env = {"PYTHONPATH": str(site)}
    args = ["run", str(recipe), *DDP_OVERRIDES, *tov, f"run_dir={tmp_path / 'run'}", "--nproc", "2"]

    failed = _cli(args, env)
    assert failed.returncode == 1
    assert "injected failure on rank 1" in failed.stderr
    (line,) = [ln for ln in failed.stderr.splitlines() if ln.startswith("liser: error: ")]
    # the failing rank's own error, in one line (it was torchelastic's dict, with the traceback in it)
    assert line.startswith("liser: error: rank 1 (of 2) failed with exit code 1: RuntimeError: injected failure on rank 1")
    assert "extraInfo" not in line and "Traceback" not in line
    ckpts = sorted(p.name for p in (tmp_path / "run" / "state/train/distil-student").glob("step-*"))
    assert ckpts and ckpts[-1] == "step-000000001"  # rank 0 saved every step until rank 1 failed

    resumed = _cli(["run", "--resume", str(tmp_path / "run"), "--nproc", "2"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "step 1" in resumed.stderr
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file()
    assert '"status": "complete"' in (tmp_path / "run" / "state" / "run.json").read_text()


def test_teachers_fitted_on_two_processes_are_one_teacher(tmp_path):
    """Teachers fitted in the run under --nproc 2 (the README's command): data-parallel fitting
    keeps parameters equal, not BatchNorm's running statistics, so each rank fingerprinted its
    own teacher and looked for labels the other had stored under another (KeyError, exit 1).
    After every fit each rank holds rank 0's state: one fingerprint per teacher."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    args = ["run", str(recipe), *DDP_OVERRIDES, "distil.epochs=1", "distil.checkpoint_every=0",
            f"run_dir={tmp_path / 'run'}", f"store={tmp_path / 'store'}", "--nproc", "2"]
    p = _cli(args)
    assert p.returncode == 0, p.stderr[-3000:]
    weights = load_file(str(tmp_path / "run" / "teachers" / "audio_cnn" / "model.safetensors"))
    assert any(k.endswith("running_mean") for k in weights)  # a teacher with batch statistics
    store = TeacherStore(tmp_path / "store")
    assert len(store.fingerprints()) == 2  # both ranks stored under the same two fingerprints
    assert all(len(store._refresh(fp).entries) == 24 + 8 for fp in store.fingerprints())  # pool + labeled, test

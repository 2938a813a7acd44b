"""The teacher store inside a run: each teacher labels each clip once, across runs."""

import json

import torch

from liser_core import load_plugins


def store_diag(ctx):
    return json.loads((ctx.run_dir / "metrics.json").read_text())["diagnostics"]["store"]


def test_second_run_labels_nothing_and_a_changed_teacher_relabels(run_tiny, tmp_path):
    host = load_plugins()
    store = tmp_path / "store"
    first = run_tiny(host=host, overrides=[f"store={store}"])
    n = len(first.corpus.split("unlabeled")) + len(first.corpus.split("labeled"))
    d1 = store_diag(first)
    assert d1["face_cnn"] == {"fingerprint": d1["face_cnn"]["fingerprint"], "from_store": 0, "labeled": n}

    second = run_tiny(host=host, overrides=[f"store={store}", f"run_dir={tmp_path / 'second'}"])
    d2 = store_diag(second)
    for teacher in ("face_cnn", "audio_cnn"):
        assert d2[teacher]["from_store"] == n and d2[teacher]["labeled"] == 0
        assert d2[teacher]["fingerprint"] == d1[teacher]["fingerprint"]
        assert torch.equal(first.targets.logits[teacher], second.targets.logits[teacher])
    assert "clips from the store, 0 labeled now" in (second.run_dir / "log.txt").read_text()

    # a teacher option changes the teacher (and its fingerprint): it is relabeled, the other is not
    third = run_tiny(
        host=host,
        overrides=[f"store={store}", f"run_dir={tmp_path / 'third'}", "teachers.1.options.hidden=12"],
    )
    d3 = store_diag(third)
    assert d3["audio_cnn"]["labeled"] == n and d3["audio_cnn"]["fingerprint"] != d1["audio_cnn"]["fingerprint"]
    assert d3["face_cnn"]["labeled"] == 0


def test_store_and_no_store_give_the_same_targets(run_tiny, tmp_path):
    host = load_plugins()
    plain = run_tiny(host=host)
    stored = run_tiny(host=host, overrides=[f"store={tmp_path / 's'}", f"run_dir={tmp_path / 'r2'}", "store_dtype=float32"])
    for teacher in plain.targets.logits:
        assert torch.allclose(plain.targets.logits[teacher], stored.targets.logits[teacher], atol=1e-6)


def test_teachers_test_scores_come_from_the_store_and_equal_a_fresh_pass(run_tiny, tmp_path):
    host = load_plugins()
    plain = run_tiny(host=host, overrides=[f"run_dir={tmp_path / 'plain'}"])
    store = tmp_path / "store"
    first = run_tiny(host=host, overrides=[f"store={store}", f"run_dir={tmp_path / 'a'}"])
    again = run_tiny(host=host, overrides=[f"store={store}", f"run_dir={tmp_path / 'b'}"])
    n_test = len(first.corpus.split("test"))
    d1 = json.loads((first.run_dir / "metrics.json").read_text())["diagnostics"]["store_test"]
    d2 = json.loads((again.run_dir / "metrics.json").read_text())["diagnostics"]["store_test"]
    for teacher in ("face_cnn", "audio_cnn"):
        assert d1[teacher]["labeled"] == n_test and d2[teacher] == {**d1[teacher], "from_store": n_test, "labeled": 0}
        scored = [next(e for e in ctx.evaluations if e.model == teacher) for ctx in (plain, first, again)]
        for e in scored[1:]:
            assert e.clip_ids == scored[0].clip_ids and e.metrics == scored[0].metrics
            assert torch.allclose(e.probs, scored[0].probs, atol=1e-6)

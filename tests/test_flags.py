"""Flags travel: every condition that makes scores incomplete or incomparable is a named flag in
metrics.json and stands next to the scores wherever they are shown; a deliberate subset tree is
said, never silent; what an SER researcher expects in a run dir (predictions.csv, per-speaker
scores, confusion matrices pooled over folds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_soundness import recipe, write_ravdess

import liser_core
from liser_core.guards import FLAGS
from liser_plugins.corpora.ravdess import ravdess
from liser_tools.card import model_card
from liser_tools.cli import main

# fold 1 tests actors 01, 11, 20, 21: this tree has only 01 of them
ACTORS = (1, 2, 3, 4, 9)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_ravdess(tmp_path_factory.mktemp("flags") / "RAVDESS", ACTORS)


@pytest.fixture(scope="module")
def subset_run(tree, tmp_path_factory):
    """One finished run on the subset tree (expect_complete: false), shared by the table tests."""
    tmp = tmp_path_factory.mktemp("subset-run")
    path = recipe(tmp, tree, "fold: 1, label_fraction: 0.5, teacher_speakers: [9]")
    liser_core.run(path, [f"run_dir={tmp / 'run'}"])
    return tmp / "run"


def test_a_subset_tree_names_the_missing_test_speakers_once(tree, subset_run, tmp_path, capsys):
    corpus = ravdess(str(tree), fold=1, expect_complete=False)
    assert corpus.missing() == {}  # not a problem: the tree is a subset by choice ...
    assert corpus.subset() == {"test": {"speakers": ["11", "20", "21"], "expected": ["01", "11", "20", "21"]}}
    said = "test split: 1 of the fold's 4 speakers; missing 11, 20, 21 (expect_complete: false)"
    metrics = json.loads((subset_run / "metrics.json").read_text())
    assert metrics["warnings"].count(said) == 1 and "test_subset" in metrics["flags"]  # ... but never silent
    path = tmp_path / "r.yaml"
    path.write_text(f"data: {{name: ravdess, options: {{root: {tree}, fold: 1, expect_complete: false, min_seconds: 0.2}}}}\n"
                    "student: {name: logmel_cnn}\n")
    assert main(["data", "check", str(path), "--json"]) == 0  # a warning, not a problem
    assert said in json.loads(capsys.readouterr().out)["warnings"]


def test_missing_test_speakers_are_a_flag_in_the_run_summarize_and_card(tree, tmp_path, capsys):
    path = recipe(tmp_path, tree, "fold: 1, label_fraction: 0.5, teacher_speakers: [9]")
    path.write_text(path.read_text().replace("expect_complete: false", "expect_complete: true"))
    run = tmp_path / "run"
    ctx = liser_core.run(path, [f"run_dir={run}"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test_incomplete" in metrics["flags"] and ctx.flags == metrics["flags"]
    assert any(w.startswith("test split incomplete: expected speaker(s) 11, 20, 21 missing") for w in metrics["warnings"])
    capsys.readouterr()
    assert main(["summarize", str(run)]) == 0
    out = capsys.readouterr().out
    assert "!test_incomplete" in out and f"test_incomplete: {FLAGS['test_incomplete']}" in out
    card = (run / "student" / "README.md").read_text()
    assert "test_incomplete" in card


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_every_flag_is_shown_by_summarize_and_the_model_card(flag, subset_run, tmp_path, capsys):
    """Each named flag, put in a finished run's record, stands next to its scores."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(subset_run, run)
    m = json.loads((run / "metrics.json").read_text())
    m["flags"] = [flag]
    (run / "metrics.json").write_text(json.dumps(m))
    from liser_common.rundir import record_written

    record_written(run, "metrics.json")  # as if the run had written it so (a hand edit is refused: below)
    assert main(["summarize", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"!{flag}" in out and f"{flag}: {FLAGS[flag]}" in out
    from huggingface_hub import ModelCard

    card = ModelCard(model_card(run))
    assert flag in card.text
    # the metadata the Hub shows as evaluation results carries it too, beside every value
    assert card.data.eval_results and all(f"[flagged: {flag}]" in r.metric_name for r in card.data.eval_results)
    assert f"liser-flagged-{flag}" in card.data.tags


def test_a_metrics_json_edited_by_hand_is_not_summarised_or_carded(subset_run, tmp_path, capsys):
    """metrics.json is the run's record of its scores: its SHA-256 as written is in
    .liser-written.json; changed since, summaries skip the run and a card is refused, naming it."""
    import shutil

    from liser_core.errors import UsageError

    run = tmp_path / "run"
    shutil.copytree(subset_run, run)
    m = json.loads((run / "metrics.json").read_text())
    m["student"]["uar"] = 0.99
    (run / "metrics.json").write_text(json.dumps(m))
    assert main(["summarize", str(run)]) == 2  # its only run skipped: nothing to summarise
    captured = capsys.readouterr()
    assert "metrics.json was changed since the run wrote it" in captured.out + captured.err
    assert "0.990" not in captured.out
    with pytest.raises(UsageError, match="metrics.json was changed since the run wrote it"):
        model_card(run)


def test_per_clip_predictions_and_per_speaker_scores(subset_run):
    metrics = json.loads((subset_run / "metrics.json").read_text())
    rows = list(csv.DictReader(open(subset_run / "predictions.csv")))
    classes = metrics["label_space"]
    for model, entry in [("student", metrics["student"]), *metrics["teachers"].items()]:
        mine = [r for r in rows if r["model"] == model]
        assert len(mine) == entry["num_clips"] == 8  # actor 01's eight clips
        for r in mine:
            probs = [float(r[f"p_{c}"]) for c in classes]
            assert sum(probs) == pytest.approx(1.0, abs=1e-4)
            assert r["predicted"] == classes[max(range(len(probs)), key=probs.__getitem__)]
            assert r["speaker"] == "01" and r["label"] in classes
        wa = sum(r["predicted"] == r["label"] for r in mine) / len(mine)
        assert entry["accuracy"] == pytest.approx(wa)  # the CSV is what was scored
        # one speaker with one clip of every class: their UAR is the run's
        assert entry["per_speaker"]["01"]["accuracy"] == pytest.approx(wa)
        assert entry["per_speaker"]["01"]["uar"] == pytest.approx(entry["uar"])
        assert entry["intervals"]["uar"]["speakers"] == 1 and entry["intervals"]["uar"]["low"] is None  # one speaker


def test_summarize_pools_confusion_matrices_over_folds(tmp_path, capsys):
    """Confusion counts summed over runs; WA and UAR of the sum computed by hand."""
    runs = []
    mats = ([[3, 1], [0, 2]], [[1, 1], [2, 4]])
    for fold, mat in enumerate(mats, 1):
        r = tmp_path / f"f{fold}"
        r.mkdir()
        (r / "metrics.json").write_text(json.dumps({
            "status": "completed", "student": {"accuracy": 0.5, "uar": 0.5, "macro_f1": 0.5}, "teachers": {}}))
        (r / "config.yaml").write_text(f"seed: 0\ndata:\n  options:\n    fold: {fold}\n")
        (r / "confusion_student.csv").write_text("true\\pred,a,b\n" + "".join(f"{c},{x},{y}\n" for c, (x, y) in zip("ab", mat)))
        runs.append(str(r))
    assert main(["summarize", *runs, "--json"]) == 0
    pooled = json.loads(capsys.readouterr().out)["groups"][0]["confusion"]["student"]
    assert pooled["matrix"] == [[4, 2], [2, 6]] and pooled["runs"] == 2 and pooled["num_clips"] == 14
    assert pooled["accuracy"] == pytest.approx(10 / 14)
    assert pooled["uar"] == pytest.approx((4 / 6 + 6 / 8) / 2)
    assert main(["summarize", *runs, "--confusion"]) == 0
    out = capsys.readouterr().out
    assert "student: confusion pooled over 2 run(s), 14 clips" in out and f"UAR {(4 / 6 + 6 / 8) / 2:.3f}" in out


def test_runs_recorded_before_flags_show_their_conditions(tmp_path, capsys):
    r = Path(tmp_path / "old")
    r.mkdir()
    (r / "metrics.json").write_text(json.dumps({
        "status": "completed", "student": {"accuracy": 0.5, "uar": 0.5, "macro_f1": 0.5}, "teachers": {},
        "flags": [], "warnings": ["test split incomplete: expected speaker(s) 11 missing -- scores are over what is present"]}))
    assert main(["summarize", str(r)]) == 0
    assert "!test_incomplete" in capsys.readouterr().out


def test_summarize_flags_a_mean_over_different_code(tmp_path, capsys):
    runs = []
    for seed, commit in enumerate(("a" * 40, "b" * 40, "b" * 40)):
        r = tmp_path / f"s{seed}"
        r.mkdir()
        (r / "metrics.json").write_text(json.dumps({
            "status": "completed", "student": {"accuracy": 0.5, "uar": 0.5 + seed / 100, "macro_f1": 0.5}, "teachers": {},
            "code": {"liser": {"liser": "0.1.0", "commit": commit, "dirty": seed == 2}}}))
        (r / "config.yaml").write_text(f"seed: {seed}\n")
        runs.append(str(r))
    assert main(["summarize", *runs]) == 0
    out = capsys.readouterr().out
    assert "!!! flagged: mixed_code" in out and "aaaaaaaaaaaa" in out and "bbbbbbbbbbbb" in out
    assert main(["summarize", *runs[1:]]) == 0  # same commit (one of them dirty): one code
    assert "mixed_code" not in capsys.readouterr().out


def test_a_missing_test_speaker_is_flagged_in_results_csv_and_the_leaderboard(tree, tmp_path):
    import yaml

    path = recipe(tmp_path, tree, "fold: 1, label_fraction: 0.5, teacher_speakers: [9]")
    path.write_text(path.read_text().replace("expect_complete: false", "expect_complete: true"))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"recipe": str(path), "repeat": ["seed"], "axes": {"seed": {"s0": ["seed=0"]}}}))
    assert main(["bench", str(grid), "--output", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert rows and all("test_incomplete" in r["flags"].split(",") for r in rows)
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "!test_incomplete" in board and f"**!test_incomplete**: {FLAGS['test_incomplete']}" in board


def test_runs_naming_components_bare_or_qualified_are_one_recipe(subset_run, tmp_path, capsys):
    """A run recorded before names were qualified (``kl``) and one after (``losses:kl``) group."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(subset_run, old)
    text = (old / "config.yaml").read_text()
    assert "losses:kl" in text  # this run records qualified names
    (old / "config.yaml").write_text(text.replace("losses:kl", "kl").replace("logmel_cnn:logmel_cnn", "logmel_cnn"))
    assert main(["summarize", str(subset_run), str(old), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["groups"]) == 1


def test_a_test_split_without_every_class_is_flagged_and_its_chance_level_is_right(tmp_path, capsys):
    """A test split with no clip of some classes: UAR averages the classes it has, so a constant
    guess scores 1/present, not 1/classes (the table said "8 classes, chance UAR 0.125"). The run
    is flagged test_classes_missing, naming the classes; the table counts what the split holds."""
    root = write_ravdess(tmp_path / "RAVDESS", ACTORS, emotions=range(1, 7))  # no disgust (07), surprised (08)
    path = recipe(tmp_path, root, "fold: 1, label_fraction: 0.5, teacher_speakers: [9]")
    assert main(["run", str(path), f"run_dir={tmp_path / 'run'}", "teachers.0.fit.epochs=1", "distil.epochs=0"]) == 0
    out = capsys.readouterr().out
    assert "(test split: 6 clips, 6 of the 8 classes, chance UAR 0.167)" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test_classes_missing" in metrics["flags"]
    assert any("no clips of 2 of the 8 classes (disgust, surprised)" in w for w in metrics["warnings"])


def test_a_runs_flags_and_provenance_travel_with_its_exports_predictions_and_service(tmp_path, capsys):
    """The flags reached metrics.json, the card and the board, but not what is made from the
    student: `liser export --quantize int8` printed and recorded float/int8 test UARs unflagged,
    the export sidecars and the ONNX files held no recipe fingerprint, code or flags, and
    `liser predict` and `liser serve` did not say what scored. Each now carries them."""
    pytest.importorskip("onnxruntime")
    import onnx

    from liser_tools.report import quantized_markdown
    from liser_tools.serve import Service

    root = write_ravdess(tmp_path / "RAVDESS", ACTORS, emotions=range(1, 7))  # no disgust, surprised: flagged
    path = recipe(tmp_path, root, "fold: 1, label_fraction: 0.5, teacher_speakers: [9]")
    assert main(["run", str(path), f"run_dir={tmp_path / 'run'}", "teachers.0.fit.epochs=1", "distil.epochs=1"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    flags = metrics["flags"]
    assert "test_classes_missing" in flags
    student = tmp_path / "run" / "student"
    capsys.readouterr()
    assert main(["export", str(student), "--quantize", "int8", "--quantize-mode", "dynamic"]) == 0  # short clips
    out = capsys.readouterr().out
    assert "flagged: " + ", ".join(flags) in out and "NOT a fair estimate" in out  # beside the float/int8 UARs
    record = json.loads((student / "quantization.json").read_text())
    assert record["flags"] == flags and record["provenance"]["recipe_fingerprint"] == metrics["recipe_fingerprint"]
    for name in ("student.onnx", "student.int8.onnx"):
        side = json.loads((student / f"{name}.json").read_text())
        prov = side["provenance"]
        assert prov["flags"] == flags and prov["recipe_fingerprint"] == metrics["recipe_fingerprint"]
        assert prov["scores"]["uar"] == round(metrics["student"]["uar"], 4) and prov["code"].startswith("liser=")
        props = {p.key: p.value for p in onnx.load(str(student / name)).metadata_props}
        assert json.loads(props["liser.flags"]) == flags and json.loads(props["liser.labels"]) == side["labels"]
        assert props["liser.recipe_fingerprint"] == metrics["recipe_fingerprint"]
        assert props["liser.weights_sha256"] == side["weights_sha256"]
    assert props["liser.quantization"] == "int8 dynamic"
    # the board's int8 table marks the row as the board does
    table = quantized_markdown({"logmel_cnn": record})
    assert "| logmel_cnn" + "".join(f" !{f}" for f in sorted(flags)) + " |" in table
    assert all(f"`!{f}`: {FLAGS[f]}" in table for f in flags)
    # predict says what scored, and the run's flags
    wav = next(root.rglob("*.wav"))
    assert main(["predict", str(student), str(wav), "--jsonl"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["backend"] == "torch" and row["flags"] == flags and row["weights_sha256"] == side["weights_sha256"]
    assert main(["predict", str(student), str(wav)]) == 0
    assert f"(scored by torch, weights {side['weights_sha256'][:12]}; its run is flagged" in capsys.readouterr().out
    health = Service(student).health()
    assert health["provenance"]["flags"] == flags and health["weights_sha256"] == side["weights_sha256"]
    # a copy of the folder away from its run: the card's metadata still says it
    import shutil

    shutil.copytree(student, tmp_path / "copy")
    assert Service(tmp_path / "copy").health()["provenance"]["flags"] == flags
    # other weights: no record describes them, and none is borrowed
    from liser_core.card import student_provenance

    weights = tmp_path / "copy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    assert student_provenance(tmp_path / "copy") == {}


def test_a_labeled_split_without_some_classes_is_flagged_and_a_teacher_split_said(tmp_path, capsys):
    """A class with no labeled clip (a cross-corpus part without it, a small label fraction): the
    labels-only baseline cannot predict it, yet its row was shown as comparable, unflagged. The
    run is flagged labeled_classes_missing, naming the classes; a teacher split without them is
    said (a teacher fitted on it never learns them)."""
    root = write_ravdess(tmp_path / "RAVDESS", (2, 3, 4, 9), emotions=range(1, 7))  # training actors: no 07, 08
    write_ravdess(root, (1,))  # fold 1's test actor: every class
    path = recipe(tmp_path, root, "fold: 1, label_fraction: 0.5, teacher_speakers: [9]")
    assert main(["run", str(path), f"run_dir={tmp_path / 'run'}", "teachers.0.fit.epochs=1", "distil.epochs=0"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "labeled_classes_missing" in metrics["flags"] and "test_classes_missing" not in metrics["flags"]
    warnings = metrics["warnings"]
    assert any("the labeled split has no clips of 2 of the 8 classes (disgust, surprised)" in w for w in warnings)
    assert any("the teacher split has no clips of 2 of the 8 classes (disgust, surprised): a teacher fitted on it "
               "never learns them" in w for w in warnings)
    # every class in the training actors too: no flag
    full = write_ravdess(tmp_path / "FULL", (1, 2, 3, 4, 9))
    assert main(["run", str(recipe(tmp_path, full, "fold: 1, label_fraction: 0.5, teacher_speakers: [9]", "f.yaml")),
                 f"run_dir={tmp_path / 'full'}", "teachers.0.fit.epochs=1", "distil.epochs=0"]) == 0
    assert "labeled_classes_missing" not in json.loads((tmp_path / "full" / "metrics.json").read_text())["flags"]


def test_a_recipe_learning_from_labels_with_no_labeled_clip_is_flagged(run_tiny):
    """labeled_clips=0 with a ce term: the run said "labeled 0" and recorded no flag."""
    ctx = run_tiny(overrides=["data.options.labeled_clips=0"])
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert "labeled_classes_missing" in metrics["flags"]
    assert any("the labeled split has no labeled clips, and distil.losses.1 (ce) learn(s) from labels" in w
               for w in metrics["warnings"])


def test_a_teacher_with_no_split_to_fit_on_is_refused_before_the_run_dir_is_written(tmp_path, capsys):
    """No teacher split and a teacher to fit: refused at the teach stage, after config.yaml,
    metrics.json, manifest.json and state/run.json were written (status failed)."""
    root = write_ravdess(tmp_path / "RAVDESS", ACTORS)
    path = recipe(tmp_path, root, "fold: 1, label_fraction: 0.5")  # no teacher_speakers: no teacher split
    capsys.readouterr()
    assert main(["run", str(path), f"run_dir={tmp_path / 'run'}", "teachers.0.fit.epochs=1"]) == 2
    assert "teachers.0.checkpoint: corpus 'ravdess' has no teacher split to fit" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

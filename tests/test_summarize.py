import json
from pathlib import Path

import pytest

from liser_tools.cli import main


def fake_run(path, fold, student_uar, teacher_uar, status="completed"):
    path.mkdir(parents=True)
    metrics = {
        "status": status, "corpus": "ravdess", "split": "test",
        "student": {"accuracy": student_uar + 0.1, "uar": student_uar, "macro_f1": student_uar - 0.1},
        "baseline": None,
        "teachers": {"hf_speech": {"accuracy": teacher_uar, "uar": teacher_uar, "macro_f1": teacher_uar}},
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "config.yaml").write_text(f"seed: 0\ndata:\n  options:\n    fold: {fold}\n")
    return str(path)


def test_summarize_mean_and_sample_std_by_hand(tmp_path, capsys):
    runs = [fake_run(tmp_path / f"f{i}", i, u, t) for i, (u, t) in enumerate([(0.4, 0.7), (0.5, 0.8), (0.6, 0.9)], 1)]
    assert main(["summarize", *runs, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = out["summary"]["student"]["uar"]
    assert s["mean"] == pytest.approx(0.5) and s["std"] == pytest.approx(0.1) and s["n"] == 3
    assert out["summary"]["teacher:hf_speech"]["uar"]["mean"] == pytest.approx(0.8)
    assert [r["fold"] for r in out["runs"]] == [1, 2, 3]
    assert main(["summarize", *runs]) == 0
    text = capsys.readouterr().out
    assert "0.500 ± 0.100" in text and "0.600 ± 0.100" in text  # UAR and WA of the student


def test_failed_and_unfinished_runs_are_skipped_not_fatal(tmp_path, capsys):
    ok = fake_run(tmp_path / "ok", 1, 0.5, 0.5)
    ok2 = fake_run(tmp_path / "ok2", 2, 0.7, 0.5)
    bad = fake_run(tmp_path / "bad", 3, 0.1, 0.1, status="failed")
    assert main(["summarize", ok, bad, ok2, str(tmp_path / "nothing")]) == 0
    out = capsys.readouterr().out
    assert "0.600 ± 0.141" in out  # the two completed runs only
    assert f"skipped {bad}: status 'failed'" in out and "nothing: no metrics.json" in out
    assert main(["summarize", bad]) == 2
    assert "no run to summarise" in capsys.readouterr().err


def test_runs_of_different_recipes_are_never_averaged_together(tmp_path, capsys):
    runs = []
    for i, (epochs, root) in enumerate([(6, "/a"), (6, "/a"), (12, "/a"), (6, "/b")]):
        path = fake_run(tmp_path / f"r{i}", i + 1, 0.3 + 0.1 * i, 0.5)
        (tmp_path / f"r{i}" / "config.yaml").write_text(  # seed, fold and run_dir vary as they may
            f"seed: {i}\nrun_dir: {tmp_path / f'r{i}'}\ndistil: {{epochs: {epochs}}}\n"
            f"data:\n  options: {{fold: {i + 1}, root: {root}}}\n"
        )
        runs.append(path)
    assert main(["summarize", *runs, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"] is None and len(out["groups"]) == 3
    sizes = {tuple(sorted(g["differs"].items())): len(g["runs"]) for g in out["groups"]}
    assert sizes == {
        (("data.options.root", "/a"), ("distil.epochs", 6)): 2,
        (("data.options.root", "/a"), ("distil.epochs", 12)): 1,
        (("data.options.root", "/b"), ("distil.epochs", 6)): 1,
    }
    first = next(g for g in out["groups"] if len(g["runs"]) == 2)
    assert first["summary"]["student"]["uar"]["mean"] == pytest.approx(0.35)  # runs 0 and 1 only
    assert main(["summarize", *runs]) == 0
    text = capsys.readouterr().out
    assert "3 different recipes" in text and "== group 1: data.options.root=/a, distil.epochs=6" in text
    # averaging over another key merges what it names
    assert main(["summarize", *runs[:3], "--over", "seed,data.options.fold,distil.epochs", "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert len(merged["groups"]) == 1 and merged["summary"]["student"]["uar"]["n"] == 3


def test_groups_that_differ_inside_a_list_item_are_named_by_its_value(tmp_path, capsys):
    """Two loss temperatures are two recipes, named distil.losses.0.options.temperature=1.0 and
    =2.0 (the value was read as None, so both groups read alike)."""
    runs = []
    for i, t in enumerate((1.0, 1.0, 2.0)):
        runs.append(fake_run(tmp_path / f"r{i}", i + 1, 0.3 + 0.1 * i, 0.5))
        (tmp_path / f"r{i}" / "config.yaml").write_text(
            f"seed: {i}\ndistil: {{losses: [{{name: kl, options: {{temperature: {t}}}}}, {{name: ce}}]}}\n"
            f"data:\n  options: {{fold: {i + 1}}}\n")
    assert main(["summarize", *runs, "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert sorted((g["differs"]["distil.losses.0.options.temperature"], len(g["runs"])) for g in groups) == [(1.0, 2), (2.0, 1)]


def test_flagged_runs_are_marked(tmp_path, capsys):
    a = fake_run(tmp_path / "a", 1, 0.5, 0.5)
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    m["flags"] = ["test_overlap"]
    (tmp_path / "a" / "metrics.json").write_text(json.dumps(m))
    assert main(["summarize", a]) == 0
    out = capsys.readouterr().out
    assert "!test_overlap" in out and "test_overlap: a teacher was fitted on test speakers" in out


def test_a_config_yaml_edited_after_the_run_is_skipped_naming_the_keys(tmp_path, capsys):
    """Summaries group runs by their config.yaml; one that differs from the recipe the engine
    recorded (state/run.json) is skipped, naming the keys, never averaged as another recipe.
    First-party component names, qualified on one side and bare on the other, are the same."""
    def record(run, config):
        (Path(run) / "state").mkdir()
        (Path(run) / "state" / "run.json").write_text(json.dumps({"status": "complete", "config": config}))

    same = fake_run(tmp_path / "same", 1, 0.5, 0.5)
    (Path(same) / "config.yaml").write_text("seed: 0\nstudent: {name: logmel_cnn:logmel_cnn}\ndata:\n  options:\n    fold: 1\n")
    record(same, {"seed": 0, "student": {"name": "logmel_cnn"}, "data": {"options": {"fold": 1}}})
    edited = fake_run(tmp_path / "edited", 2, 0.7, 0.5)
    record(edited, {"seed": 0, "distil": {"lr": 0.01}, "data": {"options": {"fold": 2}}})
    (Path(edited) / "config.yaml").write_text("seed: 0\ndistil: {lr: 0.001}\ndata:\n  options:\n    fold: 2\n")
    assert main(["summarize", same, edited, "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert [r["run"] for r in out["runs"] if not r.get("skipped")] == [same]
    assert "config.yaml differs from the recipe the run recorded (state/run.json) at distil.lr" in captured.err + captured.out


def test_a_repeat_of_one_seed_and_fold_is_counted_once_and_missing_folds_are_a_flag(tmp_path, capsys):
    """The same recipe, seed and fold run twice is one experiment repeated (it made n=3 with a
    narrower interval out of two samples); runs that do not cover each of the protocol's folds
    once per seed are flagged folds_incomplete, with what they cover."""
    def run(name, fold, seed, uar, folds=6):
        path = fake_run(tmp_path / name, fold, uar, 0.5)
        (tmp_path / name / "config.yaml").write_text(f"seed: {seed}\ndata:\n  options:\n    fold: {fold}\n")
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        m["protocol"] = {"description": f"fold {fold} of {folds}", "fold": fold, "folds": folds}
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
        return path

    a, again, b = run("a", 1, 0, 0.4), run("again", 1, 0, 0.45), run("b", 2, 0, 0.6)
    assert main(["summarize", a, again, b, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["student"]["uar"]["n"] == 2 and out["summary"]["student"]["uar"]["mean"] == pytest.approx(0.5)
    assert [s["run"] for s in out["skipped"]] == [again] and "data.options.fold=1 as " + a in out["skipped"][0]["reason"]
    (group,) = out["groups"]
    assert "folds_incomplete" in group["flags"] and group["folds"] == "folds 1, 2 of 6 (seed 0)"
    assert main(["summarize", a, again, b]) == 0
    text = capsys.readouterr().out
    assert "!!! the runs cover folds 1, 2 of 6 (seed 0)" in text and "folds_incomplete: " in text
    assert "code: (not recorded)" in text  # the code of the runs averaged is always named
    full = [run(f"s{seed}f{f}", f, seed, 0.5, folds=3) for seed in (0, 1) for f in (1, 2, 3)]
    assert main(["summarize", *full, "--json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert group["folds"] == "" and "folds_incomplete" not in group["flags"]  # every fold once per seed

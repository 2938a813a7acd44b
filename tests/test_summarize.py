import json

import pytest

from liser_core.cli import main


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


def test_summarize_refuses_failed_or_missing_runs(tmp_path, capsys):
    ok = fake_run(tmp_path / "ok", 1, 0.5, 0.5)
    bad = fake_run(tmp_path / "bad", 2, 0.5, 0.5, status="failed")
    assert main(["summarize", ok, bad]) == 2
    assert "did not complete" in capsys.readouterr().err
    assert main(["summarize", str(tmp_path / "nothing")]) == 2
    assert "no metrics.json" in capsys.readouterr().err

"""liser bench: a grid of combinations, results.csv, leaderboard.md, resume and extension."""

import csv
import json

import pytest
import yaml

from liser_common.metrics import mean_std
from liser_core import load_plugins
from liser_core.errors import ConfigError
from liser_core.testing import TINY_OVERRIDES, TINY_RECIPE
from liser_tools.bench import load_grid, run_grid


@pytest.fixture
def grid_file(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)

    def write(seeds=("s0", "s1")):
        grid = {
            "recipe": "tiny.yaml",
            "overrides": [*TINY_OVERRIDES, "baseline.enabled=true", "baseline.epochs=1"],
            "store": True,
            "repeat": ["seed"],
            "plot_axis": "loss",
            "axes": {
                "loss": {"kl": ["distil.losses=[{name: kl}, {name: ce, weight: 0.5}]"], "ce": "distil.losses=[{name: ce}]"},
                "seed": {s: [f"seed={s[1:]}"] for s in seeds},
            },
        }
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump(grid))
        return path

    return write


def test_grid_runs_every_combination_and_writes_the_leaderboard(grid_file, tmp_path):
    host = load_plugins()
    grid = load_grid(grid_file(), tmp_path / "out")
    assert len(grid.combinations()) == 4
    out = run_grid(grid, host)
    assert out["ran"] == 4 and out["skipped"] == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert len(rows) == 4 * 5  # per run: two teachers, their combined targets, the baseline, the student
    assert {r["model"] for r in rows} == {"student", "baseline", "teacher:face_cnn", "teacher:audio_cnn", "targets"}
    student_kl = [float(r["uar"]) for r in rows if r["model"] == "student" and r["combination"].startswith("loss=kl")]
    m, s = mean_std(student_kl)
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert f"| loss=kl | student | {m:.3f} ± {s:.3f} |" in board
    uars = [float(line.split("|")[4].split("±")[0]) for line in board.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert uars == sorted(uars, reverse=True)  # best first
    assert (tmp_path / "out" / "uar_by_loss.png").stat().st_size > 1000
    # the store: with the same seed, the second loss combination reuses the first one's labels
    diag = [json.loads((p / "metrics.json").read_text())["diagnostics"]["store"]
            for p in sorted((tmp_path / "out" / "runs").iterdir()) if "seed-s0" in p.name]
    assert sorted(d["face_cnn"]["labeled"] == 0 for d in diag) == [False, True]


def test_grid_resumes_and_extends(grid_file, tmp_path):
    host = load_plugins()
    out_dir = tmp_path / "out"
    assert run_grid(load_grid(grid_file(seeds=("s0",)), out_dir), host)["ran"] == 2
    again = run_grid(load_grid(grid_file(seeds=("s0",)), out_dir), host)
    assert again["ran"] == 0 and again["skipped"] == 2
    extended = run_grid(load_grid(grid_file(seeds=("s0", "s1")), out_dir), host)
    assert extended["ran"] == 2 and extended["skipped"] == 2
    rows = list(csv.DictReader(open(out_dir / "results.csv")))
    assert len({r["combination"] for r in rows}) == 4


def test_grid_errors_name_the_key(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text("recipe: x.yaml\naxis: {}\n")
    with pytest.raises(ConfigError) as e:
        load_grid(bad)
    assert e.value.key == "axis" and "axes" in e.value.suggestions
    bad.write_text("recipe: x.yaml\naxes: {a: {x: [k=v]}}\nrepeat: [seed]\n")
    with pytest.raises(ConfigError, match="not an axis"):
        load_grid(bad)


def test_an_edited_grid_reruns_what_changed_and_says_so(grid_file, tmp_path, caplog, capsys):
    host = load_plugins()
    out_dir = tmp_path / "out"
    path = grid_file(seeds=("s0",))
    assert run_grid(load_grid(path, out_dir), host)["ran"] == 2
    before = {r["combination"]: r["recipe_fingerprint"] for r in csv.DictReader(open(out_dir / "results.csv"))}
    grid = yaml.safe_load(path.read_text())
    grid["axes"]["loss"]["ce"] = ["distil.losses=[{name: ce}]", "distil.epochs=2"]  # one combination changes
    path.write_text(yaml.safe_dump(grid))
    from liser_tools.cli import main

    assert main(["bench", str(path), "-o", str(out_dir), "--list"]) == 0
    listing = capsys.readouterr().out.split("\n")
    assert "stale loss=ce,seed=s0" in listing and "done  loss=kl,seed=s0" in listing
    again = run_grid(load_grid(path, out_dir), host)
    assert again["ran"] == 1 and again["skipped"] == 1 and again["replaced"] == ["loss=ce,seed=s0"]
    assert "loss=ce,seed=s0: its rows are stale (the recipe changed at distil.epochs)" in caplog.text
    rows = list(csv.DictReader(open(out_dir / "results.csv")))
    after = {r["combination"]: r["recipe_fingerprint"] for r in rows}
    assert after["loss=kl,seed=s0"] == before["loss=kl,seed=s0"] and after["loss=ce,seed=s0"] != before["loss=ce,seed=s0"]
    history = [json.loads(line) for line in (out_dir / "runs" / "loss-ce__seed-s0" / "history.jsonl").read_text().splitlines()]
    assert max(h["epoch"] for h in history if h["stage"] == "distil") == 2  # really rerun with the new recipe
    assert run_grid(load_grid(path, out_dir), host)["ran"] == 0  # and now current

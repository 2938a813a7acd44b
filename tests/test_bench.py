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
    assert f"| loss=kl | student | {m:.3f} ± {s:.3f}" in board  # [95 % interval] follows
    uars = [float(line.split("|")[4].split("±")[0]) for line in board.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert uars == sorted(uars, reverse=True)  # best first
    assert (tmp_path / "out" / "uar_by_loss.png").stat().st_size > 1000
    # the store: with the same seed, the second loss combination reuses the first one's labels
    diag = [json.loads((p / "metrics.json").read_text())["diagnostics"]["store"]
            for p in sorted((tmp_path / "out" / "runs").iterdir()) if "seed-s0" in p.name]
    assert sorted(d["face_cnn"]["labeled"] == 0 for d in diag) == [False, True]
    # each teacher row names the teacher that scored it: one per teacher and seed across the
    # losses (its fit reused), distinct between teachers and seeds; other rows name none
    ident = {(r["model"], r["combination"].split(",")[1]): set() for r in rows if r["model"].startswith("teacher:")}
    for r in rows:
        if r["model"].startswith("teacher:"):
            ident[(r["model"], r["combination"].split(",")[1])].add(r["teacher_identity"])
        else:
            assert r["teacher_identity"] == ""
    assert all(len(v) == 1 and next(iter(v)).startswith("outputs:") for v in ident.values())
    assert len({next(iter(v)) for v in ident.values()}) == len(ident) == 4


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
    # the code that produced each row, in the row, the run's records and the model card
    from liser_common.provenance import code_label, code_string

    code = host.code_sources()
    assert {r["code"] for r in rows} == {code_string(code)} and code["liser"]["liser"] in rows[0]["code"]
    run_dir = out_dir / "runs" / "loss-kl__seed-s0"
    for record in ("metrics.json", "manifest.json"):
        assert json.loads((run_dir / record).read_text())["code"]["liser"] == code["liser"]
    assert f"- Code: `liser {code_label(code['liser'])}`" in (run_dir / "student" / "README.md").read_text()


def test_code_version_reads_the_checkout_and_falls_back_outside_one(tmp_path):
    import subprocess
    from pathlib import Path

    from liser_common.provenance import code_label, code_version, package_code

    here = code_version()
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout (CI and development): its commit and a dirty flag
        assert here["commit"] == head.stdout.strip() and isinstance(here["dirty"], bool)
    assert package_code("1.2", str(tmp_path)) == {"version": "1.2", "commit": None, "dirty": None}
    assert code_label({"liser": "0.1.0", "commit": "a" * 40, "dirty": True}) == "0.1.0@aaaaaaaaaaaa+dirty"
    assert code_label({"version": "1.2", "commit": None}) == "1.2"


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


@pytest.fixture
def teacher_grid(tmp_path):
    """A grid whose axis sets `teachers` (the base recipe's teachers.0 is face_cnn), and a
    second axis whose second label is invalid only once its corpus is built."""
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    face = "{name: face_cnn, fit: {epochs: 1, batch_size: 16}, options: {channels: [4, 8], hidden: 16}}"
    audio = "{name: audio_cnn, fit: {epochs: 1, batch_size: 16}, options: {channels: [4, 8], hidden: 16}}"
    grid = {
        "recipe": "tiny.yaml", "overrides": list(TINY_OVERRIDES), "repeat": ["seed"],
        "axes": {
            "teachers": {"audio": [f"teachers=[{audio}]"], "face": [f"teachers=[{face}]"],
                         "both": [f"teachers=[{audio}, {face}]"]},
            "seed": {"s0": ["seed=0"]},
        },
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def test_cli_overrides_apply_after_the_axes_to_the_teacher_of_that_name(teacher_grid, tmp_path, capsys):
    from liser_tools.bench import plan
    from liser_tools.cli import main

    grid = load_grid(teacher_grid, tmp_path / "out")
    grid.cli_overrides = ["teachers.0.options.hidden=12", "distil.epochs=2"]
    items = plan(grid, load_plugins())
    hidden = {it["key"]: {t.name: t.options.hidden for t in it["config"].teachers} for it in items}
    # teachers.0 before the axes is face_cnn: it reaches face_cnn wherever the axis puts it
    assert hidden == {"teachers=audio,seed=s0": {"audio_cnn": 16}, "teachers=face,seed=s0": {"face_cnn": 12},
                      "teachers=both,seed=s0": {"audio_cnn": 16, "face_cnn": 12}}
    assert {it["config"].distil.epochs for it in items} == {2}
    assert main(["bench", str(teacher_grid), "-o", str(tmp_path / "out"), "teachers.face_cnn.options.hidden=8", "--list"]) == 0
    # a key an axis sets (or one above it) is refused: it would make the axis' labels one run
    capsys.readouterr()
    assert main(["bench", str(teacher_grid), "-o", str(tmp_path / "out"), "seed=3", "--list"]) == 2
    assert "liser: error: seed: axis 'seed' of the grid sets seed" in capsys.readouterr().err
    assert main(["bench", str(teacher_grid), "-o", str(tmp_path / "out"), "teachers.fer.options.x=1", "--list"]) == 2
    assert "reaches no combination" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_invalid_combination_is_refused_before_the_first_run(teacher_grid, tmp_path):
    grid = yaml.safe_load(teacher_grid.read_text())
    grid["axes"] = {"teachers": {"face": grid["axes"]["teachers"]["face"]},
                    "test": {"ok": [], "none": ["data.options.test_speakers=0"]}}  # valid first, then invalid
    grid["repeat"] = []
    teacher_grid.write_text(yaml.safe_dump(grid, sort_keys=False))
    with pytest.raises(ConfigError, match=r"no 'test' clips \(combination teachers=face,test=none; nothing was run\)"):
        run_grid(load_grid(teacher_grid, tmp_path / "out"), load_plugins())
    assert not (tmp_path / "out" / "runs").exists() and not (tmp_path / "out" / "results.csv").exists()


def test_rows_from_other_code_are_listed_and_never_averaged_silently(teacher_grid, tmp_path, capsys):
    from liser_common.provenance import code_string
    from liser_tools.bench import FIELDS, plan, write_results
    from liser_tools.cli import main

    grid = yaml.safe_load(teacher_grid.read_text())
    grid["axes"] = {"teachers": {"face": grid["axes"]["teachers"]["face"]}, "seed": {"s0": ["seed=0"], "s1": ["seed=1"]}}
    teacher_grid.write_text(yaml.safe_dump(grid, sort_keys=False))
    host, out = load_plugins(), tmp_path / "out"
    items = plan(load_grid(teacher_grid, out), host)
    here = code_string(host.code_sources())
    other = "liser=0.1.0@0123456789ab"  # the same version, another commit
    rows = [{**dict.fromkeys(FIELDS, ""), "combination": it["key"], "model": "student", "components": "c",
             "accuracy": "0.5", "uar": uar, "macro_f1": "0.5", "num_parameters": "10",
             "recipe_fingerprint": it["fingerprint"], "code": code} for it, uar, code in zip(items, ("0.4", "0.6"), (here, other))]
    out.mkdir()
    write_results(out / "results.csv", rows)
    assert main(["bench", str(teacher_grid), "-o", str(out), "--list"]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["done  teachers=face,seed=s0", "other code teachers=face,seed=s1"]
    assert main(["bench", str(teacher_grid), "-o", str(out)]) == 2  # no choice made: refused, nothing run
    assert "from other code" in capsys.readouterr().err and not (out / "leaderboard.md").exists()
    assert run_grid(load_grid(teacher_grid, out), host, "keep")["ran"] == 0
    board = (out / "leaderboard.md").read_text()
    assert "| teachers=face | student **!mixed_code** | 0.500 ± 0.141 [" in board and "**!mixed_code**: the row" in board


def test_a_finished_run_whose_rows_were_lost_is_run_again_for_them(grid_file, tmp_path):
    """Killed between a run's end and its rows reaching results.csv: the engine leaves a finished
    run alone, so the grid runs it again (restart) rather than writing no rows."""
    host = load_plugins()
    grid = load_grid(grid_file(seeds=("s0",)), tmp_path / "out")
    grid.axes["loss"] = {"ce": grid.axes["loss"]["ce"]}
    assert run_grid(grid, host)["ran"] == 1
    results = tmp_path / "out" / "results.csv"
    before = list(csv.DictReader(open(results)))
    results.unlink()
    assert run_grid(grid, host)["ran"] == 1
    after = list(csv.DictReader(open(results)))
    assert [(r["model"], r["uar"]) for r in after] == [(r["model"], r["uar"]) for r in before] and after


def test_an_output_folder_of_someone_elses_files_is_refused_before_anything_is_written(grid_file, tmp_path, capsys):
    """LiSER writes results.csv, leaderboard.md, runs/... into the output folder: a folder with
    files that is not a liser bench output is refused (exit 2), sequentially and as a task graph,
    and nothing in it changes; an empty folder, or one LiSER wrote, is used."""
    from liser_tools.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("my,own,table\n")
    (mine / "leaderboard.md").write_text("my notes\n")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    for extra in ([], ["--workers", "2"]):
        assert main(["bench", str(grid_file(seeds=("s0",))), "-o", str(mine), *extra]) == 2
        assert "is not a liser bench output" in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in mine.iterdir()} == before  # no lock file either
    from liser_core.errors import UsageError
    from liser_tools.taskgraph import LOCK_NAME, RESULTS_HEAD, check_grid_output

    for name, files in (("empty", {}), ("hidden", {".gitkeep": ""}), ("locked", {LOCK_NAME: ""}),
                        ("older", {"results.csv": RESULTS_HEAD + "role\n"})):
        (tmp_path / name).mkdir()
        for f, text in files.items():
            (tmp_path / name / f).write_text(text)
        check_grid_output(tmp_path / name)  # LiSER's (or nobody's): used
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UsageError, match="is not a folder"):
        check_grid_output(tmp_path / "a-file")

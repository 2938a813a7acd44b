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
        elif r["model"] == "targets":  # the teachers' identities, their weights and the combiner
            by = {r2["model"]: r2["teacher_identity"] for r2 in rows if r2["combination"] == r["combination"]}
            assert r["teacher_identity"].startswith(f"{by['teacher:face_cnn']}+{by['teacher:audio_cnn']}|")
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


def test_exclude_leaves_combinations_out_and_refuses_names_the_grid_lacks(tmp_path):
    g = tmp_path / "g.yaml"
    axes = "axes: {target: {rav: [a=1], sav: [a=2]}, fold: {'1': [f=1], '2': [f=2], '3': [f=3]}}\n"
    g.write_text("recipe: x.yaml\n" + axes + "exclude: [{target: sav, fold: ['2', '3']}]\n")
    combos = [c for c, _ in load_grid(g).combinations()]
    assert combos == [{"target": "rav", "fold": "1"}, {"target": "rav", "fold": "2"}, {"target": "rav", "fold": "3"},
                      {"target": "sav", "fold": "1"}]
    g.write_text("recipe: x.yaml\n" + axes + "exclude: [{fold: 3}]\n")  # one label, a number read as its label
    assert len(load_grid(g).combinations()) == 4
    for bad, match in (("[{targt: sav}]", "exclude.0.targt: is not an axis"),
                       ("[{target: savee}]", "'savee' is not a label of axis target"),
                       ("{target: sav}", "must be a list"),
                       ("[{}]", "must map axes"),
                       ("[{target: [rav, sav]}]", "leaves no combination")):
        g.write_text("recipe: x.yaml\n" + axes + f"exclude: {bad}\n")
        with pytest.raises(ConfigError, match=match):
            load_grid(g)


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
    assert "stale  loss=ce,seed=s0  (the recipe changed at distil.epochs)" in listing and "done   loss=kl,seed=s0" in listing
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


@pytest.mark.parametrize("override, key", [("distil.nosuch=1", "distil.nosuch"), ("distil.epochs=abc", "distil.epochs"),
                                           ("distil.losses=[{name: nosuchloss}]", "distil.losses.0.name")])
def test_a_recipe_error_of_one_combination_names_the_combination_and_grid(override, key, teacher_grid, tmp_path, capsys):
    """`distil.nosuch: unknown key` alone, exit 2: which of the grid's combinations, of which
    grid file, was not said (component-option errors did name it)."""
    from liser_tools.cli import main

    grid = yaml.safe_load(teacher_grid.read_text())
    grid["axes"]["teachers"]["bad"] = [override]
    teacher_grid.write_text(yaml.safe_dump(grid, sort_keys=False))
    capsys.readouterr()
    assert main(["bench", str(teacher_grid), "-o", str(tmp_path / "out"), "--list"]) == 2
    err = capsys.readouterr().err
    assert f"liser: error: {key}" in err and f"(combination teachers=bad,seed=s0 of {teacher_grid.resolve()}; " \
                                             "nothing was run)" in err
    assert not (tmp_path / "out" / "runs").exists()


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
    for it, r in zip(items, rows):  # each row its run's own record (a row without one is stale)
        it["run_dir"].mkdir(parents=True)
        (it["run_dir"] / "metrics.json").write_text(json.dumps({
            "status": "completed", "recipe_fingerprint": it["fingerprint"], "flags": [],
            "student": {k: float(r[k]) for k in ("accuracy", "uar", "macro_f1")}}))
    assert main(["bench", str(teacher_grid), "-o", str(out), "--list"]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["done        teachers=face,seed=s0",
                                                        "other code  teachers=face,seed=s1"]
    assert main(["bench", str(teacher_grid), "-o", str(out), "--plan"]) == 0  # not counted as to run until chosen
    assert "plan: 2 runs (1 done, 0 stale, 1 from other code: not counted below" in capsys.readouterr().out
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


def test_rows_that_are_not_their_runs_record_are_run_again(grid_file, tmp_path, capsys, caplog):
    """A combination is done only when its rows are its run's record: a score edited in
    results.csv, or a run directory removed, makes it stale (the reason listed and logged), and
    a score that is no number is one line naming the file, line and column."""
    from liser_tools.cli import main

    host = load_plugins()
    path, out = grid_file(seeds=("s0",)), tmp_path / "out"
    assert run_grid(load_grid(path, out), host)["ran"] == 2
    results = out / "results.csv"
    rows = list(csv.DictReader(open(results)))
    own = [r["uar"] for r in rows]
    edited = next(i for i, r in enumerate(rows) if r["model"] == "student" and r["combination"] == "loss=kl,seed=s0")
    rows[edited]["uar"] = "0.999000"
    with open(results, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["bench", str(path), "-o", str(out), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "stale  loss=kl,seed=s0  (results.csv's student uar 0.999000 is not its run's" in listing
    assert "done   loss=ce,seed=s0" in listing
    again = run_grid(load_grid(path, out), host)
    assert again["ran"] == 1 and again["replaced"] == ["loss=kl,seed=s0"]
    assert "loss=kl,seed=s0: its rows are stale (results.csv's student uar 0.999000" in caplog.text
    assert sorted(r["uar"] for r in csv.DictReader(open(results))) == sorted(own)  # the run's own scores again
    import shutil

    shutil.rmtree(out / "runs" / "loss-ce__seed-s0")
    assert main(["bench", str(path), "-o", str(out), "--list"]) == 0
    assert "stale  loss=ce,seed=s0  (its run directory" in capsys.readouterr().out
    # any other column edited by hand (a parameter count shown on the board): its row check says so
    assert run_grid(load_grid(path, out), host)["ran"] == 1
    rows = list(csv.DictReader(open(results)))
    assert all(r["row_check"] for r in rows)
    rows[0]["num_parameters"] = "1"
    with open(results, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["bench", str(path), "-o", str(out), "--list"]) == 0
    assert f"stale  {rows[0]['combination']}  (results.csv's {rows[0]['model']} row is not as LiSER wrote it" \
        in capsys.readouterr().out
    text = results.read_text().replace(own[0], "oops", 1)
    results.write_text(text)
    assert main(["bench", str(path), "-o", str(out), "--list"]) == 2
    err = capsys.readouterr().err
    assert f"{results}, line " in err and "'oops' is not a score in [0, 1]" in err and "Traceback" not in err


def test_a_grid_places_its_runs_and_store_itself(grid_file, tmp_path, capsys):
    """run_dir= and store= on the command line (or in the grid's overrides) were silently
    replaced: refused, naming the grid key to use; `store: FOLDER` shares a store between grids."""
    from liser_tools.cli import main

    path = grid_file(seeds=("s0",))
    for given in ("store=/tmp/elsewhere", "run_dir=/tmp/elsewhere"):
        assert main(["bench", str(path), "-o", str(tmp_path / "out"), given, "--list"]) == 2
        err = capsys.readouterr().err
        assert f"{given!r} on the command line: a grid sets {given.split('=')[0]} itself" in err
    grid = yaml.safe_load(path.read_text())
    grid["store"] = str(tmp_path / "shared")
    grid["axes"]["loss"] = {"ce": grid["axes"]["loss"]["ce"]}
    path.write_text(yaml.safe_dump(grid))
    assert run_grid(load_grid(path, tmp_path / "out"), load_plugins())["ran"] == 1
    assert (tmp_path / "shared").is_dir() and not (tmp_path / "out" / "store").exists()
    grid["store"] = 3
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(ConfigError, match="store: 3: give true .* or a folder shared with other grids"):
        load_grid(path)


def test_the_board_shows_only_rows_of_the_current_recipe_and_says_what_it_lacks(tmp_path):
    """After Ctrl-C or a failed task, results.csv still holds rows of an earlier recipe for the
    combinations not rerun: they stay off the board, which says it is incomplete and names them;
    tables and figures of an earlier grid that this one does not make are removed (not left with
    old numbers), anything else is left alone."""
    from liser_tools.bench import Grid, current_rows, write_leaderboard

    def row(combo, fp, uar):
        return {"combination": combo, "model": "student", "components": "c", "accuracy": uar, "uar": uar,
                "macro_f1": uar, "num_parameters": "10", "flags": "", "code": "x", "recipe_fingerprint": fp,
                "run_dir": "/old/place"}

    plan = [{"key": f"a={a},seed={s}", "fingerprint": f"new-{a}", "state": "done", "run_dir": tmp_path / "runs" / f"{a}{s}"}
            for a in ("1", "2") for s in ("0", "1")]
    rows = [row("a=1,seed=0", "new-1", "0.5"), row("a=1,seed=1", "new-1", "0.6"),
            row("a=2,seed=0", "new-2", "0.4"), row("a=2,seed=1", "old-2", "0.9")]  # not rerun yet
    keep, missing = current_rows(plan, rows)
    assert [r["uar"] for r in keep] == ["0.5", "0.6", "0.4"] and missing == ["a=2,seed=1"]
    assert {r["run_dir"] for r in keep} == {str(tmp_path / "runs" / n) for n in ("10", "11", "20")}
    plan[2]["state"] = "stale"  # its row disagrees with its run: off the board until rerun
    keep, missing = current_rows(plan, rows)
    assert [r["uar"] for r in keep] == ["0.5", "0.6"] and missing == ["a=2,seed=0", "a=2,seed=1"]
    grid = Grid(recipe="r.yaml", overrides=[], axes={"a": {"1": [], "2": []}, "seed": {"0": [], "1": []}},
                repeat=["seed"], store=False, output=tmp_path)
    for name in ("report.html", "efficiency.md", "uar_by_old.png", "notes.md"):  # an earlier grid's outputs, and a note
        (tmp_path / name).write_text("old")
    write_leaderboard(grid, keep, missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comparisons.md", "leaderboard.md", "notes.md"]
    board = (tmp_path / "leaderboard.md").read_text()
    assert "0.900" not in board and "**Incomplete: 2 of the grid's combinations" in board
    assert "`a=2,seed=0`, `a=2,seed=1`" in board and "Code: `x`." in board


def test_the_plot_marks_flagged_points(tmp_path, monkeypatch):
    """uar_by_<axis>.png: a line with a flagged point (or one averaging runs of different code)
    carries the flags in its legend, and the point is marked; a clean line is not."""
    import matplotlib.axes

    from liser_tools.bench import Grid, _plot

    drawn, marks = [], []
    errorbar, scatter = matplotlib.axes.Axes.errorbar, matplotlib.axes.Axes.scatter
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda self, *a, **k: drawn.append(k["label"]) or errorbar(self, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", lambda self, x, y, **k: marks.append(list(x)) or scatter(self, x, y, **k))

    def row(a, model, seed, flags="", code="x"):
        return {"combination": f"a={a},seed={seed}", "model": model, "uar": "0.5", "flags": flags, "code": code}

    rows = [row(a, m, s) for a in ("1", "2") for m in ("student", "baseline") for s in ("0", "1")]
    rows[0]["flags"] = "test_overlap"  # a=1, student, seed 0
    rows[7]["code"] = "y"  # a=2, baseline, seed 1: its point averages two code versions
    grid = Grid(recipe="r.yaml", overrides=[], axes={"a": {"1": [], "2": []}, "seed": {"0": [], "1": []}},
                repeat=["seed"], store=False, output=tmp_path, plot_axis="a")
    _plot(grid, rows)
    assert sorted(drawn) == ["baseline !mixed_code", "student !test_overlap"]
    assert sorted(marks) == [["1"], ["2"]] and (tmp_path / "uar_by_a.png").is_file()


def test_plan_estimates_repeats_from_this_grids_current_rows_only(tmp_path):
    """--plan's "repeats needed" reads the spread of paired differences in results.csv: only
    rows of this grid's combinations with their current recipe count (another grid's rows in
    the same folder, or stale ones, changed the estimate)."""
    from liser_tools.bench import FIELDS, Grid, repeats_advice, write_results

    grid = Grid(recipe="r.yaml", overrides=[], axes={"a": {"1": [], "2": []}, "seed": {"0": [], "1": [], "2": []}},
                repeat=["seed"], store=False, output=tmp_path)
    items = [{"key": f"a={a},seed={s}", "fingerprint": f"fp-{a}", "state": "done", "run_dir": tmp_path / f"r{a}{s}"}
             for a in ("1", "2") for s in ("0", "1", "2")]

    def uar(model, seed):  # the student beats the baseline by 0.10, 0.13, 0.16: a spread to estimate from
        return 0.4 + 0.01 * seed + (0.1 + 0.03 * seed if model == "student" else 0.0)

    def rows(prefix, fp):
        return [{**dict.fromkeys(FIELDS, ""), "combination": f"{prefix}={a},seed={s}", "model": model,
                 "accuracy": "0.5", "uar": f"{uar(model, s):.6f}", "macro_f1": "0.5",
                 "recipe_fingerprint": f"{fp}-{a}", "code": "x"}
                for a in ("1", "2") for s in (0, 1, 2) for model in ("student", "baseline")]

    write_results(tmp_path / "results.csv", rows("b", "fp"))  # another grid's rows in this folder
    assert "no finished runs to estimate the spread from yet" in repeats_advice(grid, items)[-1]
    assert "no finished runs" not in repeats_advice(grid)[-1]  # what it said before: their spread
    write_results(tmp_path / "results.csv", rows("a", "old"))  # this grid's combinations, an earlier recipe
    assert "no finished runs to estimate the spread from yet" in repeats_advice(grid, items)[-1]
    write_results(tmp_path / "results.csv", rows("a", "fp"))
    assert "to detect 0.05 UAR" in " ".join(repeats_advice(grid, items))
    # the comparisons it reads are comparisons.md's: the report's fraction axis is not compared
    from liser_tools.bench import _board_comparisons

    grid.report = {"fraction": "a"}
    assert len(_board_comparisons(grid, rows("a", "fp"))) == 2  # distilled vs labels only, per a
    assert f"over {len(_board_comparisons(grid, rows('a', 'fp')))} comparisons" in " ".join(repeats_advice(grid, items))


def test_a_board_row_over_some_folds_of_the_protocol_is_flagged(tmp_path):
    """A grid's repeats over folds 1 and 2 of RAVDESS's 6 made a board row "n = 2" like any
    other: its mean is not the protocol's cross-validated score. Flagged folds_incomplete (from
    each run's metrics.json protocol) on the board and in the comparisons (as by summarize);
    every fold once per seed is not."""
    from liser_tools.bench import _fold_flags
    from liser_tools.compare import board_entries, comparisons

    def row(fold, seed, folds=6):
        run = tmp_path / f"f{fold}s{seed}n{folds}"
        run.mkdir(exist_ok=True)
        (run / "config.yaml").write_text(f"seed: {seed}\n")
        (run / "metrics.json").write_text(json.dumps({"protocol": {"fold": fold, "folds": folds}}))
        return {"combination": f"loss=kl,fold=f{fold},seed=s{seed}", "model": "student", "components": "x",
                "num_parameters": "10", "accuracy": "0.5", "uar": "0.5", "macro_f1": "0.5", "flags": "",
                "code": "liser=1@abc", "run_dir": str(run)}

    repeat = ["fold", "seed"]
    (entry,) = board_entries([row(1, 0), row(2, 0)], repeat, _fold_flags())
    assert entry["n"] == 2 and entry["flags"] == ["folds_incomplete"]
    (entry,) = board_entries([row(f, s, folds=3) for f in (1, 2, 3) for s in (0, 1)], repeat, _fold_flags())
    assert entry["n"] == 6 and entry["flags"] == []
    two = [dict(r, combination=r["combination"].replace("loss=kl", f"loss={loss}"), uar=uar)
           for loss, uar in (("kl", "0.5"), ("dkd", "0.6")) for r in (row(1, 0), row(2, 0))]
    assert all(c["flags"] == ["folds_incomplete"] for c in comparisons(two, repeat, more_flags=_fold_flags()))


def test_an_output_folder_holds_one_grid(grid_file, tmp_path, capsys):
    """A second grid written into a grid's output folder replaced its board (the first grid's
    rows stayed in results.csv, off it): refused before anything is written, naming the grid the
    folder holds; the same grid file edited in place is the same grid."""
    from liser_tools.cli import main

    path, out = grid_file(seeds=("s0",)), tmp_path / "out"
    assert run_grid(load_grid(path, out), load_plugins())["ran"] == 2
    board = (out / "leaderboard.md").read_bytes()
    other = tmp_path / "other.yaml"
    other.write_text(path.read_text())
    assert main(["bench", str(other), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"holds the results of another grid ({path.resolve()}, recorded in .liser-grid.json)" in err
    assert (out / "leaderboard.md").read_bytes() == board
    grid = yaml.safe_load(path.read_text())
    grid["axes"]["seed"]["s1"] = ["seed=1"]  # the same file, edited: the same grid, one combination more
    path.write_text(yaml.safe_dump(grid))
    assert run_grid(load_grid(path, out), load_plugins())["ran"] == 2


def test_an_interrupted_grid_edited_before_its_resume_completes_and_its_board_is_current(grid_file, tmp_path, caplog,
                                                                                         monkeypatch):
    """An unfinished run of the grid's earlier recipe made its combination fail on every rerun
    ("a different recipe": the grid owns that folder, it now starts it afresh); a grid stopped
    by a failure or Ctrl-C without workers kept its old board (old scores, no "Incomplete")."""
    import logging

    from liser_core.engine import Engine

    path, out = grid_file(seeds=("s0",)), tmp_path / "out"
    assert run_grid(load_grid(path, out), load_plugins())["ran"] == 2
    ce = out / "runs" / "loss-ce__seed-s0"
    state = json.loads((ce / "state" / "run.json").read_text())
    (ce / "state" / "run.json").write_text(json.dumps({**state, "status": "interrupted"}))  # stopped mid-run ...
    rows = [r for r in csv.DictReader(open(out / "results.csv")) if r["combination"] != "loss=ce,seed=s0"]
    with open(out / "results.csv", "w", newline="") as f:  # ... before its rows were written
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    grid = yaml.safe_load(path.read_text())
    grid["overrides"].append("distil.epochs=2")  # then the grid edited
    path.write_text(yaml.safe_dump(grid))
    with caplog.at_level(logging.WARNING):
        assert run_grid(load_grid(path, out), load_plugins())["ran"] == 2
    assert "loss=ce,seed=s0: its run directory holds another recipe's state" in caplog.text

    grid["overrides"][-1] = "distil.epochs=3"  # edited again, and stopped at its second combination
    path.write_text(yaml.safe_dump(grid))
    real = Engine.execute

    def stopped(self):
        if "loss-kl" in str(self.run.run_dir):  # the second (axes in file order: ce, kl)
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Engine, "execute", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_grid(load_grid(path, out), load_plugins())
    board = (out / "leaderboard.md").read_text()
    assert "**Incomplete: 1 of the grid's combinations have no rows of their current recipe** " in board
    assert "`loss=kl,seed=s0`" in board.split("**Incomplete")[1] and "| loss=kl " not in board
    assert "| loss=ce " in board  # the combination run before the stop is on it


def test_a_grids_paths_are_its_own_wherever_it_is_run_from(tmp_path, monkeypatch):
    """The recipe a grid names is the one beside the grid file: a file of that name in the
    working directory was taken instead, silently; and every path a task gets is absolute (a
    Ray worker started in another folder read and wrote relative paths there)."""
    own, elsewhere = tmp_path / "grid", tmp_path / "cwd"
    for folder, channels in ((own, "[4, 8]"), (elsewhere, "[2, 4]")):
        folder.mkdir()
        (folder / "tiny.yaml").write_text(TINY_RECIPE.replace("channels: [4, 8]}", f"channels: {channels}}}"))
    (own / "grid.yaml").write_text(yaml.safe_dump({"recipe": "tiny.yaml", "store": "shared", "output": "out",
                                                   "axes": {"seed": {"s0": ["seed=0"]}}}))
    monkeypatch.chdir(elsewhere)
    grid = load_grid(own / "grid.yaml")
    assert grid.recipe == str(own / "tiny.yaml")
    assert grid.output == elsewhere / "out" and grid.output.is_absolute()  # -o / output: the working directory's
    assert grid.store_dir() == elsewhere / "shared"


def test_a_task_on_a_worker_running_other_code_is_refused(tmp_path):
    """A Ray cluster started with another checkout on its path ran the grid's tasks with other
    code (other scores, exit 0, the board's footer the only sign): each task carries the
    driver's code and a worker with other code refuses it."""
    from liser_tools.gridtasks import _run

    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    spec = {"id": "run-1", "kind": "run", "recipe": str(tmp_path / "tiny.yaml"), "overrides": [], "plugins": {},
            "code": "liser=0.0.1@0123456789ab"}
    with pytest.raises(RuntimeError, match=r"this worker runs other code \(liser=.*\) than the grid's driver "
                                           r"\(liser=0.0.1@0123456789ab\)"):
        _run(spec)

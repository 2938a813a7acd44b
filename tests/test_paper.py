"""The paper's experiment: label-efficiency grids, toplines, figures, the HTML report, --plan."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from liser_core import load_plugins
from liser_core.guards import FLAGS
from liser_core.testing import TINY_RECIPE
from liser_tools.bench import load_grid, run_grid
from liser_tools.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def paper_grid(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    grid = {
        "recipe": "tiny.yaml",
        "store": True,
        "repeat": ["seed"],
        "report": {"fraction": "fraction", "teachers": "teachers", "student": "student"},
        "overrides": [
            "data.options={classes: ravdess8, seconds: 0.5, frames: 4, teacher_speakers: 2, labeled_speakers: 0,"
            " unlabeled_speakers: 4, unlabeled_clips: 1, test_speakers: 1, teacher_clips: 1, test_clips: 1}",
            "distil.epochs=1", "distil.batch_size=16", "loggers={run_dir: {confusion_png: false}}", "threads=1",
            "baseline={enabled: false, epochs: 1, batch_size: 8}",
        ],
        "axes": {
            "fraction": {"25": ["data.options.label_fraction=0.25"], "100": ["data.options.label_fraction=1.0"]},
            "teachers": {
                "face": ["teachers=[{name: face_cnn, fit: {epochs: 1, batch_size: 16}, options: {channels: [4, 8], hidden: 16}}]",
                         "baseline.enabled=true"],
                "both": ["teachers=[{name: face_cnn, fit: {epochs: 1, batch_size: 16}, options: {channels: [4, 8], hidden: 16}},"
                         " {name: audio_cnn, fit: {epochs: 1, batch_size: 16}, options: {channels: [4, 8], hidden: 16}}]"],
            },
            "student": {"small": ["student.options={channels: [4, 8]}"]},
            "seed": {"0": ["seed=0"], "1": ["seed=1"]},
        },
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_a_paper_grid_writes_curves_tables_pareto_and_a_report(paper_grid, tmp_path, capsys):
    host = load_plugins()
    out = tmp_path / "out"
    assert main(["bench", str(paper_grid), "-o", str(out), "--plan"]) == 0
    plan = capsys.readouterr().out
    assert "plan: 8 runs (0 done, 0 stale, 8 to run)" in plan
    assert "teacher fits: 2 face_cnn, 2 audio_cnn" in plan  # one per seed (its corpus): fractions and sets share it
    assert "estimated wall time" in plan
    assert "repeats: 2 run(s) per row (seed) -- fewer than 3" in plan and "no finished runs" in plan
    result = run_grid(load_grid(paper_grid, out), host)
    assert result["ran"] == 8
    assert main(["bench", str(paper_grid), "-o", str(out), "--plan"]) == 0
    assert "Repeats needed (80 % power" in capsys.readouterr().out  # from the spread of the runs just made
    assert (out / "comparisons.md").is_file() and "Holm" in (out / "comparisons.md").read_text()
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["label_fraction"] for r in rows} == {"0.25", "1.0"}
    assert {r["model"] for r in rows if "teachers=both" in r["combination"]} >= {"targets", "student"}
    assert not [r for r in rows if r["model"] == "baseline" and "teachers=both" in r["combination"]]
    for name in ("leaderboard.md", "efficiency.md", "label_efficiency_small.png", "pareto.png", "report.html", "student_speed.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 100, name
    eff = (out / "efficiency.md").read_text()
    full = [float(r["uar"]) for r in rows if r["model"] == "baseline" and r["label_fraction"] == "1.0"]
    assert f"| small | face | {sum(full) / len(full):.3f} |" in eff  # fully supervised = labels only at 100 %
    speed = json.loads((out / "student_speed.json").read_text())
    assert len(speed) == 1 and next(iter(speed.values()))["rtf"] > 1
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "Label efficiency" in page and "run directory" in page
    assert "http://" not in page and "https://" not in page  # self-contained
    import html

    # the board's notes reach the page with its numbers: the code the rows come from, too few repeats
    assert f"<p>Code: {html.escape(rows[0]['code'])}.</p>" in page and "<p>n = 2 for some rows" in page


def test_the_report_renders_in_a_headless_browser(paper_grid, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs Debian's chromium (.ci/run): it is missing")
        pytest.skip("no Chromium here (apt-get install chromium); CI installs it")
    grid = yaml.safe_load(paper_grid.read_text())
    grid["axes"]["seed"] = {"0": ["seed=0"]}
    paper_grid.write_text(yaml.safe_dump(grid))
    out = tmp_path / "out"
    run_grid(load_grid(paper_grid, out), load_plugins())
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chrome'}", "--dump-dom", (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    # the page's own check, run by the browser on load: every image decoded, the tables there
    assert 'data-rendered="images 2/2 tables ' in dom, dom[:500]
    tables = int(dom.split('data-rendered="images 2/2 tables ')[1].split('"')[0])
    assert tables >= 3 + 4  # efficiency, speeds, leaderboard, and one confusion matrix per combination


def test_the_paper_grids_validate_on_fixture_trees(tmp_path, capsys):
    """ravdess.yaml and cremad.yaml: every combination built and probed (--dry-run) on
    real-named trees of generated files, with a tiny local WavLM for the hub's."""
    from liser_plugins.corpora import fixtures
    from liser_plugins.hf_speech.tiny import save_tiny_model

    tiny = save_tiny_model(tmp_path / "tiny-wavlm")
    rav = tmp_path / "RAVDESS"
    for a in (1, 4, 8, 3, 2, 6, 9, 10):  # a test actor in each of the 6 folds, and training actors
        for e in range(1, 9):
            name = f"01-01-{e:02d}-01-01-01-{a:02d}.mp4"
            fixtures.write_video(rav / f"Actor_{a:02d}" / name, seconds=0.6, size=(48, 48), rate=48000, freq=100 + 7 * a + 31 * e)
    cre = tmp_path / "CREMA-D"
    for a in range(1001, 1011):  # two actors per fold
        for j, code in enumerate(("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")):
            # tones 61 Hz apart: none a near copy of another (5 Hz apart, whole teacher splits were
            # left out as near copies of test clips, and a fold had no teacher split to fit on)
            fixtures.write_video(cre / "VideoFlash" / f"{a}_DFA_{code}_XX.mp4", seconds=0.6, size=(48, 48), rate=16000,
                                 freq=100 + 61 * (6 * (a - 1001) + j))
    for grid, root in (("ravdess", rav), ("cremad", cre)):
        # the committed grid; the hub's WavLM swapped for a tiny local one by the override its header
        # documents, which must reach the speech teacher in every teacher set (nothing downloads here)
        text = (REPO / "benchmarks" / "paper" / f"{grid}.yaml").read_text()
        text = text.replace("recipe: ../../recipes/", f"recipe: {REPO / 'recipes'}/")
        (tmp_path / f"{grid}.yaml").write_text(text)
        args = ["bench", str(tmp_path / f"{grid}.yaml"), "-o", str(tmp_path / grid), f"teachers.0.options.model={tiny}",
                f"data.options.root={root}",
                "data.options.expect_complete=false", "data.options.min_seconds=0.3", "--dry-run"]
        assert main(args) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        n = {"ravdess": 6 * 5 * 3 * 3, "cremad": 5 * 5 * 3 * 3}[grid]
        assert f"{n} combinations validated" in out


def _report_rows(fractions, flagged_seed="1", flag="test_overlap"):
    """results.csv rows of a small grid (no runs needed): a student and the labels-only
    baseline per fraction and seed; seed ``flagged_seed``'s runs carry ``test_overlap``."""
    rows = []
    for frac in fractions:
        for seed in ("0", "1"):
            for model, uar in (("student", 0.3 + frac / 2), ("baseline", 0.2 + frac / 2)):
                rows.append({"combination": f"fraction={frac:g},teachers=speech,student=small,seed={seed}", "model": model,
                             "uar": str(uar), "label_fraction": str(frac), "run_dir": "/nonexistent", "num_parameters": "10",
                             "flags": flag if seed == flagged_seed else "", "code": "liser=0.1.0@abc"})
    return rows


def _write_report(tmp_path, fractions, flagged_seed="1", flag="test_overlap"):
    from liser_tools.report import write_report

    roles = {"fraction": "fraction", "teachers": "teachers", "student": "student"}
    axes = {"fraction": {f"{f:g}": [] for f in fractions}, "teachers": {"speech": []}, "student": {"small": []},
            "seed": {"0": [], "1": []}}
    write_report(tmp_path, "t", _report_rows(fractions, flagged_seed, flag), roles, ["seed"], axes, "")
    return (tmp_path / "efficiency.md").read_text(), (tmp_path / "report.html").read_text()


def test_efficiency_says_largest_fraction_when_the_grid_has_no_100_percent(tmp_path):
    eff, page = _write_report(tmp_path, (0.1, 0.5), flagged_seed="")
    assert "| student | teachers | largest fraction (50 %) UAR |" in eff and "fully supervised UAR" not in eff
    assert "NOT the fully supervised score" in eff and "<th>largest fraction (50 %) UAR</th>" in page
    eff_full, _ = _write_report(tmp_path, (0.1, 1.0), flagged_seed="")
    assert "| student | teachers | fully supervised UAR |" in eff_full


def test_efficiency_names_the_fraction_it_reads(tmp_path):
    """A grid without 10 %: the headline is the nearest fraction, named as what it is (it was
    labelled "UAR at 10 %" with the 25 % numbers)."""
    eff, _ = _write_report(tmp_path, (0.25, 1.0), flagged_seed="")
    assert "| UAR at 25 % [95 % CI] |" in eff and "labels only at 25 % |" in eff and "10 %" not in eff


def test_a_flagged_run_shows_its_flag_in_efficiency_md_and_report_html(tmp_path):
    eff, page = _write_report(tmp_path, (0.1, 1.0))
    assert "| small | speech | 0.700 | 0.350 [0.350, 0.350] | 2 | 50.0 % | 0.250 | 100 % | !test_overlap |" in eff
    assert "**!test_overlap**: a teacher of that run was fitted on test speakers" in eff
    assert "<td>!test_overlap</td>" in page and "!test_overlap: a teacher of that run" in page
    clean, clean_page = _write_report(tmp_path, (0.1, 1.0), flagged_seed="")
    assert "test_overlap" not in clean and "test_overlap" not in clean_page


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_every_flag_stands_in_efficiency_md_report_html_and_the_leaderboard(flag, tmp_path):
    from liser_tools.bench import Grid, write_leaderboard

    eff, page = _write_report(tmp_path, (0.1, 1.0), flag=flag)
    assert f"!{flag}" in eff and f"**!{flag}**: " in eff  # in its row, and explained under the table
    assert f"<td>!{flag}</td>" in page and f"!{flag}: " in page
    grid = Grid(recipe="r.yaml", overrides=[], axes={"fraction": {"0.1": [], "1": []}, "seed": {"0": [], "1": []}},
                repeat=["seed"], store=False, output=tmp_path)
    rows = [{**r, "components": r["model"], "accuracy": r["uar"], "macro_f1": r["uar"]}
            for r in _report_rows((0.1, 1.0), "1", flag)]
    write_leaderboard(grid, rows)
    board = (tmp_path / "leaderboard.md").read_text()
    assert f"!{flag}" in board and f"**!{flag}**: " in board


def test_a_board_whose_rows_are_all_flagged_says_its_reference_row_is_flagged(tmp_path):
    """◆ was put on a flagged row when every row was flagged while the legend said "the best row
    without flags": the legend now says no row is a fair yardstick."""
    from liser_tools.bench import Grid, write_leaderboard

    grid = Grid(recipe="r.yaml", overrides=[], axes={"fraction": {"0.1": [], "1": []}, "seed": {"0": [], "1": []}},
                repeat=["seed"], store=False, output=tmp_path)
    rows = [{**r, "components": r["model"], "accuracy": r["uar"], "macro_f1": r["uar"]}
            for r in _report_rows((0.1, 1.0), "", "")]
    write_leaderboard(grid, rows)
    assert "Every row is flagged" not in (tmp_path / "leaderboard.md").read_text()
    write_leaderboard(grid, [{**r, "flags": "test_overlap"} for r in rows])
    board = (tmp_path / "leaderboard.md").read_text()
    assert "**Every row is flagged**: no row is a fair yardstick, so ◆ marks the best row, itself flagged" in board
    assert "◆" in next(line for line in board.splitlines() if line.startswith("| 1 |"))


def test_the_pareto_front_and_labels_that_do_not_overprint():
    from liser_tools.report import _place_labels, _plt, pareto_front

    pts = [{"params": 1e4, "rtf": 900, "uar": 0.40, "label": "a"}, {"params": 2e4, "rtf": 800, "uar": 0.50, "label": "b"},
           {"params": 3e4, "rtf": 950, "uar": 0.45, "label": "c"}, {"params": 1e5, "rtf": 100, "uar": 0.60, "label": "d"},
           {"params": 2e5, "rtf": 50, "uar": 0.55, "label": "e"}]
    # by size: a (smallest), b (beats c), d (best UAR); c and e are dominated
    assert [p["label"] for p in pareto_front(pts, "params")] == ["a", "b", "d"]
    # by speed (faster is better): c is the fastest and beats a; b and d are not beaten on both
    assert [p["label"] for p in pareto_front(pts, "rtf")] == ["d", "b", "c"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3))
    crowd = [(1e4 * (1 + 0.01 * i), 0.5 + 0.001 * i, f"student-{i} (speech+face)") for i in range(8)]
    ax.scatter([x for x, _, _ in crowd], [y for _, y, _ in crowd])
    ax.set_xscale("log")
    fig.canvas.draw()
    _place_labels(ax, fig, crowd)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts if t.get_alpha() is None]
    assert len(ax.texts) == 8 and len(boxes) >= 6  # nearly all find a free place
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


def test_the_pareto_axes_are_labelled_even_within_one_decade(tmp_path, monkeypatch):
    from liser_tools import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    # speeds 880x to 1,900x, sizes 24k to 580k: one decade or less on an axis
    pts = [{"params": p, "rtf": r, "uar": u, "label": lab, "kind": "distilled"}
           for p, r, u, lab in ((24_442, 1_900, 0.40, "a"), (193_698, 880, 0.47, "b"), (576_000, 1_100, 0.36, "c"))]
    report.pareto(pts, tmp_path / "pareto.png")
    fig = figures[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.xaxis.get_major_ticks() if lo <= t.get_loc() <= hi and t.label1.get_text()]
        assert len(ticks) >= 2, [t.label1.get_text() for t in ax.xaxis.get_major_ticks()]
        boxes = [t.label1.get_window_extent(renderer) for t in ticks]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    report._plt().close(fig)


def test_the_pareto_view_draws_float32_against_int8(tmp_path, monkeypatch):
    from liser_tools import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    pts = [{"params": 24_442, "rtf": 1_900, "uar": 0.40, "label": "a (speech)", "kind": "distilled"},
           {"params": 193_698, "rtf": 880, "uar": 0.47, "label": "b (speech)", "kind": "distilled"}]
    quantized = {name: {"float32": {"bytes": fb, "uar": fu}, "int8": {"bytes": qb, "uar": qu}, "speedup": sp}
                 for name, fb, fu, qb, qu, sp in (("a", 892_873, 0.432, 827_854, 0.422, 0.97),
                                                  ("b", 1_956_984, 0.432, 1_477_573, 0.401, 1.04))}
    report.pareto(pts, tmp_path / "pareto.png", quantized)
    fig = figures[0]
    assert len(fig.axes) == 3
    ax = fig.axes[2]
    # one line per student from its float32 to its int8 model: (KB, UAR) as recorded
    lines = [list(zip(*line.get_data())) for line in ax.lines]
    assert lines == [[(892_873 / 1024, 0.432), (827_854 / 1024, 0.422)],
                     [(1_956_984 / 1024, 0.432), (1_477_573 / 1024, 0.401)]]
    assert {t.get_text() for t in ax.texts} >= {"a int8 (0.97x speed)", "b float32"}
    report._plt().close(fig)
    # without int8 records: the two panels as before
    report.pareto(pts, tmp_path / "pareto2.png")
    assert len(figures[1].axes) == 2


def test_an_incomplete_grid_says_so_in_efficiency_md_and_the_report(tmp_path):
    """A failed repeat left a point of efficiency.md at n = 1 with no word of it (only the board
    said "Incomplete"): the board's note goes with the efficiency table, in the file and the page."""
    from liser_tools.report import write_report

    roles = {"fraction": "fraction", "teachers": "teachers", "student": "student"}
    axes = {"fraction": {"0.1": [], "1": []}, "teachers": {"speech": []}, "student": {"small": []},
            "seed": {"0": [], "1": []}}
    note = "**Incomplete: 1 of the grid's combinations have no rows of their current recipe** (...): `x`."
    write_report(tmp_path, "t", _report_rows((0.1, 1.0), ""), roles, ["seed"], axes, f"# Leaderboard\n\n{note}\n")
    assert note in (tmp_path / "efficiency.md").read_text()
    assert (tmp_path / "report.html").read_text().count("<p>Incomplete: 1 of the grid") == 2  # both tables
    write_report(tmp_path, "t", _report_rows((0.1, 1.0), ""), roles, ["seed"], axes, "# Leaderboard\n")
    assert "Incomplete" not in (tmp_path / "efficiency.md").read_text()


def test_efficiency_keeps_the_grids_other_axes_apart_and_flags_only_the_rows_behind_a_point(tmp_path):
    """A grid with an axis beyond the report's roles (lr) gets one row per value (the first
    value's runs stood for all); a labels-only baseline is taken from an unflagged run, so a
    teacher set's row carries only its own runs' flags (a leaked teacher's runs flagged the
    `fit` row through the shared baseline)."""
    from liser_tools.report import efficiency, table, table_flags

    rows = []
    for lr, shift in (("lo", 0.0), ("hi", 0.2)):
        for teachers in ("fit", "leak"):
            for frac in (0.5, 1.0):
                for seed in ("0", "1"):
                    flags = "test_overlap" if teachers == "leak" else ""
                    combo = f"fraction={frac:g},teachers={teachers},student=small,lr={lr},seed={seed}"
                    for model, uar in (("student", 0.3 + shift + frac / 10), ("baseline", 0.2 + shift + frac / 10)):
                        rows.append({"combination": combo, "model": model, "uar": str(uar), "label_fraction": str(frac),
                                     "flags": flags, "code": "liser=0.1.0@abc"})
    # the leak runs first: their baselines are met first
    rows.sort(key=lambda r: "teachers=leak" not in r["combination"])
    roles = {"fraction": "fraction", "teachers": "teachers", "student": "student"}
    tab = table(rows, roles, ["seed"])
    eff = efficiency(tab, ["small [lr=hi]", "small [lr=lo]"], ["fit", "leak"], table_flags(rows, roles, ["seed"]))
    by = {(e["student"], e["teachers"]): e for e in eff}
    assert set(by) == {(f"small [lr={lr}]", t) for lr in ("lo", "hi") for t in ("fit", "leak")}
    assert by[("small [lr=hi]", "fit")]["full_uar"] == pytest.approx(0.5)
    assert by[("small [lr=lo]", "fit")]["full_uar"] == pytest.approx(0.3)
    assert by[("small [lr=lo]", "fit")]["flags"] == [] and by[("small [lr=lo]", "leak")]["flags"] == ["test_overlap"]

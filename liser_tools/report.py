"""The paper's view of a grid: label-efficiency curves, the efficiency table, a Pareto view of
size and speed against UAR, and one self-contained HTML page.

``liser bench`` calls :func:`write_report` after its leaderboard when the grid names the axes
that play the three roles (``report: {fraction: ..., teachers: ..., student: ...}``). Every
number comes from ``results.csv`` (one row per model per run, with the run's label fraction)
and from the run directories it names (confusion matrices, the saved student for timing).

Outputs, next to ``leaderboard.md``:

* ``label_efficiency_<student>.png`` -- test UAR against the labeled fraction (log axis): the
  distilled student for each teacher set and the labels-only student (mean ± std band over the
  repeat axes), the fully supervised student (labels-only at the largest fraction) as a line;
* ``efficiency.md`` -- per teacher set and student: UAR at 10 % labels as a percentage of the
  fully supervised UAR, and the smallest fraction whose UAR reaches 95 % of it;
* ``pareto.png`` -- UAR of each student (distilled at 10 %, and fully supervised) against its
  parameters and its measured CPU real-time factor (``student_speed.json``);
* ``report.html`` -- all of the above, the leaderboard, every combination's confusion matrix
  and links to the run directories, in one file that opens without a server.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from liser_common.metrics import mean_std
from liser_common.stats import MIN_REPEATS, SCORE_RANGE, t_interval

ROLES = ("fraction", "teachers", "student")
#: The fraction the headline table reads (the paper's "10 % of the labels") and the share of
#: the fully supervised UAR that counts as reaching it.
HEADLINE_FRACTION = 0.10
REACH = 0.95


def parse_combination(key: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in key.split(","))


def _fraction(row: Mapping[str, str], label: str) -> float:
    value = row.get("label_fraction") or ""
    if value not in ("", "None"):
        return float(value)
    x = float(label.rstrip("%"))
    return x / 100 if x > 1 or label.endswith("%") else x


def _row_flags(r: Mapping[str, str]) -> set[str]:
    return {f for f in (r.get("flags") or "").split(",") if f}


def student_label(parts: Mapping[str, str], roles: Mapping[str, str], repeat: Sequence[str]) -> str:
    """The student of a combination as the report's tables and curves name it: with the values
    of the grid's other axes (``logmel_cnn [lr=lo]``), so that combinations differing there are
    rows of their own, never one of them standing for all."""
    extra = ",".join(f"{a}={v}" for a, v in parts.items() if a not in roles.values() and a not in repeat)
    return parts[roles["student"]] + (f" [{extra}]" if extra else "")


def _chosen(rows: Sequence[Mapping[str, str]], roles: Mapping[str, str], repeat: Sequence[str]) -> dict:
    """``{(student, teachers, model): {fraction: {repeat: row}}}``: the row behind each point.
    Baselines (labels only) once per (student, fraction, repeat) whatever the teacher set, under
    teachers ``-``: an unflagged one where there is one (a labels-only student is the same in a
    run whose teacher was flagged, but that run's rows carry its flag)."""
    out: dict[tuple[str, str, str], dict[float, dict[str, Mapping[str, str]]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        parts = parse_combination(r["combination"])
        rep = ",".join(f"{a}={parts[a]}" for a in repeat if a in parts)
        frac = _fraction(r, parts[roles["fraction"]])
        model = r["model"]
        key = (student_label(parts, roles, repeat), "-" if model == "baseline" else parts[roles["teachers"]], model)
        have = out[key][frac].get(rep)
        if have is None or (_row_flags(have) and not _row_flags(r)):
            out[key][frac][rep] = r
    return out


def table(rows: Sequence[Mapping[str, str]], roles: Mapping[str, str], repeat: Sequence[str]) -> dict:
    """``{(student, teachers, model): {fraction: [uar per repeat]}}`` (:func:`_chosen`)."""
    return {k: {f: [float(r["uar"]) for r in v.values()] for f, v in d.items()} for k, d in _chosen(rows, roles, repeat).items()}


def table_flags(rows: Sequence[Mapping[str, str]], roles: Mapping[str, str], repeat: Sequence[str] = (),
                more_flags=None) -> dict[tuple[str, str, str], set[str]]:
    """The flags of :func:`table`'s keys: every flag of the rows behind them, and ``mixed_code``
    where one point (a fraction, averaged over the repeat axes) mixes runs of different code."""
    from liser_common.provenance import code_identity

    flags: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for key, by_frac in _chosen(rows, roles, repeat).items():
        for chosen in by_frac.values():
            flags[key] |= {f for r in chosen.values() for f in _row_flags(r)}
            if len({code_identity(r.get("code") or "") for r in chosen.values()}) > 1:
                flags[key].add("mixed_code")
            if more_flags is not None:  # of the point's runs together (folds_incomplete)
                flags[key] |= more_flags(list(chosen.values()))
    return dict(flags)


def full_label(fraction: float) -> str:
    """What the labels-only student at the grid's largest fraction is: "fully supervised" only
    at 100 % of the labels, otherwise "largest fraction (50 %)"."""
    return "fully supervised" if fraction >= 1.0 else f"largest fraction ({_pct(fraction)})"


def efficiency(tab: Mapping, students: Sequence[str], teacher_sets: Sequence[str],
               flags: Mapping[tuple[str, str, str], set[str]] | None = None) -> list[dict]:
    """Per (teacher set, student): the fully supervised UAR (the labels-only student at the
    largest fraction: :func:`full_label` names it), UAR at the headline fraction as a share of
    it, the smallest fraction reaching :data:`REACH` of it, and the flags of the rows behind it."""
    flags = flags or {}
    out = []
    for student in students:
        base = tab.get((student, "-", "baseline"), {})
        if not base:
            continue
        full_frac = max(base)
        full = mean_std(base[full_frac])[0]
        for teachers in teacher_sets:
            curve = tab.get((student, teachers, "student"), {})
            if not curve:
                continue
            means = {f: mean_std(v)[0] for f, v in curve.items()}
            head = min(means, key=lambda f: abs(f - HEADLINE_FRACTION))
            head_iv = t_interval(curve[head], bounds=SCORE_RANGE)
            reach = [f for f in sorted(means) if means[f] >= REACH * full]
            out.append({
                "student": student, "teachers": teachers, "full_fraction": full_frac, "full_uar": full,
                "headline_fraction": head, "headline_uar": means[head],
                "headline_ci": (head_iv.low, head_iv.high), "n": head_iv.n,
                "headline_share": means[head] / full if full > 0 else math.nan,
                "reaches_95": reach[0] if reach else None,
                "labels_only_at_headline": mean_std(base[head])[0] if head in base else None,
                "flags": sorted(flags.get((student, teachers, "student"), set()) | flags.get((student, "-", "baseline"), set())),
            })
    return out


def _pct(f: float) -> str:
    return f"{100 * f:g} %"


#: The headline column's name when rows read different fractions (each cell then says which).
NEAREST = f"the fraction nearest {100 * HEADLINE_FRACTION:g} %"


def headline_label(rows: Sequence[dict]) -> str:
    """The fraction the headline numbers are at, as the tables and figures name it: the one
    every row read (``25 %`` when the grid has no 10 %: never labelled as 10 % it is not), or
    :data:`NEAREST` when rows differ."""
    heads = sorted({e["headline_fraction"] for e in rows})
    return _pct(heads[0]) if len(heads) == 1 else (NEAREST if heads else _pct(HEADLINE_FRACTION))


def efficiency_markdown(rows: Sequence[dict]) -> str:
    from liser_tools.bench import flag_notes

    fulls = sorted({e["full_fraction"] for e in rows})
    full = full_label(fulls[0]) if len(fulls) == 1 else "largest fraction"
    head = headline_label(rows)
    what = ("the fully supervised student's UAR (the same student, labels only, at 100 % of the labels)"
            if full == "fully supervised" else
            f"the UAR of the same student trained on labels only at the grid's {full} -- the grid has no 100 % "
            "fraction, so this is NOT the fully supervised score")
    lines = [
        "# Label efficiency",
        "",
        f"UAR of the distilled student at {head} of the labels, as a share of {what}; and the "
        f"smallest labeled fraction at which the distilled student reaches {100 * REACH:g} % of it. Means over the "
        "repeat axes; flags (explained below the table) name runs whose scores are not comparable. `share` and "
        f"`reaches {100 * REACH:g} % at` are ratios of means, point estimates without an interval: read them with "
        "the intervals of the two means they divide (the leaderboard's rows; `comparisons.md` tests differences).",
        "",
        f"| student | teachers | {full} UAR | UAR at {head} [95 % CI] | n | share | labels only at {head} | reaches 95 % at | flags |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in rows:
        lines.append(
            f"| {e['student']} | {e['teachers']} | {e['full_uar']:.3f}"
            + (f" ({_pct(e['full_fraction'])})" if len(fulls) > 1 else "")
            + f" | {e['headline_uar']:.3f}{_ci_text(e.get('headline_ci'))}"
            + (f" (at {_pct(e['headline_fraction'])})" if head == NEAREST else "")
            + f" | {e.get('n', '-')} | {100 * e['headline_share']:.1f} % | "
            + (f"{e['labels_only_at_headline']:.3f}" if e["labels_only_at_headline"] is not None else "-")
            + f" | {_pct(e['reaches_95']) if e['reaches_95'] is not None else 'not reached'} | "
            + (" ".join(f"!{f}" for f in e.get("flags", [])) or "-") + " |"
        )
    small = min((e.get("n", 0) for e in rows), default=0)
    if rows and small < MIN_REPEATS:
        lines += ["", f"**n = {small}** in some rows: fewer than {MIN_REPEATS} repeats give no interval worth the name."]
    lines += flag_notes({f for e in rows for f in e.get("flags", [])})
    return "\n".join(lines) + "\n"


def _ci_text(ci) -> str:
    if not ci or ci[0] != ci[0]:
        return ""
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]"


# -- figures -----------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    _plt().close(fig)
    tmp.replace(path)


def curves(tab: Mapping, student: str, teacher_sets: Sequence[str], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))

    ns = set()

    def line(curve, label, **kw):
        xs = sorted(curve)
        ivs = [t_interval(curve[x], bounds=SCORE_RANGE) for x in xs]
        ns.update(iv.n for iv in ivs)
        m = [iv.mean for iv in ivs]
        lo = [iv.low if iv.low == iv.low else iv.mean for iv in ivs]  # n = 1: no band
        hi = [iv.high if iv.high == iv.high else iv.mean for iv in ivs]
        ax.plot(xs, m, marker="o", label=label, **kw)
        ax.fill_between(xs, lo, hi, alpha=0.15, **kw)

    for teachers in teacher_sets:
        if (student, teachers, "student") in tab:
            line(tab[(student, teachers, "student")], f"distilled ({teachers})")
    base = tab.get((student, "-", "baseline"))
    if base:
        line(base, "labels only", color="black", linestyle="--")
        full = mean_std(base[max(base)])[0]
        ax.axhline(full, color="grey", linestyle=":", label=f"{full_label(max(base))} ({full:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("labeled fraction of the training clips")
    ax.set_ylabel("test UAR")
    n_text = "/".join(str(n) for n in sorted(ns))
    ax.set_title(f"Label efficiency: {student}\n(lines: mean over n = {n_text} repeats; bands: 95 % t-interval of the mean)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def pareto_front(points: Sequence[dict], key: str) -> list[dict]:
    """The points no other point beats on both ``key`` (smaller is better: parameters, or the
    inverse of the real-time factor) and UAR (larger is better), ordered by ``key``."""
    better = (lambda a, b: a <= b) if key == "params" else (lambda a, b: a >= b)  # rtf: larger is faster
    front = [p for p in points if not any(
        q is not p and better(q[key], p[key]) and q["uar"] >= p["uar"] and (q[key] != p[key] or q["uar"] != p["uar"])
        for q in points)]
    return sorted(front, key=lambda p: p[key])


def _place_labels(ax, fig, items: Sequence[tuple[float, float, str]]) -> None:
    """Annotate points without overlapping labels: each label goes to the first of a few offsets
    around its point whose box (in pixels) meets no label placed before it."""
    renderer = fig.canvas.get_renderer()
    placed = []
    offsets = [(4, 4), (4, -10), (-4, 4), (-4, -10), (4, 14), (4, -20), (-4, 14), (-4, -20), (4, 24), (4, -30)]
    for x, y, text in sorted(items, key=lambda t: (-t[1], t[0])):
        for dx, dy in offsets:
            ann = ax.annotate(text, (x, y), fontsize=7, xytext=(dx, dy), textcoords="offset points",
                              ha="left" if dx > 0 else "right")
            box = ann.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
            ann.remove()
        else:  # nowhere free: the last try stays, drawn faintly
            ann = ax.annotate(text, (x, y), fontsize=6, xytext=offsets[-1], textcoords="offset points", alpha=0.6)
            placed.append(ann.get_window_extent(renderer))


def pareto(points: Sequence[dict], path: Path, quantized: Mapping[str, dict] | None = None,
           headline: str = _pct(HEADLINE_FRACTION)) -> None:
    """UAR against parameters and against CPU speed: every point, the Pareto front drawn as a
    line, labels placed so they do not overprint each other, readable log-axis ticks. With
    ``quantized`` (per student, its ``quantization.json`` record), a third panel: test UAR
    against the ONNX file size, float32 and int8 of the same run joined by a line."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plt = _plt()
    panels = 3 if quantized else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.6))
    if quantized:
        _quantized_panel(axes[2], fig, quantized)
    for ax, key, label in ((axes[0], "params", "student parameters (log)"),
                           (axes[1], "rtf", "CPU real-time factor (x real time, 1 thread, log)")):
        for kind, marker in (("distilled", "o"), ("full", "s")):
            ps = [p for p in points if p["kind"] == kind]
            ax.scatter([p[key] for p in ps], [p["uar"] for p in ps], marker=marker, s=28, zorder=3,
                       label="distilled" if kind == "distilled" else "labels only, largest fraction")
        front = pareto_front(points, key)
        ax.plot([p[key] for p in front], [p["uar"] for p in front], color="tab:red", lw=1.2, zorder=2,
                label="Pareto front")
        ax.set_xscale("log")
        # labels at 1, 2 and 5 x 10^k, written out: a range within one decade still gets some,
        # and they never collide (minor ticks unlabelled)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("test UAR")
        ax.margins(x=0.15, y=0.12)
        fig.canvas.draw()
        _place_labels(ax, fig, [(p[key], p["uar"], p["label"]) for p in points])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)  # off the data
    fig.suptitle(f"Size and speed against UAR (distilled at {headline} of the labels)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _save(fig, path)


def _quantized_panel(ax, fig, quantized: Mapping[str, dict]) -> None:
    """Test UAR against the ONNX file size, per student: its float32 and int8 models (one run:
    the student's first), joined by a line, the int8 speed-up in the label."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    items = []
    for i, (label, r) in enumerate(quantized.items()):
        f, q = r["float32"], r["int8"]
        xs, ys = [f["bytes"] / 1024, q["bytes"] / 1024], [f["uar"], q["uar"]]
        ax.plot(xs, ys, color="0.6", lw=0.8, zorder=1)
        ax.scatter(xs[:1], ys[:1], marker="o", facecolors="none", edgecolors=f"C{i}", s=36, zorder=3)
        ax.scatter(xs[1:], ys[1:], marker="^", color=f"C{i}", s=36, zorder=3)
        items.append((xs[1], ys[1], f"{label} int8 ({r['speedup']:.2f}x speed)"))
        items.append((xs[0], ys[0], f"{label} float32"))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("ONNX file size (KB, log): float32 (o) and int8 (^)")
    ax.set_ylabel("test UAR (one run per student)")
    ax.margins(x=0.25, y=0.15)
    fig.canvas.draw()
    _place_labels(ax, fig, items)


def measure_rtf(student_dir: Path, seconds: float = 4.0, repeats: int = 5) -> float:
    """The saved student's CPU real-time factor on one thread (median of ``repeats``)."""
    import torch

    from liser_core import Student
    from liser_tools.deploy import median_seconds

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = Student.from_pretrained(student_dir)
        x = 0.1 * torch.randn(1, int(seconds * model.sample_rate), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model(x)  # warm-up
            t = median_seconds(lambda: model(x), repeats)
    finally:
        torch.set_num_threads(threads)
    return seconds / t


# -- the page ------------------------------------------------------------------------------------------
def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _md_table_html(md: str) -> str:
    rows = [ln for ln in md.splitlines() if ln.startswith("|") and not set(ln) <= set("|-: ")]
    if not rows:
        return ""
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.replace('**', ''))}</td>" for c in r) + "</tr>" for r in cells[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _comparisons_html(out: Path) -> str:
    """``comparisons.md`` (written with the leaderboard) as a table and its explanation."""
    path = out / "comparisons.md"
    if not path.is_file():
        return "<p>(no comparisons.md)</p>"
    md = path.read_text()
    intro = next((ln for ln in md.splitlines() if ln.startswith("Test UAR")), "")
    return f"<p>{html.escape(intro.replace('**', ''))}</p>" + _md_table_html(md)


#: the notes under a board that must reach the page with its numbers: flags, an incomplete
#: grid, too few repeats, and the code the rows come from
_NOTES = ("**!", "**Incomplete", "**n = ", "Code: ", "Rows come from ")


def _notes_html(md: str) -> str:
    """The notes under a Markdown table (:data:`_NOTES`) as paragraphs."""
    return "".join(f"<p>{html.escape(ln.replace('**', '').replace('`', ''))}</p>"
                   for ln in md.splitlines() if ln.startswith(_NOTES))


def _confusion_html(csv_path: Path) -> str:
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    classes, counts = rows[0][1:], [[int(x) for x in r[1:]] for r in rows[1:]]
    top = max((max(r) for r in counts), default=1) or 1
    head = "<th>true \\ pred</th>" + "".join(f"<th>{html.escape(c[:4])}</th>" for c in classes)
    body = ""
    for c, r in zip(classes, counts):
        tds = "".join(f'<td style="background:rgba(31,119,180,{0.85 * v / top:.2f})">{v}</td>' for v in r)
        body += f"<tr><th>{html.escape(c)}</th>{tds}</tr>"
    return f'<table class="cm"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  var tables = document.querySelectorAll("table").length;
  document.body.setAttribute("data-rendered", "images " + ok + "/" + imgs.length + " tables " + tables);
});
</script>"""


def write_html(out: Path, title: str, figures: Sequence[tuple[Path, str]], sections: Sequence[tuple[str, str]],
               confusions: Sequence[tuple[str, str, Path | None]]) -> Path:
    """``report.html``: figures embedded as data URIs, tables, confusion matrices, run links."""
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}",
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}",
        "figure{display:inline-block;margin:0.5em}img{max-width:100%}.cm td{min-width:2.2em}",
        "details{margin:0.3em 0}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>Generated by <code>liser bench</code> on {time.strftime('%Y-%m-%d %H:%M')}."
        " WA = accuracy, UAR = UA = mean per-class recall; scores are on the test split.</p>",
        "<h2>Figures</h2>", *(_img(p, alt) for p, alt in figures),
    ]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    parts.append("<h2>Confusion matrices of the distilled students (rows: true class)</h2>")
    for combo, run_dir, cm in confusions:
        link = f'<a href="{html.escape(run_dir)}">run directory</a>'
        inner = _confusion_html(cm) if cm is not None and cm.is_file() else "<p>(no confusion matrix)</p>"
        parts.append(f"<details><summary>{html.escape(combo)} ({link})</summary>{inner}</details>")
    parts.append(_CHECK + "</body></html>")
    path = out / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    return path


def write_report(out: Path, title: str, rows: Sequence[Mapping[str, str]], roles: Mapping[str, str],
                 repeat: Sequence[str], axes: Mapping[str, Mapping[str, Any]], leaderboard_md: str,
                 more_flags=None) -> dict:
    """Every output of the module doc, in ``out``; returns the efficiency rows and the files."""
    tab = table(rows, roles, repeat)
    # the students as the table names them (with the grid's other axes), in the axis's order
    order = list(axes[roles["student"]])
    students = sorted({k[0] for k in tab}, key=lambda s: (order.index(s.split(" [")[0]) if s.split(" [")[0] in order
                                                             else len(order), s))
    teacher_sets = list(axes[roles["teachers"]])
    figures = []
    for student in students:
        if any(k[0] == student for k in tab):
            p = out / f"label_efficiency_{re.sub(r'[^A-Za-z0-9_.-]+', '_', student).strip('_')}.png"
            curves(tab, student, teacher_sets, p)
            figures.append((p, f"Label efficiency of {student}"))
    eff = efficiency(tab, students, teacher_sets, table_flags(rows, roles, repeat, more_flags))
    eff_md = efficiency_markdown(eff)
    # the board's "Incomplete" note goes with every table of its rows (a point of fewer repeats
    # showed n = 1 with no word of the failed or missing runs)
    if incomplete := [ln for ln in leaderboard_md.splitlines() if ln.startswith("**Incomplete")]:
        eff_md = eff_md.rstrip("\n") + "\n\n" + "\n".join(incomplete) + "\n"
    (out / "efficiency.md").write_text(eff_md)
    speeds = _speeds(out, rows, roles)
    points = []
    for e in eff:
        s = speeds.get(e["student"].split(" [")[0])
        if s is None:
            continue
        points.append({"label": f"{e['student']} ({e['teachers']})", "uar": e["headline_uar"], "kind": "distilled", **s})
    for student in students:
        s = speeds.get(student.split(" [")[0])
        base = tab.get((student, "-", "baseline"))
        if s is not None and base:
            full = "full" if max(base) >= 1.0 else _pct(max(base))
            points.append({"label": f"{student} ({full})", "uar": mean_std(base[max(base)])[0], "kind": "full", **s})
    quantized = _quantized(out, rows, roles)
    if points:
        pareto(points, out / "pareto.png", quantized, headline=headline_label(eff))
        figures.append((out / "pareto.png", "UAR against size and CPU speed" + (", float32 and int8" if quantized else "")))
    confusions = []
    seen = set()
    for r in rows:
        if r["model"] == "student" and r["combination"] not in seen:
            seen.add(r["combination"])
            run_dir = Path(r["run_dir"])
            rel = _relative(run_dir, out)
            flags = ",".join(sorted(_row_flags(r)))  # a flagged run's confusion says so, as its board row does
            confusions.append((r["combination"] + (f" !{flags}" if flags else ""), rel, run_dir / "confusion_student.csv"))
    speed_md = "| student | parameters | CPU real-time factor |\n|---|---|---|\n" + "".join(
        f"| {k} | {v['params']:,} | {v['rtf']:.0f}x |\n" for k, v in speeds.items()
    )
    if quantized:
        speed_md += "\n" + quantized_markdown(quantized)
        (out / "quantized.md").write_text(quantized_markdown(quantized))
    page = write_html(
        out, title, figures,
        [("Label efficiency", _md_table_html(eff_md) + _notes_html(eff_md)), ("Students: size and speed", _md_table_html(speed_md)),
         ("Leaderboard", _md_table_html(leaderboard_md) + _notes_html(leaderboard_md)),
         ("Paired comparisons (Holm-corrected)", _comparisons_html(out))],
        confusions,
    )
    return {"efficiency": eff, "figures": [str(p) for p, _ in figures], "html": str(page), "speeds": speeds,
            "quantized": quantized}


def quantized_markdown(quantized: Mapping[str, dict]) -> str:
    """Per student: float32 against int8 (onnxruntime static) test UAR, size and speed, from
    each student's ``quantization.json`` record (:mod:`liser_tools.quantize`)."""
    lines = ["| student | UAR float32 | UAR int8 | UAR drop (points) | size float32 | size int8 | int8/float32 size "
             "| int8 speed-up (1 thread) |", "|---|---|---|---|---|---|---|---|"]
    flagged: set[str] = set()
    for label, r in quantized.items():
        f, q = r["float32"], r["int8"]
        flags = sorted(set(r.get("flags") or []) | set(r.get("row_flags") or []))
        flagged.update(flags)
        mark = "".join(f" !{x}" for x in flags)
        lines.append(f"| {label}{mark} | {f.get('uar', float('nan')):.3f} | {q.get('uar', float('nan')):.3f} | "
                     f"{r.get('uar_drop_points', float('nan')):+.1f} | {f['bytes'] / 1024:,.0f} KB | "
                     f"{q['bytes'] / 1024:,.0f} KB | {r['size_ratio']:.2f}x | {r['speedup']:.2f}x |")
    text = "\n".join(lines) + ("\n\nint8: onnxruntime static quantization of each student's first run, calibrated on "
                               "its labeled and unlabeled clips, scored on its test split (`liser export --quantize "
                               "int8` gives the same per run).\n")
    if flagged:  # the run's flags beside the scores measured on it, explained as on the board
        from .bench import FLAG_NOTES

        text += "\nFlagged rows (their UARs are incomplete or NOT a fair estimate):\n\n" + "".join(
            f"- `!{x}`: {FLAG_NOTES.get(x, x)}\n" for x in sorted(flagged))
    return text


def _quantized(out: Path, rows: Sequence[Mapping[str, str]], roles: Mapping[str, str]) -> dict[str, dict]:
    """float32 against int8 per student label: the first run's ``student/quantization.json``, or
    measured now (cached in ``quantized.json``); empty without onnxruntime."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return {}
    import tempfile

    from liser_core.card import quantization_record
    from liser_core.errors import UsageError
    from liser_core.export import weights_digest

    from .deploy import export
    from .quantize import quantize_student

    cache_path = out / "quantized.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (FileNotFoundError, ValueError):
        cache = {}
    result: dict[str, dict] = {}
    for r in rows:
        if r["model"] != "student":
            continue
        label = parse_combination(r["combination"])[roles["student"]]
        student_dir = Path(r["run_dir"]) / "student"
        if label in result or not (student_dir / "config.json").is_file():
            continue
        row_flags = [f for f in (r.get("flags") or "").split(",") if f]  # the run's row: its flags travel along
        if (record := quantization_record(student_dir)) is not None:  # measured on these very weights
            result[label] = {**record, "row_flags": row_flags}
            continue
        if cache.get(str(student_dir), {}).get("weights_sha256") != weights_digest(student_dir):  # none, or other weights
            cache.pop(str(student_dir), None)
        if str(student_dir) not in cache:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    export(student_dir, Path(tmp) / "s.onnx")
                    cache[str(student_dir)] = quantize_student(student_dir, Path(tmp) / "s.onnx",
                                                               Path(tmp) / "s.int8.onnx", record=False, repeats=10)
            except UsageError as exc:  # said, not silently left out
                import logging

                logging.getLogger(__name__).warning("int8 of %s: %s", label, exc)
                continue
        result[label] = {**cache[str(student_dir)], "row_flags": row_flags}
    cache_path.write_text(json.dumps(cache, indent=2))
    return result


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return path.resolve().as_uri()


def _speeds(out: Path, rows: Sequence[Mapping[str, str]], roles: Mapping[str, str]) -> dict[str, dict]:
    """Parameters and measured CPU real-time factor per student label (cached in
    ``student_speed.json``, keyed by the saved student's config)."""
    cache_path = out / "student_speed.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (FileNotFoundError, ValueError):
        cache = {}
    out_d: dict[str, dict] = {}
    for r in rows:
        if r["model"] != "student":
            continue
        label = parse_combination(r["combination"])[roles["student"]]
        if label in out_d:
            continue
        student_dir = Path(r["run_dir"]) / "student"
        cfg_file = student_dir / "config.json"
        if not cfg_file.is_file():
            continue
        cfg = json.loads(cfg_file.read_text())
        key = json.dumps({"name": cfg.get("name"), "options": cfg.get("options")}, sort_keys=True)
        if key not in cache:
            cache[key] = {"params": int(r["num_parameters"]), "rtf": measure_rtf(student_dir)}
        out_d[label] = cache[key]
    buf = io.StringIO()
    json.dump(cache, buf, indent=2)
    cache_path.write_text(buf.getvalue())
    return out_d

"""A grid's numbers as a reader needs them: each mean with its interval and n, identical rows
shown once, which rows differ from the best, and paired comparisons (``comparisons.md``).

Every statistic comes from :mod:`liser_common.stats` (scipy, statsmodels). Repeats are the unit:
two rows are compared *paired* over the repeat labels (seeds, folds) they share, since the same
seed or fold draws the same corpus split for both. A family of comparisons is corrected with
Holm's method, and the table says so.

* :func:`board_entries` -- the leaderboard's rows: mean, 95 % t-interval and n per (combination
  without the repeat axes, model); a teacher or the teachers' targets scored identically in
  several combinations (the same teacher set and fit: the student or label fraction does not
  change them: the same ``teacher_identity`` in every repeat where rows record it) is one row, its
  combination written with ``*`` for the axes it does not depend on;
  each row's paired test against the best row (Holm-corrected over the board).
* :func:`comparisons` -- distilled against labels-only for every combination; and for every axis
  that is not repeated (teacher sets, students, losses ...), each pair of its labels with the
  other axes held fixed, on the distilled student's UAR.
* :func:`power_lines` -- from the observed spread of paired differences, how many repeats a
  difference of 0.02 and 0.05 UAR needs (80 % power, two-sided 5 %).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from liser_common.stats import (
    CONFIDENCE,
    MIN_REPEATS,
    SCORE_RANGE,
    holm,
    paired_comparison,
    repeats_needed,
    t_interval,
)

METRICS = ("uar", "accuracy", "macro_f1")
ALPHA = 0.05
#: Differences of UAR a power line is given for.
DELTAS = (0.02, 0.05)


def _parts(combination: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in combination.split(",") if "=" in p)


def _split(combination: str, repeat: Sequence[str]) -> tuple[str, str]:
    """``(the combination without the repeat axes, the repeat labels)``."""
    parts = _parts(combination)
    fixed = ",".join(f"{a}={v}" for a, v in parts.items() if a not in repeat)
    rep = ",".join(f"{a}={parts[a]}" for a in repeat if a in parts)
    return fixed, rep


def _flags(rs: Sequence[Mapping[str, str]]) -> set[str]:
    return {f for r in rs for f in (r.get("flags") or "").split(",") if f}


def board_entries(rows: Sequence[Mapping[str, str]], repeat: Sequence[str],
                  more_flags: Callable[[list[Mapping[str, str]]], set[str]] | None = None) -> list[dict[str, Any]]:
    """The leaderboard's rows, best UAR first (see the module docstring). ``more_flags``: flags
    of a row's runs taken together that no single row carries (``folds_incomplete``)."""
    from liser_common.provenance import code_identity

    groups: dict[tuple[str, str], dict[str, Mapping[str, str]]] = defaultdict(dict)
    for r in rows:
        fixed, rep = _split(r["combination"], repeat)
        groups[(fixed, r["model"])].setdefault(rep, r)
    # teachers and targets: one row for every group with the very same scores on every repeat
    merged: dict[tuple, list[tuple[str, str]]] = defaultdict(list)
    order: list[tuple] = []
    for (fixed, model), reps in groups.items():
        if model == "targets" or model.startswith("teacher:"):  # flags and size too: a flagged row never hides
            # the same teacher too, in every repeat, where rows record its identity (results.csv's teacher_identity)
            sig = (model, next(iter(reps.values())).get("components", ""),
                   tuple(sorted((rep, *(r[k] for k in METRICS), r.get("num_parameters", ""), r.get("teacher_identity") or "",
                                 tuple(sorted(_flags([r])))) for rep, r in reps.items())))
        else:
            sig = (fixed, model)
        if sig not in merged:
            order.append(sig)
        merged[sig].append((fixed, model))
    out = []
    for sig in order:
        members = merged[sig]
        fixed, model = members[0]
        reps = groups[(fixed, model)]
        rs = list(reps.values())
        every = [r for m in members for r in groups[m].values()]  # the merged combinations' rows, all of them
        flags = _flags(every)
        if len({code_identity(r.get("code") or "") for r in every}) > 1:
            flags.add("mixed_code")
        if more_flags is not None:
            flags |= more_flags(rs)
        entry: dict[str, Any] = {
            "combination": _merge_label([m[0] for m in members]) or "(all)", "model": model,
            "components": rs[0].get("components", ""), "n": len(rs), "repeats": list(reps),
            "num_parameters": int(rs[0].get("num_parameters") or 0), "flags": sorted(flags),
            "same_in": len(members), "values": {rep: float(r["uar"]) for rep, r in reps.items()},
        }
        for k in METRICS:
            iv = t_interval((float(r[k]) for r in rs), bounds=SCORE_RANGE)
            entry[k] = (iv.mean, iv.std if iv.n > 1 else 0.0)
            entry[f"{k}_ci"] = (iv.low, iv.high)
        out.append(entry)
    out.sort(key=lambda e: -e["uar"][0])
    _against_best(out)
    return out


def _merge_label(fixed: Sequence[str]) -> str:
    """Combinations merged into one row: each axis's label where they agree, ``*`` elsewhere."""
    if len(fixed) == 1:
        return fixed[0]
    parts = [_parts(f) for f in fixed]
    axes = list(dict.fromkeys(a for p in parts for a in p))
    return ",".join(f"{a}={parts[0].get(a)}" if len({p.get(a) for p in parts}) == 1 else f"{a}=*" for a in axes)


def _against_best(entries: list[dict[str, Any]]) -> None:
    """Each entry's paired t-test against the best one (over their shared repeats), Holm-corrected
    over the board: ``vs_best`` (the comparison) and ``below_best`` (significantly worse). The
    best is the best row without flags (``reference``): a row whose scores are flagged (a leaked
    teacher, an incomplete test split) is no yardstick; the best row when every row is flagged."""
    if not entries:
        return
    best = next((e for e in entries if not e["flags"]), entries[0])
    best["reference"] = True
    tests, idx = [], []
    for i, e in enumerate(entries):
        if e is best:
            continue
        shared = [r for r in best["values"] if r in e["values"]]
        if len(shared) >= 2:
            c = paired_comparison([e["values"][r] for r in shared], [best["values"][r] for r in shared])
            e["vs_best"] = c.to_dict()
            tests.append(c.t_p)
            idx.append(i)
    for i, p in zip(idx, holm(tests)):
        entries[i]["vs_best"]["holm_p"] = p
        entries[i]["below_best"] = bool(p == p and p < ALPHA and entries[i]["vs_best"]["mean_diff"] < 0)


def board_cell(entry: Mapping[str, Any], metric: str) -> str:
    """``0.530 ± 0.030 [0.455, 0.605]``; ``0.530 (one run)`` with n = 1 (no spread to state)."""
    mean, std = entry[metric]
    low, high = entry.get(f"{metric}_ci", (math.nan, math.nan))
    if low != low:
        return f"{mean:.3f} (one run)"
    return f"{mean:.3f} ± {std:.3f} [{low:.3f}, {high:.3f}]"


def comparisons(
    rows: Sequence[Mapping[str, str]], repeat: Sequence[str], skip_axes: Sequence[str] = (),
    more_flags: Callable[[list[Mapping[str, str]]], set[str]] | None = None,
) -> list[dict[str, Any]]:
    """Paired comparisons of a grid (UAR), Holm-corrected over the whole family.

    * ``distilled vs labels only``: the student against the baseline of the same runs;
    * for each axis not in ``repeat`` or ``skip_axes`` (e.g. the label fraction, whose effect is
      not in question) with two or more labels: every pair of its labels, the other axes fixed,
      on the distilled student."""
    from liser_common.provenance import code_identity

    by: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    rows_of: dict[tuple[str, str], dict[str, Mapping[str, str]]] = defaultdict(dict)
    axes: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        fixed, rep = _split(r["combination"], repeat)
        by[(fixed, r["model"])][rep] = float(r["uar"])
        rows_of[(fixed, r["model"])][rep] = r
        for a, v in _parts(fixed).items():
            if v not in axes[a]:
                axes[a].append(v)
    out: list[dict[str, Any]] = []

    def add(kind: str, what: str, ka: tuple[str, str], kb: tuple[str, str]) -> None:
        a, b = by[ka], by[kb]
        shared = [r for r in a if r in b]
        if len(shared) < 2:
            return
        c = paired_comparison([a[r] for r in shared], [b[r] for r in shared])
        used = [rows_of[k][r] for k in (ka, kb) for r in shared]  # the rows the comparison is made of
        flags = _flags(used)
        if len({code_identity(r.get("code") or "") for r in used}) > 1:
            flags.add("mixed_code")
        if more_flags is not None:
            for k in (ka, kb):
                flags |= more_flags([rows_of[k][r] for r in shared])
        out.append({"kind": kind, "comparison": what, "flags": sorted(flags), **c.to_dict()})

    for (fixed, model) in list(by):
        if model == "student" and (fixed, "baseline") in by:
            add("distilled vs labels only", f"{fixed or '(all)'}: student - baseline", (fixed, model), (fixed, "baseline"))
    for axis, labels in axes.items():
        if axis in skip_axes or len(labels) < 2:
            continue
        rest = sorted({",".join(f"{k}={v}" for k, v in _parts(f).items() if k != axis)
                       for (f, m) in by if m == "student" and axis in _parts(f)})
        for context in rest:
            for x, y in itertools.combinations(labels, 2):
                fx = _with(context, axis, x, by)
                fy = _with(context, axis, y, by)
                if fx and fy:
                    add(f"{axis}: {x} vs {y}", f"{context or '(all)'}: {axis}={x} - {axis}={y} (student)",
                        (fx, "student"), (fy, "student"))
    for c, p in zip(out, holm([c["t_p"] for c in out])):
        c["holm_p"] = p
        c["significant"] = bool(p == p and p < ALPHA)
    return out


def _with(context: str, axis: str, label: str, by: Mapping[tuple[str, str], Any]) -> str | None:
    """The fixed combination with ``axis=label`` inserted into ``context`` (axis order as in the
    grid's rows), if the grid has it for the student."""
    want = {**_parts(context), axis: label}
    for f, m in by:
        if m == "student" and _parts(f) == want:
            return f
    return None


def comparisons_markdown(comps: Sequence[Mapping[str, Any]], title: str) -> str:
    lines = [
        f"# Paired comparisons: {title}",
        "",
        f"Test UAR, A - B, paired over the repeats both were run with (the same seed or fold). Mean "
        f"difference with its {int(CONFIDENCE * 100)} % t-interval; two-sided paired t-test and, with "
        f"6 or more pairs, the Wilcoxon signed-rank test; p-values corrected for the {len(comps)} "
        f"comparisons of this table by Holm's method. **significant**: Holm p < {ALPHA}.",
        "",
        "| comparison | n | A - B [95 % CI] | paired t p | Wilcoxon p | Holm p | |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in sorted(comps, key=lambda c: (c["kind"], c["comparison"])):
        ci = f"{c['mean_diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]" if c["low"] == c["low"] else f"{c['mean_diff']:+.3f}"
        wil = "-" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.3g}"
        mark = "**significant**" if c["significant"] else ""
        what = c["comparison"] + (f" **!{','.join(c['flags'])}**" if c.get("flags") else "")
        lines.append(f"| {what} | {c['n']} | {ci} | {_p(c['t_p'])} | {wil} | {_p(c['holm_p'])} | {mark} |")
    if not comps:
        lines.append("| (no pair of rows shares two or more repeats) | | | | | | |")
    flags = {f for c in comps for f in c.get("flags", [])}
    if flags:  # what each flag means: the board's notes (liser_tools.bench.FLAG_NOTES)
        from liser_tools.bench import flag_notes

        lines += flag_notes(flags)
    small = sorted({c["n"] for c in comps if c["n"] < MIN_REPEATS})
    if small:
        lines += ["", f"**n below {MIN_REPEATS}** in some rows: with so few repeats a paired test has almost "
                  "no power; a difference it does not mark is not shown to be absent."]
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return "n/a" if p != p else f"{p:.3g}"


def power_lines(comps: Sequence[Mapping[str, Any]]) -> list[str]:
    """How many repeats a difference needs, from the median spread of the observed paired
    differences (their sample std over repeats)."""
    sds = sorted(c["sd_diff"] for c in comps if c.get("sd_diff") == c.get("sd_diff") and c["n"] >= 2)
    if not sds:
        return []
    sd = sds[len(sds) // 2]
    need = {d: repeats_needed(sd, d) for d in DELTAS}
    return [
        f"Repeats needed (80 % power, two-sided 5 %, paired t-test), from the median spread of the "
        f"paired differences observed here (sd {sd:.3f} UAR over {len(sds)} comparisons): "
        + "; ".join(f"{need[d]} to detect {d:.2f} UAR" for d in DELTAS) + "."
    ]

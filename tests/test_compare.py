"""liser_tools.compare: a readable board, paired comparisons with Holm's correction, power."""

from __future__ import annotations

import pytest
from scipy import stats as st

from liser_common.stats import holm
from liser_tools.compare import board_entries, comparisons, comparisons_markdown, power_lines

SEEDS = range(6)
# per seed: the best student, one far below it, one inside its noise; the baseline lower still
BEST = [0.60, 0.62, 0.58, 0.61, 0.63, 0.59]
FAR = [0.40, 0.43, 0.41, 0.38, 0.42, 0.40]
NEAR = [0.61, 0.60, 0.59, 0.62, 0.61, 0.60]
BASE = [0.30, 0.32, 0.29, 0.31, 0.33, 0.30]
TEACHER = [0.70, 0.71, 0.69, 0.72, 0.70, 0.71]


def _rows():
    rows = []
    for student, values in (("a", BEST), ("b", FAR), ("c", NEAR)):
        for s in SEEDS:
            combo = f"student={student},seed={s}"
            for model, uar in (("student", values[s]), ("baseline", BASE[s]), ("teacher:t", TEACHER[s])):
                rows.append({"combination": combo, "model": model, "uar": str(uar), "accuracy": str(uar),
                             "macro_f1": str(uar), "components": model, "num_parameters": "10", "flags": "", "code": "x"})
    return rows


def test_a_teacher_scored_the_same_for_every_student_is_one_row():
    entries = board_entries(_rows(), ["seed"])
    teacher = [e for e in entries if e["model"] == "teacher:t"]
    assert len(teacher) == 1 and teacher[0]["combination"] == "student=*" and teacher[0]["same_in"] == 3
    assert len([e for e in entries if e["model"] == "student"]) == 3
    # the baseline differs per student in a real grid; here it is identical too but is a student
    # model, so it is never merged (only teachers and targets are)
    assert len([e for e in entries if e["model"] == "baseline"]) == 3


def test_rows_significantly_below_the_best_are_marked_and_noise_is_not():
    entries = board_entries(_rows(), ["seed"])
    by = {(e["combination"], e["model"]): e for e in entries}
    assert entries[0]["model"] == "teacher:t"  # best UAR first
    far, near = by[("student=b", "student")], by[("student=c", "student")]
    assert far["below_best"] and far["n"] == 6
    assert near["uar_ci"][0] < near["uar"][0] < near["uar_ci"][1]  # its interval holds its mean
    low, high = far["uar_ci"]
    assert low < sum(FAR) / 6 < high
    # every row compared with the best, Holm over the board: recompute by hand from scipy
    others = [e for e in entries[1:] if "vs_best" in e]
    raw = [st.ttest_rel([e["values"][r] for r in e["values"]], [entries[0]["values"][r] for r in e["values"]]).pvalue
           for e in others]
    assert [e["vs_best"]["holm_p"] for e in others] == pytest.approx(holm(raw))
    # against the best *student*, c is inside the noise: no mark between them
    students = board_entries([r for r in _rows() if r["model"] == "student" and "student=b" not in r["combination"]], ["seed"])
    assert not any(e.get("below_best") for e in students)


def test_the_reference_row_is_the_best_without_flags_and_rounding_is_no_spread():
    """A flagged row (here the teacher, flagged test_overlap) is no yardstick: ▼ is judged against
    the best unflagged row (◆). Differences that are one count of clips on every repeat, read
    back rounded (0.321428 and 0.321429), have no spread: no p-value, no ▼."""
    rows = [dict(r, flags="test_overlap") if r["model"] == "teacher:t" else r for r in _rows()]
    entries = board_entries(rows, ["seed"])
    ref = next(e for e in entries if e.get("reference"))
    assert ref is next(e for e in entries if not e["flags"]) and entries[0]["flags"] == ["test_overlap"]
    assert ref["model"] == "student" and ref["combination"] in ("student=a", "student=c")  # a and c tie at 0.605
    assert "vs_best" in entries[0] and not entries[0].get("below_best")  # compared, above it
    exact = []
    for s, (hi, lo) in enumerate(((12 / 28, 3 / 28), (14 / 28, 5 / 28))):
        for student, uar in (("a", hi), ("b", lo)):
            exact.append({"combination": f"student={student},seed={s}", "model": "student", "uar": f"{uar:.6f}",
                          "accuracy": "0.5", "macro_f1": "0.5", "components": "s", "num_parameters": "10", "flags": "",
                          "code": "x"})
    b = next(e for e in board_entries(exact, ["seed"]) if e["combination"] == "student=b")
    assert b["vs_best"]["t_p"] != b["vs_best"]["t_p"] and not b.get("below_best")  # NaN: undefined, not 1e-6


def test_comparisons_pair_over_seeds_and_correct_for_the_family():
    comps = comparisons(_rows(), ["seed"])
    kinds = {c["kind"] for c in comps}
    assert kinds == {"distilled vs labels only", "student: a vs b", "student: a vs c", "student: b vs c"}
    ab = next(c for c in comps if c["kind"] == "student: a vs b")
    assert ab["n"] == 6 and ab["mean_diff"] == pytest.approx(sum(BEST) / 6 - sum(FAR) / 6)
    assert ab["t_p"] == pytest.approx(st.ttest_rel(BEST, FAR).pvalue)
    assert [c["holm_p"] for c in comps] == pytest.approx(holm([c["t_p"] for c in comps]))
    ac = next(c for c in comps if c["kind"] == "student: a vs c")
    assert ab["significant"] and not ac["significant"]  # a difference inside the noise is not marked
    text = comparisons_markdown(comps, "g")
    assert "corrected for the 6 comparisons of this table by Holm's method" in text
    assert "| (all): student=a - student=b (student) | 6 | +0.198 [" in text and "**significant** |" in text
    assert power_lines(comps) and "to detect 0.05 UAR" in power_lines(comps)[0]


def test_few_repeats_are_said():
    rows = [r for r in _rows() if r["combination"].endswith(("seed=0", "seed=1"))]
    text = comparisons_markdown(comparisons(rows, ["seed"]), "g")
    assert "**n below 3**" in text


def test_teacher_rows_merge_only_when_they_are_the_same_teacher():
    """Equal scores are not enough: rows that record the teacher's identity (results.csv's
    teacher_identity: the fingerprint of the teacher that scored the test split, or its fit key)
    merge only when it is the same teacher in every repeat; rows without one merge as before."""
    rows = _rows()
    for r in rows:
        if r["model"] == "teacher:t":
            seed = r["combination"].rpartition("=")[2]
            r["teacher_identity"] = f"outputs:{seed}" + ("-other" if r["combination"].startswith("student=b") else "")
    teacher = [e for e in board_entries(rows, ["seed"]) if e["model"] == "teacher:t"]
    assert sorted((e["combination"], e["same_in"]) for e in teacher) == [("student=*", 2), ("student=b", 1)]
    for r in rows:
        r["teacher_identity"] = r["teacher_identity"].replace("-other", "") if r["model"] == "teacher:t" else ""
    teacher = [e for e in board_entries(rows, ["seed"]) if e["model"] == "teacher:t"]
    assert [(e["combination"], e["same_in"]) for e in teacher] == [("student=*", 3)]


def test_flags_reach_merged_rows_and_comparisons():
    """A flag on any row a table shows reaches it: a flagged teacher row is never merged into an
    unflagged one of the same scores, a merged row carries every member's flags, and a paired
    comparison built on a flagged row shows the flag with its note; rows of two code versions
    in one comparison are mixed_code."""
    rows = _rows()
    for r in rows:
        if r["combination"].startswith("student=b") and r["model"] == "teacher:t":
            r["flags"] = "unverified_teacher"  # same scores as the other students' teacher rows
        if r["combination"] == "student=c,seed=0" and r["model"] == "student":
            r["flags"], r["code"] = "test_overlap", "y"
    teacher = [e for e in board_entries(rows, ["seed"]) if e["model"] == "teacher:t"]
    assert sorted((e["combination"], tuple(e["flags"])) for e in teacher) == [
        ("student=*", ()), ("student=b", ("unverified_teacher",))]
    assert sum(e["same_in"] for e in teacher) == 3
    comps = {c["comparison"]: c for c in comparisons(rows, ["seed"])}
    assert comps["student=c: student - baseline"]["flags"] == ["mixed_code", "test_overlap"]
    assert comps["student=a: student - baseline"]["flags"] == []
    assert comps["(all): student=a - student=c (student)"]["flags"] == ["mixed_code", "test_overlap"]
    text = comparisons_markdown(list(comps.values()), "g")
    assert "student=c: student - baseline **!mixed_code,test_overlap**" in text and "**!test_overlap**:" in text


def test_one_run_states_no_spread():
    """With n = 1 there is no standard deviation to state (it was printed as ± 0.000)."""
    from liser_tools.compare import board_cell

    (entry,) = board_entries([r for r in _rows() if r["model"] == "student" and r["combination"] == "student=a,seed=0"],
                             ["seed"])
    assert entry["n"] == 1 and board_cell(entry, "uar") == "0.600 (one run)"

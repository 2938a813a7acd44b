"""``liser summarize RUN_DIR...``: per-run scores and mean ± std with a 95 % t-interval over the
runs of one recipe, n always shown (a warning below 3), and the student against the baseline
and each teacher, paired over the same runs (``liser_common.stats``).

Runs are averaged only with runs of the same resolved recipe, less the axes being averaged
(``--over``: ``seed`` and ``data.options.fold`` by default) and the keys that do not change
results (run_dir, threads, device, loggers, name, store). Runs of different recipes are
different groups, one summary each, labelled by the keys where they differ; runs that failed
or have no metrics are listed as skipped, never averaged, and never stop the others. Every
run's flags (``liser_core.guards.FLAGS``) are shown next to its scores and under its group.

Each group's confusion matrices are pooled over its runs (summed counts of every run's
``confusion_<model>.csv``): ``--confusion`` prints them with the WA and UAR of the pooled
counts, as SER papers report cross-validation results; ``--json`` always holds them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from liser_common import typedyaml
from liser_common.metrics import summarise
from liser_common.provenance import (
    RESULT_FREE_KEYS,
    code_identity,
    code_string,
    diff_keys,
    recipe_view,
)
from liser_common.rundir import (
    changed_since_written,
    edited_message,
    first_party_plugins,
    recipe_edits,
    safe_name,
)
from liser_common.stats import MIN_REPEATS, SCORE_RANGE, paired_comparison, t_interval
from liser_core.errors import UsageError
from liser_core.guards import describe_flags, fold_coverage

KEYS = ("accuracy", "uar", "macro_f1")
DEFAULT_OVER = ("seed", "data.options.fold")


def add_parser(sub, plugin_args) -> None:
    p = sub.add_parser(
        "summarize",
        help="mean ± std of several runs (folds, seeds) of one recipe, from their metrics.json",
        description="Per-run test scores of every model and their mean ± sample std over the runs of each "
        "recipe: runs whose resolved recipes differ (other than in the --over keys) are summarised apart.",
        epilog="example: for f in 1 2 3 4 5 6; do liser run recipes/ravdess_kd.yaml data.options.fold=$f "
        "run_dir=runs/rav_f$f; done; liser summarize runs/rav_f*",
    )
    p.add_argument("runs", nargs="+", help="run directories (each with metrics.json)")
    p.add_argument(
        "--over", default=",".join(DEFAULT_OVER), metavar="KEYS",
        help="comma-separated recipe keys averaged over (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--confusion", action="store_true",
        help="print each model's confusion matrix pooled over the runs of a group (summed counts), "
        "with the WA and UAR of the pooled counts",
    )


#: Warnings of runs recorded before their condition was a flag, and the flag each stands for.
_LEGACY_FLAGS = (
    ("split incomplete:", "test_incomplete"),
    ("results are NOT speaker-independent", "not_speaker_independent"),
    ("clips could not be used (bad clips", "bad_test_clips"),
)


def _confusion(path: Path) -> tuple[list[str], list[list[int]]] | None:
    """A ``confusion_<model>.csv`` (rows = true class): its classes and counts, or None."""
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
        classes = rows[0][1:]
        matrix = [[int(x) for x in r[1:]] for r in rows[1:]]
    except (OSError, ValueError, IndexError):
        return None
    if len(matrix) != len(classes) or any(len(r) != len(classes) for r in matrix):
        return None
    return classes, matrix


def pooled(confusions: Sequence[tuple[list[str], list[list[int]]]]) -> dict[str, Any] | None:
    """The counts of confusion matrices over the same classes summed, and the WA (trace over
    total) and UAR (mean over the classes with clips of their row's recall) of the sum."""
    if not confusions or any(c[0] != confusions[0][0] for c in confusions):
        return None
    classes = confusions[0][0]
    k = len(classes)
    matrix = [[sum(c[1][i][j] for c in confusions) for j in range(k)] for i in range(k)]
    total = sum(map(sum, matrix))
    recalls = [matrix[i][i] / sum(matrix[i]) for i in range(k) if sum(matrix[i])]
    return {
        "classes": classes, "matrix": matrix, "runs": len(confusions), "num_clips": total,
        "accuracy": sum(matrix[i][i] for i in range(k)) / total if total else float("nan"),
        "uar": sum(recalls) / len(recalls) if recalls else float("nan"),
    }


def load_run(path: Path) -> dict[str, Any]:
    """One run directory: status, scores per model, resolved recipe; ``skipped`` says why not."""
    f = path / "metrics.json"
    out: dict[str, Any] = {"run": str(path), "models": {}, "config": None, "flags": [], "skipped": ""}
    if not f.is_file():
        out["skipped"] = "no metrics.json (not a finished run directory)"
        return out
    if changed_since_written(path, "metrics.json"):
        out["skipped"] = ("metrics.json was changed since the run wrote it (.liser-written.json records another "
                          "SHA-256): its scores are not the run's")
        return out
    try:
        m = json.loads(f.read_text())
    except (ValueError, OSError) as exc:
        out["skipped"] = f"metrics.json unreadable ({exc})"
        return out
    cfg_file = path / "config.yaml"
    cfg = typedyaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else None
    models = {}
    for role in ("student", "baseline", "targets"):
        if m.get(role):
            models[role] = m[role]
    for name, t in (m.get("teachers") or {}).items():
        models[f"teacher:{name}"] = t
    opts = ((cfg or {}).get("data") or {}).get("options") or {}
    flags = list(m.get("flags") or [])
    for w in m.get("warnings") or []:  # runs recorded before these conditions were flags
        flags += [f for text, f in _LEGACY_FLAGS if text in w and f not in flags]
    confusion = {}
    for name in models:
        c = _confusion(path / f"confusion_{safe_name(name.removeprefix('teacher:'), 'model')}.csv")
        if c is not None:
            confusion[name] = c
    out.update(
        status=m.get("status"), corpus=m.get("corpus"), split=m.get("split"), seed=(cfg or {}).get("seed"),
        fold=opts.get("fold") if opts.get("fold") is not None else ((m.get("protocol") or {}).get("fold")
                                                                   if isinstance(m.get("protocol"), dict) else None),
        models=models, config=cfg, flags=flags,
        warnings=list(m.get("warnings") or []), confusion=confusion,
        code=code_string(m["code"]) if isinstance(m.get("code"), dict) and m["code"] else "",
        inputs=_recorded_inputs(path), protocol=m.get("protocol") if isinstance(m.get("protocol"), dict) else None,
    )
    if m.get("status") != "completed":
        out["skipped"] = f"status {m.get('status')!r}" + (f": {m['error']}" if m.get("error") else "")
    elif not models:
        out["skipped"] = "no model was evaluated"
    elif (edited := recipe_edits(path, cfg)):
        out["skipped"] = edited_message(path, edited)
    return out


def _bare_first_party(cfg: Any) -> Any:
    """The recipe with first-party components named bare (``losses:kl`` -> ``kl``), as a
    fingerprint names them: runs recorded before names were qualified group with newer ones."""
    from omegaconf import OmegaConf

    from liser_core.config import _rename, component_sites

    try:
        node = OmegaConf.create(cfg)
        ours = first_party_plugins()
        for key, _kind, name in component_sites(node):
            plugin, sep, bare = name.rpartition(":")
            if sep and plugin in ours:
                _rename(node, key, bare)
        return OmegaConf.to_container(node)
    except Exception:  # a partial or foreign config.yaml: grouped as it is
        return cfg


def _run_identity(path: Path) -> str:
    """A run's own identity, the same in a copy of its folder: its claim marker (written once,
    when the run started) and its metrics; "" when it has no marker (older runs)."""
    import hashlib

    try:
        marker = (path / "liser-run.json").read_bytes()
        metrics = (path / "metrics.json").read_bytes()
    except OSError:
        return ""
    return hashlib.sha256(marker + b"\0" + metrics).hexdigest()


def _recorded_inputs(path: Path) -> dict:
    """The content digests of the files the run's recipe named by path, as it recorded them
    (``state/run.json``'s ``inputs``: teacher checkpoints); {} for older runs."""
    try:
        inputs = json.loads((path / "state" / "run.json").read_text()).get("inputs")
    except (OSError, ValueError, AttributeError):
        return {}
    return inputs if isinstance(inputs, dict) else {}


def _over_keys(cfg: Any, over: Sequence[str]) -> list[str]:
    """``over`` as keys of this run's recipe: a cross-corpus run's fold is its parts' (the test
    corpus's fold and any part built from the same corpus), ``data.options.parts.<role>.options.fold``."""
    keys = list(over)
    data = (cfg or {}).get("data") if isinstance(cfg, dict) else None
    parts = ((data or {}).get("options") or {}).get("parts") if isinstance(data, dict) else None
    if "data.options.fold" in over and isinstance(parts, dict) and isinstance(parts.get("test"), dict):

        def corpus(part: Any) -> Any:  # a part's corpus: its name and options but the fold
            opts = part.get("options") if isinstance(part.get("options"), dict) else {}
            return [part.get("name"), {k: v for k, v in opts.items() if k != "fold"}]

        test = corpus(parts["test"])  # the test corpus's fold, and that of parts built from the same corpus
        keys += [f"data.options.parts.{role}.options.fold" for role in sorted(parts, key=str)
                 if isinstance(parts[role], dict) and isinstance(parts[role].get("options"), dict)
                 and "fold" in parts[role]["options"] and corpus(parts[role]) == test]
    return keys


def _group_recipe(r: dict, over: Sequence[str]) -> dict | None:
    """What a run is grouped by: its recipe less ``over`` and the result-free keys, with the
    contents of the files it named by path."""
    from liser_core.config import RecipeConfig

    over = _over_keys(r["config"], over)

    recipe = (recipe_view(_bare_first_party(r["config"]), (*RESULT_FREE_KEYS, *over), RecipeConfig)
              if r["config"] is not None else None)
    if recipe is not None and r.get("inputs"):  # the same path with other contents is another recipe
        recipe["inputs"] = {k: v[:12] for k, v in r["inputs"].items()}
    return recipe


def repeats_of_one_run(runs: Sequence[dict], over: Sequence[str]) -> dict[str, str]:
    """Runs of one recipe with the same values of ``over`` (seed and fold) as an earlier one:
    the same experiment run again, not another sample of it (counted once: their scores would
    shrink the interval). Run -> the run it repeats."""
    first: dict[str, str] = {}
    out = {}
    for r in runs:
        key = json.dumps([_group_recipe(r, over), [_get(r["config"] or {}, k) for k in _over_keys(r["config"], over)]],
                         sort_keys=True, default=str)
        if key in first:
            out[r["run"]] = first[key]
        else:
            first[key] = r["run"]
    return out


def group_runs(runs: Sequence[dict], over: Sequence[str]) -> list[dict]:
    """Runs grouped by their recipe less ``over`` and the result-free keys, in first-seen order;
    each group names the keys where its recipe differs from the others'."""
    groups: dict[str, dict] = {}
    for r in runs:
        recipe = _group_recipe(r, over)
        key = json.dumps(recipe, sort_keys=True, default=str)
        groups.setdefault(key, {"recipe": recipe, "runs": []})["runs"].append(r)
    out = list(groups.values())
    recipes = [g["recipe"] for g in out if g["recipe"] is not None]
    varying = sorted({k for a in recipes for b in recipes for k in diff_keys(a, b)})
    for i, g in enumerate(out, 1):
        g["id"] = i
        if g["recipe"] is None:
            g["differs"] = {"config.yaml": "missing"}
        else:
            g["differs"] = {k: _get(g["recipe"], k) for k in varying}
        g["summary"] = {
            name: summarise([r["models"][name] for r in g["runs"] if name in r["models"]]) for name in _models(g["runs"])
        }
        for name, summ in g["summary"].items():  # a 95 % t-interval over the runs beside each mean
            for k, v in summ.items():
                iv = t_interval([r["models"][name][k] for r in g["runs"] if name in r["models"]], bounds=SCORE_RANGE)
                v["ci"] = [iv.low, iv.high]
        g["comparisons"] = _paired(g["runs"])
        flags = {f for r in g["runs"] for f in r["flags"]}
        g["code"] = sorted({r.get("code", "") for r in g["runs"]})
        if len({code_identity(c) for c in g["code"]}) > 1:  # a mean over different code: said, never silent
            flags.add("mixed_code")
        g["folds"] = fold_coverage([(r.get("seed"), r.get("protocol")) for r in g["runs"]]) if "data.options.fold" in over else ""
        if g["folds"]:  # a mean over some folds, or some twice, is not the protocol's score
            flags.add("folds_incomplete")
        g["flags"] = sorted(flags)  # each once (a run flagged mixed_code in a mixed group too)
        g["confusion"] = {
            name: pooled([r["confusion"][name] for r in g["runs"] if name in r.get("confusion", {})])
            for name in _models(g["runs"])
        }
    return out


def _paired(runs: Sequence[dict]) -> dict[str, dict]:
    """The student against the labels-only baseline (and against each teacher), UAR, paired
    over the runs that scored both (the same seed/fold)."""
    out = {}
    models = _models(runs)
    for other in [m for m in models if m != "student"]:
        both = [r for r in runs if "student" in r["models"] and other in r["models"]]
        if len(both) >= 2:
            c = paired_comparison([r["models"]["student"]["uar"] for r in both], [r["models"][other]["uar"] for r in both])
            out[f"student - {other}"] = c.to_dict()
    return out


def _get(d: Any, dotted: str) -> Any:
    """The value at a dotted key, into lists by index (``distil.losses.0.options.temperature``:
    how :func:`liser_common.provenance.diff_keys` names a difference)."""
    for part in dotted.split("."):
        if isinstance(d, list) and part.isdigit() and int(part) < len(d):
            d = d[int(part)]
        elif isinstance(d, dict) and part in d:
            d = d[part]
        else:
            return None
    return d


def _models(runs: Sequence[dict]) -> list[str]:
    return sorted({n for r in runs for n in r["models"]}, key=lambda n: (n != "student", n != "baseline", n))


def cmd_summarize(args) -> int:
    over = [k.strip() for k in args.over.split(",") if k.strip()]
    runs = [load_run(Path(p)) for p in args.runs]
    seen: dict[str, str] = {}
    for r in runs:  # one run counted once: the same folder given twice, or a copy of it
        if r["skipped"]:
            continue
        path = Path(r["run"])
        keys = [("given twice", f"path:{path.resolve()}")]
        if ident := _run_identity(path):
            keys.append(("a copy of it: the same liser-run.json and metrics.json", f"run:{ident}"))
        dup = next(((why, seen[k]) for why, k in keys if k in seen), None)
        if dup:
            r["skipped"] = f"the same run as {dup[1]} ({dup[0]}): counted once"
            continue
        for _, k in keys:
            seen[k] = r["run"]
    repeats = repeats_of_one_run([r for r in runs if not r["skipped"]], over)
    for r in runs:  # the same seed and fold of one recipe again: the same experiment, counted once
        if not r["skipped"] and (earlier := repeats.get(r["run"])):
            values = ", ".join(f"{k}={_get(r['config'] or {}, k)}" for k in over)
            r["skipped"] = (f"the same recipe, {values} as {earlier}: a repeat of one experiment, not another sample "
                            "of it (counted once)")
    usable = [r for r in runs if not r["skipped"]]
    skipped = [r for r in runs if r["skipped"]]
    if not usable:
        raise UsageError("no run to summarise: " + "; ".join(f"{r['run']}: {r['skipped']}" for r in skipped))
    groups = group_runs(usable, over)
    if args.json:
        print(json.dumps({
            "over": over,
            "runs": [{k: v for k, v in r.items() if k not in ("config", "confusion")} for r in usable],
            "skipped": [{"run": r["run"], "reason": r["skipped"]} for r in skipped],
            "groups": [{k: v for k, v in g.items() if k not in ("runs", "recipe")} | {"runs": [r["run"] for r in g["runs"]]}
                       for g in groups],
            "summary": groups[0]["summary"] if len(groups) == 1 else None,
        }, indent=2, default=str))
        return 0
    if len(groups) > 1:
        print(f"{len(groups)} different recipes among these runs: each is summarised on its own "
              f"(averaged over: {', '.join(over)})")
    for g in groups:
        _print_group(g, len(groups) > 1)
        if args.confusion:
            _print_confusion(g)
    for r in skipped:
        print(f"skipped {r['run']}: {r['skipped']}")
    return 0


def _print_group(g: dict, several: bool) -> None:
    runs, models = g["runs"], _models(g["runs"])
    if several:
        label = ", ".join(f"{k}={v}" for k, v in g["differs"].items()) or "(same recipe)"
        print(f"\n== group {g['id']}: {label}")
    print(f"{'run':<28} {'fold':>4} {'seed':>4}  " + "  ".join(f"{n[:18]:>18}" for n in models) + "   (UAR)")
    for r in runs:
        cells = [f"{r['models'][n]['uar']:>18.3f}" if n in r["models"] else f"{'-':>18}" for n in models]
        mark = "  !" + ",".join(r["flags"]) if r["flags"] else ""
        fold = "-" if r["fold"] is None else str(r["fold"])
        print(f"{Path(r['run']).name[:28]:<28} {fold:>4} {str(r['seed']):>4}  " + "  ".join(cells) + mark)
    print()
    print(f"{'model':<22} {'n':>3}  " + "  ".join(f"{k:>31}" for k in ("WA (accuracy)", "UAR", "macro-F1")))
    for name in models:
        s = g["summary"][name]
        cells = [_cell(s[k]) if k in s else "-" for k in KEYS]
        n = s.get("uar", {}).get("n", 0)
        print(f"{name:<22} {n:>3}  " + "  ".join(f"{c:>31}" for c in cells))
    print("(mean ± sample standard deviation [95 % t-interval of the mean] over the runs)")
    n_min = min((s.get("uar", {}).get("n", 0) for s in g["summary"].values()), default=0)
    if n_min < MIN_REPEATS:
        print(f"!!! n = {n_min} run(s): fewer than {MIN_REPEATS} repeats give no interval worth the name; "
              "run more seeds or folds before drawing conclusions")
    for what, c in g.get("comparisons", {}).items():
        wil = "" if c["wilcoxon_p"] is None else f", Wilcoxon p = {c['wilcoxon_p']:.3g}"
        print(f"{what} (UAR, paired over {c['n']} runs): {c['mean_diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}], "
              f"paired t p = {c['t_p']:.3g}{wil}")
    if "mixed_code" in g["flags"]:
        print("!!! these runs come from different code: " + "; ".join(c or "(not recorded)" for c in g["code"]))
    else:
        print(f"code: {g['code'][0] or '(not recorded)'}")
    if g.get("folds"):
        print(f"!!! the runs cover {g['folds']}: not each fold of the protocol once per seed")
    if g["flags"]:
        print(f"!!! flagged: {', '.join(g['flags'])} -- these scores are incomplete or not comparable "
              "(the runs' warnings in metrics.json say why):")
        for line in describe_flags(g["flags"]):
            print(f"!!!   {line}")


def _cell(v: dict) -> str:
    lo, hi = v.get("ci", [float("nan")] * 2)
    if lo != lo:  # NaN: one run: no spread to state (a standard deviation of 0 it is not)
        return f"{v['mean']:.3f} (one run)"
    return f"{v['mean']:.3f} ± {v['std']:.3f} [{lo:.3f}, {hi:.3f}]"


def _print_confusion(g: dict) -> None:
    for name, c in g["confusion"].items():
        if c is None:
            continue
        print(f"\n{name}: confusion pooled over {c['runs']} run(s), {c['num_clips']} clips "
              f"(rows = true class): WA {c['accuracy']:.3f}  UAR {c['uar']:.3f}")
        width = max(6, *(len(x) for x in c["classes"]))
        print(" " * width + " " + " ".join(f"{x[:width]:>{width}}" for x in c["classes"]))
        for cls, row in zip(c["classes"], c["matrix"]):
            print(f"{cls:<{width}} " + " ".join(f"{v:>{width}}" for v in row))

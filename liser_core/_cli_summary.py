"""``liser summarize RUN_DIR...``: per-run scores and mean ± std over runs (folds or seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .errors import UsageError
from .metrics import summarise

KEYS = ("accuracy", "uar", "macro_f1")


def add_parser(sub, plugin_args) -> None:
    p = sub.add_parser(
        "summarize",
        help="mean ± std of several runs (folds, seeds) from their metrics.json",
        description="Per-run test scores of every model and their mean ± sample std over the runs.",
        epilog="example: for f in 1 2 3 4 5 6; do liser run recipes/ravdess_kd.yaml data.options.fold=$f "
        "run_dir=runs/rav_f$f; done; liser summarize runs/rav_f*",
    )
    p.add_argument("runs", nargs="+", help="run directories (each with metrics.json)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def load_runs(paths: list[str]) -> list[dict]:
    runs = []
    for p in map(Path, paths):
        f = p / "metrics.json"
        if not f.is_file():
            raise UsageError(f"{p}: no metrics.json (not a finished run directory)")
        m = json.loads(f.read_text())
        cfg_file = p / "config.yaml"
        cfg = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else {}
        models = {}
        for role in ("student", "baseline"):
            if m.get(role):
                models[role] = m[role]
        for name, t in (m.get("teachers") or {}).items():
            models[f"teacher:{name}"] = t
        opts = (cfg.get("data") or {}).get("options") or {}
        runs.append(
            {
                "run": str(p),
                "status": m.get("status"),
                "corpus": m.get("corpus"),
                "split": m.get("split"),
                "seed": cfg.get("seed"),
                "fold": opts.get("fold"),
                "models": models,
            }
        )
    return runs


def cmd_summarize(args) -> int:
    runs = load_runs(args.runs)
    failed = [r["run"] for r in runs if r["status"] != "completed"]
    if failed:
        raise UsageError("runs that did not complete: " + ", ".join(failed))
    corpora = {(r["corpus"], r["split"]) for r in runs}
    models = sorted({name for r in runs for name in r["models"]}, key=lambda n: (n != "student", n != "baseline", n))
    summary = {
        name: summarise([r["models"][name] for r in runs if name in r["models"]]) for name in models
    }
    if args.json:
        print(json.dumps({"runs": runs, "summary": summary}, indent=2))
        return 0
    if len(corpora) > 1:
        print(f"warning: the runs are on different corpora/splits: {sorted(corpora)}")
    print(f"{'run':<28} {'fold':>4} {'seed':>4}  " + "  ".join(f"{n[:18]:>18}" for n in models) + "   (UAR)")
    for r in runs:
        cells = [f"{r['models'][n]['uar']:>18.3f}" if n in r["models"] else f"{'-':>18}" for n in models]
        print(f"{Path(r['run']).name[:28]:<28} {str(r['fold'] or '-'):>4} {str(r['seed']):>4}  " + "  ".join(cells))
    print()
    print(f"{'model':<22} {'n':>3}  " + "  ".join(f"{k:>15}" for k in ("WA (accuracy)", "UAR", "macro-F1")))
    for name in models:
        s = summary[name]
        cells = [f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" if k in s else "-" for k in KEYS]
        n = s.get("uar", {}).get("n", 0)
        print(f"{name:<22} {n:>3}  " + "  ".join(f"{c:>15}" for c in cells))
    print("(mean ± sample standard deviation over the runs)")
    return 0

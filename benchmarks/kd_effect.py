"""The full-size check that distillation helps: ``recipes/synth_kd.yaml`` over seeds 0, 1, 2.

Each seed draws its own corpus, fits the two teachers, distils the student and trains the
labels-only baseline (same student, same initial weights). Prints every model's test UAR per
seed and as mean ± sample std (the README's results table), and checks that the distilled
student beats the baseline on every seed. ``tests/test_kd_effect.py`` checks the same claim on
a corpus small enough for the test suite.

    python benchmarks/kd_effect.py                  # ~6 min on 2 CPU cores
    python benchmarks/kd_effect.py --seeds 0 1 2 3 4 --output runs/kd_effect

Exit status 1 when a student does not beat its baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output", type=Path, default=None, help="run directories (default: a new temporary folder)")
    args = p.parse_args(argv)
    out = args.output or Path(tempfile.mkdtemp(prefix="liser-kd-effect-"))
    from liser_common.metrics import mean_std
    from liser_core import load_plugins, run

    host = load_plugins()
    per_seed = {}
    for seed in args.seeds:
        ctx = run(REPO / "recipes" / "synth_kd.yaml", [f"seed={seed}", f"run_dir={out / f's{seed}'}"], host=host)
        per_seed[seed] = {k: v["uar"] for k, v in ctx.results().items()}
        print(f"seed {seed}: " + "  ".join(f"{k} {v:.3f}" for k, v in per_seed[seed].items()), flush=True)
    models = list(next(iter(per_seed.values())))
    print(f"\ntest UAR over seeds {', '.join(map(str, args.seeds))} (mean ± sample std):")
    summary = {}
    for m in models:
        mean, std = mean_std(per_seed[s][m] for s in args.seeds)
        summary[m] = {"mean": mean, "std": std}
        print(f"  {m:<12} {mean:.3f} ± {std:.3f}")
    wins = [per_seed[s]["student"] > per_seed[s]["baseline"] for s in args.seeds]
    margin = summary["student"]["mean"] - summary["baseline"]["mean"]
    print(f"student beats baseline on {sum(wins)} of {len(wins)} seeds; mean margin {margin:+.3f} UAR")
    (out / "summary.json").write_text(json.dumps({"per_seed": per_seed, "summary": summary}, indent=2))
    return 0 if all(wins) else 1


if __name__ == "__main__":
    sys.exit(main())

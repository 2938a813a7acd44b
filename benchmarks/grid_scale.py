"""A grid on several workers against the sequential runner, side by side in one run (issue 25).

A 24-run slice of ``benchmarks/paper/synth.yaml`` (seed 0; fractions 5, 10, 25, 100 %; the three
teacher sets; students logmel_cnn and timm_mobile: two fitted teachers, audio_cnn and face_cnn)
runs, each mode from an empty output folder, store and cache folder (``LISER_CACHE_DIR``: the
frontend features), through the CLI as a user would:

``seq``       ``liser bench SLICE``: today's default, the combinations one after another in one
              process at the recipe's threads (2);
``seq1``      the same at one torch thread (``threads=1``);
``workers2``  ``liser bench SLICE --workers 2``: two local worker processes, one thread each;
``ray``       ``liser bench SLICE --executor ray --address local``: a private local Ray cluster
              with this machine's CPUs (2), one CPU per task;
``killed``    ``--workers 2`` with one student run SIGKILLed after its first distillation epoch
              (``LISER_TEST_KILL_TASK``): the grid must finish with the same scores.

It prints each mode's wall time, the ratios the issue asks for, whether the scores (UAR, WA,
macro-F1 per combination and model in results.csv) are identical between the modes that use one
torch thread per run (and how far the 2-thread default is from them), and per mode the teacher
fits and clip labelings found in the store (each teacher fitted once; rows == distinct clips:
no clip labeled twice by a teacher).

    python benchmarks/grid_scale.py                      # all modes, the 24 runs (long: 5 x the sequential grid)
    python benchmarks/grid_scale.py --modes seq workers2 # a subset
    python benchmarks/grid_scale.py --quick              # 2 fractions x 1 student, 2 epochs: a smoke test
    python benchmarks/grid_scale.py --epochs 5           # the 24 runs with 5 distillation epochs (shorter)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "seq": [],
    "seq1": ["threads=1"],
    "workers2": ["--workers", "2"],
    "ray": ["--executor", "ray", "--address", "local"],
    "killed": ["--workers", "2"],
}
VICTIM = "fraction=25,teachers=speech+face,student=logmel_cnn,seed=0"


def write_slice(work: Path, quick: bool, epochs: int | None = None) -> Path:
    grid = yaml.safe_load((ROOT / "benchmarks/paper/synth.yaml").read_text())
    grid["recipe"] = str((ROOT / "benchmarks/paper" / grid["recipe"]).resolve())
    grid.pop("output", None)
    grid.pop("report", None)  # the report and the students' speed measurement: driver-side, the same in every mode
    axes = grid["axes"]
    axes["fraction"] = {k: axes["fraction"][k] for k in (("25", "100") if quick else ("5", "10", "25", "100"))}
    axes["student"] = {k: axes["student"][k] for k in (("logmel_cnn",) if quick else ("logmel_cnn", "timm_mobile"))}
    axes["seed"] = {"0": axes["seed"]["0"]}
    if quick:
        grid["overrides"] = [*grid["overrides"], "distil.epochs=2", "baseline.epochs=2"]
    if epochs is not None:  # fewer distillation epochs: a shorter benchmark on a busy machine
        grid["overrides"] = [*grid["overrides"], f"distil.epochs={epochs}"]
    path = work / "slice.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def run_mode(mode: str, grid: Path, work: Path) -> dict:
    out = work / mode
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    env.pop("LISER_TEST_KILL_TASK", None)
    cache = work / f"{mode}.cache"  # decoded clips and frontend features: from nothing in every mode too
    shutil.rmtree(cache, ignore_errors=True)
    env["LISER_CACHE_DIR"] = str(cache)
    if mode == "killed":
        victim = "run-" + hashlib.sha256(VICTIM.encode()).hexdigest()[:12]
        env["LISER_TEST_KILL_TASK"] = f"{victim}:{work / 'killed.marker'}"
        (work / "killed.marker").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "liser_tools.cli", "bench", str(grid), "-o", str(out), *MODES[mode]]
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(work / f"{mode}.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the CLI and the processes it waited for
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if rc != 0:
        raise SystemExit(f"{mode}: exit code {rc}; see {work / f'{mode}.log'}")
    return {"mode": mode, "seconds": seconds, "cpu": cpu, "scores": scores(out), "store": store_counts(out / "store"),
            "command": "liser bench SLICE -o OUT " + " ".join(MODES[mode])}


def scores(out: Path) -> dict:
    with open(out / "results.csv", newline="") as f:
        return {(r["combination"], r["model"]): (float(r["uar"]), float(r["accuracy"]), float(r["macro_f1"]))
                for r in csv.DictReader(f)}


def store_counts(store: Path) -> dict:
    from liser_cache.store import TeacherStore

    fitted = [p for p in (store / "fitted").iterdir() if not p.name.startswith(".")] if (store / "fitted").is_dir() else []
    s = TeacherStore(store)
    infos = [s.info(fp) for fp in s.fingerprints()]
    return {"fitted_teachers": len(fitted), "teachers_labeling": len(infos),
            "labeled_rows": sum(i["rows"] for i in infos), "distinct_clips": sum(i["clips"] for i in infos)}


def max_diff(a: dict, b: dict) -> float:
    if set(a) != set(b):
        return float("inf")
    return max(abs(x - y) for k in a for x, y in zip(a[k], b[k]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/liser-grid-scale")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=None, help="distillation epochs (default: the grid's 20)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    grid = write_slice(work, args.quick, args.epochs)
    n_runs = len(yaml.safe_load(grid.read_text())["axes"]["fraction"]) * 3 * len(yaml.safe_load(grid.read_text())["axes"]["student"])
    print(f"grid slice: {grid} ({n_runs} runs); load average before: {os.getloadavg()}", flush=True)
    res = {}
    for mode in args.modes:
        res[mode] = r = run_mode(mode, grid, work)
        print(f"{mode:9s} {r['seconds']:7.1f} s wall, {r['cpu']:7.1f} s CPU  store: {json.dumps(r['store'])}  "
              f"({r['command']}; load average now {os.getloadavg()[0]:.1f})", flush=True)
    print(f"load average after: {os.getloadavg()}")
    s = {m: r["seconds"] for m, r in res.items()}
    if "seq" in s and "workers2" in s:
        print(f"2 local workers vs sequential default (2 threads): {s['seq'] / s['workers2']:.2f}x  (goal >= 1.6)")
    if "seq1" in s and "workers2" in s:
        print(f"2 local workers vs sequential at 1 thread:         {s['seq1'] / s['workers2']:.2f}x  (goal >= 1.8)")
    if "seq" in s and "ray" in s:
        print(f"ray (local 2-CPU cluster) vs sequential default:   {s['seq'] / s['ray']:.2f}x  (goal >= 1.5)")
    if "seq" in s and "seq1" in s:
        print(f"sequential at 2 threads vs at 1 thread:            {s['seq1'] / s['seq']:.2f}x")
    one_thread = [m for m in ("seq1", "workers2", "ray", "killed") if m in res]
    for m in one_thread[1:]:
        d = max_diff(res[one_thread[0]]["scores"], res[m]["scores"])
        print(f"scores {m} vs {one_thread[0]}: {'identical' if d == 0 else f'max |diff| {d:.6f}'} "
              f"({len(res[m]['scores'])} rows)")
    if "seq" in res and one_thread:
        d = max_diff(res["seq"]["scores"], res[one_thread[0]]["scores"])
        print(f"scores seq (2 threads) vs {one_thread[0]} (1 thread): {'identical' if d == 0 else f'max |diff| {d:.6f}'}")
    if "killed" in res:
        print(f"killed: {(work / 'killed.marker').read_text().strip() if (work / 'killed.marker').exists() else 'NOT killed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The teacher store against relabeling, on a 3 teacher x 3 student grid (`liser bench`).

One run of this script runs the same grid (``benchmarks/store_grid.yaml``: 3 teachers x the 3
registered students = 9 combinations) twice, one after the other, each as its own
``liser bench`` process:

* ``store``   — ``store: true``: one teacher-output store for the grid, so each teacher labels
  the distillation set once and the other two students of that teacher read its outputs back;
* ``relabel`` — ``store: false``: every combination runs its teacher over the distillation set.

It prints, per mode, the total labeling time (sum over the 9 runs of ``stage_seconds.label``
in each run's ``metrics.json``), the wall and CPU time of the ``liser bench`` process, and the
ratios; then checks that the store run labeled each clip exactly once per teacher (the
``diagnostics.store`` counts of each run's metrics.json, and the store's own index), that the
relabel runs labeled every clip in every run, and that every combination's scores (student and
teacher: UAR, WA, macro-F1) are the same in both modes (stored outputs are float32 by
default, bit-identical on reload; ``--store-dtype float16`` reports the difference instead).

Teachers: pretrained-style ``hf_speech`` teachers — a wav2vec2, a HuBERT and a WavLM encoder,
each with its own 8-class emotion head (``use_model_head: true``) — used as is, never fitted, so
a run's only teacher work is labeling (plus scoring the teacher on the 64 test clips, which
every run repeats in both modes). Fitted teachers would have to be fitted once beforehand
anyway: ``liser bench`` refits a teacher without a checkpoint in every run. The weights are
random (nothing is downloaded; speed does not depend on the weights' values), so students
distil from uninformative targets: the UARs printed are for the equality check, not for
reading. ``--size`` picks the encoder geometry: ``small`` (default: hidden 256, 4 layers, 256
conv channels, 4.9M parameters: 53 ms per 1 s clip on one thread), ``tiny`` (``--quick``) or
``base`` (the real wav2vec2-base geometry, 95M parameters: 194 ms per clip, 3.7x the default;
realistic, but the grid then takes about 15 min). Students: ``logmel_cnn``, a narrow ``ecapa_tdnn`` and
``timm_mobile``, one distillation epoch (``--epochs``), so training stays cheap next to labeling.

Threads: one torch thread per run by default. On a 2-core machine shared with other jobs, two
OpenMP threads per run slow down erratically whenever another process holds a core (the same
stage took 2-10x longer from one run to the next); one thread keeps the comparison stable.

    python benchmarks/store_grid.py                  # ~4.5-5 min on 2 (shared) CPU cores
    python benchmarks/store_grid.py --quick          # smoke test, ~1.5 min: tiny teachers, 128 clips;
                                                     # its timings are overhead, not labeling
    python benchmarks/store_grid.py --output runs/store_grid --store-dtype float16 --threads 2

Outputs (in ``--output``, default a new temporary folder, kept): ``models/`` (the teachers),
``grid-store.yaml`` / ``grid-relabel.yaml`` (the grids run), ``store/`` and ``relabel/`` (the two
``liser bench`` output folders: run directories, results.csv, leaderboard.md; the store in
``store/store``), ``store.log`` / ``relabel.log`` (their console output) and ``summary.json``
(every number printed). Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
GRID = HERE / "store_grid.yaml"
RECIPE = HERE.parent / "recipes" / "synth_kd.yaml"

#: encoder geometry -> transformers config kwargs (shared by the three architectures)
SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 conv_dim=(64,) * 7),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  conv_dim=(256,) * 7),
    "base": {},  # transformers' defaults: the wav2vec2-base / hubert-base / wavlm-base geometry
}
#: teacher name in the grid -> transformers class prefix
ARCHS = {"wav2vec2": "Wav2Vec2", "hubert": "Hubert", "wavlm": "WavLM"}
#: what --quick changes on top of the grid (a smaller pool)
QUICK_OVERRIDES = [
    "data.options.unlabeled_speakers=8",   # 8 speakers x 8 emotions x 1 = 64 pool clips (+ 64 labeled)
]


def make_teachers(root: Path, size: str) -> dict[str, dict]:
    """Write one randomly initialised encoder + 8-class head per architecture to root/NAME."""
    import torch
    import transformers as tf

    from liser_core.labels import RAVDESS8

    id2label = dict(enumerate(RAVDESS8.classes))
    out = {}
    for name, prefix in ARCHS.items():
        torch.manual_seed(0)
        extra = dict(num_buckets=32, max_bucket_distance=80) if name == "wavlm" and size != "base" else {}
        cfg = getattr(tf, f"{prefix}Config")(
            **SIZES[size], **extra, feat_extract_norm="layer", do_stable_layer_norm=True,
            num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()},
        )
        model = getattr(tf, f"{prefix}ForSequenceClassification")(cfg)
        path = root / name
        model.save_pretrained(path)
        tf.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True).save_pretrained(path)
        out[name] = {"path": str(path), "parameters": sum(p.numel() for p in model.parameters())}
    return out


def write_grids(out: Path, models: Path, extra_overrides: list[str]) -> dict[str, Path]:
    text = string.Template(GRID.read_text()).substitute(models=str(models))
    grid = yaml.safe_load(text)
    grid["recipe"] = str(RECIPE)
    grid["overrides"] = [*grid["overrides"], *extra_overrides]
    paths = {}
    for mode, store in (("store", True), ("relabel", False)):
        g = {**grid, "store": store, "output": str(out / mode)}
        paths[mode] = out / f"grid-{mode}.yaml"
        paths[mode].write_text(yaml.safe_dump(g, sort_keys=False, width=200))
    return paths


def run_bench(grid: Path, log_path: Path) -> tuple[float, float]:
    """`liser bench GRID` in its own process; returns its wall time and CPU time (user + system) in seconds."""
    liser = Path(sys.executable).parent / "liser"
    cmd = [str(liser)] if liser.exists() else [sys.executable, "-m", "liser_tools.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "WANDB_MODE": "disabled"}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run([*cmd, "bench", str(grid)], stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if proc.returncode:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
        sys.exit(f"liser bench {grid} failed (exit {proc.returncode}); end of {log_path}:\n{tail}")
    return wall, cpu


_RELABEL_LINE = re.compile(r"teacher (\S+) labeled (\d+) clips \(")


def collect(bench_dir: Path) -> dict[str, dict]:
    """Per combination: stage times, store counts, labeled-clip counts and scores."""
    import csv

    with open(bench_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    combos: dict[str, dict] = {}
    for r in rows:
        c = combos.setdefault(r["combination"], {"run_dir": r["run_dir"], "scores": {}})
        c["scores"][r["model"]] = {k: float(r[k]) for k in ("uar", "accuracy", "macro_f1")}
    for c in combos.values():
        run_dir = Path(c["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        c["stage_seconds"] = metrics["stage_seconds"]
        c["store"] = metrics["diagnostics"].get("store")
        c["store_test"] = metrics["diagnostics"].get("store_test") or {}
        # without a store the engine logs "teacher KEY labeled N clips (S s...)" (metrics.json has no
        # count); the label stage's lines, not the evaluate stage's (the test clips)
        stage = (run_dir / "log.txt").read_text().partition("== stage label ==")[2].partition("== stage ")[0]
        c["labeled_logged"] = {m.group(1): int(m.group(2)) for m in _RELABEL_LINE.finditer(stage)}
    return combos


def store_index(store_root: Path) -> dict[str, dict]:
    from liser_cache.store import TeacherStore

    store = TeacherStore(store_root)
    return {fp: store.info(fp) for fp in store.fingerprints()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny teachers, 128 clips to label")
    ap.add_argument("--output", default=None, help="output folder (default: a new temporary folder, kept)")
    ap.add_argument("--size", choices=list(SIZES), default=None, help="teacher encoder geometry (default: small; tiny with --quick)")
    ap.add_argument("--store-dtype", choices=["float32", "float16"], default="float32",
                    help="precision of stored outputs (float16: scores may differ slightly from relabeling)")
    ap.add_argument("--epochs", type=int, default=1, help="distillation epochs of every student (default 1)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of every run (default 1: stable on a shared machine, see the docstring)")
    ap.add_argument("--order", choices=["store-first", "relabel-first"], default="store-first")
    args = ap.parse_args()
    size = args.size or ("tiny" if args.quick else "small")
    out = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="liser-store-grid-"))
    out.mkdir(parents=True, exist_ok=True)
    for mode in ("store", "relabel"):  # results.csv would make liser bench skip finished combinations
        if (out / mode).exists():
            shutil.rmtree(out / mode)

    print(f"output: {out}")
    models = make_teachers(out / "models", size)
    print(f"teachers ({size}, random weights, own 8-class head): "
          + ", ".join(f"{n} {m['parameters'] / 1e6:.1f}M" for n, m in models.items()))
    overrides = [f"store_dtype={args.store_dtype}", f"distil.epochs={args.epochs}", f"threads={args.threads}"] + (QUICK_OVERRIDES if args.quick else [])
    grids = write_grids(out, out / "models", overrides)

    order = ["store", "relabel"] if args.order == "store-first" else ["relabel", "store"]
    wall, cpu, combos, load = {}, {}, {}, {}
    for mode in order:
        print(f"running liser bench {grids[mode]} ...", flush=True)
        before = os.getloadavg()[0]
        wall[mode], cpu[mode] = run_bench(grids[mode], out / f"{mode}.log")
        load[mode] = (before, os.getloadavg()[0])
        combos[mode] = collect(out / mode)
        print(f"  {mode}: {len(combos[mode])} combinations in {wall[mode]:.0f} s "
              f"(1-min load average {load[mode][0]:.1f} before, {load[mode][1]:.1f} after)", flush=True)

    keys = list(combos["store"])
    label = {m: sum(c["stage_seconds"].get("label", 0.0) for c in combos[m].values()) for m in wall}
    runs_sum = {m: sum(sum(c["stage_seconds"].values()) for c in combos[m].values()) for m in wall}
    stage_totals = {m: {} for m in wall}
    for m in wall:
        for c in combos[m].values():
            for s, v in c["stage_seconds"].items():
                stage_totals[m][s] = stage_totals[m].get(s, 0.0) + v

    # -- checks -----------------------------------------------------------------------------
    failures: list[str] = []
    teachers = list(ARCHS)
    n_clips = {}
    per_teacher = {}
    for t in teachers:
        rows = [combos["store"][k]["store"] for k in keys if k.startswith(f"teacher={t},")]
        entries = [r["hf_speech"] for r in rows]
        fps = {e["fingerprint"] for e in entries}
        n = entries[0]["labeled"] + entries[0]["from_store"]
        n_clips[t] = n
        labeled = sum(e["labeled"] for e in entries)
        reused = sum(e["from_store"] for e in entries)
        per_teacher[t] = {"fingerprint": next(iter(fps)), "clips": n, "labeled": labeled, "from_store": reused,
                          "runs": len(entries), "relabel_labeled": sum(
                              combos["relabel"][k]["labeled_logged"].get("hf_speech", 0) for k in keys if k.startswith(f"teacher={t},"))}
        if len(fps) != 1:
            failures.append(f"teacher {t}: {len(fps)} fingerprints across its runs (expected 1)")
        if labeled != n or reused != n * (len(entries) - 1):
            failures.append(f"teacher {t}: labeled {labeled} and reused {reused} over {len(entries)} runs of {n} clips "
                            f"(expected {n} and {n * (len(entries) - 1)})")
        if not any(combos["relabel"][k]["labeled_logged"] for k in keys):
            per_teacher[t]["relabel_labeled"] = None  # the engine's log line changed: count unknown
        elif per_teacher[t]["relabel_labeled"] != n * len(entries):
            failures.append(f"teacher {t}: relabel mode labeled {per_teacher[t]['relabel_labeled']} clips "
                            f"(expected {n * len(entries)})")
    index = store_index(out / "store" / "store")
    if len(index) != len(teachers):
        failures.append(f"store holds {len(index)} fingerprints (expected {len(teachers)})")
    for t, pt in per_teacher.items():
        info = index.get(pt["fingerprint"], {})
        pt["stored_clips"] = info.get("clips")
        # the distillation set, plus the test split when the teacher's test outputs are stored too
        test = next((combos["store"][k]["store_test"].get("hf_speech") for k in keys if k.startswith(f"teacher={t},")), None)
        expected = pt["clips"] + (test["labeled"] + test["from_store"] if test else 0)
        if info.get("clips") != expected:
            failures.append(f"teacher {t}: store holds {info.get('clips')} clips (expected {expected})")
    diffs = {}
    for k in keys:
        a, b = combos["store"][k]["scores"], combos["relabel"].get(k, {}).get("scores", {})
        if set(a) != set(b):
            failures.append(f"{k}: models {sorted(a)} vs {sorted(b)}")
            continue
        diffs[k] = max(abs(a[m][s] - b[m][s]) for m in a for s in a[m])
    max_diff = max(diffs.values(), default=float("nan"))
    if args.store_dtype == "float32" and max_diff != 0.0:
        failures.append(f"scores differ between modes by up to {max_diff:.6f} (float32 store: expected equal)")

    # -- report -----------------------------------------------------------------------------
    n_pool = next(iter(n_clips.values()))
    print()
    print(f"3 teachers (hf_speech {size}: {', '.join(teachers)}) x 3 students (logmel_cnn, ecapa_tdnn, timm_mobile), "
          f"{n_pool} clips to label per run, {args.epochs} distillation epoch(s), store dtype {args.store_dtype}, "
          f"{args.threads} torch thread(s), {os.cpu_count()} CPUs")
    print()
    print(f"{'combination':<38} {'label s (store)':>15} {'label s (relabel)':>17} {'run s (store)':>13} "
          f"{'run s (relabel)':>15} {'student UAR':>11}  same")
    for k in keys:
        s, r = combos["store"][k], combos["relabel"][k]
        st = s["store"]["hf_speech"]
        tag = "labeled" if st["labeled"] else "reused"
        d = diffs.get(k)
        same = "?" if d is None else ("yes" if d == 0.0 else f"{d:.1e}")
        print(f"{k:<38} {s['stage_seconds']['label']:>8.1f} {tag:>6} {r['stage_seconds']['label']:>17.1f} "
              f"{sum(s['stage_seconds'].values()):>13.1f} {sum(r['stage_seconds'].values()):>15.1f} "
              f"{s['scores']['student']['uar']:>11.3f}  {same}")
    print()
    print(f"{'':<30} {'store':>10} {'relabel':>10} {'relabel/store':>14}")
    print(f"{'labeling, total s':<30} {label['store']:>10.1f} {label['relabel']:>10.1f} {label['relabel'] / label['store']:>13.2f}x")
    print(f"{'stages of the 9 runs, total s':<30} {runs_sum['store']:>10.1f} {runs_sum['relabel']:>10.1f} "
          f"{runs_sum['relabel'] / runs_sum['store']:>13.2f}x")
    print(f"{'liser bench wall time, s':<30} {wall['store']:>10.1f} {wall['relabel']:>10.1f} {wall['relabel'] / wall['store']:>13.2f}x")
    print(f"{'liser bench CPU time, s':<30} {cpu['store']:>10.1f} {cpu['relabel']:>10.1f} {cpu['relabel'] / cpu['store']:>13.2f}x")
    print(f"{'labeling share of wall time':<30} {label['store'] / wall['store']:>10.0%} {label['relabel'] / wall['relabel']:>10.0%}")
    print()
    print("per stage, total s: " + "; ".join(
        f"{s} {stage_totals['store'].get(s, 0):.1f} / {stage_totals['relabel'].get(s, 0):.1f}"
        for s in stage_totals["relabel"]) + "  (store / relabel)")
    passes = {
        "store, labeling run": [c["stage_seconds"]["label"] for c in combos["store"].values() if c["store"]["hf_speech"]["labeled"]],
        "store, reusing run": [c["stage_seconds"]["label"] for c in combos["store"].values() if not c["store"]["hf_speech"]["labeled"]],
        "relabel run": [c["stage_seconds"]["label"] for c in combos["relabel"].values()],
    }
    print("label stage per run, mean s: " + "; ".join(
        f"{name} {sum(v) / len(v):.2f} (n={len(v)})" for name, v in passes.items() if v))
    for t, pt in per_teacher.items():
        print(f"teacher {t}: store run labeled {pt['labeled']} clips + {pt['from_store']} from the store over "
              f"{pt['runs']} runs ({pt['stored_clips']} stored, fingerprint {pt['fingerprint'][:12]}); relabel runs "
              f"labeled {pt['relabel_labeled']}")
    print(f"scores (UAR, WA, macro-F1 of student and teacher) store vs relabel: max |difference| {max_diff:.3g} "
          f"over {len(diffs)} combinations")
    summary = {
        "size": size, "quick": args.quick, "epochs": args.epochs, "store_dtype": args.store_dtype, "order": order,
        "cpus": os.cpu_count(), "load_average_before_after": load,
        "teachers": models, "clips_per_run": n_clips,
        "label_seconds": label, "stage_seconds_sum": runs_sum, "stage_totals": stage_totals, "wall_seconds": wall,
        "cpu_seconds": cpu, "threads": args.threads,
        "ratios": {"label": label["relabel"] / label["store"], "wall": wall["relabel"] / wall["store"],
                   "cpu": cpu["relabel"] / cpu["store"]},
        "label_seconds_per_run": passes, "per_teacher": per_teacher, "max_score_difference": max_diff, "failures": failures,
        "combinations": combos,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"summary: {out / 'summary.json'}")
    if failures:
        print("CHECKS FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("checks passed: each clip labeled once per teacher in the store run; scores equal in both modes"
          if args.store_dtype == "float32" else "checks passed: each clip labeled once per teacher in the store run")
    return 0


if __name__ == "__main__":
    sys.exit(main())

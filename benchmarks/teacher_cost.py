"""What an ``hf_speech`` teacher costs on this machine's CPU: parameters, memory, time per clip.

Randomly initialised encoders of the real *base* and *large* sizes (configs only, nothing is
downloaded; speed and memory do not depend on the weights' values), written with
``save_pretrained`` to a temporary directory and built through the registry exactly as a recipe's
``{name: hf_speech, options: {model: <dir>}}`` is. Each measurement runs in its own process, so
that its memory figures are its own.

    python benchmarks/teacher_cost.py                         # base and large, 1 and 2 threads
    python benchmarks/teacher_cost.py --sizes base --threads 1 --seconds 3 --repeats 5

Columns: ``params`` = parameters held (layers above a chosen ``layer`` are dropped);
``GFLOP`` = floating-point operations of one forward (torch's FlopCounterMode: matmuls and
convolutions); ``load s`` = from_pretrained from local disk; ``base MB`` = resident memory of
the process before the teacher is built (Python, torch, transformers); ``peak MB`` = the most
it was ever resident (``ru_maxrss``: loading plus labelling); ``+MB`` = their difference, what the
teacher needs (weights + activations + allocator caches); ``min s`` / ``median`` = forward time of the whole teacher (normalisation, encoder,
pooling, head) for ONE clip of ``--seconds`` seconds, batch of 1, ``torch.no_grad``; ``x RT`` =
clip duration / min time; ``load`` = the 1-minute load average when the measurement ended (on a
machine shared with other jobs, the min is the figure to trust). Fitting the head costs about
the same per clip and epoch: the frozen encoder runs forward only, the head's backward is
negligible.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: name -> (transformers config kwargs, what it stands for)
SIZES = {
    "base": ({}, "Wav2Vec2Config() defaults: wav2vec2-base, hubert-base, wavlm-base(-plus) geometry"),
    "large": (
        dict(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
            feat_extract_norm="layer", do_stable_layer_norm=True,
        ),
        "wav2vec2-large-lv60/-robust, hubert-large, wavlm-large geometry",
    ),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(size: str, layer: int, threads: int, seconds: float, repeats: int, model_dir: str) -> dict:
    """Runs in a child process: build one teacher, time it, return the numbers."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    from liser_core import Batch, load_plugins
    from liser_core.engine import build_component
    from liser_core.labels import RAVDESS8

    host = load_plugins()
    import transformers  # noqa: F401 - counted in the baseline, not in the teacher's memory

    base_rss = _rss_mb()
    t0 = time.perf_counter()
    teacher = build_component(
        host.registries.teacher, "hf_speech", {"model": model_dir, "layer": layer}, label_space=RAVDESS8
    ).eval()
    load_s = time.perf_counter() - t0
    n = int(seconds * teacher.sample_rate)
    batch = Batch(0.1 * torch.randn(1, n), torch.tensor([n]), teacher.sample_rate,
                  torch.tensor([-1]), ["clip"], torch.tensor([0]))
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        teacher(batch)  # also the warm-up: weights are memory-mapped until first touched
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            teacher(batch)
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "size": size, "layer": layer, "threads": threads,
        "params": teacher.card.num_parameters, "kept_layers": teacher.backbone.kept_layers,
        "num_layers": teacher.backbone.num_layers, "load_s": load_s, "base_mb": base_rss,
        "peak_mb": peak, "gflop": flops.get_total_flops() / 1e9,
        "median_s": statistics.median(times), "min_s": min(times), "load_avg": os.getloadavg()[0],
    }


def build_models(root: Path, sizes) -> dict[str, str]:
    import torch
    from transformers import AutoModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor

    out = {}
    for size in sizes:
        torch.manual_seed(0)
        cfg = Wav2Vec2Config(**SIZES[size][0])
        path = root / size
        AutoModel.from_config(cfg).save_pretrained(path)
        Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(path)
        out[size] = str(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--layers", nargs="*", type=int, default=[-1],
                    help="hidden states to measure, e.g. -1 6 (a lower layer drops the layers above)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(measure(**json.loads(args._child))))
        return

    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        dirs = build_models(Path(tmp), args.sizes)
        print(f"{'model':<6} {'layer':>10} {'params':>12} {'fp32 MB':>7} {'GFLOP':>6} {'thr':>3} "
              f"{'load s':>6} {'base MB':>7} {'peak MB':>7} {'+MB':>5} {'min s':>6} {'median':>6} {'x RT':>5} {'load':>4}")
        for size in args.sizes:
            for layer in args.layers:
                for threads in args.threads:
                    job = dict(size=size, layer=layer, threads=threads, seconds=args.seconds,
                               repeats=args.repeats, model_dir=dirs[size])
                    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
                    res = subprocess.run(
                        [sys.executable, __file__, "--_child", json.dumps(job)],
                        capture_output=True, text=True, env=env, check=True,
                    )
                    r = json.loads(res.stdout.strip().splitlines()[-1])
                    shown = "last" if layer == -1 else f"{layer} ({r['kept_layers']}/{r['num_layers']})"
                    print(
                        f"{size:<6} {shown:>10} {r['params']:>12,} {4 * r['params'] / 2**20:>7.0f} "
                        f"{r['gflop']:>6.1f} {threads:>3} {r['load_s']:>6.1f} {r['base_mb']:>7.0f} "
                        f"{r['peak_mb']:>7.0f} {r['peak_mb'] - r['base_mb']:>5.0f} {r['min_s']:>6.3f} {r['median_s']:>6.3f} "
                        f"{args.seconds / r['min_s']:>5.1f} {r['load_avg']:>4.1f}",
                        flush=True,
                    )
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    load = os.getloadavg()
    print(f"({args.seconds:g} s clip at 16 kHz, batch of 1, {args.repeats} runs after a warm-up; "
          f"CPU {cpu}, {os.cpu_count()} cores, load average {load[0]:.1f}; torch {torch.__version__}, "
          f"transformers {transformers.__version__})")
    for size in args.sizes:
        print(f"  {size}: {SIZES[size][1]}")


if __name__ == "__main__":
    main()

"""Streaming recognition: latency per hop and real-time factor on ONE CPU thread, and the
streamed probabilities against offline windowed prediction over the same audio.

    python benchmarks/stream_latency.py [--student RUN_DIR/student] [--seconds 60] [--window 1 --hop 0.25]

The audio (tones in noise, ``--seconds`` long) is fed in chunks of one hop, as a microphone would
deliver it; each hop scores the last window (:class:`liser_core.streaming.StreamRecognizer`).
Latency per hop = time to score one window (wall and CPU time of the calling thread, p50/p95);
real-time factor = total scoring time / audio duration. Offline: ``Predictor.window_probs`` with
the same window and hop (windows batched, 16 per forward pass). Default student: ``logmel_cnn``
with its default options, randomly initialised (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from liser_core import load_plugins
from liser_core.labels import RAVDESS8
from liser_core.streaming import StreamRecognizer
from liser_tools.deploy import Predictor, export


def audio_of(seconds: float, rate: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * (150 + 50 * np.sin(t)) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default=None, help="a saved student (default: logmel_cnn, random weights)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--window", type=float, default=1.0)
    ap.add_argument("--hop", type=float, default=0.25)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.student) if args.student else Path(tmp) / "student"
        if not args.student:
            torch.manual_seed(0)
            student = load_plugins().registries.student.build("logmel_cnn", label_space=RAVDESS8).eval()
            student.liser_spec = {"name": "logmel_cnn", "options": {}}
            student.save_pretrained(ckpt)
        onnx = Path(tmp) / "student.onnx"
        export(ckpt, onnx)
        print(f"student {ckpt}, window {args.window:g} s, hop {args.hop:g} s, {args.seconds:g} s of audio in "
              f"{args.hop:g} s chunks, 1 thread; torch {torch.__version__}")
        print(f"{'backend':<8} {'hops':>5} {'p50 ms':>7} {'p95 ms':>7} {'CPU p50':>8} {'CPU p95':>8} {'RTF':>8} "
              f"{'x RT':>6} {'max |stream - offline|':>23}")
        for backend in ("torch", "onnx"):
            predictor = Predictor(ckpt, window=args.window, hop=args.hop, backend="torch")
            if backend == "onnx":
                from liser_tools.quantize import session

                predictor.session, predictor.backend = session(onnx, threads=1), "onnx"
            rate = predictor.student.sample_rate
            audio = audio_of(args.seconds, rate)
            cpu: list[float] = []

            def score(x, p=predictor, cpu=cpu):
                t0 = time.thread_time()
                with torch.no_grad():
                    out = p._scores(torch.from_numpy(x))[0].numpy()
                cpu.append(1e3 * (time.thread_time() - t0))
                return out

            rec = StreamRecognizer(score, rate, window=args.window, hop=args.hop, smoothing=0.0)
            step = int(round(args.hop * rate))
            rec.push(audio[: rate])  # warm-up on a separate recogniser's worth of audio
            rec = StreamRecognizer(score, rate, window=args.window, hop=args.hop, smoothing=0.0)
            cpu.clear()
            hops = list(rec.run(audio[i: i + step] for i in range(0, len(audio), step)))
            _, offline = predictor.window_probs(audio)
            diff = float(np.abs(np.stack([h.probs for h in hops]) - offline.numpy()).max())
            wall = np.array([h.ms for h in hops])
            total = wall.sum() / 1e3
            print(f"{backend:<8} {len(hops):>5} {np.percentile(wall, 50):>7.2f} {np.percentile(wall, 95):>7.2f} "
                  f"{np.percentile(cpu, 50):>8.2f} {np.percentile(cpu, 95):>8.2f} {total / args.seconds:>8.4f} "
                  f"{args.seconds / total:>6.0f} {diff:>23.2e}")


if __name__ == "__main__":
    main()

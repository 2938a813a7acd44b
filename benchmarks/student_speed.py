"""Per registered student: parameters, size on disk, MACs per second of audio, and the real-time
factor on ONE CPU thread for a 3 s clip, in PyTorch and in onnxruntime (median of repeats).

    python benchmarks/student_speed.py [--repeats 30] [--students logmel_cnn ecapa_tdnn ...]

"x real time" = clip duration / median inference time (higher is faster; goal for the default
student: >= 500). Randomly initialised weights (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from liser_core import load_plugins
from liser_core.labels import RAVDESS8
from liser_tools.deploy import export, median_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--students", nargs="*", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    host = load_plugins()
    names = args.students or host.registries.student.list()
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    try:
        from liser_common.profile import macs_per_second
    except ImportError:
        macs_per_second = None
    print(f"{'student':<14} {'params':>9} {'disk KB':>8} {'MMAC/s':>8} {'torch ms':>9} {'x RT':>7} {'ORT ms':>8} {'x RT':>7}")
    for name in names:
        torch.manual_seed(0)
        student = host.registries.student.build(name, label_space=RAVDESS8).eval()
        student.liser_spec = {"name": name, "options": {}}
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "student"
            student.save_pretrained(ckpt)
            disk = (ckpt / "model.safetensors").stat().st_size / 1024
            x = 0.1 * torch.randn(1, int(args.seconds * student.sample_rate))
            with torch.no_grad():
                t_torch = median_seconds(lambda s=student, a=x: s(a), args.repeats)
            t_ort = float("nan")
            if ort is not None:
                export(ckpt, Path(tmp) / "s.onnx", "onnx")
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1
                opts.inter_op_num_threads = 1
                sess = ort.InferenceSession(str(Path(tmp) / "s.onnx"), opts, providers=["CPUExecutionProvider"])
                feed = {"audio": x.numpy()}
                t_ort = median_seconds(lambda s=sess, f=feed: s.run(None, f), args.repeats)
        macs = macs_per_second(student) / 1e6 if macs_per_second else float("nan")
        print(
            f"{name:<14} {student.num_parameters():>9,} {disk:>8.0f} {macs:>8.1f} "
            f"{1e3 * t_torch:>9.2f} {args.seconds / t_torch:>7.0f} {1e3 * t_ort:>8.2f} {args.seconds / t_ort:>7.0f}"
        )
    print(f"(1 CPU thread, {args.seconds:.0f} s clip, median of {args.repeats}; torch {torch.__version__}, numpy {np.__version__})")


if __name__ == "__main__":
    main()

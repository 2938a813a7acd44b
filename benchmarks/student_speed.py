"""Per registered student: parameters, size on disk, MACs per second of audio, and the real-time
factor on ONE CPU thread for a 3 s clip, in PyTorch and in onnxruntime (median of repeats);
then float32 against int8 (onnxruntime static quantization) and ExecuTorch, side by side.

    python benchmarks/student_speed.py [--repeats 30] [--students logmel_cnn ecapa_tdnn ...] [--no-int8]

A last table times the exported log-mel frontend alone (waveform -> log-mel) in onnxruntime
with each of its export methods (``LogMel.prepare_export``): the direct DFT as one strided
convolution and the two-stage DFT that exports use by default; file sizes beside.

"x real time" = clip duration / median inference time (higher is faster; goal for the default
student: >= 500). Randomly initialised weights (speed does not depend on their values); the int8
models are calibrated on 16 synthetic clips (tones in noise). The second table's times are CPU
time of the calling thread (every runtime is set to one thread and runs there), the runtimes
taking turns: on a shared, busy machine CPU time is far steadier than wall time.
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
from liser_tools.deploy import export, median_seconds


def calibration_clips(n: int = 16, rate: int = 16000) -> list[np.ndarray]:
    """Tones in noise of 1-2.5 s at speech-like levels."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        t = np.arange(int((1.0 + 0.1 * i) * rate)) / rate
        out.append((0.2 * np.sin(2 * np.pi * (120 + 30 * i) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32))
    return out


def cpu_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median CPU seconds (calling thread) of each function, the functions taking turns."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn(), fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.thread_time()
            fn()
            times[k].append(time.thread_time() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--students", nargs="*", default=None)
    ap.add_argument("--no-int8", dest="int8", action="store_false", help="skip the float32/int8/ExecuTorch table")
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
    second: list[str] = []
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
                if args.int8:
                    second.append(compare_formats(name, student, ckpt, Path(tmp), x, args))
        macs = macs_per_second(student) / 1e6 if macs_per_second else float("nan")
        print(
            f"{name:<14} {student.num_parameters():>9,} {disk:>8.0f} {macs:>8.1f} "
            f"{1e3 * t_torch:>9.2f} {args.seconds / t_torch:>7.0f} {1e3 * t_ort:>8.2f} {args.seconds / t_ort:>7.0f}"
        )
    print(f"(1 CPU thread, {args.seconds:.0f} s clip, median of {args.repeats}; torch {torch.__version__}, numpy {np.__version__})")
    if ort is not None:
        print("\n" + frontend_methods(ort, args))
    if second:
        print(f"\nfloat32 vs int8 (onnxruntime static, per-channel) vs ExecuTorch (XNNPACK): CPU ms of one "
              f"{args.seconds:g} s clip, 1 thread, taking turns; sizes of the files")
        print(f"{'student':<14} {'torch':>7} {'ORT f32':>8} {'ORT int8':>9} {'int8 x':>7} {'ET f32':>7} "
              f"{'f32 KB':>8} {'int8 KB':>8} {'int8/f32':>9} {'pte KB':>8}")
        print("\n".join(second))


class _Frontend(torch.nn.Module):
    """Waveform -> log-mel (no normalisation): the part every first-party student shares."""

    def __init__(self, method: str):
        super().__init__()
        from liser_plugins.frontend import LogMel

        self.mel = LogMel(16000, 40).eval()
        self.mel.prepare_export(method)

    def forward(self, audio):
        return self.mel.log_mel(audio)


def frontend_methods(ort, args) -> str:
    """The exported frontend alone, per export method: CPU ms of one clip (1 thread, taking
    turns), the ONNX file's size as ``liser export`` writes it and as the exporter wrote it
    (``KB raw``), and the largest difference from torchaudio's log-mel."""
    import torchaudio

    x = 0.1 * torch.randn(1, int(args.seconds * 16000))
    reference = torch.log(torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=40)(x) + 1e-6)
    import onnx

    from liser_core.export import compact_constants, strip_debug_metadata

    fns, kb, raw, err = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("dft", "factored"):
            path = Path(tmp) / f"{method}.onnx"
            samples = torch.export.Dim("samples", min=8000, max=16000 * 3600)
            frontend = _Frontend(method)
            torch.onnx.export(frontend, (x,), input_names=["audio"], dynamic_shapes={"audio": {1: samples}},
                              dynamo=True, verbose=False).save(str(path))
            raw[method] = path.stat().st_size / 1024
            # as liser export writes it: no debug metadata, the kernels as the nodes that compute them
            onnx.save(compact_constants(strip_debug_metadata(onnx.load(str(path))), [("mel", frontend.mel)]), str(path))
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {"audio": x.numpy()}
            fns[method] = lambda s=sess, f=feed: s.run(None, f)
            kb[method] = path.stat().st_size / 1024
            err[method] = float(np.abs(sess.run(None, feed)[0] - reference.numpy()).max())
        ms = {k: 1e3 * v for k, v in cpu_medians(fns, args.repeats).items()}
    rows = [f"log-mel frontend alone, exported (onnxruntime, 1 thread, {args.seconds:g} s clip, CPU ms, taking turns)",
            f"{'method':<10} {'ms':>7} {'x RT':>7} {'KB':>7} {'KB raw':>7} {'max |diff| vs torchaudio':>26}"]
    rows += [f"{k:<10} {ms[k]:>7.3f} {args.seconds * 1e3 / ms[k]:>7.0f} {kb[k]:>7.0f} {raw[k]:>7.0f} {err[k]:>26.1e}"
             for k in ms]
    rows.append(f"two-stage / direct: {ms['dft'] / ms['factored']:.2f}x faster, {kb['factored'] / kb['dft']:.2f}x the size")
    return "\n".join(rows)


def compare_formats(name: str, student, ckpt: Path, tmp: Path, x: torch.Tensor, args) -> str:
    """One row of the second table: torch, ORT float32, ORT int8 and ExecuTorch on ``x``."""
    from liser_tools.quantize import quantize_onnx, session

    quantize_onnx(tmp / "s.onnx", tmp / "s.int8.onnx", calibration=calibration_clips(rate=student.sample_rate))
    f32, i8 = session(tmp / "s.onnx"), session(tmp / "s.int8.onnx")
    feed = {"audio": x.numpy()}
    fns = {"torch": lambda: student(x), "f32": lambda: f32.run(None, feed), "int8": lambda: i8.run(None, feed)}
    pte_kb = float("nan")
    try:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        export(ckpt, tmp / "s.pte", "executorch", window_seconds=args.seconds)
        _unsafe_reset_threadpool(1)
        method = Runtime.get().load_program(str(tmp / "s.pte")).load_method("forward")
        fns["et"] = lambda: method.execute([x])
        pte_kb = (tmp / "s.pte").stat().st_size / 1024
    except ImportError:
        pass
    with torch.no_grad():
        ms = {k: 1e3 * v for k, v in cpu_medians(fns, args.repeats).items()}
    kb = {k: (tmp / f).stat().st_size / 1024 for k, f in (("f32", "s.onnx"), ("int8", "s.int8.onnx"))}
    return (f"{name:<14} {ms['torch']:>7.2f} {ms['f32']:>8.2f} {ms['int8']:>9.2f} {ms['f32'] / ms['int8']:>6.2f}x "
            f"{ms.get('et', float('nan')):>7.2f} {kb['f32']:>8.0f} {kb['int8']:>8.0f} {kb['int8'] / kb['f32']:>8.2f}x "
            f"{pte_kb:>8.0f}")


if __name__ == "__main__":
    main()

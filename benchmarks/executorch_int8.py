"""PyTorch's own int8 path for the on-device program, probed (not wired into ``liser export``).

For each saved student: the float ``.pte`` that ``liser export --format executorch`` writes
(one window of ``--window`` seconds, XNNPACK delegate) against the same program quantized with
PT2E (torchao's ``prepare_pt2e`` / ``convert_pt2e``) and ExecuTorch's ``XNNPACKQuantizer``:
int8 weights per output channel (symmetric), int8 activations calibrated on windows of
generated noise, the audio frontend left in float (as ``liser export --quantize int8`` does for
ONNX). Prints file sizes, the median CPU milliseconds of one window through
``executorch.runtime`` on one thread (the two programs taking turns) and the largest
probability difference from PyTorch. A student whose quantized program XNNPACK cannot lower is
reported with the error and the others go on.

    python benchmarks/executorch_int8.py RUN_DIR/student [RUN_DIR/student ...] [--window 1]

Results: docs/performance.md (Students: float32 against int8, and ExecuTorch).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _lower(module, example, path: Path) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(module, (example,))
    path.write_bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)


def _not_frontend(node) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return not any(".frontend" in f".{path}" for path, _ in stack.values())


def probe(student_dir: str, window_s: float, calibration: int, repeats: int) -> dict:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.runtime import Runtime
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from liser_core import Student
    from liser_core.export import _Exported

    student = Student.from_pretrained(student_dir)
    wrapper = _Exported(student, "executorch").eval()
    for module in wrapper.modules():  # as liser_core.export._executorch: XNNPACK refuses non-persistent buffers
        module._non_persistent_buffers_set.clear()
    n = int(round(window_s * student.sample_rate))
    example = torch.zeros(1, n)
    g = torch.Generator().manual_seed(0)
    out: dict = {"student": student_dir}
    with tempfile.TemporaryDirectory() as tmp:
        f32, q8 = Path(tmp) / "f32.pte", Path(tmp) / "int8.pte"
        with torch.no_grad():
            _lower(wrapper, example, f32)
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        quantizer.set_filter_function(_not_frontend)
        prepared = prepare_pt2e(torch.export.export(wrapper, (example,)).module(), quantizer)
        for _ in range(calibration):
            prepared(0.1 * torch.randn(1, n, generator=g))
        converted = convert_pt2e(prepared)
        try:
            _lower(converted, example, q8)
        except Exception as exc:  # noqa: BLE001 - reported per student
            out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return out
        rt = Runtime.get()
        methods = {k: rt.load_program(str(p)).load_method("forward") for k, p in (("float32", f32), ("int8", q8))}
        x = 0.1 * torch.randn(1, n, generator=g)
        with torch.no_grad():
            ref = wrapper(x)[1]
        times: dict[str, list[float]] = {k: [] for k in methods}
        for _ in range(3):
            for m in methods.values():
                m.execute([x])
        for _ in range(repeats):
            for k, m in methods.items():
                t0 = time.thread_time()
                m.execute([x])
                times[k].append(time.thread_time() - t0)
        for k, p in (("float32", f32), ("int8", q8)):
            probs = methods[k].execute([x])[1]
            out[k] = {"KB": p.stat().st_size / 1024, "ms": 1e3 * float(np.median(times[k])),
                      "max_diff": float((probs - ref).abs().max())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("students", nargs="+", help="saved student folders (RUN_DIR/student)")
    ap.add_argument("--window", type=float, default=1.0, help="window length of the program in seconds (1)")
    ap.add_argument("--calibration", type=int, default=16, help="calibration windows (16)")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'student':<40} {'f32 KB':>8} {'int8 KB':>8} {'size':>6} {'f32 ms':>7} {'int8 ms':>8} {'speed':>6} {'int8 max diff':>14}")
    for s in args.students:
        r = probe(s, args.window, args.calibration, args.repeats)
        if "error" in r:
            print(f"{s:<40} XNNPACK could not lower the int8 program: {r['error']}")
            continue
        f, q = r["float32"], r["int8"]
        print(f"{s:<40} {f['KB']:>8.0f} {q['KB']:>8.0f} {q['KB'] / f['KB']:>5.2f}x {f['ms']:>7.2f} {q['ms']:>8.2f} "
              f"{f['ms'] / q['ms']:>5.2f}x {q['max_diff']:>14.4f}")


if __name__ == "__main__":
    main()

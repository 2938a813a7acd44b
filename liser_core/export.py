"""Exporting a saved student to ONNX or TorchScript, frontend included.

Before exporting, every submodule with a ``prepare_export()`` method is asked to switch to
export-friendly operators (the first-party log-mel frontend computes its STFT as a two-stage
DFT of convolutions and matrix products then, which ONNX runtimes execute much faster than
their STFT operator). The exporter's per-node debug metadata is stripped from ONNX files
(:func:`strip_debug_metadata`).

Exports take a mono waveform at the student's sample rate and contain the audio frontend
(log-mel + normalisation): ``audio`` (batch, samples) float32 -> ``logits``, ``probs``
(batch, classes). A sidecar ``<file>.json`` states the label order, sample rate, that the
frontend is inside, and the window length to use.

In ``liser_core`` (with :mod:`liser_core.card` and :mod:`liser_core.hub`) so that
``Student.push_to_hub`` exports without importing ``liser_tools``; ``liser_tools.deploy``
re-exports :func:`export` (docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import atomic_write_json, read_component_config, resolve_source
from .components import Student
from .errors import UsageError

__all__ = ["export", "strip_debug_metadata"]

class _Exported(torch.nn.Module):
    """Waveform in, logits and probabilities out: the whole student including its frontend."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student
        for module in student.modules():  # let components swap in export-friendly ops
            if hasattr(module, "prepare_export"):
                module.prepare_export()

    def forward(self, audio: torch.Tensor):
        logits = self.student(audio).logits
        return logits, torch.softmax(logits, -1)


def export(
    checkpoint: str | Path,
    output: str | Path,
    fmt: str = "onnx",
    *,
    example_seconds: float = 3.0,
    window_seconds: float | None = None,
    host=None,
) -> dict:
    """Export a saved student to ONNX, TorchScript or ExecuTorch (``.pte``, the XNNPACK backend;
    fixed input of one ``window_seconds`` window, default 1 s); returns (and writes) the sidecar
    metadata."""
    if fmt not in ("onnx", "torchscript", "executorch"):
        raise UsageError(f"--format {fmt!r}: choose onnx, torchscript or executorch")
    checkpoint = resolve_source(checkpoint)
    student = Student.from_pretrained(checkpoint, host=host)
    config = read_component_config(checkpoint, "student")
    wrapper = _Exported(student).eval()
    example = 0.01 * torch.randn(2, int(example_seconds * student.sample_rate))  # batch 2: no 0/1 specialisation
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    if fmt == "onnx":
        batch = torch.export.Dim("batch", min=1, max=4096)
        samples = torch.export.Dim("samples", min=int(0.5 * student.sample_rate), max=student.sample_rate * 3600)
        program = torch.onnx.export(
            wrapper,
            (example,),
            input_names=["audio"],
            output_names=["logits", "probs"],
            dynamic_shapes={"audio": {0: batch, 1: samples}},
            dynamo=True,
            verbose=False,
        )
        program.save(str(tmp))
        import onnx

        model = onnx.load(str(tmp))
        _check_dynamic(model, tmp, output)
        onnx.save(strip_debug_metadata(model), str(tmp))
    elif fmt == "executorch":
        window = int(round((window_seconds or 1.0) * student.sample_rate))
        not_delegated = _executorch(wrapper, torch.zeros(1, window), tmp)
    else:
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        traced.save(str(tmp))
    tmp.replace(output)
    meta = {
        "format": fmt,
        "model": config["name"],
        "options": config["options"],
        "labels": list(student.label_space.classes),
        "sample_rate": student.sample_rate,
        "frontend": "included: input is the mono waveform at sample_rate (log-mel and normalisation inside)",
        "inputs": {"audio": "float32 (batch, samples), samples >= 0.5 s"},
        "outputs": {"logits": "float32 (batch, classes)", "probs": "float32 (batch, classes), softmax of logits"},
        "window_seconds": config.get("train_seconds"),
        "aggregation": "mean of window probabilities, windows of window_seconds with half-window hop",
        "num_parameters": student.num_parameters(),
    }
    if fmt == "executorch":
        meta.update({
            "runtime": "ExecuTorch (executorch.runtime / the C++ Module API), XNNPACK delegate",
            "inputs": {"audio": f"float32 (1, {window}): exactly one window of {window / student.sample_rate:g} s"},
            "window_seconds": window / student.sample_rate,
            "aggregation": "one window per call: stream with a hop (liser predict --stream) or average windows",
            "not_delegated": not_delegated,
        })
    atomic_write_json(output.with_name(output.name + ".json"), meta)
    return meta


def _executorch(wrapper: torch.nn.Module, example: torch.Tensor, path: Path) -> list[str]:
    """Lower ``wrapper`` for ExecuTorch with the XNNPACK partitioner and write the ``.pte``;
    returns the operators left outside the delegate (run by ExecuTorch's portable kernels)."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise UsageError("--format executorch needs ExecuTorch: pip install 'liser[mobile]'") from None
    for module in wrapper.modules():  # XNNPACK's passes refuse non-persistent buffers (the DFT kernels)
        module._non_persistent_buffers_set.clear()
    with torch.no_grad():
        program = torch.export.export(wrapper, (example,))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    left = sorted({_op_name(n.target) for n in edge.exported_program().graph.nodes
                   if n.op == "call_function" and _op_name(n.target) not in ("executorch_call_delegate", "getitem")})
    path.write_bytes(edge.to_executorch().buffer)
    return left


def _op_name(target) -> str:
    """``aten.where.self``, ``dim_order_ops._to_dim_order_copy``: an operator's qualified name
    with its overload (``.default`` left out)."""
    if isinstance(target, torch._ops.OpOverload):  # str(): "aten.scalar_tensor.default"
        name = str(target)
    else:  # ExecuTorch's EdgeOpOverload: __name__ "aten.where.self" (its str() is a repr with the schema)
        name = getattr(target, "__name__", None) or str(target)
    return name.removesuffix(".default")


def strip_debug_metadata(model, keep: tuple[str, ...] = ("pkg.torch.onnx.name_scopes",)):
    """``model`` (an ``onnx.ModelProto``, changed in place and returned) without the per-node
    metadata torch's ONNX exporter writes for debugging (every key but ``keep``): Python stack
    traces with this machine's file paths, FX node text, class hierarchies. A shipped model
    needs none of it, and it was 15-20 % of a small student's file. ``name_scopes`` (the module
    each node came from) stays by default: ``liser export --quantize`` uses it to find the
    frontend."""
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key in keep]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model


def _check_dynamic(model, path: Path, output: Path) -> None:
    """The exporter can silently fix a dimension a model's code makes static; refuse that (and
    remove ``path``, the exported ``model``'s file)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    fixed = [name for name, d in zip(("batch", "samples"), dims) if not d.dim_param]
    if fixed:
        path.unlink(missing_ok=True)
        raise UsageError(
            f"{output}: the exported graph fixed its {' and '.join(fixed)} dimension(s); "
            "the model's forward makes them static (e.g. len(tensor) or Python ints from shapes)"
        )

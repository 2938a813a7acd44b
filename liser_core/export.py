"""Exporting a saved student to ONNX or TorchScript, frontend included.

Before exporting, every submodule with a ``prepare_export()`` method is asked to switch to
export-friendly operators (the first-party log-mel frontend computes its STFT as a strided
convolution then, which ONNX runtimes execute much faster than their STFT operator).

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

__all__ = ["export"]

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
    host=None,
) -> dict:
    """Export a saved student to ONNX or TorchScript; returns (and writes) the sidecar metadata."""
    if fmt not in ("onnx", "torchscript"):
        raise UsageError(f"--format {fmt!r}: choose onnx or torchscript")
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
        _check_dynamic(tmp, output)
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
    atomic_write_json(output.with_name(output.name + ".json"), meta)
    return meta


def _check_dynamic(path: Path, output: Path) -> None:
    """The exporter can silently fix a dimension a model's code makes static; refuse that."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    fixed = [name for name, d in zip(("batch", "samples"), dims) if not d.dim_param]
    if fixed:
        path.unlink(missing_ok=True)
        raise UsageError(
            f"{output}: the exported graph fixed its {' and '.join(fixed)} dimension(s); "
            "the model's forward makes them static (e.g. len(tensor) or Python ints from shapes)"
        )

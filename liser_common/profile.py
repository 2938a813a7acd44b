"""Model size and compute: parameter counts and multiply-accumulates per second of audio.

MACs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on one forward pass
(batch of one clip, eval mode, no gradients) and halved (one MAC = two FLOPs). What it counts:
matrix products and convolutions (``mm``, ``addmm``, ``bmm``, ``convolution``, attention), so
linear and conv layers and the mel filterbank projection (a matmul). What it leaves out:
``torch.stft``'s FFT (the log-mel frontend's spectrogram; a frontend that computes it with
convolutions and matrix products after ``prepare_export()`` is counted) and element-wise work (activations,
normalisation, pooling, masking), which the usual MAC figures for CNNs leave out too.

Example::

    >>> from liser_core import load_plugins
    >>> from liser_core.labels import RAVDESS8
    >>> from liser_common.profile import count_parameters, macs_per_second
    >>> student = load_plugins().registries.student.build("logmel_cnn", label_space=RAVDESS8)
    >>> count_parameters(student) > 0, macs_per_second(student) > 0
    (True, True)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "macs_by_module", "macs_per_second"]


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter values in ``model`` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _count(model: nn.Module, sample_rate: int | None, seconds: float) -> FlopCounterMode:
    rate = sample_rate if sample_rate is not None else getattr(model, "sample_rate", None)
    if rate is None:
        raise ValueError("macs_per_second: the model has no sample_rate attribute; pass sample_rate")
    if seconds <= 0:
        raise ValueError(f"macs_per_second: seconds must be positive, got {seconds}")
    n = int(round(seconds * rate))
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    audio = torch.zeros(1, n, device=device)
    lengths = torch.tensor([n], device=device)
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(audio, lengths)
    finally:
        model.train(was_training)
    return counter


def macs_per_second(model: nn.Module, sample_rate: int | None = None, seconds: float = 1.0) -> int:
    """Multiply-accumulates of one forward pass over ``seconds`` of audio, per second of audio.

    ``model`` is called as ``model(audio, lengths)`` (any :class:`~liser_core.Student`) with one
    clip of ``seconds`` at ``sample_rate`` (default: ``model.sample_rate``). The model's
    training mode is restored afterwards. See the module docstring for what is counted.
    """
    total = _count(model, sample_rate, seconds).get_total_flops() // 2
    return int(round(total / seconds))


def macs_by_module(
    model: nn.Module, sample_rate: int | None = None, seconds: float = 1.0, depth: int = 1
) -> dict[str, int]:
    """MACs of one forward pass over ``seconds`` of audio, in total and per submodule.

    Keys: ``"total"``, then the paths of submodules (``"frontend"``, ``"body.blocks.0"``...) at
    most ``depth`` levels deep that do any counted work. Values are MACs for the whole clip (for
    ``seconds=1``, per second of audio).
    """
    counts = _count(model, sample_rate, seconds).get_flop_counts()
    out = {"total": sum(counts.get("Global", {}).values()) // 2}
    for name, ops in counts.items():
        path = name.partition(".")[2]  # FlopCounterMode prefixes the root module's class name
        if path and path.count(".") < depth:
            out[path] = sum(ops.values()) // 2
    return out

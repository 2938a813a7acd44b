"""Feature taps: named intermediate outputs of a student or teacher, for feature distillation.

A tap is a submodule whose output is caught by a forward hook during the model's own forward
pass. A component may declare friendly names (``taps = {"block2": "body.blocks.1"}``, or
``{"layer6": ("encoder.layers.5", 1)}`` when time is not the last axis); any submodule path
works too (``"body.blocks.1"``, or ``"encoder.layers.5@1"`` with the time axis after ``@``).

A caught output (the first tensor of a tuple) is reduced to a fixed shape per clip,
``(channels, bins)``: time moved last, every other axis but the batch folded into channels,
then each clip's valid frames (its share of the batch's longest clip) averaged into ``bins``
equal segments. Fixed shapes let teacher features go through the store like logits
(:class:`TapView`) and be compared with a student's whatever the clip length.

A tap prefixed ``input:`` (``"input:block2"``, ``"input:body.blocks.1@1"``) catches the
module's *input* (its first positional tensor argument) instead of its output. ``bins`` None
keeps full time resolution: ``(B, channels, T)`` with each clip's frames past its valid count
zeroed, and the valid counts in :attr:`Features.frames` (the student's in
``batch.extra["feature_frames"]``, an online teacher's in ``targets.feature_frames``); the store
cannot hold those, so a teacher's full-resolution taps need an online teacher.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .components import ModelOutput, component_label

INPUT = "input:"  # prefix of a tap that catches a module's input


class Features(dict):
    """Tap name -> features; ``frames``: tap name -> valid frames per clip ``(B,)`` of the taps
    kept at full time resolution (``bins`` None)."""

    def __init__(self):
        super().__init__()
        self.frames: dict[str, torch.Tensor] = {}


def resolve(model: nn.Module, tap: str) -> tuple[nn.Module, int]:
    """The submodule a tap names and its time axis; ``KeyError`` naming the taps there are."""
    declared = dict(getattr(model, "taps", None) or {})
    if tap.startswith(INPUT):
        tap = tap[len(INPUT):]
    spec = declared.get(tap, tap)
    path, time_dim = (spec, -1) if isinstance(spec, str) else (spec[0], int(spec[1]))
    if isinstance(spec, str) and "@" in spec:
        path, _, axis = spec.rpartition("@")
        time_dim = int(axis)
    try:
        return model.get_submodule(path), time_dim
    except AttributeError:
        names = sorted(declared) or [n for n, _ in model.named_children()]
        raise KeyError(f"{component_label(model, type(model).__name__)} has no tap or submodule {tap!r} "
                       f"({'declared taps' if declared else 'no declared taps; top-level modules'}: "
                       f"{', '.join(names) or 'none'})") from None


def pool(x: torch.Tensor, fraction: torch.Tensor, time_dim: int, bins: int) -> torch.Tensor:
    """``(B, ..., T, ...)`` -> ``(B, C, bins)``: valid frames (``fraction`` of T per row) averaged
    into ``bins`` segments; channels are every axis but batch and time."""
    x = x.movedim(time_dim, -1).float()
    b, t = x.shape[0], x.shape[-1]
    x = x.reshape(b, -1, t)
    rows = []
    for i in range(b):
        valid = max(1, min(t, math.ceil(float(fraction[i]) * t - 1e-6)))
        rows.append(F.adaptive_avg_pool1d(x[i : i + 1, :, :valid], bins))
    return torch.cat(rows)


def full(x: torch.Tensor, fraction: torch.Tensor, time_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, ..., T, ...)`` -> ``(B, C, T)`` at full time resolution, each row's frames past its
    valid count (``fraction`` of T, as :func:`pool` counts them) zeroed; and those counts."""
    x = x.movedim(time_dim, -1).float()
    b, t = x.shape[0], x.shape[-1]
    x = x.reshape(b, -1, t)
    valid = torch.tensor([max(1, min(t, math.ceil(float(f) * t - 1e-6))) for f in fraction], device=x.device)
    mask = torch.arange(t, device=x.device)[None, :] < valid[:, None]
    return x * mask[:, None, :], valid


def _first_tensor(args, kwargs):
    for v in [*args, *kwargs.values()]:
        if torch.is_tensor(v):
            return v
    return None


@contextlib.contextmanager
def capture(model: nn.Module, taps: Mapping[str, int | None], lengths: torch.Tensor) -> Iterator[Features]:
    """Catch the outputs (or, for ``input:`` taps, the inputs) of ``taps`` (name -> bins, None:
    full resolution) during ``model``'s forward passes inside the block; on leaving it, the
    dict holds each tap pooled to ``(B, C, bins)``, or ``(B, C, T)`` with its valid frames in
    :attr:`Features.frames`."""
    caught: dict[str, torch.Tensor] = {}
    handles, axes = [], {}
    for name in taps:
        module, axes[name] = resolve(model, name)
        if name.startswith(INPUT):
            def pre_hook(_m, args, kwargs, name=name):
                caught[name] = _first_tensor(args, kwargs)

            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            continue

        def hook(_m, _inp, out, name=name):
            caught[name] = out[0] if isinstance(out, (tuple, list)) else out

        handles.append(module.register_forward_hook(hook))
    result = Features()
    try:
        yield result
    finally:
        for h in handles:
            h.remove()
    fraction = lengths.float() / lengths.max().clamp_min(1).float()
    for name, bins in taps.items():
        if caught.get(name) is None:
            raise RuntimeError(f"tap {name!r} of {component_label(model, type(model).__name__)} produced no "
                               f"{'tensor input' if name.startswith(INPUT) else 'output'} in its forward pass")
        if bins is None:
            result[name], result.frames[name] = full(caught[name], fraction, axes[name])
        else:
            result[name] = pool(caught[name], fraction.to(caught[name].device), axes[name], bins)


class TapView(nn.Module):
    """A teacher seen through its taps: ``forward(batch)`` returns every tap's pooled features,
    flattened and concatenated, as the logits (the embedding is empty). Labeled and stored
    exactly like the teacher's outputs, under a fingerprint of its own (``store_extra``)."""

    def __init__(self, teacher: nn.Module, taps: Mapping[str, int], shapes: Mapping[str, tuple[int, int]]):
        super().__init__()
        self.teacher = teacher
        self.tap_bins = dict(sorted(taps.items()))
        self.shapes = {k: tuple(shapes[k]) for k in self.tap_bins}
        for attr in ("liser_spec", "label_space", "modality", "needs_frames", "sample_rate", "card"):
            if hasattr(teacher, attr):
                setattr(self, attr, getattr(teacher, attr))

    @property
    def store_extra(self) -> dict:
        return {"taps": {k: {"bins": b, "shape": list(self.shapes[k])} for k, b in self.tap_bins.items()}}

    def forward(self, batch) -> ModelOutput:
        with capture(self.teacher, self.tap_bins, batch.lengths) as feats:
            self.teacher(batch)
        flat = torch.cat([feats[k].flatten(1) for k in self.tap_bins], 1)
        return ModelOutput(flat, flat.new_zeros(flat.shape[0], 1))

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat rows back into ``{tap: (N, C, bins)}``."""
        out, at = {}, 0
        for k in self.tap_bins:
            c, b = self.shapes[k]
            out[k] = flat[:, at : at + c * b].reshape(-1, c, b)
            at += c * b
        return out

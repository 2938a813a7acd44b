"""Teacher ``timm_face``: any timm image model, run on the face crops of a clip's frames.

Two ways to use it (see docs/teachers/face.md):

* **a fine-tuned expression classifier** (``checkpoint`` + ``labels``): the checkpoint's
  classifier head is used as is, over the label space ``labels`` names (``affectnet8``,
  ``fer2013_7`` or a list of class names in the head's order). The teacher is ``pretrained``:
  the engine never fits it, the recipe's ``label_map`` takes its classes to the corpus's.
* **a backbone plus a fresh head** (``labels: null``): a new head over the corpus's classes is
  fitted on the teacher split; the backbone is frozen unless ``freeze_backbone: false``.

Weights are read from a local file only (safetensors, or a PyTorch file read with
``weights_only=True``); nothing is downloaded. A frozen backbone loaded from ``checkpoint`` is
left out of LiSER's teacher checkpoints (``checkpoint_exclude``) and reloaded from that file,
whose SHA-256 the checkpoint keeps so a changed file is refused rather than silently used.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from liser_core import Batch, ModelOutput, Teacher, TeacherCard, hookimpl
from liser_core.errors import UsageError
from liser_core.labels import LabelSpace
from liser_core.labels import label_space as resolve_label_space

from .._pin import pin_source_file
from .._timm import create_model
from ..faces import (
    FaceCropper,
    clip_outputs,
    mean_of_probs,
    report_face_stats,
    require,
)

log = logging.getLogger("liser.faces")


def _create(timm, name: str, num_classes: int, kwargs: dict) -> nn.Module:
    return create_model(timm, name, num_classes=num_classes, **kwargs)


def _classifier_keys(model: nn.Module) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def load_weights(model: nn.Module, path: str | Path, *, keep_head: bool) -> None:
    """Load a local weights file into a timm model, strictly except for its classifier.

    safetensors or a PyTorch file (``state_dict``/``model``/EMA nesting and ``module.`` prefixes
    are unwrapped as timm does; pickles are read with ``weights_only=True``). Keys the model
    does not have and missing keys are errors; the model's own ``checkpoint_filter_fn`` is tried
    first when the keys do not match as saved (e.g. original-format checkpoints).
    """
    import sys

    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path), weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {str(path)!r} does not exist") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:  # weights_only refuses code
        raise ValueError(f"cannot read {path} safely: {str(exc).splitlines()[0]}") from None
    head = _classifier_keys(model)
    if not keep_head:
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    own = model.state_dict()

    def mismatch(sd):
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        return missing, unexpected, shapes

    missing, unexpected, shapes = mismatch(state)
    if missing or unexpected or shapes:
        filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                filtered = filter_fn(dict(state), model)
                if not keep_head:
                    filtered = {k: v for k, v in filtered.items() if not k.startswith(head)}
                if not any(mismatch(filtered)):
                    state, missing, unexpected, shapes = filtered, [], [], []
            except Exception:  # noqa: BLE001 - the filter is a best effort; the error below says why
                pass
    if missing or unexpected or shapes:
        detail = "; ".join(
            f"{what}: {keys[:4]}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
            if keys
        )
        raise ValueError(
            f"{path} does not fit timm model {type(model).__name__} as built "
            f"(check `model`, `model_kwargs` and `labels`): {detail}"
        )
    model.load_state_dict(state, strict=True)


def _input_size(model: nn.Module, timm, image_size: int | None) -> tuple[int, int]:
    patch = getattr(model, "patch_embed", None)
    fixed = getattr(patch, "img_size", None)
    if fixed is not None and getattr(patch, "strict_img_size", True) and not getattr(patch, "dynamic_img_size", False):
        fixed = tuple(fixed)
        if image_size is not None and (image_size, image_size) != fixed:
            raise ValueError(
                f"image_size {image_size} but this model is built for {fixed[0]}x{fixed[1]}; "
                f"give model_kwargs: {{img_size: {image_size}}} instead"
            )
        return fixed
    if image_size is not None:
        return (image_size, image_size)
    return tuple(timm.data.resolve_data_config({}, model=model)["input_size"][1:])


def _in_channels(model: nn.Module) -> int:
    first = model.pretrained_cfg.get("first_conv")
    first = first[0] if isinstance(first, (list, tuple)) else first
    try:
        return int(model.get_submodule(first).in_channels)
    except (AttributeError, TypeError):
        return 3


class TimmFaceTeacher(Teacher):
    """A timm image model over face crops; mean of per-frame probabilities or attention over frames."""

    modality = "face"
    needs_frames = True

    def __init__(
        self,
        label_space: LabelSpace,
        model: str,
        checkpoint: str | None = None,
        labels: str | list[str] | None = None,
        freeze_backbone: bool = True,
        frames: int = 4,
        aggregate: Literal["mean", "attention"] = "mean",
        detect_faces: bool = True,
        no_face: Literal["center", "skip", "error"] = "center",
        margin: float = 0.2,
        image_size: int | None = None,
        model_kwargs: dict | None = None,
        trained_on: list[str] | None = None,
        licence: str = "unknown",
    ):
        super().__init__()
        timm = require("timm", "timm_face")
        require("timm.data", "timm_face")
        if labels is not None:
            if checkpoint is None:
                raise ValueError(
                    "labels names the classes of a checkpoint's classifier head: give checkpoint too "
                    "(or labels: null for a fresh head fitted on the corpus)"
                )
            if aggregate != "mean":
                raise ValueError(
                    "aggregate 'attention' is learned and a pretrained head (labels set) is never fitted; "
                    "use aggregate: mean, or labels: null to fit a fresh head with attention"
                )
            try:
                self.label_space = resolve_label_space(labels)
            except UsageError as exc:
                raise ValueError(str(exc).lstrip(": ")) from None
        else:
            self.label_space = label_space
        self.pretrained = labels is not None
        self.fittable = labels is None
        self.own_head = labels is None
        self.frozen = labels is not None or freeze_backbone
        self.aggregate = aggregate
        self.backbone = _create(timm, model, len(self.label_space) if labels is not None else 0, dict(model_kwargs or {}))
        if checkpoint is not None:
            load_weights(self.backbone, checkpoint, keep_head=labels is not None)
        else:
            log.warning(
                "timm_face %s: no checkpoint, the backbone is randomly initialised "
                "(only useful for tests, or with freeze_backbone: false and plenty of data)", model,
            )
        if self.frozen:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()
        if checkpoint is not None and self.frozen:
            # the backbone comes back from `checkpoint` when a saved teacher is rebuilt
            self.checkpoint_exclude = ("backbone.",)
            pin_source_file(self, checkpoint)
        dim = int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)
        self.embedding_dim = dim
        if self.own_head:
            self.head = nn.Linear(dim, len(self.label_space))
        if aggregate == "attention":
            hidden = min(128, dim)
            self.attention = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        cfg = timm.data.resolve_data_config({}, model=self.backbone)
        channels = _in_channels(self.backbone)
        mean, std = torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])
        if channels != len(mean):
            mean, std = mean.mean().repeat(channels), std.mean().repeat(channels)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)
        size = _input_size(self.backbone, timm, image_size)
        interp = cfg.get("interpolation", "bilinear")
        self.faces = FaceCropper(
            owner=f"timm_face[{model}]", frames=frames, size=size, channels=channels, margin=margin,
            policy=no_face, detect=detect_faces, interpolation="bicubic" if interp == "bicubic" else "bilinear",
        )
        n_params = sum(p.numel() for p in self.parameters())
        self.card = TeacherCard(
            name="timm_face",
            modality="face",
            backbone=model,
            label_space=self.label_space.name,
            trained_on=tuple(trained_on or ()),
            licence=licence,
            source=str(checkpoint) if checkpoint else "random init",
            num_parameters=n_params,
            notes=(
                f"{size[0]}x{size[1]} face crops (LBP cascade, margin {margin}), {frames} frames per clip, "
                f"{aggregate} over frames; head {'of the checkpoint' if labels else 'fitted in the run'}"
                f"{', backbone frozen' if self.frozen else ''}; clips without a face: {no_face}"
            ),
        )

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # frozen: BatchNorm statistics and dropout stay as loaded
        return self

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pre-logits embedding, logits of the checkpoint's head or None) per image."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            fmap = self.backbone.forward_features(x)
            emb = self.backbone.forward_head(fmap, pre_logits=True)
            logits = None if self.own_head else self.backbone.forward_head(fmap)
        return emb, logits

    def forward(self, batch: Batch) -> ModelOutput:
        crops, kept, k = self.faces(batch.frames, batch.clip_ids)
        logits = emb = None
        if kept:
            x = (crops.to(self.mean.dtype) - self.mean) / self.std
            feats, head_logits = self._features(x)
            feats = feats.reshape(len(kept), k, -1)
            if self.aggregate == "attention":
                weights = torch.softmax(self.attention(feats).squeeze(-1), 1)
                emb = (weights.unsqueeze(-1) * feats).sum(1)
                logits = self.head(emb)
            else:
                emb = feats.mean(1)
                frame_logits = self.head(feats) if self.own_head else head_logits.reshape(len(kept), k, -1)
                logits = mean_of_probs(frame_logits)
        anchor = next(iter(self.trainable_parameters()), None)
        return ModelOutput(
            *clip_outputs(logits, emb, kept, len(batch.clip_ids), len(self.label_space), self.embedding_dim, anchor)
        )


@hookimpl
def liser_register_teachers(registry):
    registry.register(
        "timm_face",
        TimmFaceTeacher,
        summary="any timm image model on face crops (local checkpoint; fresh or pretrained head)",
        modality="face",
    )


@hookimpl
def liser_stage_end(run, stage):
    report_face_stats(run, stage, TimmFaceTeacher)

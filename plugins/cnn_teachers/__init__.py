"""Self-contained CNN teachers, fitted in a run on the corpus's ``teacher`` split.

``audio_cnn`` (log-mel CNN, ~0.5M parameters) and ``face_cnn`` (per-frame CNN over the face
video, frame embeddings averaged over the clip, ~0.4M parameters) are far larger than the
default student. They stand in for the pretrained teachers of the paper when no checkpoint is
available, and are what the offline default recipe distils from.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from liser_core import Batch, ModelOutput, Teacher, TeacherCard, hookimpl
from liser_core.labels import LabelSpace

from ..frontend import LogMel, MaskedConvStack, check_channels, mean_max_pool


def _conv_blocks(channels: Sequence[int]) -> list[nn.Module]:
    check_channels(channels)
    layers, c_in = [], 1
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    return layers


def _head(c_in: int, hidden: int, n_classes: int, dropout: float):
    trunk = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU())
    return trunk, nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_classes))


class AudioCNNTeacher(Teacher):
    modality = "audio"

    def __init__(
        self,
        label_space: LabelSpace,
        sample_rate: int = 16000,
        n_mels: int = 64,
        channels: Sequence[int] = (24, 48, 96, 192),
        hidden: int = 512,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.label_space = label_space
        self.sample_rate = sample_rate
        self.frontend = LogMel(sample_rate, n_mels)
        self.body = MaskedConvStack(channels)
        self.taps = {f"block{i + 1}": f"body.blocks.{i}" for i in range(len(channels))}  # feature taps (liser_core.taps)
        self.trunk, self.head = _head(2 * self.body.out_channels, hidden, len(label_space), dropout)
        self.embedding_dim = hidden
        self.card = TeacherCard(
            name="audio_cnn", modality="audio", backbone=f"cnn{len(channels)}-logmel{n_mels}",
            label_space=label_space.name, sample_rate=sample_rate, licence="MIT (LiSER)",
        )

    def forward(self, batch: Batch) -> ModelOutput:
        x, valid = self.body(*self.frontend(batch.audio, batch.lengths))
        emb = self.trunk(mean_max_pool(x, valid))
        return ModelOutput(self.head(emb), emb)


class FaceCNNTeacher(Teacher):
    modality = "face"
    needs_frames = True

    def __init__(
        self,
        label_space: LabelSpace,
        image_size: int = 48,
        channels: Sequence[int] = (16, 32, 64, 128),
        train_frames: int = 3,
        hidden: int = 512,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.label_space = label_space
        self.image_size = image_size
        self.train_frames = train_frames
        self.body = nn.Sequential(*_conv_blocks(channels))
        self.trunk, self.head = _head(channels[-1], hidden, len(label_space), dropout)
        self.embedding_dim = hidden
        self.card = TeacherCard(
            name="face_cnn", modality="face", backbone=f"cnn{len(channels)}-{image_size}px",
            label_space=label_space.name, licence="MIT (LiSER)",
        )

    def forward(self, batch: Batch) -> ModelOutput:
        frames = batch.frames
        if frames is None:
            raise ValueError("face_cnn needs video frames; this batch has none")
        if frames.ndim == 5:  # (B, T, H, W, 3) colour -> grey
            frames = frames.mean(-1)
        if self.training and 0 < self.train_frames < frames.shape[1]:
            # a random subset of frames per clip while fitting: cheaper, and a regulariser
            keep = torch.rand(frames.shape[:2], device=frames.device).argsort(1)[:, : self.train_frames]
            frames = torch.gather(frames, 1, keep[:, :, None, None].expand(-1, -1, *frames.shape[2:]))
        b, t, h, w = frames.shape
        x = frames.reshape(b * t, 1, h, w)
        if (h, w) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = (x - 0.5) / 0.25
        x = self.body(x).mean((2, 3)).reshape(b, t, -1).mean(1)  # frame features averaged over the clip
        emb = self.trunk(x)
        return ModelOutput(self.head(emb), emb)


@hookimpl
def liser_register_teachers(registry):
    registry.register("audio_cnn", AudioCNNTeacher, summary="log-mel CNN speech-emotion teacher (~0.5M params)", modality="audio")
    registry.register("face_cnn", FaceCNNTeacher, summary="per-frame CNN facial-expression teacher (~0.4M params)", modality="face")

"""``logmel_cnn``: a small CNN over log-mel features, the default lightweight student."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from liser_core import ModelOutput, Student, hookimpl
from liser_core.labels import LabelSpace

from ..frontend import LogMel, masked_mean, scaled_valid


class LogMelCNN(Student):
    """Conv blocks (3x3 conv, BN, ReLU, 2x2 max-pool) over log-mel, masked mean+max pooling over
    time, a linear classifier. About 25k parameters with the defaults."""

    def __init__(
        self,
        label_space: LabelSpace,
        sample_rate: int = 16000,
        n_mels: int = 40,
        channels: Sequence[int] = (16, 32, 64),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.label_space = label_space
        self.sample_rate = sample_rate
        self.frontend = LogMel(sample_rate, n_mels)
        blocks, c_in = [], 1
        for c in channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*blocks)
        self.embedding_dim = 2 * c_in
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.embedding_dim, len(label_space))

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> ModelOutput:
        x, valid = self.frontend(audio, lengths)
        n_in = x.shape[-1]
        x = self.body(x).mean(2)  # (B, C, T') : average over frequency
        valid = scaled_valid(valid, n_in, x.shape[-1])
        t = torch.arange(x.shape[-1], device=x.device)
        masked = x.masked_fill(t[None, None, :] >= valid[:, None, None], float("-inf"))
        emb = torch.cat([masked_mean(x, valid), masked.amax(-1)], 1)
        return ModelOutput(self.head(self.dropout(emb)), emb)


@hookimpl
def liser_register_students(registry):
    registry.register("logmel_cnn", LogMelCNN, summary="small CNN on log-mel (~25k params)")

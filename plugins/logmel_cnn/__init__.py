"""``logmel_cnn``: a small CNN over log-mel features, the default lightweight student."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from liser_core import ModelOutput, Student, hookimpl
from liser_core.labels import LabelSpace

from ..frontend import LogMel, MaskedConvStack, mean_max_pool


class LogMelCNN(Student):
    """Masked conv blocks (3x3 conv, BN, ReLU, 2x2 max-pool) over log-mel, mean+max pooling over
    valid time, a linear classifier. About 25k parameters with the defaults.

    ``norm="group"`` replaces every BatchNorm with per-clip GroupNorm: predictions and gradients
    then do not depend on which clips share a batch (useful for data-parallel training on CPU,
    where BatchNorm cannot be synchronised across processes).
    """

    def __init__(
        self,
        label_space: LabelSpace,
        sample_rate: int = 16000,
        n_mels: int = 40,
        channels: Sequence[int] = (16, 32, 64),
        dropout: float = 0.1,
        norm: Literal["batch", "group"] = "batch",
    ):
        super().__init__()
        self.label_space = label_space
        self.sample_rate = sample_rate
        self.frontend = LogMel(sample_rate, n_mels, norm=norm)
        self.body = MaskedConvStack(channels, norm=norm)
        self.taps = {f"block{i + 1}": f"body.blocks.{i}" for i in range(len(channels))}  # feature taps (liser_core.taps)
        self.embedding_dim = 2 * self.body.out_channels
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.embedding_dim, len(label_space))

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> ModelOutput:
        x, valid = self.body(*self.frontend(audio, lengths))
        emb = mean_max_pool(x, valid)
        return ModelOutput(self.head(self.dropout(emb)), emb)


@hookimpl
def liser_register_students(registry):
    registry.register("logmel_cnn", LogMelCNN, summary="small CNN on log-mel (~25k params)")

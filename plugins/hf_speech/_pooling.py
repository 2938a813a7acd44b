"""Frame sequences (B, T, D) with ``valid[b]`` real frames -> one vector per clip."""

from __future__ import annotations

import torch
from torch import nn


def frame_mask(h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: True on the first ``valid[b]`` frames of row b."""
    return torch.arange(h.shape[1], device=h.device)[None, :] < valid.to(h.device)[:, None]


def masked_mean(h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the real frames only; what lies in the padding never reaches the result."""
    m = frame_mask(h, valid)
    h = h.masked_fill(~m[..., None], 0.0)
    return h.sum(1) / m.sum(1, keepdim=True).clamp_min(1).to(h.dtype)


class AttentivePool(nn.Module):
    """Self-attentive pooling: ``sum_t softmax_t(w^T tanh(V h_t)) h_t`` over the real frames.

    The additive scorer of Lin et al. (2017, "A structured self-attentive sentence embedding"),
    one head. Padded frames get weight exactly 0.
    """

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        m = frame_mask(h, valid)
        h = h.masked_fill(~m[..., None], 0.0)  # padding may hold anything, even inf/nan
        s = self.score(h).squeeze(-1).masked_fill(~m, float("-inf"))
        return (torch.softmax(s, dim=1)[..., None] * h).sum(1)

"""Audio frontends shared by first-party students and teachers (part of each saved model)."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


class LogMel(nn.Module):
    """Waveform (B, N) at ``sample_rate`` -> log-mel (B, 1, n_mels, frames) + valid frame counts.

    25 ms windows, 10 ms hop; ``log(mel + 1e-6)`` followed by a learned per-input BatchNorm so
    that the model, not the caller, owns the feature normalisation.
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 40, f_max: float | None = None):
        super().__init__()
        self.sample_rate = sample_rate
        self.hop = sample_rate // 100
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=int(0.025 * sample_rate),
            hop_length=self.hop,
            n_mels=n_mels,
            f_max=f_max,
            center=True,
        )
        self.norm = nn.BatchNorm2d(1)

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        return lengths // self.hop + 1

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None):
        with torch.autocast(audio.device.type, enabled=False):
            x = torch.log(self.mel(audio.float()) + 1e-6).unsqueeze(1)
        n = x.shape[-1]
        if lengths is None:
            valid = torch.full((x.shape[0],), n, device=x.device)
        else:
            valid = self.frames(lengths).clamp(max=n)
        return self.norm(x), valid


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the last axis of (B, C, T), counting only the first ``valid[b]`` steps."""
    t = torch.arange(x.shape[-1], device=x.device)
    mask = (t[None, :] < valid[:, None]).to(x.dtype).unsqueeze(1)
    return (x * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def scaled_valid(valid: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    """Valid steps after a time axis of ``n_in`` steps was pooled to ``n_out``."""
    return torch.clamp((valid * n_out + n_in - 1) // n_in, min=1, max=n_out)

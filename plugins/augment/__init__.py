"""First-party training augmentations of the student's audio, from torchaudio's transforms.

``gain``, ``noise``, ``speed`` and ``time_mask``, each applied to a whole batch with per-clip
random draws, in training only (``distil.augment``, ``finetune.augment``, ``baseline.augment``)::

    distil:
      augment:
        - {name: gain, options: {db: [-6, 6]}}
        - {name: noise, options: {snr_db: [10, 30], p: 0.5}}
        - {name: speed, options: {factors: [0.9, 1.0, 1.1]}}

Teachers label the clean clip; the student learns the same target from its augmented version
(a noisy student). Mixup is not here: it would have to mix the teachers' targets too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT

from liser_core import Augmentation, hookimpl


def _range(value, name: str) -> tuple[float, float]:
    lo, hi = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if lo > hi:
        raise ValueError(f"{name}: [{lo}, {hi}] is not a range (low > high)")
    return float(lo), float(hi)


def _prob(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], not {p}")
    return float(p)


def _valid(audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return torch.arange(audio.shape[-1], device=audio.device)[None, :] < lengths[:, None]


def _draw(n: int, lo: float, hi: float, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device)


def _chosen(n: int, p: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) < p


class Gain(Augmentation):
    """Scale each clip by a random gain, uniform in ``db`` decibels (``torchaudio.functional.gain``'s
    rule ``10^(dB / 20)``), with probability ``p``."""

    def __init__(self, sample_rate: int = 16000, db: float | Sequence[float] = (-6.0, 6.0), p: float = 1.0):
        super().__init__()
        self.db, self.p = _range(db, "db"), _prob(p)

    def forward(self, audio, lengths):
        n = audio.shape[0]
        db = _draw(n, *self.db, audio.device) * _chosen(n, self.p, audio.device)
        return audio * torch.pow(10.0, db / 20.0)[:, None].to(audio.dtype), lengths


class Noise(Augmentation):
    """Add white noise at a random signal-to-noise ratio, uniform in ``snr_db``, over each clip's
    valid samples (``torchaudio.functional.add_noise``), with probability ``p``."""

    def __init__(self, sample_rate: int = 16000, snr_db: float | Sequence[float] = (10.0, 30.0), p: float = 1.0):
        super().__init__()
        self.snr_db, self.p = _range(snr_db, "snr_db"), _prob(p)

    def forward(self, audio, lengths):
        n = audio.shape[0]
        noise = torch.randn_like(audio) * _valid(audio, lengths)
        snr = _draw(n, *self.snr_db, audio.device)
        noisy = AF.add_noise(audio, noise, snr, lengths)
        keep = _chosen(n, self.p, audio.device)[:, None]
        return torch.where(keep, noisy, audio), lengths


class Speed(Augmentation):
    """Speed perturbation: resample the batch by one factor drawn from ``factors``
    (``torchaudio.transforms.SpeedPerturbation``); lengths change with it."""

    def __init__(self, sample_rate: int = 16000, factors: Sequence[float] = (0.9, 1.0, 1.1)):
        super().__init__()
        if not factors or any(f <= 0 for f in factors):
            raise ValueError("factors must be positive numbers")
        self.perturb = AT.SpeedPerturbation(sample_rate, [float(f) for f in factors])

    def forward(self, audio, lengths):
        out, new = self.perturb(audio, lengths)
        return out, new.to(lengths.dtype).clamp(max=out.shape[-1])


class TimeMask(Augmentation):
    """Zero up to ``masks`` spans of at most ``max_seconds`` each in every clip (SpecAugment's
    time masking on the waveform, ``torchaudio.transforms.TimeMasking`` with per-clip masks)."""

    def __init__(self, sample_rate: int = 16000, max_seconds: float = 0.1, masks: int = 2, p: float = 1.0):
        super().__init__()
        if max_seconds <= 0 or masks < 1:
            raise ValueError("max_seconds must be > 0 and masks >= 1")
        self.mask = AT.TimeMasking(max(1, int(max_seconds * sample_rate)), iid_masks=True)
        self.masks, self.p = int(masks), _prob(p)

    def forward(self, audio, lengths):
        x = audio[:, None, None, :]  # (B, channel, "freq", time): one mask per clip
        for _ in range(self.masks):
            x = self.mask(x)
        out = x[:, 0, 0, :]
        keep = _chosen(audio.shape[0], self.p, audio.device)[:, None]
        return torch.where(keep, out, audio), lengths


@hookimpl
def liser_register_augmentations(registry):
    registry.register("gain", Gain, summary="random gain, uniform in dB")
    registry.register("noise", Noise, summary="white noise at a random SNR (torchaudio add_noise)")
    registry.register("speed", Speed, summary="speed perturbation by a random factor (torchaudio SpeedPerturbation)")
    registry.register("time_mask", TimeMask, summary="zeroed time spans, SpecAugment-style on the waveform")


__all__ = ["Gain", "Noise", "Speed", "TimeMask"]

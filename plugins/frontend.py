"""Audio frontends shared by first-party students and teachers (part of each saved model).

A public module: plugins may build on the names in ``__all__`` (the example plugin's
``example_gru`` uses ``LogMel`` and ``masked_mean``; docs/plugins.md, section 3). They keep their
names and signatures across releases, and a changed computation would change every saved model
that holds them, so it is treated as a breaking change. The other names here are LiSER's own.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

__all__ = ["LogMel", "MaskedConvStack", "masked_mean", "mean_max_pool", "time_mask"]


class LogMel(nn.Module):
    """Waveform (B, N) at ``sample_rate`` -> log-mel (B, 1, n_mels, frames) + valid frame counts.

    25 ms windows, 10 ms hop; ``log(mel + 1e-6)`` followed by a learned normalisation so that
    the model, not the caller, owns it: ``norm="batch"`` (BatchNorm over the batch) or
    ``"group"`` (each clip standardised on its own: results do not depend on the batch, e.g.
    under data-parallel training without synchronised BatchNorm).
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 40, f_max: float | None = None, norm: str = "batch"):
        super().__init__()
        self.sample_rate = sample_rate
        self.hop = sample_rate // 100
        self.n_fft = int(0.025 * sample_rate)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop,
            n_mels=n_mels,
            f_max=f_max,
            center=True,
        )
        self.norm = norm_layer(norm, 1)
        self.dft_conv = False  # set by prepare_export(): STFT as a strided convolution

    def prepare_export(self) -> None:
        """Compute the spectrogram with a strided conv over windowed DFT kernels instead of
        ``torch.stft``: the same numbers (to float rounding), but ONNX runtimes run convolutions
        far faster than their STFT operator (see docs/performance.md)."""
        n = self.n_fft
        window = self.mel.spectrogram.window.float()
        freqs = torch.arange(n // 2 + 1, dtype=torch.float64)[:, None]
        t = torch.arange(n, dtype=torch.float64)[None, :]
        angle = 2 * torch.pi * freqs * t / n
        kernels = torch.cat([torch.cos(angle), -torch.sin(angle)]).float() * window
        self.register_buffer("dft_kernels", kernels[:, None, :], persistent=False)
        self.dft_conv = True

    def _power_spectrogram_conv(self, padded: torch.Tensor) -> torch.Tensor:
        spec = torch.nn.functional.conv1d(padded[:, None, :], self.dft_kernels, stride=self.hop)
        re, im = spec.chunk(2, dim=1)
        return re * re + im * im  # (B, n_fft // 2 + 1, frames)

    def frames(self, lengths):
        return lengths // self.hop + 1

    def _padded(self, audio: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Each row extended by half a window on both sides by reflection at *its own* ends (what
        ``center=True`` does to a whole clip), whatever padding follows it in the batch."""
        pad = self.n_fft // 2
        n = audio.shape[-1]
        if lengths is None:
            if torch.jit.is_tracing() or n > pad:  # (a traced graph takes whole clips of any length)
                return torch.nn.functional.pad(audio[:, None, :], (pad, pad), mode="reflect")[:, 0]
            lengths = torch.full((audio.shape[0],), n, device=audio.device)  # too short to reflect whole
        last = (lengths.to(audio.device)[:, None] - 1).clamp(min=0)
        i = (torch.arange(n + 2 * pad, device=audio.device) - pad).abs()[None, :]
        i = torch.where(i > last, 2 * last - i, i)  # reflected at the clip's last sample
        i = torch.minimum(i.clamp(min=0), last)  # (a clip shorter than half a window)
        return audio.gather(1, i)

    def log_mel(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The fixed part: ``log(mel + 1e-6)`` (B, n_mels, frames) of a zero-padded batch (B, N);
        each row's first ``frames(lengths[i])`` frames from that clip alone, then the log of
        silence (:data:`SILENCE`). For a whole clip, what ``MelSpectrogram(center=True)`` gives."""
        with torch.autocast(audio.device.type, enabled=False):
            x = self._padded(audio.float(), lengths)
            if self.dft_conv:
                power = self._power_spectrogram_conv(x)
            else:
                spec = self.mel.spectrogram
                power = torchaudio.functional.spectrogram(
                    x, pad=0, window=spec.window, n_fft=spec.n_fft, hop_length=spec.hop_length,
                    win_length=spec.win_length, power=spec.power, normalized=False, center=False,
                )
            out = torch.log(self.mel.mel_scale(power) + 1e-6).contiguous()  # one layout in every path
        if lengths is None:
            return out
        frame = torch.arange(out.shape[-1], device=out.device)[None, None, :]
        keep = frame < self.frames(lengths.to(out.device))[:, None, None]
        return torch.where(keep, out, torch.full_like(out[:1, :1, :1], SILENCE))

    def fixed_config(self) -> dict | None:
        """What the log-mel of a clip depends on (for the feature cache, liser_core.features):
        the settings and the window and filterbank themselves; None when it is not fixed (a
        learnable part)."""
        if any(p.requires_grad for p in self.mel.parameters()):
            return None
        spec = self.mel.spectrogram
        return {"frontend": "liser.LogMel/2", "n_fft": spec.n_fft, "hop": spec.hop_length, "win": spec.win_length,
                "power": spec.power, "window": spec.window, "fb": self.mel.mel_scale.fb, "floor": 1e-6,
                "dft_conv": self.dft_conv}

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None):
        """Log-mel of each clip as if it were alone (reflection at its own end, silence after
        it), so a clip's features do not depend on the batch it is in and match inference; from
        the feature cache where the engine allows it (:func:`liser_core.features.per_clip`)."""
        from liser_core.features import per_clip

        x = per_clip(audio, lengths, self.log_mel, self.frames, config=self.fixed_config(),
                     pad_value=SILENCE).unsqueeze(1)
        n = x.shape[-1]
        if lengths is None:
            valid = torch.full((x.shape[0],), n, device=x.device)
        else:
            valid = self.frames(lengths).clamp(max=n)
        return self.norm(x), valid


#: log(1e-6) in float32: the log-mel of silence, what frames after a clip's end hold
SILENCE = float(torch.log(torch.tensor(1e-6)))


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the last axis of (B, C, T), counting only the first ``valid[b]`` steps."""
    t = torch.arange(x.shape[-1], device=x.device)
    mask = (t[None, :] < valid[:, None]).to(x.dtype).unsqueeze(1)
    return (x * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def time_mask(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, ..., 1, T) mask of the first ``valid[b]`` steps of the last axis of ``x``."""
    t = torch.arange(x.shape[-1], device=x.device)
    mask = t[None, :] < valid[:, None]
    return mask.reshape(x.shape[0], *([1] * (x.ndim - 2)), x.shape[-1]).to(x.dtype)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``batch``: BatchNorm2d; ``group``: GroupNorm with one group (per-clip statistics)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"norm must be 'batch' or 'group', not {kind!r}")


#: More channels than any sensible small model: a typo (an extra zero) fails here, not in malloc.
MAX_CHANNELS = 8192


def check_channels(channels, name: str = "channels") -> None:
    """ValueError unless ``channels`` is a non-empty list of widths in [1, MAX_CHANNELS]."""
    channels = list(channels)
    if not channels:
        raise ValueError(f"{name} is empty: give at least one width, e.g. [16, 32]")
    bad = [c for c in channels if not isinstance(c, int) or isinstance(c, bool) or not 1 <= c <= MAX_CHANNELS]
    if bad:
        raise ValueError(f"{name} must be widths in [1, {MAX_CHANNELS}], got {bad}")


class MaskedConvStack(nn.Module):
    """Blocks of 3x3 conv, normalisation (BatchNorm, or GroupNorm: ``norm="group"``), ReLU and
    2x2 max-pool over (B, C, F, T) features.

    Steps past each clip's valid length are zeroed before every conv, so a padded clip sees the
    same zeros at its end as a clip on its own sees from the conv's own padding: predictions do
    not depend on what a clip is batched with (up to the STFT's last frames).
    """

    def __init__(self, channels, in_channels: int = 1, norm: str = "batch"):
        super().__init__()
        check_channels(channels)
        blocks, c_in = [], in_channels
        for c in channels:
            blocks.append(
                nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1, bias=False), norm_layer(norm, c), nn.ReLU(), nn.MaxPool2d(2))
            )
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = c_in

    def forward(self, x: torch.Tensor, valid: torch.Tensor):
        for block in self.blocks:
            x = block(x * time_mask(x, valid))
            valid = torch.clamp(valid // 2, min=1)
        return x, valid


def mean_max_pool(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, C, F, T) -> (B, 2C): frequency-averaged, then masked mean and max over valid time."""
    x = x.mean(2)
    t = torch.arange(x.shape[-1], device=x.device)
    mx = x.masked_fill(t[None, None, :] >= valid[:, None, None], float("-inf")).amax(-1)
    return torch.cat([masked_mean(x, valid), mx], 1)

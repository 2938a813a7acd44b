"""Audio frontends shared by first-party students and teachers (part of each saved model).

A public module: plugins may build on the names in ``__all__`` (the example plugin's
``example_gru`` uses ``LogMel`` and ``masked_mean``; docs/plugins.md, section 3). They keep their
names and signatures across releases, and a changed computation would change every saved model
that holds them, so it is treated as a breaking change. The other names here are LiSER's own.
"""

from __future__ import annotations

import math

import numpy as np
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
        self.export_path: str | None = None  # set by prepare_export(): "factored" or "dft"

    def prepare_export(self, method: str = "auto") -> None:
        """Compute the mel power spectrum with convolutions and matrix products instead of
        ``torch.stft``: the same numbers (to float rounding), but ONNX runtimes and ExecuTorch
        run these far faster than their STFT operators (see docs/performance.md).

        Where ``n_fft = P * Q`` with ``Q`` dividing the hop (every rate that is a multiple of
        8 kHz: 400 = 20 x 20 at 16 kHz), a two-stage (Cooley-Tukey) DFT: a grouped strided
        convolution does the P-point DFTs with the window and twiddle factors folded in, one
        matrix product the Q-point DFTs, a second the mel filterbank: about a quarter of the
        multiply-adds of a direct DFT, and a fifth of its kernels. Elsewhere (e.g. 22.05 kHz:
        n_fft 551, hop 220), the direct DFT as one strided convolution over windowed kernels.
        ``method``: ``"auto"`` (that
        choice), ``"factored"`` or ``"dft"`` (for comparisons, benchmarks/student_speed.py)."""
        if method not in ("auto", "factored", "dft"):
            raise ValueError(f"method must be 'auto', 'factored' or 'dft', not {method!r}")
        n = self.n_fft
        window = self.mel.spectrogram.window.double()
        fb = self.mel.mel_scale.fb.double()
        factors = None if method == "dft" else _dft_factors(n, self.hop)
        if factors is None and method == "factored":
            raise ValueError(f"n_fft {n} and hop {self.hop} have no two-stage split (Q dividing both)")
        if factors is None:
            freqs = torch.arange(n // 2 + 1, dtype=torch.float64)[:, None]
            t = torch.arange(n, dtype=torch.float64)[None, :]
            angle = 2 * torch.pi * freqs * t / n
            kernels = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window
            self.register_buffer("dft_kernels", kernels[:, None, :].float(), persistent=False)
            self.export_path = "dft"
            return
        # x[n], n = Q p + q. Stage 1 for each q: Z[q, k1] = w^(q k1) sum_p W_P^(p k1) win[n] x[n]
        # (w = exp(-2 pi i / n_fft), W_P = w^Q); stage 2: X[k1 + P k2] = sum_q W_Q^(q k2) Z[q, k1].
        P, Q = factors
        K2 = (n // 2) // P + 1  # k2 values that reach bins up to n_fft / 2
        p = torch.arange(P, dtype=torch.float64)
        q = torch.arange(Q, dtype=torch.float64)
        angle = -2 * torch.pi * (p[None, :, None] * p[None, None, :] / P + q[:, None, None] * p[None, :, None] / n)
        win = window.reshape(P, Q).T[:, None, None, :]  # (q, 1, 1, p)
        stage1 = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * win  # (q, re/im, k1, p)
        k2 = torch.arange(K2, dtype=torch.float64)
        angle2 = -2 * torch.pi * k2[:, None] * q[None, :] / Q  # (k2, q)
        c, s = torch.cos(angle2), torch.sin(angle2)
        # rows (re/im, k2); columns (q, re/im), the order of stage 1's output channels
        stage2 = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)]).reshape(2 * K2, 2 * Q)
        k = (p[None, :] + P * k2[:, None]).long().flatten()  # bin of each (k2, k1)
        mel = torch.zeros(K2 * P, fb.shape[1], dtype=torch.float64)
        mel[k <= n // 2] = fb[k[k <= n // 2]]
        self.register_buffer("dft_stage1", stage1.reshape(Q * 2 * P, 1, P).float(), persistent=False)
        self.register_buffer("dft_stage2", stage2.float(), persistent=False)
        self.register_buffer("dft_mel", mel.T.contiguous().float(), persistent=False)
        self.dft_factors = (P, Q)
        self.export_path = "factored"

    def onnx_constants(self, prefix: str) -> tuple[list, list]:
        """The DFT kernels of an ONNX export (``prefix``: this module's name in the exported
        model) as the few nodes that compute them, for :func:`liser_core.export.compact_constants`:
        the window (``n_fft`` floats) and ``cos``/``sin`` of ``2 pi (k m mod n_fft) / n_fft``
        instead of the kernels themselves (64 KB at 16 kHz). onnxruntime folds them into a
        constant once, when a session loads the model; they match the buffers to float32
        rounding of the sine (tested). ``([], [])`` before :meth:`prepare_export`."""
        if self.export_path is None:
            return [], []
        from onnx import TensorProto, helper, numpy_helper

        n = self.n_fft
        window = self.mel.spectrogram.window.detach().double().cpu()
        if self.export_path == "factored":  # (q, re/im, k1, p), sample m = Q p + q
            P, Q = self.dft_factors
            out, k_shape, m_shape, axis = f"{prefix}.dft_stage1", [1, 1, P, 1], [Q, 1, 1, P], 1
            win, final, k_count = window.reshape(P, Q).T.reshape(m_shape), [Q * 2 * P, 1, P], P
        else:  # (re/im, k, 1, m)
            k_count = n // 2 + 1
            out, k_shape, m_shape, axis = f"{prefix}.dft_kernels", [k_count, 1], [1, n], 0
            win, final = window.reshape(m_shape), [2 * k_count, 1, n]
        t = f"{out}/"  # names of the intermediate tensors

        def const(name, value, dtype=None):
            return numpy_helper.from_array(np.asarray(value, dtype=dtype), t + name)

        inits = [const("zero", 0, np.int64), const("one", 1, np.int64), const("n", n, np.int64),
                 const("k_count", k_count, np.int64), const("window", win.float().numpy()),
                 const("two_pi_over_n", 2 * np.pi / n, np.float32), const("k_shape", k_shape, np.int64),
                 const("m_shape", m_shape, np.int64), const("final", final, np.int64)]
        nodes = [helper.make_node("Range", [t + "zero", t + "n", t + "one"], [t + "m_flat"]),
                 helper.make_node("Range", [t + "zero", t + "k_count", t + "one"], [t + "k_flat"]),
                 helper.make_node("Reshape", [t + "k_flat", t + "k_shape"], [t + "k"])]
        if self.export_path == "factored":  # m[q, p] = Q p + q
            inits.append(const("pq", [P, Q], np.int64))
            nodes += [helper.make_node("Reshape", [t + "m_flat", t + "pq"], [t + "m_pq"]),
                      helper.make_node("Transpose", [t + "m_pq"], [t + "m_qp"], perm=[1, 0]),
                      helper.make_node("Reshape", [t + "m_qp", t + "m_shape"], [t + "m"])]
        else:
            nodes.append(helper.make_node("Reshape", [t + "m_flat", t + "m_shape"], [t + "m"]))
        nodes += [helper.make_node("Mul", [t + "k", t + "m"], [t + "km"]),
                  helper.make_node("Mod", [t + "km", t + "n"], [t + "km_mod"]),  # exact in int64
                  helper.make_node("Cast", [t + "km_mod"], [t + "km_float"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [t + "km_float", t + "two_pi_over_n"], [t + "angle"]),
                  helper.make_node("Cos", [t + "angle"], [t + "cos"]),
                  helper.make_node("Sin", [t + "angle"], [t + "sin"]),
                  helper.make_node("Neg", [t + "sin"], [t + "minus_sin"]),
                  helper.make_node("Concat", [t + "cos", t + "minus_sin"], [t + "trig"], axis=axis),
                  helper.make_node("Mul", [t + "trig", t + "window"], [t + "windowed"]),
                  helper.make_node("Reshape", [t + "windowed", t + "final"], [out])]
        for node in nodes:
            node.name = node.output[0]
        return nodes, inits

    def _mel_power_exported(self, padded: torch.Tensor) -> torch.Tensor:
        """Mel power (B, n_mels, frames) of padded clips (B, N + n_fft) after prepare_export()."""
        if self.export_path == "dft":
            spec = torch.nn.functional.conv1d(padded[:, None, :], self.dft_kernels, stride=self.hop)
            re, im = spec.chunk(2, dim=1)
            return self.mel.mel_scale(re * re + im * im)
        P, Q = self.dft_factors
        b, n = padded.shape
        rows = padded[:, : (n // Q) * Q].reshape(b, n // Q, Q).transpose(1, 2)  # (B, Q, N / Q): x[Q p + q]
        z = torch.nn.functional.conv1d(rows, self.dft_stage1, stride=self.hop // Q, groups=Q)  # (B, Q*2*P, T)
        frames = z.shape[-1]
        re, im = torch.matmul(self.dft_stage2, z.reshape(b, 2 * Q, P * frames)).reshape(b, 2, -1, frames).unbind(1)
        return torch.matmul(self.dft_mel, re * re + im * im)  # (B, K2*P, T) power -> mel

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
            if self.export_path is not None:
                mel = self._mel_power_exported(x)
            else:
                spec = self.mel.spectrogram
                mel = self.mel.mel_scale(torchaudio.functional.spectrogram(
                    x, pad=0, window=spec.window, n_fft=spec.n_fft, hop_length=spec.hop_length,
                    win_length=spec.win_length, power=spec.power, normalized=False, center=False,
                ))
            out = torch.log(mel + 1e-6).contiguous()  # one layout in every path
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
                "export_path": self.export_path}

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


def _dft_factors(n_fft: int, hop: int) -> tuple[int, int] | None:
    """(P, Q) with ``P * Q == n_fft``, ``Q`` dividing ``hop`` and as close to sqrt(n_fft) as
    such a split allows (the cheapest two-stage DFT); None where there is none."""
    g = math.gcd(n_fft, hop)
    options = [q for q in range(2, g + 1) if g % q == 0]
    if not options:
        return None
    q = min(options, key=lambda q: abs(math.log(q * q / n_fft)))
    return n_fft // q, q


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

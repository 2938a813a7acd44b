"""One component for each extension point of LiSER's plugin API, second edition.

* :class:`ProsodyTeacher` fits itself (``Teacher.fit``): hand-made prosodic features and a
  ridge-regression head solved in closed form, no gradient loop.
* :class:`AnnealedKL` knows where training is (``self.position``): its temperature falls
  linearly from ``t_start`` to ``t_end`` over the stage.
* :class:`AttentionTransfer` reads intermediate features (``feature_requests``): the student's
  and a teacher's energy over time, compared as attention maps.
* :class:`EpochCSV` writes each epoch's metrics, the validation ones (``val_*``) included, to a
  CSV file: validation and early stopping made visible.
* :class:`ConfidenceCombiner` (a target combiner) and :class:`Polarity` (a training
  augmentation) fill the two new registries.

Third edition:

* :class:`SignSGD` (an optimizer, ``distil.optimizer: sign_sgd``) and :func:`linear_decay` (a
  learning-rate schedule) are training components; :class:`AnnealedKL` logs its temperature
  (``Loss.log``) into every epoch's metrics.
* :class:`SpeakerMix` (a batch sampler) spreads each batch over as many speakers as it can.
* :class:`EnergyContour` compares frame-level energy contours at full time resolution (taps with
  ``bins`` None), reading the student's GRU *input* (``input:gru``) and an online teacher's tap.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import torch.nn.functional as F
from liser_core import (
    Augmentation,
    Batch,
    BatchTargets,
    Combiner,
    LabelSpace,
    Loss,
    ModelOutput,
    Sampler,
    Teacher,
    TeacherCard,
    hookimpl,
)


def prosody_features(audio: torch.Tensor, lengths: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """``(B, 6)``: mean and std over 25 ms frames (10 ms hop) of log energy, zero-crossing rate
    and spectral centroid (kHz), over each clip's valid samples."""
    win, hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
    rows = []
    for x, n in zip(audio, lengths.tolist()):
        x = x[: max(int(n), win)]
        if x.numel() < win:
            x = F.pad(x, (0, win - x.numel()))
        frames = x.unfold(0, win, hop)  # (T, win)
        energy = frames.pow(2).mean(1).clamp_min(1e-10).log()
        zcr = (frames[:, 1:] * frames[:, :-1] < 0).float().mean(1)
        spec = torch.fft.rfft(frames * torch.hann_window(win, device=x.device)).abs()
        freqs = torch.fft.rfftfreq(win, 1 / sample_rate, device=x.device) / 1000
        centroid = (spec * freqs).sum(1) / spec.sum(1).clamp_min(1e-10)
        feats = torch.stack([energy, zcr, centroid], 1)
        rows.append(torch.cat([feats.mean(0), feats.std(0, unbiased=False)]))
    return torch.stack(rows)


class ProsodyTeacher(Teacher):
    """Six prosodic features, standardised, and a linear head fitted by ridge regression onto
    one-hot labels in closed form, ``W = (X^T X + lambda I)^{-1} X^T Y`` (:meth:`fit`).

    Args:
        label_space: the corpus's classes (injected by LiSER).
        ridge: ``lambda``, the L2 penalty of the closed-form fit.
        sample_rate: the rate LiSER resamples audio to.
    """

    modality = "audio"

    def __init__(self, label_space: LabelSpace, ridge: float = 1.0, sample_rate: int = 16000):
        super().__init__()
        if ridge < 0:
            raise ValueError("ridge must be >= 0")
        self.label_space, self.sample_rate, self.ridge = label_space, sample_rate, ridge
        self.embedding_dim = 6
        # what fit() finds lives in buffers: saved (safetensors), reloaded and reused like weights
        self.register_buffer("mean", torch.zeros(6))
        self.register_buffer("std", torch.ones(6))
        self.register_buffer("weight", torch.zeros(7, len(label_space)))
        self.card = TeacherCard(name="prosody", modality="audio", backbone="prosody-6+ridge",
                                label_space=label_space.name, sample_rate=sample_rate, licence="MIT")

    def embed(self, batch: Batch) -> torch.Tensor:
        return (prosody_features(batch.audio, batch.lengths, self.sample_rate) - self.mean) / self.std

    def forward(self, batch: Batch) -> ModelOutput:
        z = self.embed(batch)
        return ModelOutput(F.pad(z, (0, 1), value=1.0) @ self.weight, z)

    def fit(self, dataset, *, config, device, seed):
        feats, labels = [], []
        for batch in dataset.loader(config.batch_size):
            if batch is not None:
                feats.append(prosody_features(batch.audio, batch.lengths, self.sample_rate))
                labels.append(batch.labels)
        x, y = torch.cat(feats).double(), torch.cat(labels)
        self.mean.copy_(x.mean(0).float())
        self.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6).float())
        z = F.pad((x - self.mean.double()) / self.std.double(), (0, 1), value=1.0)
        onehot = F.one_hot(y, len(self.label_space)).double()
        eye = torch.eye(z.shape[1], dtype=torch.float64)
        eye[-1, -1] = 0.0  # the bias is not penalised
        self.weight.copy_(torch.linalg.solve(z.T @ z + self.ridge * eye, z.T @ onehot).float())
        accuracy = ((z @ self.weight.double()).argmax(1) == y).double().mean().item()
        return {"train_accuracy": accuracy, "clips": len(y)}


class AnnealedKL(Loss):
    r"""KL to the teachers' targets at a temperature annealed over the stage:
    ``T = t_start + (t_end - t_start) * progress``, the loss ``T^2 KL(p_T || q_T)``."""

    needs_teacher = True

    def __init__(self, t_start: float = 4.0, t_end: float = 1.0):
        super().__init__()
        if t_start <= 0 or t_end <= 0:
            raise ValueError("temperatures must be > 0")
        self.t_start, self.t_end = t_start, t_end

    def temperature(self) -> float:
        return self.t_start + (self.t_end - self.t_start) * self.position.progress

    def forward(self, student: ModelOutput, batch: Batch, targets: BatchTargets | None):
        if targets is None:
            return None
        t = self.temperature()
        self.log("temperature", t)  # its mean over each epoch: `annealed_kl/temperature` in the metrics
        log_q = F.log_softmax(student.logits.float() / t, -1)
        return F.kl_div(log_q, targets.probs(t), reduction="batchmean") * t * t


class AttentionTransfer(Loss):
    r"""Attention transfer over time (Zagoruyko & Komodakis 2017, on the time axis): each tap's
    energy per segment, ``a_k = sum_c f_{c,k}^2``, L2-normalised over the ``bins`` segments, and
    ``mean_b ||a^s_b - a^t_b||^2``. No adapter: channels need not agree."""

    needs_teacher = True

    def __init__(self, student_tap: str = "gru", teacher_tap: str = "block2", teacher: str | None = None, bins: int = 8):
        super().__init__()
        self.student_tap, self.teacher_tap, self.teacher, self.bins = student_tap, teacher_tap, teacher, bins

    def bind(self, student_dim, teacher_dims):
        self.teacher = self.teacher or next(iter(teacher_dims))

    def feature_requests(self):
        return [("student", self.student_tap, self.bins), (self.teacher, self.teacher_tap, self.bins)]

    @staticmethod
    def attention(f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f.float().pow(2).sum(1), dim=-1)

    def forward(self, student: ModelOutput, batch: Batch, targets: BatchTargets | None):
        if targets is None:
            return None
        a_s = self.attention(batch.extra["features"][self.student_tap])
        a_t = self.attention(targets.features[self.teacher][self.teacher_tap]).detach()
        return (a_s - a_t).pow(2).sum(-1).mean()


class EpochCSV:
    """A logger: one CSV row per epoch (stage, model, epoch, every metric incl. ``val_*``)."""

    def __init__(self, path: str = "epochs.csv"):
        self.path = path

    @hookimpl
    def liser_run_start(self, run):
        if not run.resumed:  # a run started afresh (--restart) writes a fresh file; a resumed one appends
            (Path(run.run_dir) / self.path).unlink(missing_ok=True)

    @hookimpl
    def liser_epoch_end(self, run, stage, model, epoch, metrics, replayed):
        if replayed:
            return
        out = Path(run.run_dir) / self.path
        new = not out.exists()
        with open(out, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["stage", "model", "epoch", "metric", "value"])
            for k, v in sorted(metrics.items()):
                w.writerow([stage, model, epoch + 1, k, f"{v:.6g}"])


class ConfidenceCombiner(Combiner):
    """Per clip, each teacher's weight scaled by its confidence (its top probability to the power
    ``sharpness``), renormalised: a teacher unsure about a clip counts less for that clip."""

    def __init__(self, sharpness: float = 1.0):
        if sharpness < 0:
            raise ValueError("sharpness must be >= 0")
        self.sharpness = sharpness

    def __call__(self, probs, weights, reached):
        conf = torch.stack([w * p.amax(-1) ** self.sharpness for w, p in zip(weights, probs)])  # (K, B)
        conf = conf / conf.sum(0, keepdim=True).clamp_min(1e-12)
        mix = sum(c[:, None] * p for c, p in zip(conf, probs))
        return mix / mix.sum(-1, keepdim=True)


class Polarity(Augmentation):
    """Flip the sign of each clip's waveform with probability ``p`` (inaudible, yet a different
    input to a model that has not learned that)."""

    def __init__(self, sample_rate: int = 16000, p: float = 0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError("p must be in [0, 1]")
        self.p = p

    def forward(self, audio, lengths):
        flip = torch.rand(audio.shape[0], device=audio.device) < self.p
        return torch.where(flip[:, None], -audio, audio), lengths


class EnergyContour(Loss):
    r"""Frame-level energy contours, unpooled: per clip, each tap's energy per frame
    ``e_k = sum_c f_{c,k}^2`` over its valid frames, the teacher's linearly resampled to the
    student's frame count, both L2-normalised; the loss is ``mean_b ||e^s_b - e^t_b||^2``. Reads
    the student's tap at full time resolution (``bins`` None) -- by default the *input* of its
    GRU, the log-mel frames -- and the teacher's, which must run online (``teachers.N.online``)."""

    needs_teacher = True

    def __init__(self, student_tap: str = "input:gru", teacher_tap: str = "block2", teacher: str | None = None):
        super().__init__()
        self.student_tap, self.teacher_tap, self.teacher = student_tap, teacher_tap, teacher

    def bind(self, student_dim, teacher_dims):
        self.teacher = self.teacher or next(iter(teacher_dims))

    def feature_requests(self):
        return [("student", self.student_tap, None), (self.teacher, self.teacher_tap, None)]

    @staticmethod
    def contour(f: torch.Tensor, frames: int, size: int) -> torch.Tensor:
        e = f[:, :frames].float().pow(2).sum(0)
        if frames != size:
            e = F.interpolate(e[None, None], size=size, mode="linear", align_corners=False)[0, 0]
        return F.normalize(e, dim=0)

    def forward(self, student: ModelOutput, batch: Batch, targets: BatchTargets | None):
        if targets is None:
            return None
        fs, ns = batch.extra["features"][self.student_tap], batch.extra["feature_frames"][self.student_tap]
        ft = targets.features[self.teacher][self.teacher_tap]
        nt = targets.feature_frames[self.teacher][self.teacher_tap]
        rows = []
        for i in range(fs.shape[0]):
            n = int(ns[i])
            a = self.contour(fs[i], n, n)
            b = self.contour(ft[i], int(nt[i]), n).detach()
            rows.append((a - b).pow(2).sum())
        return torch.stack(rows).mean()


class SignSGD(torch.optim.Optimizer):
    """signSGD with momentum (Bernstein et al. 2018, "signum"): ``m = beta m + (1 - beta) g``,
    ``w -= lr (sign(m) + weight_decay w)``. Every parameter group keeps its own ``lr``."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, beta: float = 0.9):
        if not 0 <= beta < 1:
            raise ValueError("beta must be in [0, 1)")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "beta": beta})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("momentum", torch.zeros_like(p))
                m.mul_(group["beta"]).add_(p.grad, alpha=1 - group["beta"])
                p.add_(torch.sign(m) + group["weight_decay"] * p, alpha=-group["lr"])
        return loss


def linear_decay(optimizer, total_steps: int, end: float = 0.0):
    """The learning rate falls linearly from its value at the first step to ``end`` times it at
    the last: the multiplier at step ``s`` is ``1 - (1 - end) s / total_steps``."""
    if not 0 <= end <= 1:
        raise ValueError("end must be in [0, 1]")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - (1 - end) * min(s, total_steps) / total_steps)


class SpeakerMix(Sampler):
    """Batches that mix speakers: the clips of each speaker shuffled, then dealt round-robin over
    the speakers (in a random order) and cut into batches, so that a batch holds as many
    speakers as there are. Every clip once per epoch."""

    def epoch(self, seconds, labels, speakers, batch_size, generator):
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(speakers):
            groups.setdefault(s, []).append(i)
        names = sorted(groups)
        names = [names[k] for k in torch.randperm(len(names), generator=generator).tolist()]
        queues = [[groups[n][k] for k in torch.randperm(len(groups[n]), generator=generator).tolist()] for n in names]
        order = []
        while any(queues):
            for q in queues:
                if q:
                    order.append(q.pop(0))
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


__all__ = ["AnnealedKL", "AttentionTransfer", "ConfidenceCombiner", "EnergyContour", "EpochCSV", "Polarity", "ProsodyTeacher",
           "SignSGD", "SpeakerMix", "linear_decay", "prosody_features"]

"""First-party loss terms: ``kl``, ``dkd``, ``feature_matching``, ``fitnets``, ``ce``.

Every term has the same call ``loss(student, batch, targets)`` (see :class:`liser_core.Loss`)
and returns a scalar, or None when it does not apply to the batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from liser_core import Batch, BatchTargets, Loss, ModelOutput, hookimpl


class KLDivergence(Loss):
    r"""Knowledge distillation at temperature T (Hinton, Vinyals & Dean 2015).

    .. math:: \mathcal{L} = T^2 \cdot \frac{1}{B} \sum_b \sum_c p_{b,c} \log \frac{p_{b,c}}{q_{b,c}},
       \quad q = \mathrm{softmax}(z_s / T)

    where ``p`` is the teachers' combined distribution at temperature ``T`` projected onto the
    student's classes. The ``T^2`` factor keeps gradient magnitudes comparable across T.
    """

    needs_teacher = True

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = temperature

    def forward(self, student: ModelOutput, batch: Batch, targets: BatchTargets | None):
        if targets is None:
            return None
        t = self.temperature
        p = targets.probs(t)
        log_q = F.log_softmax(student.logits.float() / t, -1)
        return F.kl_div(log_q, p, reduction="batchmean") * t * t


class DecoupledKD(Loss):
    r"""Decoupled knowledge distillation (Zhao et al., CVPR 2022), with its warm-up.

    With ``t`` the target class of a clip, ``p`` the teachers' combined distribution and ``q``
    the student's, both at temperature T:

    .. math:: \mathcal{L} = w(e) \, T^2 \big[\alpha \, \mathrm{KL}(b^p \| b^q)
       + \beta \, \mathrm{KL}(\hat p \| \hat q)\big]

    where ``b = (p_t, 1 - p_t)`` is the binary target / non-target split (TCKD), ``\hat p`` the
    distribution over the non-target classes, ``p_c / (1 - p_t)`` for ``c != t`` (NCKD), each KL a
    mean over the batch, and ``w(e) = min(e / warmup, 1)`` at epoch ``e`` counted from 1
    (``self.position``), as in the authors' code. The target class is the clip's label where it
    has one, else the teachers' most likely class.
    """

    needs_teacher = True
    eps = 1e-8

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 20):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        if warmup < 0 or alpha < 0 or beta < 0:
            raise ValueError("alpha, beta and warmup must be >= 0")
        self.alpha, self.beta, self.temperature, self.warmup = alpha, beta, temperature, warmup

    def forward(self, student: ModelOutput, batch: Batch, targets: BatchTargets | None):
        if targets is None:
            return None
        t = self.temperature
        p = targets.probs(t).float()
        target = torch.where(batch.labels >= 0, batch.labels, targets.probs(1.0).argmax(-1))
        gt = F.one_hot(target, p.shape[-1]).bool()
        log_q = F.log_softmax(student.logits.float() / t, -1)
        p_t = p[gt].clamp(self.eps, 1 - self.eps)
        log_q_t = log_q[gt]
        log_q_rest = torch.log1p(-log_q_t.exp().clamp(max=1 - self.eps))
        tckd = p_t * (p_t.log() - log_q_t) + (1 - p_t) * ((1 - p_t).log() - log_q_rest)
        p_hat = p.masked_fill(gt, 0.0) / (1 - p_t).unsqueeze(-1)
        log_q_hat = F.log_softmax((student.logits.float() / t).masked_fill(gt, -torch.inf), -1).masked_fill(gt, 0.0)
        nckd = (torch.xlogy(p_hat, p_hat) - p_hat * log_q_hat).sum(-1)
        weight = min((self.position.epoch + 1) / self.warmup, 1.0) if self.warmup else 1.0
        return weight * t * t * (self.alpha * tckd + self.beta * nckd).mean()


class FeatureMatching(Loss):
    """Match the student's clip embedding, linearly projected, to one teacher's (FitNets-style,
    Romero et al. 2015, on pooled embeddings).

    ``distance="mse"``: mean squared error; ``"cosine"``: ``1 - cos``. With ``normalize`` both
    embeddings are layer-normalised first so the term's scale does not depend on the teacher's.
    """

    needs_teacher = True

    def __init__(
        self,
        teacher: str | None = None,
        distance: Literal["mse", "cosine"] = "mse",
        normalize: bool = True,
    ):
        super().__init__()
        self.teacher = teacher
        self.distance = distance
        self.normalize = normalize
        self.proj: nn.Module | None = None

    def bind(self, student_dim: int, teacher_dims: dict[str, int]) -> None:
        if not teacher_dims:
            raise ValueError("feature_matching needs a teacher")
        if self.teacher is None:
            self.teacher = next(iter(teacher_dims))
        if self.teacher not in teacher_dims:
            raise KeyError(
                f"teacher {self.teacher!r} is not in this recipe (teachers: {', '.join(teacher_dims)})"
            )
        self.proj = nn.Linear(student_dim, teacher_dims[self.teacher])

    def forward(self, student: ModelOutput, batch: Batch, targets: BatchTargets | None):
        if targets is None:
            return None
        s = self.proj(student.embedding.float())
        t = targets.embeddings[self.teacher].float().detach()
        if self.normalize:
            s, t = F.layer_norm(s, s.shape[-1:]), F.layer_norm(t, t.shape[-1:])
        if self.distance == "cosine":
            return (1 - F.cosine_similarity(s, t, dim=-1)).mean()
        return F.mse_loss(s, t)


class FitNets(Loss):
    r"""FitNets hints (Romero et al., ICLR 2015) between intermediate features.

    A student tap's features ``s`` (channels ``C_s``, time pooled into ``bins`` segments) go
    through a learned regressor ``r`` (a 1x1 convolution, ``C_s -> C_t``, trained with the student
    and not part of the saved student) and are matched to a teacher tap's ``t``:

    .. math:: \mathcal{L} = \frac{1}{B \, C_t \, K} \sum_{b,c,k} \big(r(s)_{b,c,k} - t_{b,c,k}\big)^2

    (``K`` = bins; with ``normalize``, ``s`` and ``t`` are first standardised over channels per
    segment so the teacher's scale does not set the term's). Taps are names a component declares
    or submodule paths (``liser show`` lists a component's; docs/plugins.md).
    """

    needs_teacher = True

    def __init__(self, student_tap: str = "", teacher_tap: str = "", teacher: str | None = None, bins: int = 8,
                 normalize: bool = True):
        super().__init__()
        if not student_tap or not teacher_tap:
            raise ValueError("fitnets needs student_tap and teacher_tap (a tap name or submodule path of each)")
        if bins < 1:
            raise ValueError("bins must be >= 1")
        self.student_tap, self.teacher_tap, self.teacher = student_tap, teacher_tap, teacher
        self.bins, self.normalize = int(bins), normalize
        self.regressor: nn.Module | None = None

    def bind(self, student_dim: int, teacher_dims: dict[str, int]) -> None:
        if not teacher_dims:
            raise ValueError("fitnets needs a teacher")
        self.teacher = self.teacher or next(iter(teacher_dims))
        if self.teacher not in teacher_dims:
            raise KeyError(f"teacher {self.teacher!r} is not in this recipe (teachers: {', '.join(teacher_dims)})")

    def feature_requests(self):
        return [("student", self.student_tap, self.bins), (self.teacher, self.teacher_tap, self.bins)]

    def bind_features(self, shapes):
        c_s, c_t = shapes[("student", self.student_tap)][0], shapes[(self.teacher, self.teacher_tap)][0]
        self.regressor = nn.Conv1d(c_s, c_t, kernel_size=1)

    def forward(self, student: ModelOutput, batch: Batch, targets: BatchTargets | None):
        if targets is None:
            return None
        s = self.regressor(batch.extra["features"][self.student_tap].float())
        t = targets.features[self.teacher][self.teacher_tap].float().detach()
        if self.normalize:
            s = F.layer_norm(s.transpose(1, 2), s.shape[1:2]).transpose(1, 2)
            t = F.layer_norm(t.transpose(1, 2), t.shape[1:2]).transpose(1, 2)
        return F.mse_loss(s, t)


class CrossEntropy(Loss):
    """Cross-entropy on the clips that carry a label (unlabeled clips are ignored)."""

    needs_labels = True

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:  # (torch reads a negative or NaN one as 0, without a word)
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, student: ModelOutput, batch: Batch, targets: BatchTargets | None):
        labeled = batch.labels >= 0
        if not bool(labeled.any()):
            return None
        return F.cross_entropy(
            student.logits[labeled].float(), batch.labels[labeled], label_smoothing=self.label_smoothing
        )


@hookimpl
def liser_register_losses(registry):
    registry.register("kl", KLDivergence, summary="KL to the teachers' soft targets at temperature T, x T^2")
    registry.register("dkd", DecoupledKD, summary="decoupled KD: target / non-target KL terms, alpha, beta, warm-up")
    registry.register("fitnets", FitNets, summary="FitNets hints: a student tap, regressed, vs a teacher tap (MSE)")
    registry.register("feature_matching", FeatureMatching, summary="projected student embedding vs a teacher's (MSE or cosine)")
    registry.register("ce", CrossEntropy, summary="cross-entropy on labeled clips")


__all__ = ["CrossEntropy", "DecoupledKD", "FeatureMatching", "FitNets", "KLDivergence"]

"""The plugin module named by the ``liser`` entry point: the hooks that register every component.

LiSER imports this module and registers it with its plugin manager; the ``@hookimpl``
functions at the bottom then add ``example_gru`` (a student), ``symmetric_kl``,
``annealed_kl`` and ``attention_transfer`` (losses), ``prosody`` (a teacher that fits itself),
``confidence`` (a target combiner), ``polarity`` (an augmentation) and ``epoch_csv`` (a
logger) to LiSER's registries (the last six live in :mod:`liser_example.extras`). A recipe
uses them by name::

    validation: {source: teacher}
    teachers:
      - {name: prosody, options: {ridge: 1.0}}
    student:
      name: example_gru
      options: {hidden: 32}
    distil:
      combination: confidence
      augment: [{name: polarity}]
      early_stop: {metric: uar, patience: 3}
      losses:
        - {name: annealed_kl, options: {t_start: 4.0, t_end: 1.0}}
        - {name: attention_transfer, weight: 0.5, options: {student_tap: gru, teacher_tap: block2, teacher: audio_cnn}}
        - {name: ce, weight: 0.5}
    loggers: {run_dir: {}, epoch_csv: {}}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from liser_core import Batch, BatchTargets, LabelSpace, Loss, ModelOutput, Student, hookimpl
from liser_plugins.frontend import LogMel, masked_mean
from torch import nn

from .extras import (
    AnnealedKL,
    AttentionTransfer,
    ConfidenceCombiner,
    EnergyContour,
    EpochCSV,
    Polarity,
    ProsodyTeacher,
    SignSGD,
    SpeakerMix,
    linear_decay,
)


class GRUStudent(Student):
    """Log-mel frontend, a one-layer GRU over time, masked mean pooling, a linear head.

    For a waveform ``x`` with ``n`` valid samples the model computes

    .. math:: h_{1..T} = \\mathrm{GRU}(\\mathrm{logmel}(x)), \\quad
       e = \\frac{1}{T_n} \\sum_{t \\le T_n} h_t, \\quad z = W e + b

    where ``T_n`` is the number of log-mel frames that cover the ``n`` valid samples, so the
    zero padding of a batch never reaches the embedding ``e`` (size ``hidden``) or the logits
    ``z`` (one per class of ``label_space``).

    Args:
        label_space: the corpus's classes (injected by LiSER, not set in a recipe).
        hidden: GRU state size, which is also the embedding size.
        n_mels: mel bands of the frontend.
        sample_rate: rate the engine resamples audio to before calling :meth:`forward`.
        dropout: dropout on the embedding before the head.

    Example::

        >>> from liser_core import label_space
        >>> model = GRUStudent(label_space("cremad6"), hidden=8)
        >>> out = model(torch.zeros(2, 16000), torch.tensor([16000, 8000]))
        >>> tuple(out.logits.shape), tuple(out.embedding.shape)
        ((2, 6), (2, 8))
    """

    def __init__(
        self,
        label_space: LabelSpace,
        hidden: int = 64,
        n_mels: int = 40,
        sample_rate: int = 16000,
        dropout: float = 0.1,
    ):
        super().__init__()
        if hidden < 1:
            raise ValueError("hidden must be >= 1")
        self.label_space = label_space
        self.sample_rate = sample_rate
        self.embedding_dim = hidden
        self.frontend = LogMel(sample_rate, n_mels)
        self.gru = nn.GRU(n_mels, hidden, num_layers=1, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, len(label_space))
        self.taps = {"gru": ("gru", 1)}  # its states over time (B, T, hidden): a feature tap

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> ModelOutput:
        x, valid = self.frontend(audio, lengths)  # (B, 1, n_mels, T), (B,)
        h, _ = self.gru(x.squeeze(1).transpose(1, 2))  # (B, T, hidden)
        # A one-directional GRU never looks ahead, so the states of the valid frames are the
        # same with or without the padding after them: masking the mean is enough, no packing.
        emb = masked_mean(h.transpose(1, 2), valid)  # (B, hidden)
        return ModelOutput(self.head(self.dropout(emb)), emb)


class SymmetricKL(Loss):
    r"""Symmetric KL divergence to the teachers' soft targets at temperature T.

    .. math:: \mathcal{L} = \frac{T^2}{2B} \sum_b \big[\mathrm{KL}(p_b \,\|\, q_b)
       + \mathrm{KL}(q_b \,\|\, p_b)\big], \quad
       \mathrm{KL}(p \,\|\, q) = \sum_c p_c \log \frac{p_c}{q_c}, \quad
       q = \mathrm{softmax}(z_s / T)

    ``p`` is the teachers' combined distribution at temperature ``T`` over the student's classes
    (``targets.probs(T)``), ``z_s`` the student's logits and ``B`` the batch size. The ``T^2``
    factor keeps gradient magnitudes comparable across temperatures, as in Hinton, Vinyals &
    Dean (2015); the reverse term ``KL(q || p)`` makes the student avoid classes the teachers
    rule out (mode-seeking), where the forward term alone makes it cover every class the
    teachers allow. Classes a label map leaves unreached have ``p_c = 0``; ``p`` is clamped to
    ``1e-8`` inside the logarithm of the reverse term so the loss stays finite.

    Returns ``None`` (the term is skipped) when ``targets`` is None, i.e. without a teacher.

    Example::

        >>> loss = SymmetricKL(temperature=1.0)
        >>> loss.needs_teacher
        True
    """

    needs_teacher = True
    eps = 1e-8

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = temperature

    def forward(
        self, student: ModelOutput, batch: Batch, targets: BatchTargets | None
    ) -> torch.Tensor | None:
        if targets is None:
            return None
        t = self.temperature
        p = targets.probs(t).float()
        log_q = F.log_softmax(student.logits.float() / t, -1)
        q = log_q.exp()
        forward_kl = (torch.xlogy(p, p) - p * log_q).sum(-1)  # xlogy: 0 log 0 = 0
        reverse_kl = (q * (log_q - p.clamp_min(self.eps).log())).sum(-1)
        return 0.5 * (forward_kl + reverse_kl).mean() * t * t


@hookimpl
def liser_register_students(registry):
    registry.register("example_gru", GRUStudent, summary="1-layer GRU on log-mel, masked mean pooling")


@hookimpl
def liser_register_losses(registry):
    registry.register("symmetric_kl", SymmetricKL, summary="0.5 (KL(p||q) + KL(q||p)) x T^2 to the teachers' soft targets")
    registry.register("annealed_kl", AnnealedKL, summary="KL at a temperature annealed over the stage (Loss.position)")
    registry.register("attention_transfer", AttentionTransfer, summary="energy-over-time maps of two feature taps")
    registry.register("energy_contour", EnergyContour, summary="frame-level energy contours, unpooled (online teacher)")


@hookimpl
def liser_register_teachers(registry):
    registry.register("prosody", ProsodyTeacher, modality="audio", summary="prosodic features + ridge head fitted in closed form")


@hookimpl
def liser_register_combiners(registry):
    registry.register("confidence", ConfidenceCombiner, summary="teachers weighted per clip by their confidence")


@hookimpl
def liser_register_augmentations(registry):
    registry.register("polarity", Polarity, summary="random sign flip of the waveform")


@hookimpl
def liser_register_optimizers(registry):
    registry.register("sign_sgd", SignSGD, summary="signSGD with momentum (signum)")


@hookimpl
def liser_register_schedulers(registry):
    registry.register("linear_decay", linear_decay, summary="learning rate falling linearly to a fraction of it")


@hookimpl
def liser_register_samplers(registry):
    registry.register("speaker_mix", SpeakerMix, summary="batches dealt round-robin over the speakers")


@hookimpl
def liser_register_loggers(registry):
    registry.register("epoch_csv", EpochCSV, summary="every epoch's metrics (val_* included) to a CSV file")


__all__ = ["GRUStudent", "SymmetricKL"]

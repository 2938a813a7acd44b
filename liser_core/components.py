"""The interfaces every teacher, student and loss implements.

Plugins subclass :class:`Teacher`, :class:`Student` and :class:`Loss` and register factories
for them; the engine only ever talks to these interfaces.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .labels import LabelMap, LabelSpace

if TYPE_CHECKING:
    from .data import Batch

MODALITIES = ("audio", "face", "audiovisual")


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # (B, C) unnormalised class scores
    embedding: torch.Tensor  # (B, D) clip embedding (what feature matching compares)


@dataclass
class TeacherCard:
    """What a teacher is and where it comes from (one flat record, like timm's pretrained cfg)."""

    name: str  # registry name, plus ".tag" for a checkpoint
    modality: str  # audio | face | audiovisual
    backbone: str  # architecture, e.g. "wav2vec2-base" or "cnn6"
    label_space: str  # label space name
    sample_rate: int | None = None  # audio rate the teacher expects (None for face-only)
    trained_on: tuple[str, ...] = ()  # corpora, "corpus" or "corpus[split]"
    licence: str = "unknown"  # licence of the weights
    source: str = ""  # hub id, local path or "fitted in run"
    num_parameters: int = 0  # parameter count
    notes: str = ""  # anything a user must know

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trained_on"] = list(self.trained_on)
        return d

    def overlaps(self, corpus: str, split: str) -> bool:
        """True when evaluating on ``corpus``/``split`` would test on this teacher's training data."""
        for entry in self.trained_on:
            name, _, rest = entry.partition("[")
            if name != corpus:
                continue
            if not rest or rest.rstrip("]") == split:
                return True
        return False


class Teacher(nn.Module):
    """A large model that labels clips. Subclasses set the attributes below and ``forward``.

    A teacher without a LiSER checkpoint that is not ``pretrained`` is fitted by the engine on
    the corpus's ``teacher`` split (cross-entropy on :meth:`trainable_parameters`), provided it
    is ``fittable``.
    """

    modality: str = "audio"
    label_space: LabelSpace
    embedding_dim: int
    card: TeacherCard
    fittable: bool = True  # the engine may fit it (cross-entropy) on the teacher split
    pretrained: bool = False  # True when it arrives trained (a classification head with weights):
    #                           the engine then uses it as is and never fits it
    needs_frames: bool = False  # True when forward reads ``batch.frames``
    sample_rate: int | None = None  # rate the engine resamples audio to, if any
    #: state-dict key prefixes left out of checkpoints (a frozen backbone reloaded from its source)
    checkpoint_exclude: tuple[str, ...] = ()

    def forward(self, batch: Batch) -> ModelOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def fit_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss the engine minimises when it fits this teacher, and its named terms.

        Default: cross-entropy of ``forward(batch).logits`` against the batch's labels.
        Composite teachers override it (e.g. a fusion teacher adds each branch's own term).
        """
        loss = F.cross_entropy(self(batch).logits, batch.labels)
        return loss, {"ce": loss.detach()}


class Student(nn.Module):
    """A small audio-only model: waveform in, class scores and an embedding out.

    The audio frontend (features, normalisation) lives inside the student, so a saved student
    cannot be fed different features from those it was trained on.
    """

    label_space: LabelSpace
    embedding_dim: int
    sample_rate: int

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> ModelOutput:
        raise NotImplementedError  # pragma: no cover - interface

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_second(self, seconds: float = 1.0) -> int:
        """Multiply-accumulates per second of audio (convolutions and matrix products)."""
        from .profile import macs_per_second

        return macs_per_second(self, seconds=seconds)

    def save_pretrained(self, directory, **extra) -> None:
        """Save as ``model.safetensors`` + ``config.json`` (see :mod:`liser_core.checkpoint`).

        The student must have been built through a registry (``liser_spec`` records how).
        """
        from .checkpoint import save_component

        spec = getattr(self, "liser_spec", None)
        if spec is None:
            raise ValueError("build the student through the registry (host.registries.student.build) to save it")
        save_component(
            self,
            directory,
            kind="student",
            name=spec["name"],
            options=spec["options"],
            label_space=self.label_space,
            extra={"sample_rate": self.sample_rate, "num_parameters": self.num_parameters(), **extra},
        )

    @classmethod
    def from_pretrained(cls, directory, host=None) -> Student:
        """Load a saved student (any registered architecture) in eval mode.

        Example::

            >>> student = Student.from_pretrained("runs/synth_kd/student")  # doctest: +SKIP
        """
        from ._plugins import default_host
        from .checkpoint import load_component

        model = load_component(directory, (host or default_host()).registries.student, kind="student")
        return model.eval()


@dataclass
class BatchTargets:
    """Teacher targets for the clips of one batch, already aligned with the batch's rows."""

    logits: dict[str, torch.Tensor]  # teacher name -> (B, C_teacher) logits
    embeddings: dict[str, torch.Tensor]  # teacher name -> (B, D_teacher)
    label_maps: dict[str, LabelMap]  # teacher name -> map onto the student's label space
    weights: dict[str, float]  # teacher name -> weight (sums to 1)
    combination: str = "arithmetic"  # arithmetic | geometric
    _cache: dict = field(default_factory=dict, repr=False)

    def probs(self, temperature: float = 1.0) -> torch.Tensor:
        """The teachers' combined distribution over the student's classes at ``temperature``.

        ``arithmetic``: ``sum_i w_i * map_i(softmax(z_i / T))`` (a mixture of the teachers).
        ``geometric``: ``softmax(sum_i w_i * log map_i(softmax(z_i / T)))`` (a product of experts).
        """
        key = (float(temperature), self.combination)
        if key not in self._cache:
            parts = {
                n: self.label_maps[n].project(torch.softmax(z.float() / temperature, -1))
                for n, z in self.logits.items()
            }
            if self.combination == "geometric":
                log = sum(self.weights[n] * p.clamp_min(1e-8).log() for n, p in parts.items())
                out = torch.softmax(log, -1)
            else:
                out = sum(self.weights[n] * p for n, p in parts.items())
            self._cache[key] = out
        return self._cache[key]


class Loss(nn.Module):
    """One named loss term. Every term has the same call signature.

    ``forward(student, batch, targets)`` returns a scalar. ``targets`` is None when no teacher
    is involved (labels-only training); terms that need it return ``None`` then and are skipped.
    Terms with parameters (e.g. a projection) get them in :meth:`bind`, before the optimiser is
    built.
    """

    needs_teacher: bool = False

    def bind(self, student_dim: int, teacher_dims: dict[str, int]) -> None:
        """Called once with the student's and each teacher's embedding size."""

    def forward(
        self, student: ModelOutput, batch: Batch, targets: BatchTargets | None
    ) -> torch.Tensor | None:  # pragma: no cover - interface
        raise NotImplementedError

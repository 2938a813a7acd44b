"""``av_fusion``: an audio-visual teacher that combines a speech teacher and a face teacher.

``mode="late"``: the two teachers' distributions, each projected onto the corpus's classes by
an explicit label map, are mixed with ``weights`` (late fusion) by ``combination``
(:func:`liser_core.labels.combine`; default ``per_class``: a class one branch cannot express,
such as *calm* for a FER2013 face model, takes the other branch's belief undiluted). When both branches arrive
trained (pretrained or from LiSER checkpoints) the fused teacher is used as is.

``mode="learned"``: a fusion head (MLP over the concatenated branch embeddings) is fitted on
labeled clips (the engine's teacher split); trained branches are frozen, fresh ones are fitted
jointly, each with its own cross-entropy term.

Branches are named like any teacher in a recipe::

    teachers:
      - name: av_fusion
        options:
          mode: learned
          audio: {name: audio_cnn, options: {channels: [24, 48, 96]}}
          face: {name: fer_xception}                      # pretrained, FER2013 classes
          face_label_map: {drop: []}                      # FER2013 -> corpus classes by name
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from liser_core import Batch, ModelOutput, Teacher, TeacherCard, hookimpl
from liser_core.checkpoint import load_component
from liser_core.config import check_options
from liser_core.errors import ConfigError
from liser_core.labels import LabelMap, LabelSpace, combine

_SPEC_KEYS = ("name", "options", "checkpoint")


def _branch(registry, spec: dict, key: str, modality: str, label_space: LabelSpace) -> Teacher:
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(key, "must be a mapping with a teacher 'name' (and optional 'options', 'checkpoint')")
    for k in spec:
        if k not in _SPEC_KEYS:
            raise ConfigError(f"{key}.{k}", f"unknown key (allowed: {', '.join(_SPEC_KEYS)})")
    if spec.get("checkpoint"):
        teacher = load_component(spec["checkpoint"], registry, kind="teacher")
        teacher._from_checkpoint = True  # trained: frozen inside the fusion
    else:
        options = dict(spec.get("options") or {})
        check_options(registry, spec["name"], options, key, "teacher")
        teacher = registry.build(spec["name"], label_space=label_space, **options)
        teacher.liser_spec = {"name": spec["name"], "options": options}
    if teacher.modality != modality:
        raise ConfigError(f"{key}.name", f"teacher {spec['name']!r} is a {teacher.modality} teacher, not {modality}")
    return teacher


def _label_map(src: LabelSpace, dst: LabelSpace, spec: dict | None, key: str) -> LabelMap:
    spec = spec or {}
    try:
        return LabelMap(src, dst, merge=spec.get("merge", {}), drop=tuple(spec.get("drop", ())))
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


class AVFusionTeacher(Teacher):
    modality = "audiovisual"
    needs_frames = True

    def __init__(
        self,
        label_space: LabelSpace,
        audio: Teacher,
        face: Teacher,
        audio_map: LabelMap,
        face_map: LabelMap,
        mode: str,
        weights: Sequence[float],
        hidden: int,
        dropout: float,
        combination: str = "per_class",
    ):
        super().__init__()
        self.label_space = label_space
        self.audio, self.face = audio, face
        self.audio_map, self.face_map = audio_map, face_map
        self.mode = mode
        self.combination = combination
        self.register_buffer("weights", torch.tensor([float(w) for w in weights]) / sum(weights))
        self.sample_rate = audio.sample_rate
        self._frozen = [b for b in (audio, face) if b.pretrained or getattr(b, "_from_checkpoint", False)]
        for b in self._frozen:
            b.requires_grad_(False)
        both = audio.embedding_dim + face.embedding_dim
        if mode == "learned":
            self.fusion = nn.Sequential(nn.Linear(both, hidden), nn.ReLU(), nn.Dropout(dropout))
            self.head = nn.Linear(hidden, len(label_space))
            self.embedding_dim = hidden
        else:
            self.embedding_dim = both
        self.pretrained = mode == "late" and len(self._frozen) == 2
        self.checkpoint_exclude = tuple(f"audio.{p}" for p in audio.checkpoint_exclude) + tuple(
            f"face.{p}" for p in face.checkpoint_exclude
        )
        self.card = TeacherCard(
            name="av_fusion",
            modality="audiovisual",
            backbone=f"{mode} fusion of {audio.card.backbone} + {face.card.backbone}",
            label_space=label_space.name,
            sample_rate=audio.sample_rate,
            trained_on=tuple(dict.fromkeys((*audio.card.trained_on, *face.card.trained_on))),
            licence=f"audio: {audio.card.licence}; face: {face.card.licence}",
            source=f"{audio.card.source or audio.card.name} + {face.card.source or face.card.name}",
            fit_sets=(*audio.card.fit_sets, *face.card.fit_sets),  # a leak in a branch is the fusion's leak
        )

    def train(self, mode: bool = True):
        super().train(mode)
        for b in self._frozen:  # trained branches stay in eval mode (BatchNorm, dropout)
            b.eval()
        return self

    def _branches(self, batch: Batch):
        return self.audio(batch), self.face(batch)

    def _fuse(self, out_a: ModelOutput, out_f: ModelOutput) -> ModelOutput:
        emb = torch.cat([out_a.embedding, out_f.embedding], -1)
        if self.mode == "learned":
            h = self.fusion(emb)
            return ModelOutput(self.head(h), h)
        p = combine(
            [self.audio_map.project(torch.softmax(out_a.logits.float(), -1)),
             self.face_map.project(torch.softmax(out_f.logits.float(), -1))],
            self.weights.tolist(),
            [self.audio_map.reached, self.face_map.reached],
            self.combination,
        )
        return ModelOutput(torch.log(p.clamp_min(1e-8)), emb)  # log-probabilities: softmax gives p back

    def forward(self, batch: Batch) -> ModelOutput:
        return self._fuse(*self._branches(batch))

    def fit_loss(self, batch: Batch):
        out_a, out_f = self._branches(batch)
        fused = self._fuse(out_a, out_f)
        terms = {"fused": F.cross_entropy(fused.logits, batch.labels)}
        for name, branch, out in (("audio", self.audio, out_a), ("face", self.face, out_f)):
            if branch not in self._frozen and branch.label_space == self.label_space:
                terms[name] = F.cross_entropy(out.logits, batch.labels)
        total = sum(terms.values())
        return total, {k: v.detach() for k, v in terms.items()}


@hookimpl
def liser_register_teachers(registry):
    def av_fusion(
        label_space: LabelSpace,
        audio: dict,
        face: dict,
        mode: Literal["late", "learned"] = "late",
        weights: Sequence[float] = (0.5, 0.5),
        hidden: int = 256,
        dropout: float = 0.2,
        audio_label_map: dict | None = None,
        face_label_map: dict | None = None,
        combination: Literal["per_class", "arithmetic", "geometric"] = "per_class",
    ) -> AVFusionTeacher:
        """Audio-visual fusion of a speech and a face teacher (late, or a learned head)."""
        if len(weights) != 2 or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError("weights", "needs two non-negative weights (audio, face) with a positive sum")
        a = _branch(registry, audio, "audio", "audio", label_space)
        f = _branch(registry, face, "face", "face", label_space)
        return AVFusionTeacher(
            label_space,
            a,
            f,
            _label_map(a.label_space, label_space, audio_label_map, "audio_label_map"),
            _label_map(f.label_space, label_space, face_label_map, "face_label_map"),
            mode,
            weights,
            hidden,
            dropout,
            combination,
        )

    registry.register("av_fusion", av_fusion, modality="audiovisual")

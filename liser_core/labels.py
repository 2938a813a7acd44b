"""Label spaces and label maps.

A *label space* is an ordered tuple of canonical emotion names. Datasets, teachers and students
each declare theirs. A teacher's distribution reaches the student's classes only through an
explicit :class:`LabelMap` (same name, merge, or drop), never by index coincidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from .errors import ConfigError, close_matches

#: Every emotion name LiSER knows. Datasets translate their own codes (CREMA-D's "ANG",
#: RAVDESS's "05") into these names.
CANONICAL_EMOTIONS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgust",
    "surprised",
    "contempt",
)

#: Emotion names as corpora and checkpoints write them -> canonical names. Looked up lower-cased,
#: without spaces, hyphens and underscores (:func:`canonical_emotion`). Only unambiguous names:
#: "excited" (IEMOCAP) or "pleasant surprise" (TESS) are a modelling choice, made explicitly.
EMOTION_ALIASES: Mapping[str, str] = MappingProxyType({
    **{c: c for c in CANONICAL_EMOTIONS},
    "ang": "angry", "anger": "angry",
    "hap": "happy", "happiness": "happy", "joy": "happy",
    "sadness": "sad",
    "neu": "neutral",
    "fea": "fearful", "fear": "fearful",
    "dis": "disgust", "disgusted": "disgust",
    "sur": "surprised", "surprise": "surprised",
    "con": "contempt",
})


def emotion_key(name: str) -> str:
    """``"Pleasant-Surprise "`` -> ``"pleasantsurprise"``: how :data:`EMOTION_ALIASES` is keyed."""
    return "".join(ch for ch in str(name).strip().lower() if ch not in " -_")


def canonical_emotion(name: str, aliases: Mapping[str, str] | None = None) -> str | None:
    """The canonical emotion a written name means (``"Anger"`` -> ``"angry"``), by name, never by
    position; ``aliases`` (keyed by :func:`emotion_key`) first; None for a name that is no
    emotion LiSER knows (``"Boredom"``, ``"Other"``)."""
    key = emotion_key(name)
    return (aliases or {}).get(key) or EMOTION_ALIASES.get(key)


@dataclass(frozen=True)
class LabelSpace:
    """An ordered set of canonical emotion names; the index of a name is its class id."""

    name: str
    classes: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(self.classes))
        for c in self.classes:
            if c not in CANONICAL_EMOTIONS:
                raise ValueError(
                    f"label space {self.name!r}: {c!r} is not a canonical emotion name "
                    f"(close: {close_matches(c, CANONICAL_EMOTIONS)}; all: {CANONICAL_EMOTIONS})"
                )
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"label space {self.name!r} repeats a class: {self.classes}")

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, emotion: str) -> int:
        try:
            return self.classes.index(emotion)
        except ValueError:
            raise KeyError(f"{emotion!r} is not in label space {self.name!r} {self.classes}") from None

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: Mapping) -> LabelSpace:
        return cls(d["name"], tuple(d["classes"]))


#: RAVDESS's eight emotions, in the order of its emotion codes 01-08.
RAVDESS8 = LabelSpace(
    "ravdess8", ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
)
#: CREMA-D's six emotions (ANG DIS FEA HAP NEU SAD), in canonical order.
CREMAD6 = LabelSpace("cremad6", ("neutral", "happy", "sad", "angry", "fearful", "disgust"))
#: FER2013's seven expressions, in its label order 0-6.
FER2013_7 = LabelSpace(
    "fer2013_7", ("angry", "disgust", "fearful", "happy", "sad", "surprised", "neutral")
)
#: AffectNet's eight expressions (with contempt), in its label order 0-7.
AFFECTNET8 = LabelSpace(
    "affectnet8",
    ("neutral", "happy", "sad", "surprised", "fearful", "disgust", "angry", "contempt"),
)

STANDARD_SPACES: dict[str, LabelSpace] = {
    s.name: s for s in (RAVDESS8, CREMAD6, FER2013_7, AFFECTNET8)
}


def label_space(name_or_classes: str | Iterable[str] | LabelSpace) -> LabelSpace:
    """A standard space by name (``"ravdess8"``), or an ad-hoc one from a list of names."""
    if isinstance(name_or_classes, LabelSpace):
        return name_or_classes
    if isinstance(name_or_classes, str):
        try:
            return STANDARD_SPACES[name_or_classes]
        except KeyError:
            raise ConfigError(
                "",
                f"unknown label space {name_or_classes!r}",
                close_matches(name_or_classes, STANDARD_SPACES),
            ) from None
    classes = tuple(name_or_classes)
    return LabelSpace("custom:" + ",".join(classes), classes)


@dataclass(frozen=True)
class LabelMap:
    """Projects distributions over ``source`` classes onto ``target`` classes.

    Every source class must be accounted for explicitly: it exists in the target under the same
    name, or ``merge`` sends it to a target class (``{"calm": "neutral"}``), or ``drop`` lists it
    (its probability mass is removed and the rest renormalised). Target classes no source reaches
    get probability 0 and are listed in :attr:`unreached`.

    Example::

        >>> m = LabelMap(RAVDESS8, CREMAD6, drop=("calm", "surprised"))
        >>> m.project(torch.full((1, 8), 1 / 8)).sum().item()
        1.0
    """

    source: LabelSpace
    target: LabelSpace
    merge: Mapping[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "merge", dict(self.merge))
        object.__setattr__(self, "drop", tuple(self.drop))
        for src, dst in self.merge.items():
            if src not in self.source.classes:
                raise ValueError(f"label map merges {src!r}, which {self.source.name!r} lacks")
            if dst not in self.target.classes:
                raise ValueError(f"label map merges into {dst!r}, which {self.target.name!r} lacks")
        for d in self.drop:
            if d not in self.source.classes:
                raise ValueError(f"label map drops {d!r}, which {self.source.name!r} lacks")
        if both := [c for c in self.merge if c in self.drop]:  # which would win is a guess: say one
            raise ValueError(f"label map both merges and drops {both}: a class is merged or dropped, not both")
        missing = [
            c
            for c in self.source.classes
            if c not in self.target.classes and c not in self.merge and c not in self.drop
        ]
        if missing:
            raise ValueError(
                f"label map {self.source.name!r} -> {self.target.name!r} leaves {missing} unmapped: "
                "merge them into a target class or drop them explicitly"
            )
        if len(self.drop) == len(self.source):
            raise ValueError("label map drops every source class")

    @property
    def matrix(self) -> torch.Tensor:
        """(S, T) 0/1 matrix: ``target_probs ∝ source_probs @ matrix``."""
        m = torch.zeros(len(self.source), len(self.target))
        for i, c in enumerate(self.source.classes):
            if c in self.drop:
                continue
            dst = self.merge.get(c, c)
            m[i, self.target.index(dst)] = 1.0
        return m

    @property
    def reached(self) -> torch.Tensor:
        """(T,) bool: the target classes some source class maps to."""
        return self.matrix.sum(0) > 0

    @property
    def unreached(self) -> tuple[str, ...]:
        return tuple(c for c, r in zip(self.target.classes, self.reached) if not r)

    def fit_targets(self) -> dict[str, str | None]:
        """The other direction, for fitting a teacher on clips labeled in the target space:
        target class -> the source class a clip of that class trains.

        A target class trains the source class of the same name when the map keeps it; else the
        one source class merged into it; else nothing (``None``: the teacher cannot represent
        it, or several merged classes make it ambiguous), and such clips are left out of the fit.

        Example::

            >>> m = LabelMap(AFFECTNET8, RAVDESS8, drop=("contempt",))
            >>> m.fit_targets()["surprised"], m.fit_targets()["calm"]
            ('surprised', None)
        """
        out: dict[str, str | None] = {}
        for t in self.target.classes:
            sources = [s for s in self.source.classes if s not in self.drop and self.merge.get(s, s) == t]
            out[t] = t if t in sources else sources[0] if len(sources) == 1 else None
        return out

    def report(self) -> dict[str, list]:
        """What the map does, class by class: ``mapped`` (same name), ``merged`` (``[src, dst]``
        pairs), ``dropped`` and ``unreachable`` (target classes this source never predicts)."""
        return {
            "source": self.source.name,
            "mapped": [c for c in self.source.classes if c in self.target.classes and c not in self.drop and c not in self.merge],
            "merged": [[a, b] for a, b in self.merge.items()],
            "dropped": list(self.drop),
            "unreachable": list(self.unreached),
        }

    @property
    def is_identity(self) -> bool:
        return self.source.classes == self.target.classes

    def project(self, probs: torch.Tensor) -> torch.Tensor:
        """Map probabilities (..., S) to (..., T); dropped mass is renormalised away."""
        if self.is_identity:
            return probs
        out = probs @ self.matrix.to(probs.device, probs.dtype)
        return out / out.sum(-1, keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)

    def describe(self) -> str:
        parts = []
        if self.merge:
            parts.append("merge " + ", ".join(f"{a}->{b}" for a, b in self.merge.items()))
        if self.drop:
            parts.append("drop " + ", ".join(self.drop))
        if self.unreached:
            parts.append("unreached " + ", ".join(self.unreached))
        return f"{self.source.name} -> {self.target.name}" + (f" ({'; '.join(parts)})" if parts else "")


#: How several teachers' distributions over the student's classes are combined.
COMBINATIONS = ("per_class", "arithmetic", "geometric")


def combine(
    probs: Sequence[torch.Tensor],
    weights: Sequence[float],
    reached: Sequence[torch.Tensor] | None = None,
    method: str = "per_class",
) -> torch.Tensor:
    """Combine teachers' distributions (each ``(..., C)``, already on the student's classes).

    * ``per_class`` (default): each class mixes only the teachers that can express it, with
      their weights renormalised over those teachers, then the result is renormalised:
      ``q_c ∝ sum_i w_i r_ic p_ic / sum_i w_i r_ic`` (``r_ic`` = 1 when teacher i reaches class
      c). A class one teacher cannot express (FER2013 has no *calm*) keeps the other teachers'
      belief instead of being diluted by a teacher that is silent on it.
    * ``arithmetic``: ``sum_i w_i p_i`` -- a class a teacher cannot express loses that
      teacher's share of the mass.
    * ``geometric``: ``softmax(sum_i w_i log p_i)`` (product of experts, probabilities clamped at
      1e-8) -- a class any teacher cannot express all but vanishes.

    ``weights`` should sum to 1; ``reached`` defaults to every class for every teacher.

    Example::

        >>> a, f = torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]])
        >>> combine([a, f], [0.5, 0.5], [torch.tensor([True, True]), torch.tensor([True, False])])
        tensor([[0.6000, 0.4000]])
    """
    if method not in COMBINATIONS:
        raise ValueError(f"combination must be one of {COMBINATIONS}, not {method!r}")
    if method == "geometric":
        return torch.softmax(sum(w * p.clamp_min(1e-8).log() for w, p in zip(weights, probs)), -1)
    mix = sum(w * p for w, p in zip(weights, probs))
    if method == "arithmetic" or reached is None or all(bool(r.all()) for r in reached):
        return mix  # every teacher expresses every class: per_class is the plain mixture
    share = sum(w * r.to(mix.dtype).to(mix.device) for w, r in zip(weights, reached))
    out = torch.where(share > 0, mix / share.clamp_min(1e-12), torch.zeros_like(mix))
    return out / out.sum(-1, keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)

"""Label spaces and label maps.

A *label space* is an ordered tuple of canonical emotion names. Datasets, teachers and students
each declare theirs. A teacher's distribution reaches the student's classes only through an
explicit :class:`LabelMap` (same name, merge, or drop), never by index coincidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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
    def unreached(self) -> tuple[str, ...]:
        reached = self.matrix.sum(0) > 0
        return tuple(c for c, r in zip(self.target.classes, reached) if not r)

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

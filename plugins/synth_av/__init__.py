"""The embedded corpus ``synth_av`` (see :mod:`liser_plugins.synth_av.generator`)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

from liser_core import hookimpl
from liser_core.data import SPLITS, Clip
from liser_core.labels import LabelSpace

from .generator import SPLIT_CLIPS, SPLIT_SPEAKERS, generate


class SynthAV:
    """A generated corpus: its label space and four speaker-disjoint splits."""

    name = "synth_av"

    def __init__(self, label_space: LabelSpace, splits: dict[str, list[Clip]], options: dict, unused=(), notes=()):
        self.label_space = label_space
        self._splits = splits
        self.options = options
        self.unused = list(unused)  # clips in no split (label_fraction: the labeled speakers' others)
        self.notes = list(notes)  # the protocol's shortfalls (a class short of labeled clips): run warnings

    def split(self, role: str) -> Sequence[Clip]:
        if role not in SPLITS:
            raise KeyError(f"unknown split {role!r}; splits: {SPLITS}")
        return self._splits.get(role, [])


@functools.lru_cache(maxsize=4)
def _cached(seed, classes, sample_rate, seconds, frames, speakers, clips):
    return generate(
        seed=seed,
        classes=classes,
        sample_rate=sample_rate,
        seconds=seconds,
        frames=frames,
        speakers=dict(speakers),
        clips_per_emotion=dict(clips),
    )


def synth_av(
    seed: int = 0,
    classes: Literal["ravdess8", "cremad6"] = "ravdess8",
    sample_rate: int = 16000,
    seconds: float = 1.0,
    frames: int = 8,
    teacher_speakers: int = SPLIT_SPEAKERS["teacher"],
    labeled_speakers: int = SPLIT_SPEAKERS["labeled"],
    unlabeled_speakers: int = SPLIT_SPEAKERS["unlabeled"],
    test_speakers: int = SPLIT_SPEAKERS["test"],
    teacher_clips: int = SPLIT_CLIPS["teacher"],
    labeled_clips: int = SPLIT_CLIPS["labeled"],
    unlabeled_clips: int = SPLIT_CLIPS["unlabeled"],
    test_clips: int = SPLIT_CLIPS["test"],
    label_fraction: float | None = None,
) -> SynthAV:
    """Generated audio-visual emotion corpus (offline default); *_clips are per speaker and emotion.

    ``label_fraction`` (0-1] switches to the labeled corpora's protocol, for label-efficiency
    curves: the labeled and unlabeled speakers (``unlabeled_clips`` each) form one training set,
    of which that fraction of the clips keeps its labels (stratified, from
    ``ceil(fraction x speakers)`` labeled speakers); the other speakers are the pool. At 1.0
    every training clip is labeled: the fully supervised setting.
    """
    if label_fraction is not None and not 0.0 < label_fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
    if label_fraction is not None:  # one training set, carved like RAVDESS's and CREMA-D's
        unlabeled_speakers, labeled_speakers = labeled_speakers + unlabeled_speakers, 0
    speakers = (
        ("teacher", teacher_speakers),
        ("labeled", labeled_speakers),
        ("unlabeled", unlabeled_speakers),
        ("test", test_speakers),
    )
    clips = (
        ("teacher", teacher_clips),
        ("labeled", labeled_clips),
        ("unlabeled", unlabeled_clips),
        ("test", test_clips),
    )
    space, splits = _cached(seed, classes, sample_rate, float(seconds), frames, speakers, clips)
    options = dict(seed=seed, classes=classes)
    if label_fraction is None:
        return SynthAV(space, splits, options)
    from liser_plugins.corpora.protocols import ProtocolOptions, carve

    parts, notes = carve(splits["unlabeled"], ProtocolOptions(label_fraction=label_fraction, seed=seed), fold_salt=0)
    splits = {**splits, "labeled": parts["labeled"], "unlabeled": parts["unlabeled"]}
    return SynthAV(space, splits, options | {"label_fraction": label_fraction}, parts["unused"], notes)


@hookimpl
def liser_register_datasets(registry):
    registry.register("synth_av", synth_av)

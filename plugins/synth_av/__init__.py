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

    def __init__(self, label_space: LabelSpace, splits: dict[str, list[Clip]], options: dict):
        self.label_space = label_space
        self._splits = splits
        self.options = options

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
) -> SynthAV:
    """Generated audio-visual emotion corpus (offline default); *_clips are per speaker and emotion."""
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
    return SynthAV(space, splits, dict(seed=seed, classes=classes))


@hookimpl
def liser_register_datasets(registry):
    registry.register("synth_av", synth_av)

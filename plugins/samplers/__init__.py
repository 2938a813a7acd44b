"""First-party batch samplers: ``random`` (the default), ``class_balanced``, ``duration_buckets``
and ``dynamic`` (SpeechBrain's dynamic batching: batches by total seconds, not clip count).

A sampler cuts a training stage's clips into each epoch's batches (``distil.sampler``,
``finetune.sampler``, ``baseline.sampler``), from a generator seeded per epoch::

    distil:
      sampler: duration_buckets
      sampler_options: {buckets: 4}
"""

from __future__ import annotations

import math

import torch

from liser_core import Sampler, hookimpl


def _chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def _known(seconds: torch.Tensor) -> torch.Tensor:
    """Durations with the unknown ones (NaN) set to the median of the known (or 1 s)."""
    ok = ~torch.isnan(seconds)
    fill = float(seconds[ok].median()) if ok.any() else 1.0
    return torch.where(ok, seconds, torch.full_like(seconds, fill))


class RandomBatches(Sampler):
    """A random permutation of the clips cut into batches of ``batch_size``: the order LiSER uses
    without a sampler (``torch.randperm`` from the epoch's seed), which a recipe that names no
    sampler keeps."""

    def epoch(self, seconds, labels, speakers, batch_size, generator):
        return _chunks(torch.randperm(len(seconds), generator=generator).tolist(), batch_size)


class ClassBalanced(Sampler):
    """Batches with the labeled classes equally represented: each epoch draws as many clips as the
    stage has, a share ``labeled_share`` of them labeled clips drawn class by class in turn
    (with replacement within a class), the rest from the unlabeled pool; then shuffled into batches.

    With a teacher, most distillation clips are unlabeled; balancing then concerns the labeled
    ones (``ce``). For ``finetune`` and ``baseline`` every clip is labeled.
    """

    def __init__(self, labeled_share: float | None = None):
        if labeled_share is not None and not 0 < labeled_share <= 1:
            raise ValueError("labeled_share must be in (0, 1], or null for the labeled clips' own share")
        self.labeled_share = labeled_share

    def epoch(self, seconds, labels, speakers, batch_size, generator):
        n = len(labels)
        classes = sorted({int(c) for c in labels.tolist() if c >= 0})
        unlabeled = (labels < 0).nonzero().flatten()
        share = self.labeled_share if self.labeled_share is not None else (n - len(unlabeled)) / max(n, 1)
        # no pool to fill the rest from (finetune, baseline): every clip of the epoch is labeled
        n_labeled = (round(n * share) if len(unlabeled) else n) if classes else 0
        picks = []
        members = {c: (labels == c).nonzero().flatten() for c in classes}
        for k in range(n_labeled):  # class by class in turn, a random member each time
            pool = members[classes[k % len(classes)]]
            picks.append(int(pool[torch.randint(len(pool), (1,), generator=generator)]))
        rest = n - n_labeled
        if rest and len(unlabeled):
            perm = torch.randperm(len(unlabeled), generator=generator)
            picks += unlabeled[perm.repeat(math.ceil(rest / len(unlabeled)))[:rest]].tolist()
        order = [picks[i] for i in torch.randperm(len(picks), generator=generator).tolist()]
        return _chunks(order, batch_size)


class DurationBuckets(Sampler):
    """Clips of similar duration batched together, so that little of a batch is padding: the clips
    sorted by duration (ties at random) and cut into ``buckets`` equal groups; each group shuffled
    and cut into batches of ``batch_size``; the batches shuffled."""

    def __init__(self, buckets: int = 4):
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        self.buckets = buckets

    def epoch(self, seconds, labels, speakers, batch_size, generator):
        secs = _known(seconds)
        jitter = torch.randperm(len(secs), generator=generator)
        by_length = sorted(range(len(secs)), key=lambda i: (float(secs[i]), int(jitter[i])))
        size = math.ceil(len(by_length) / self.buckets)
        batches = []
        for bucket in _chunks(by_length, size):
            perm = torch.randperm(len(bucket), generator=generator).tolist()
            batches += _chunks([bucket[i] for i in perm], batch_size)
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class DynamicBatches(Sampler):
    """SpeechBrain's dynamic batching: batches hold up to ``max_seconds`` of audio, counted as the
    batch's longest clip times its size (what the padded batch costs), from clips sorted by
    duration within ``buckets`` random groups; the batches shuffled. ``batch_size`` is ignored.
    A clip longer than ``max_seconds`` is a batch of its own."""

    def __init__(self, max_seconds: float = 60.0, buckets: int = 8):
        if max_seconds <= 0 or buckets < 1:
            raise ValueError("max_seconds must be > 0 and buckets >= 1")
        self.max_seconds, self.buckets = float(max_seconds), int(buckets)

    def epoch(self, seconds, labels, speakers, batch_size, generator):
        secs = _known(seconds)
        perm = torch.randperm(len(secs), generator=generator).tolist()
        size = math.ceil(len(perm) / self.buckets)
        batches = []
        for group in _chunks(perm, size):
            current: list[int] = []
            longest = 0.0
            for i in sorted(group, key=lambda i: float(secs[i])):
                longest_if = max(longest, float(secs[i]))
                if current and longest_if * (len(current) + 1) > self.max_seconds:
                    batches.append(current)
                    current, longest_if = [], float(secs[i])
                current.append(i)
                longest = longest_if
            if current:
                batches.append(current)
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


@hookimpl
def liser_register_samplers(registry):
    registry.register("random", RandomBatches, summary="random permutation cut into batches (default)")
    registry.register("class_balanced", ClassBalanced, summary="labeled classes drawn in turn, equally often")
    registry.register("duration_buckets", DurationBuckets, summary="batches of clips of similar duration")
    registry.register("dynamic", DynamicBatches, summary="batches by total padded seconds (SpeechBrain dynamic batching)")


__all__ = ["ClassBalanced", "DurationBuckets", "DynamicBatches", "RandomBatches"]


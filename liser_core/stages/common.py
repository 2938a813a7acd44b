"""Small pieces the stages share."""

from __future__ import annotations

import torch

from ..components import Student, Teacher, blame
from ..data import Batch


def teacher_call(teacher: Teacher):
    def forward(batch: Batch):
        with blame(teacher, "forward"):
            return teacher(batch)

    return forward


def student_call(student: Student):
    def forward(batch: Batch):
        with blame(student, "forward"):
            return student(batch.audio, batch.lengths)

    return forward


def augmented(engine, stage: str):
    """The student's input for a training step of ``stage``: ``(audio, lengths)`` of the batch
    through the stage's augmentations (``<stage>.augment``), in order."""
    augments = engine.run.augment.get(stage, [])

    def inputs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        audio, lengths = batch.audio, batch.lengths
        with torch.no_grad():
            for aug in augments:
                with blame(aug, "forward"):
                    audio, lengths = aug(audio, lengths)
        return audio, lengths

    return inputs


def optimizer_for(engine, key: str, block, groups: list[dict] | None = None):
    """``build_optimizer`` for :func:`liser_core.training.train`: the block's optimizer and
    schedule components over ``groups`` (default: one group of every trained parameter)."""
    from ..prepare import build_optimizer

    def build(params, total_steps: int):
        if groups is None:
            trained = [p for p in params if p.requires_grad]
            if not trained:
                raise ValueError("nothing to train: no parameter requires grad")
            return build_optimizer(engine, block, key, [{"params": trained}], total_steps)
        return build_optimizer(engine, block, key, groups, total_steps)

    return build


def loader_for(engine, stage: str, ds, block, seed: int):
    """``loader_for_epoch`` of a student stage: the stage's sampler (``<stage>.sampler``) or the
    default shuffled order, from ``seed + epoch``; and its steps per epoch."""
    sampler = engine.run.samplers.get(stage)
    # batches of one clip cannot train normalisation layers: left out (a sampler's, all of them)
    drop = lone_batch(ds, block.batch_size) if sampler is None else len(ds) > 1

    def load(epoch: int, skip: int):
        return ds.loader(block.batch_size, shuffle=True, seed=seed + epoch, drop_last=drop, skip_batches=skip,
                         dist=engine.dist, sampler=sampler)

    if sampler is None:
        return load, steps(len(ds), block.batch_size)
    from ..data import sampler_batches

    return load, len(sampler_batches(sampler, ds, block.batch_size, seed, drop))


def validator(engine, forward, *, space, clips=None, rate: int, frames: bool = False):
    """A function scoring ``forward`` on the validation split (labels in ``space``): UAR,
    accuracy, macro-F1 and cross-entropy; None when the run has no validation split."""
    from liser_common.metrics import classification_metrics

    from ..training import collect

    clips = engine.run.split("validation") if clips is None else clips
    if not clips:
        return None
    ds = engine.dataset(clips, rate, frames=frames, space=space)

    def cached(batch: Batch):  # the same clips every epoch: fixed frontends computed once
        with engine.feature_clips(ds, batch):
            return forward(batch)

    def score() -> dict[str, float]:
        loader = ds.loader(engine.cfg.evaluate.batch_size)  # every rank scores all of it: one decision
        logits, _, labels, _ = collect(cached, loader, engine.run.device, engine.precision, desc="validation")
        metrics, _ = classification_metrics(logits, labels, len(space))
        metrics["loss"] = float(torch.nn.functional.cross_entropy(logits.float(), labels))
        return metrics

    return score


def lone_batch(ds, batch_size: int) -> bool:
    """Drop a final training batch of a single clip: normalisation over a batch of one (e.g.
    BatchNorm on pooled vectors) cannot train on it; the clip is in another batch next epoch."""
    return len(ds) > 1 and len(ds) % batch_size == 1


def steps(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

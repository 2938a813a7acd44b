"""``distil``: the student learns from the teachers' targets with the recipe's weighted losses."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from ..components import Position, blame, checked_output, loss_value
from ..data import Batch
from ..errors import UsageError
from ..taps import capture
from ..training import train
from . import label
from .common import augmented, lone_batch, steps, student_call, validator

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("liser")


def run(engine: Engine) -> None:
    run, cfg = engine.run, engine.cfg
    student = run.student
    clips = label.distil_clips(engine)[0]  # cheap: no audio is read; same order as in label
    ds = engine.dataset(clips, student.sample_rate)
    loss_modules = [m for _, m in run.losses.values()]
    position = Position()  # where training is, for loss schedules (Loss.position)
    for m in loss_modules:
        m.position = position

    classes = len(run.label_space)
    inputs = augmented(engine, "distil")

    student_taps = run.taps.get("student", {})

    def step(batch: Batch):
        audio, lengths = inputs(batch)
        with blame(student, "forward"):
            if student_taps:  # intermediate features for the losses that read them
                with capture(student, student_taps, lengths) as feats:
                    out = student(audio, lengths)
                batch.extra["features"] = feats
            else:
                out = student(audio, lengths)
        out = checked_output(student, out, len(batch), classes, student.embedding_dim)
        targets = run.targets.batch(batch.index, run.device) if run.targets else None
        terms, total = {}, 0.0
        for name, (w, loss) in run.losses.items():
            value = loss_value(loss, out, batch, targets)
            if value is None:
                continue
            terms[name] = value.detach()
            total = total + w * value
        if not torch.is_tensor(total):
            if not engine.dist.enabled:
                raise UsageError("no loss term applies to this batch: add `ce` or a teacher")
            total = out.logits.sum() * 0.0  # this rank's part has nothing to learn; others may
        return total, terms

    log.info("distilling student on %d clips (%d unlabeled)", len(ds), len(run.split("unlabeled")))
    train(
        [student, *loss_modules],
        step,
        lambda epoch, skip: ds.loader(
            cfg.distil.batch_size,
            shuffle=True,
            seed=int(cfg.seed) + 1000 + epoch,
            drop_last=lone_batch(ds, cfg.distil.batch_size),
            skip_batches=skip,
                dist=engine.dist,
        ),
        steps(len(ds), cfg.distil.batch_size),
        cfg.distil,
        device=run.device,
        name="student (distil)",
        on_epoch_end=engine.epoch_hook("distil", "student"),
        position=position,
        validate=validator(engine, student_call(student), space=run.label_space, rate=student.sample_rate),
        **engine.checkpointer("distil", "student"),
    )
    engine.save_student()

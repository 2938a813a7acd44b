"""``finetune`` and ``baseline``: the student on the labeled split alone (cross-entropy); the
baseline is the same student, from the same initial weights, with no teacher at all."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F

from ..components import Student, blame
from ..config import TrainConfig
from ..data import Batch
from ..errors import ConfigError
from ..training import train
from .common import augmented, loader_for, optimizer_for, student_call, validator

if TYPE_CHECKING:
    from ..engine import Engine


def _supervised(engine: Engine, student: Student, cfg: TrainConfig, stage: str, model: str) -> None:
    labeled = engine.run.split("labeled")
    if not labeled:
        raise ConfigError(f"{stage}.epochs", f"corpus {engine.run.corpus.name!r} has no labeled split")
    ds = engine.dataset(labeled, student.sample_rate)
    inputs = augmented(engine, stage)

    def step(batch: Batch):
        with blame(student, "forward"), engine.feature_clips(ds, batch):
            out = student(*inputs(batch))
        loss = F.cross_entropy(out.logits, batch.labels)
        return loss, {"ce": loss.detach()}

    load, steps_per_epoch = loader_for(engine, stage, ds, cfg, int(engine.cfg.seed) + 2000)
    train(
        [student],
        step,
        load,
        steps_per_epoch,
        cfg,
        device=engine.run.device,
        name=f"{model} ({stage})",
        on_epoch_end=engine.epoch_hook(stage, model),
        validate=validator(engine, student_call(student), space=engine.run.label_space, rate=student.sample_rate),
        build_optimizer=optimizer_for(engine, stage, cfg),
        **engine.checkpointer(stage, model),
    )


def finetune(engine: Engine) -> None:
    _supervised(engine, engine.run.student, engine.cfg.finetune, "finetune", "student")
    engine.save_student()


def baseline(engine: Engine) -> None:
    _supervised(engine, engine.run.baseline, engine.cfg.baseline, "baseline", "baseline")

"""The stages of a run, in order: each one module with one entry function over the engine.

``teach``     load each teacher's checkpoint, or fit it on the corpus's ``teacher`` split
              (never on ``test``);
``label``     run every teacher once over the unlabeled pool (+ the labeled split) and keep its
              logits and embeddings; label maps project them onto the student's classes;
``distil``    train the student on those targets with the recipe's weighted loss terms;
``finetune``  optionally train it further on the labeled split alone;
``baseline``  optionally train the same student on the labeled split alone, for comparison;
``evaluate``  score every teacher, the baseline and the student on the test split.

Adding a stage (self-training rounds, quantisation, ...) is one module with ``run(engine)`` and
one line in :data:`STAGES`. Its ``salt`` must be new: each stage draws from the seed
``seed * 1000 + salt``, so a stage's result does not depend on how many random numbers the
stages before it used (e.g. the baseline on ``distil.epochs``), and adding a stage changes no
other stage's numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import distil, evaluate, label, supervised, teach

if TYPE_CHECKING:
    from ..engine import Engine


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Engine], None]
    salt: int  # the stage's seed is seed * 1000 + salt; never reuse one
    when: Callable[[Engine], bool] = lambda engine: True


def _distils(engine: Engine) -> bool:
    return engine.cfg.distil.epochs > 0


STAGES: tuple[Stage, ...] = (
    Stage("teach", teach.run, 1),
    Stage("label", label.run, 2, lambda e: bool(e.run.teachers) and _distils(e)),
    Stage("distil", distil.run, 3, _distils),
    Stage("finetune", supervised.finetune, 4, lambda e: e.cfg.finetune.epochs > 0),
    Stage("baseline", supervised.baseline, 5, lambda e: bool(e.cfg.baseline.enabled)),
    Stage("evaluate", evaluate.run, 6),
)

__all__ = ["STAGES", "Stage"]

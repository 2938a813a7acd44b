"""First-party optimizers (``adamw``, the default, and ``sgd``) and learning-rate schedules
(``warmup_cosine``, the default, and ``constant``).

Every training block (``distil``, ``finetune``, ``baseline``, ``teachers.N.fit``) names one of
each; ``lr`` and ``weight_decay`` stay in the block and are injected, with the parameter groups
(``params``) or the optimizer::

    distil:
      lr: 0.001
      optimizer: sgd
      optimizer_options: {momentum: 0.9, nesterov: true}
      scheduler: warmup_cosine
      scheduler_options: {warmup: 100, floor: 0.0}
      losses:
        - {name: kl}
        - {name: fitnets, lr: 0.01, options: {...}}   # its adapter: a parameter group of its own

A schedule multiplies every group's own learning rate by the same factor, so a loss's adapters
keep their ratio to the student's learning rate throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from liser_core import hookimpl


def adamw(params: list, lr: float, weight_decay: float, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
          amsgrad: bool = False) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019, decoupled weight decay), ``torch.optim.AdamW``: the default.
    With its default options it is the optimizer LiSER used before optimizers were components."""
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), not {list(betas)}")
    if eps <= 0:
        raise ValueError("eps must be > 0")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(float(b) for b in betas), eps=eps,
                             amsgrad=amsgrad)


def sgd(params: list, lr: float, weight_decay: float, momentum: float = 0.9, nesterov: bool = False,
        dampening: float = 0.0) -> torch.optim.Optimizer:
    """Stochastic gradient descent with momentum (``torch.optim.SGD``; Nesterov's with ``nesterov``)."""
    if not 0 <= momentum < 1:
        raise ValueError("momentum must be in [0, 1)")
    if nesterov and (momentum == 0 or dampening != 0):
        raise ValueError("nesterov needs momentum > 0 and dampening 0")
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                           dampening=dampening)


def warmup_factor(step: int, total_steps: int, warmup: int | None = None, floor: float = 0.05) -> float:
    """The multiplier of ``warmup_cosine`` at ``step`` (0-based): ``(step + 1) / warmup`` during the
    warm-up, then a cosine from 1 down to ``floor`` at ``total_steps``."""
    w = max(1, min(total_steps // 20, 50)) if warmup is None else int(warmup)  # 0: no warm-up, the cosine from step 0
    if step < w:
        return (step + 1) / w
    progress = (step - w) / max(1, total_steps - w)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int | None = None,
                  floor: float = 0.05) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup`` steps (default: 5 % of the stage, 1 to 50 steps), then cosine
    decay to ``floor`` times the learning rate: the default, as LiSER always trained."""
    if warmup is not None and warmup < 0:
        raise ValueError("warmup must be >= 0 steps")
    if not 0 <= floor <= 1:
        raise ValueError("floor must be in [0, 1]")
    if warmup is None and floor == 0.05:  # the schedule LiSER always used, computed the same way
        from liser_core.training import default_schedule

        return default_schedule(optimizer, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_factor(step, total_steps, warmup, floor))


def constant(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning rate as set, every step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@hookimpl
def liser_register_optimizers(registry):
    registry.register("adamw", adamw, summary="AdamW, decoupled weight decay (default)")
    registry.register("sgd", sgd, summary="SGD with momentum (Nesterov optional)")


@hookimpl
def liser_register_schedulers(registry):
    registry.register("warmup_cosine", warmup_cosine, summary="linear warm-up, then cosine decay to a floor (default)")
    registry.register("constant", constant, summary="the learning rate as set")


__all__ = ["adamw", "constant", "sgd", "warmup_cosine", "warmup_factor"]

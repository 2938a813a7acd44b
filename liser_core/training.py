"""The one training loop every stage uses (teacher fitting, distillation, fine-tuning, baseline)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from .config import TrainConfig
from .data import Batch
from .errors import LiserError

log = logging.getLogger("liser.train")


class NonFiniteLossError(LiserError):
    """The loss was NaN/Inf more often than ``nonfinite_patience`` allows."""

#: step function: batch -> (total loss, {term name: value}) ; the total is what is minimised.
StepFn = Callable[[Batch], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig, total_steps: int):
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, min(total_steps // 20, 50))

    def schedule(step: int) -> float:  # linear warm-up, then cosine decay to 5 %
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def train(
    modules: Sequence[nn.Module],
    step: StepFn,
    loader_for_epoch: Callable[[int], Iterable[Batch]],
    steps_per_epoch: int,
    cfg: TrainConfig,
    *,
    device: torch.device,
    name: str,
    params: Iterable[nn.Parameter] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Minimise ``step``'s total over ``cfg.epochs`` epochs with AdamW and a cosine schedule.

    Returns the per-epoch mean of the total loss and of each term.
    """
    if params is None:
        params = [p for m in modules for p in m.parameters()]
    params = list(params)
    opt, sched = make_optimizer(params, cfg, max(1, cfg.epochs * steps_per_epoch))
    history = []
    nonfinite = 0
    for epoch in range(cfg.epochs):
        for m in modules:
            m.train()
        sums: dict[str, float] = {}
        n = 0
        t0 = time.perf_counter()
        for i, batch in enumerate(loader_for_epoch(epoch)):
            if batch is None:  # every clip of the batch was skipped as bad
                continue
            batch = batch.to(device)
            total, terms = step(batch)
            if not torch.isfinite(total):
                nonfinite += 1
                detail = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items()) or "no terms"
                if nonfinite > cfg.nonfinite_patience:
                    raise NonFiniteLossError(
                        f"{name}: loss is {total.item()} at epoch {epoch + 1}, step {i + 1} ({detail}); "
                        f"{nonfinite} non-finite losses so far (patience {cfg.nonfinite_patience}). "
                        "To debug: lower the learning rate or the temperature, check the inputs for "
                        "NaN/Inf (liser data check) and the loss terms named above, or run with "
                        "torch.autograd.set_detect_anomaly(True)"
                    )
                log.warning("%s: non-finite loss at epoch %d step %d (%s): step skipped", name, epoch + 1, i + 1, detail)
                opt.zero_grad(set_to_none=True)
                continue
            opt.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            n += 1
            sums["loss"] = sums.get("loss", 0.0) + total.item()
            for k, v in terms.items():
                sums[f"loss/{k}"] = sums.get(f"loss/{k}", 0.0) + float(v)
        metrics = {k: v / max(n, 1) for k, v in sums.items()}
        metrics["seconds"] = time.perf_counter() - t0
        history.append(metrics)
        log.info(
            "%s epoch %d/%d  loss %.4f  (%s)  %.1fs",
            name, epoch + 1, cfg.epochs, metrics.get("loss", float("nan")),
            ", ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss/")),
            metrics["seconds"],
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    for m in modules:
        m.eval()
    return history


@torch.no_grad()
def collect(
    forward: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
    loader: Iterable[Batch],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``forward`` over a loader: (logits, embeddings, labels, dataset indices), in loader
    order; clips skipped as bad are absent, so ``indices`` says which rows are which clips."""
    logits, embs, labels, index = [], [], [], []
    for batch in loader:
        if batch is None:
            continue
        batch = batch.to(device)
        lo, em = forward(batch)
        logits.append(lo.float().cpu())
        embs.append(em.float().cpu())
        labels.append(batch.labels.cpu())
        index.append(batch.index.cpu())
    if not logits:
        raise ValueError("no clip could be used: every clip was skipped as bad")
    return torch.cat(logits), torch.cat(embs), torch.cat(labels), torch.cat(index)

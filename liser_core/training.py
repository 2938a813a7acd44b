"""The one training loop every stage uses (teacher fitting, distillation, fine-tuning, baseline)."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from liser_common.distributed import SINGLE, DistContext
from liser_common.progress import progress
from liser_common.trainstate import Checkpointer, Progress, set_rng_state

from .components import Position
from .config import TrainConfig
from .data import Batch
from .errors import LiserError


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


log = logging.getLogger("liser.train")


class NonFiniteLossError(LiserError):
    """The loss was NaN/Inf more often than ``nonfinite_patience`` allows."""

#: step function: batch -> (total loss, {term name: value}) ; the total is what is minimised.
StepFn = Callable[[Batch], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig, total_steps: int):
    """AdamW at ``cfg.lr`` and ``cfg.weight_decay`` with :func:`default_schedule`: what a loop
    without a ``build_optimizer`` uses (the first-party ``adamw`` and ``warmup_cosine``)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, default_schedule(opt, total_steps)


def default_schedule(opt, total_steps: int):
    """Linear warm-up over 5 % of the steps (1 to 50), then cosine decay to 5 % of the rate."""
    warmup = max(1, min(total_steps // 20, 50))

    def schedule(step: int) -> float:  # linear warm-up, then cosine decay to 5 %
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, schedule)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM during training: a resumable checkpoint was saved first.
    ``signum`` is the signal that asked (the CLI exits 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, checkpoint: Path | None, signum: int = signal.SIGINT):
        super().__init__(f"interrupted; resumable checkpoint: {checkpoint}" if checkpoint else "interrupted")
        self.checkpoint = checkpoint
        self.signum = signum


@contextlib.contextmanager
def _writes_finished(checkpointer: Checkpointer | None, name: str):
    """The loop's background checkpoint write is finished when the loop ends: raised on a
    normal end, only logged when the loop is already raising (that error is the one to report)."""
    try:
        yield
    except BaseException:
        if checkpointer is not None:
            try:
                checkpointer.wait()
            except Exception as exc:  # noqa: BLE001
                log.warning("%s: the last checkpoint could not be written: %s", name, exc)
        raise
    if checkpointer is not None:
        checkpointer.wait()


class _SigintFlag:
    """While active (main thread only): the first Ctrl-C or SIGTERM sets a flag the loop checks
    after each step; a second one interrupts at once (the handlers from before are restored)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, name: str):
        self.name = name
        self.raised = False
        self.signum = signal.SIGINT
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True
        self.signum = signum
        self._restore()
        what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        log.warning("%s: %s: saving a resumable checkpoint after this step (%s again to stop at once)", self.name, what, what)

    def _restore(self) -> None:
        for sig, old in self._old.items():
            fallback = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, old if old is not None else fallback)
        self._old = {}

    def __exit__(self, *exc):
        self._restore()
        return False


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (fp32: none) on ``device``'s type."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def train(
    modules: Sequence[nn.Module],
    step: StepFn,
    loader_for_epoch: Callable[[int, int], Iterable[Batch]],
    steps_per_epoch: int,
    cfg: TrainConfig,
    *,
    device: torch.device,
    name: str,
    params: Iterable[nn.Parameter] | None = None,
    on_epoch_end: Callable[..., None] | None = None,
    checkpointer: Checkpointer | None = None,
    precision: str = "fp32",
    on_checkpoint: Callable[[Path, Progress], None] | None = None,
    dist: DistContext = SINGLE,
    position: Position | None = None,
    validate: Callable[[], dict[str, float]] | None = None,
    build_optimizer: Callable[[list[nn.Parameter], int], tuple[Any, Any]] | None = None,
    scalars: Callable[[], dict[str, float]] | None = None,
) -> list[dict[str, float]]:
    """Minimise ``step``'s total over ``cfg.epochs`` epochs with AdamW and a cosine schedule.

    ``loader_for_epoch(epoch, skip)`` gives the epoch's batches, the first ``skip`` left out
    (a resumed epoch); its order must depend on the epoch alone. With a ``checkpointer``, the
    loop saves its whole state at every epoch end, every ``cfg.checkpoint_every`` steps and on
    Ctrl-C, and starts by continuing from the newest complete checkpoint: resumed, it computes
    exactly what the uninterrupted loop would have. Returns the per-epoch mean of the total
    loss and of each term.

    With ``dist`` enabled, each rank gets its part of every global batch from its loader; the
    modules run under DistributedDataParallel and each rank's loss is weighted by its share of
    the batch, so the averaged gradient, the logged losses, the non-finite checks and Ctrl-C
    are the same on every rank, and equal to one process's with the whole batch (for losses
    that are means over the batch's clips). Only rank 0 writes checkpoints.

    ``position``, if given, is moved to each step before ``step`` runs (loss schedules).

    ``build_optimizer(params, total_steps) -> (optimizer, scheduler)`` replaces
    :func:`make_optimizer` (the recipe's optimizer and schedule components, parameter groups).
    ``scalars()``, if given, is read after every optimiser step: each value is averaged over the
    steps that reported it and joins the epoch's metrics under its own name (losses' scalars).

    ``validate``, if given, scores the modules (in eval mode, without touching the generators)
    after every epoch; its metrics join the epoch's as ``val_<name>``. With
    ``cfg.early_stop.metric`` the loop keeps the best epoch's weights (in its checkpoints too),
    stops after ``patience`` epochs without improvement, and ends with the best weights.
    """
    stop = getattr(cfg, "early_stop", None)
    tracking = validate is not None and stop is not None and stop.metric is not None
    best: dict[str, torch.Tensor] = {}  # the best epoch's changing state (parameters, buffers)
    if params is None:
        params = [p for m in modules for p in m.parameters()]
    params = list(params)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    opt, sched = make_optimizer(params, cfg, total_steps) if build_optimizer is None else build_optimizer(params, total_steps)
    forward: Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]] = step
    if dist.enabled:
        holder = _StepModule(modules, step)
        if device.type == "cuda":  # BatchNorm statistics over the whole global batch
            holder = nn.SyncBatchNorm.convert_sync_batchnorm(holder)
        ddp = nn.parallel.DistributedDataParallel(
            holder,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # e.g. a loss term that does not apply to a batch
        )
        forward = ddp
    term_names: list[str] = []  # fixed order of the loss terms in the cross-rank reduction
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    prog = Progress()
    rng = None
    if checkpointer is not None:
        loaded = checkpointer.load(list(modules), opt, sched, scaler)
        if loaded is not None:
            prog, *rng, others = loaded
            best = others.get("best", {})
            if on_epoch_end is not None:  # the epochs done before: reports that missed one catch up
                for e, m in enumerate(prog.history):
                    on_epoch_end(e, m, replayed=True)
            if prog.finished:  # the stage had finished: weights and RNG as they were at its end
                set_rng_state(*rng)
                for m in modules:
                    m.eval()
                return prog.history

    def save(background: bool = False) -> Path | None:
        """A checkpoint of where the loop is; ``background``: written while training goes on
        (the end's and an interruption's are written before going on)."""
        if checkpointer is None:
            return None
        at = copy.deepcopy(prog)  # the hook is told where the loop was when it was saved
        done = None if on_checkpoint is None else (lambda path: on_checkpoint(path, at))
        return checkpointer.save(prog, list(modules), opt, sched, scaler, extra={"best": best} if best else None,
                                 background=background, done=done)

    every = int(getattr(cfg, "checkpoint_every", 0) or 0)
    with _SigintFlag(name) as sigint, _writes_finished(checkpointer, name):
        while prog.epoch < cfg.epochs and not prog.stopped:
            epoch = prog.epoch
            for m in modules:
                m.train()
            batches = loader_for_epoch(epoch, prog.batch)
            if rng is not None:  # resumed: the RNG as the interrupted loop left it
                set_rng_state(*rng)
                rng = None
            t0 = time.perf_counter() - prog.seconds
            total = len(batches) if hasattr(batches, "__len__") else None
            for batch in progress(batches, total=total, desc=f"{name} epoch {epoch + 1}/{cfg.epochs}", unit="batch"):
                prog.batch += 1
                if batch is None:  # every clip of the batch was skipped as bad
                    continue
                batch = batch.to(device)
                if position is not None:
                    position.step, position.epoch = prog.step, epoch
                    position.epochs, position.steps_per_epoch = cfg.epochs, steps_per_epoch
                with autocast(device, precision):
                    total, terms = forward(batch)
                if dist.enabled:
                    total, terms, scale = _reduce_step(total, terms, len(batch.index), sigint, dist, term_names)
                if not torch.isfinite(total):
                    prog.nonfinite += 1
                    detail = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items()) or "no terms"
                    if prog.nonfinite > cfg.nonfinite_patience:
                        raise NonFiniteLossError(
                            f"{name}: loss is {total.item()} at epoch {epoch + 1}, step {prog.batch} ({detail}); "
                            f"{prog.nonfinite} non-finite losses so far (patience {cfg.nonfinite_patience}). "
                            "To debug: lower the learning rate or the temperature, check the inputs for "
                            "NaN/Inf (liser data check) and the loss terms named above, or run with "
                            "torch.autograd.set_detect_anomaly(True)"
                        )
                    log.warning(
                        "%s: non-finite loss at epoch %d step %d (%s): step skipped", name, epoch + 1, prog.batch, detail
                    )
                    if dist.enabled:  # every rank runs the backward it prepared, then drops it
                        (scale * 0.0).backward()
                    opt.zero_grad(set_to_none=True)
                    continue
                opt.zero_grad(set_to_none=True)
                scaler.scale(scale if dist.enabled else total).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                prog.step += 1
                prog.n += 1
                prog.sums["loss"] = prog.sums.get("loss", 0.0) + total.item()
                for k, v in terms.items():
                    prog.sums[f"loss/{k}"] = prog.sums.get(f"loss/{k}", 0.0) + float(v)
                if scalars is not None:
                    for k, v in scalars().items():  # averaged over the steps that report them
                        prog.sums[k] = prog.sums.get(k, 0.0) + float(v)
                        prog.sums[k + _COUNT] = prog.sums.get(k + _COUNT, 0.0) + 1.0
                if sigint.raised:
                    prog.seconds = time.perf_counter() - t0
                    raise TrainingInterrupted(save(), sigint.signum)
                if every and prog.step % every == 0:
                    prog.seconds = time.perf_counter() - t0
                    save(background=True)
                elif checkpointer is not None:
                    checkpointer.poll()  # a background write that ended: its hook runs now
            metrics = _means(prog)
            metrics["seconds"] = time.perf_counter() - t0
            if validate is not None:
                metrics.update(_validate(validate, modules, device))
                if tracking:
                    best = _track_best(prog, epoch, metrics[f"val_{stop.metric}"], stop, modules, best)
            prog.history.append(metrics)
            prog.epoch, prog.batch, prog.sums, prog.n, prog.seconds = epoch + 1, 0, {}, 0, 0.0
            prog.finished = prog.epoch >= cfg.epochs or prog.stopped
            if prog.finished and tracking and stop.restore_best and best:
                _load_changing(modules, best)  # the checkpoint below then holds the best weights
            if prog.finished and tracking and best:  # which epoch's weights the stage ends with, in its record
                metrics["best_epoch"] = prog.best_epoch + 1
                metrics["kept_epoch"] = prog.best_epoch + 1 if stop.restore_best else epoch + 1
            log.info(
                "%s epoch %d/%d  loss %.4f  (%s)  %.1fs",
                name, epoch + 1, cfg.epochs, metrics.get("loss", float("nan")),
                ", ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss/")),
                metrics["seconds"],
            )
            if validate is not None:
                log.info("%s epoch %d/%d  validation: %s", name, epoch + 1, cfg.epochs,
                         "  ".join(f"{k[4:]} {v:.4f}" for k, v in metrics.items() if k.startswith("val_")))
            if prog.stopped and prog.epoch < cfg.epochs:
                log.info("%s: no better val_%s for %d epochs: stopped early after epoch %d", name, stop.metric,
                         stop.patience, epoch + 1)
            if prog.finished and tracking and best:
                log.info("%s: best epoch %d (val_%s %.4f): %s", name, prog.best_epoch + 1, stop.metric, prog.best_value,
                         "its weights kept" if stop.restore_best else "the last epoch's weights kept (restore_best: false)")
            save(background=not prog.finished)  # the epoch's, written during the next one
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
            if sigint.raised and not prog.finished:
                raise TrainingInterrupted(checkpointer.latest() if checkpointer else None, sigint.signum)
    for m in modules:
        dist.broadcast_state(m)  # the ranks' buffers differ after the last step: rank 0's, everywhere
        m.eval()
    return prog.history


_COUNT = "#steps"  # suffix of the step count of a scalar in Progress.sums


def _means(prog: Progress) -> dict[str, float]:
    """The epoch's means: loss terms over its optimiser steps, scalars over the steps that
    reported them."""
    out = {}
    for k, v in prog.sums.items():
        if k.endswith(_COUNT):
            continue
        count = prog.sums.get(k + _COUNT)
        out[k] = v / max(prog.n, 1) if count is None else v / max(count, 1.0)
    return out


def _validate(validate, modules, device) -> dict[str, float]:
    for m in modules:
        m.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():  # the training draws stay as they were
        out = {f"val_{k}": float(v) for k, v in validate().items()}
    for m in modules:
        m.train()
    return out


def _changing(modules) -> dict[str, torch.Tensor]:
    """What training changes: parameters that require grad, and buffers (e.g. BatchNorm's)."""
    out = {}
    for i, m in enumerate(modules):
        m = getattr(m, "module", m)
        for k, p in m.named_parameters():
            if p.requires_grad:
                out[f"{i}.{k}"] = p.detach().cpu().clone()
        for k, b in m.named_buffers():
            out[f"{i}.{k}"] = b.detach().cpu().clone()
    return out


def _load_changing(modules, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for i, m in enumerate(modules):
            m = getattr(m, "module", m)
            own = dict(m.named_parameters()) | dict(m.named_buffers())
            for key, value in state.items():
                idx, _, k = key.partition(".")
                if int(idx) == i and k in own:
                    own[k].copy_(value.to(own[k].device))


def _track_best(prog, epoch: int, value: float, stop, modules, best: dict) -> dict:
    lower = stop.metric == "loss"
    if prog.best_value is None or (value < prog.best_value if lower else value > prog.best_value):
        prog.best_epoch, prog.best_value = epoch, float(value)
        return _changing(modules)
    if stop.patience and epoch - prog.best_epoch >= stop.patience:
        prog.stopped = True  # said after the epoch's validation line
    return best


@torch.no_grad()
def collect(
    forward: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
    loader: Iterable[Batch],
    device: torch.device,
    precision: str = "fp32",
    desc: str = "inference",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``forward`` over a loader: (logits, embeddings, labels, dataset indices), in loader
    order; clips skipped as bad are absent, so ``indices`` says which rows are which clips."""
    logits, embs, labels, index = [], [], [], []
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in progress(loader, total=total, desc=desc, unit="batch"):
        if batch is None:
            continue
        batch = batch.to(device)
        with autocast(device, precision):
            lo, em = forward(batch)
        logits.append(lo.float().cpu())
        embs.append(em.float().cpu())
        labels.append(batch.labels.cpu())
        index.append(batch.index.cpu())
    if not logits:
        raise ValueError("no clip could be used: every clip was skipped as bad")
    return torch.cat(logits), torch.cat(embs), torch.cat(labels), torch.cat(index)


class _StepModule(nn.Module):
    """Holds a loop's modules so DistributedDataParallel can wrap them; its forward is the step."""

    def __init__(self, modules: Sequence[nn.Module], step: StepFn):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.step = step

    def forward(self, batch: Batch):
        return self.step(batch)


def _reduce_step(total, terms, n_local, sigint, dist: DistContext, names: list[str]):
    """One all-reduce per step: the batch's global mean loss and terms (for logs and the
    non-finite check), Ctrl-C on any rank, and this rank's loss scaled by its share."""
    new = [k for k in terms if k not in names]
    if dist.all_sum(torch.tensor([float(len(new))])).item() > 0:  # a term first seen: agree on the order
        for k in sorted({k for part in dist.gather(new) for k in part}):
            names.append(k)
    vals = [float(n_local), float(sigint.raised), total.detach().float().item() * n_local]
    for k in names:
        v = terms.get(k)
        vals += [0.0, 0.0] if v is None else [float(v) * n_local, float(n_local)]
    summed = dist.all_sum(torch.tensor(vals, dtype=torch.float64)).tolist()
    n_global = summed[0]
    if summed[1] > 0:
        sigint.raised = True
    mean = torch.tensor(summed[2] / n_global)
    reduced = {k: torch.tensor(summed[3 + 2 * i] / summed[4 + 2 * i]) for i, k in enumerate(names) if summed[4 + 2 * i] > 0}
    return mean, reduced, total * (n_local * dist.world_size / n_global)

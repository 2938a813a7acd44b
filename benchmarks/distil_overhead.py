"""Distillation step throughput: LiSER's ``distil`` stage against a bare, hand-written PyTorch
loop on the same student, the same initial weights, the same cached teacher targets, the same
batches and the same optimiser, measured side by side (alternating) in one run.

    python benchmarks/distil_overhead.py [--epochs 2] [--repeats 10] [--threads 2] [--batch-size 64]
    python benchmarks/distil_overhead.py --quick          # under a minute, a smoke check

Setup (untimed, once): the ``synth_kd`` recipe with one teacher (``face_cnn``, fitted briefly on a
reduced teacher split: its quality does not change the cost of a distillation step), labels
cached in a teacher-output store, no baseline, no loggers. Then, per repeat, both sides train
the ``logmel_cnn`` student from the same initial weights for ``--epochs`` epochs on the 832
distillation clips (768 unlabeled pool + 64 labeled) with KL(T=2) x T^2 + 0.5 x CE:

``liser``  ``Engine.distil()`` itself: the stage a ``liser run`` executes (it calls
           ``liser_core.training.train`` with the recipe's ``kl`` and ``ce`` loss plugins;
           the timing includes everything the stage does besides the steps: building the
           loader and optimiser, the resumable checkpoint after each epoch, saving the student).
``bare``   a plain PyTorch loop written as a researcher would: ``DataLoader``, forward,
           KL + CE by hand on the teacher logits indexed by ``batch.index``, AdamW, the same
           warm-up + cosine ``LambdaLR``, ``clip_grad_norm_``, ``loss.item()`` for the log.

Data loading is the same on both sides by design: both iterate the ``torch.utils.data.DataLoader``
that ``ClipDataset.loader`` returns over the same dataset (clips in memory, padded by its
``collate``), shuffled with the engine's per-epoch seeds, so both see identical batches and the
comparison is of the training loop alone (collating costs about 1.5 ms of a ~100 ms step).
Dropout draws from the global RNG, reseeded before each side, so both sides do exactly the same
arithmetic: the script checks that the first-step losses, the per-epoch mean losses and the
final weights agree (bit for bit, in practice).

The sides alternate (bare, liser, liser, bare, ...) and the medians over repeats are reported,
with the ratio of each adjacent pair (its geometric mean +- 2 standard errors says how well the run
resolved the ratio). Timings on a shared machine move by +-20 %; the ratio liser / bare is what
to read (goal: LiSER within 5 % of the bare loop, i.e. a ratio of seconds per step <= 1.05). On a
busy machine, prefer ``--threads 1``: with two intra-op threads on two shared cores every step
waits on a preempted thread and the noise swamps a 5 % effect. ``--budget`` stops the repeats
after that many timed seconds, so a loaded machine does not make the run drag on.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from liser_core import ClipDataset, hookimpl, load_plugins, stages
from liser_core.engine import Engine, prepare_config

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "synth_kd.yaml"
TEACHER = "face_cnn"


class EpochClock:
    """A LiSER plugin that keeps what ``train()`` reports after each distillation epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    @hookimpl
    def liser_epoch_end(self, run, stage, model, epoch, metrics) -> None:
        if stage == "distil":
            self.epochs.append(dict(metrics))


def build_run(args, workdir: Path) -> Engine:
    """prepare + teach + label once, through the engine: afterwards ``run.targets`` exists."""
    run_dir = workdir / "run"
    saved = run_dir / "teachers" / TEACHER
    teacher = f"{{name: {TEACHER}, weight: 1.0, fit: {{epochs: {args.teacher_epochs}, batch_size: 32, lr: 3.0e-3}}"
    if (saved / "config.json").is_file():  # --workdir reused: load the teacher fitted last time
        teacher += f", checkpoint: {saved}"
    overrides = [
        f"teachers=[{teacher}}}]",
        "data.options.teacher_clips=1",  # a small teacher split: a short, cheap teacher fit
        "data.options.test_clips=1",
        "baseline.enabled=false",
        "loggers={}",
        f"threads={args.threads}",
        f"run_dir={run_dir}",
        f"store={workdir / 'store'}",
        f"distil.epochs={args.epochs}",
        f"distil.batch_size={args.batch_size}",
    ]
    host = load_plugins()
    cfg = prepare_config(RECIPE, overrides, host)
    engine = Engine(cfg, host)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    engine.prepare()
    stages.teach.run(engine)
    stages.label.run(engine)
    return engine


def distil_dataset(engine: Engine) -> ClipDataset:
    """The distillation set as the engine builds it: the pool with labels hidden, then the
    labeled split (row i of the target table is clip i)."""
    corpus = engine.run.corpus
    clips = [dataclasses.replace(c, label=None) for c in corpus.split("unlabeled")]
    clips += list(corpus.split("labeled"))
    return ClipDataset(clips, corpus.label_space, engine.run.student.sample_rate, loader=getattr(corpus, "load", None))


def loader(ds: ClipDataset, batch_size: int, seed: int, epoch: int):
    """The engine's batches for this epoch: the dataset's own shuffled loader, seed + 1000 + epoch."""
    return ds.loader(batch_size, shuffle=True, seed=seed + 1000 + epoch, drop_last=len(ds) > 1 and len(ds) % batch_size == 1)


# -- the bare loop --------------------------------------------------------------------------------
def kd_loss(logits, teacher_logits, labels, temperature=2.0, ce_weight=0.5):
    """KL(teacher || student) at temperature T, x T^2, plus cross-entropy on labeled rows."""
    t = temperature
    p = torch.softmax(teacher_logits / t, -1)
    loss = F.kl_div(F.log_softmax(logits / t, -1), p, reduction="batchmean") * t * t
    labeled = labels >= 0
    if labeled.any():
        loss = loss + ce_weight * F.cross_entropy(logits[labeled], labels[labeled])
    return loss


def bare_distil(student, ds, teacher_logits, *, epochs, batch_size, lr, weight_decay, grad_clip, seed):
    total = epochs * math.ceil(len(ds) / batch_size)
    warmup = max(1, min(total // 20, 50))

    def lr_at(step):  # linear warm-up, then cosine decay to 5 %
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    history = []
    for epoch in range(epochs):
        student.train()
        t0 = time.perf_counter()
        running, n = 0.0, 0
        for batch in loader(ds, batch_size, seed, epoch):
            logits = student(batch.audio, batch.lengths).logits
            loss = kd_loss(logits, teacher_logits[batch.index], batch.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
            opt.step()
            sched.step()
            running += loss.item()
            n += 1
        history.append({"loss": running / n, "seconds": time.perf_counter() - t0})
    student.eval()
    return history


# -- checks ---------------------------------------------------------------------------------------
def first_step_losses(engine: Engine, student, ds, teacher_logits, batch_size, seed):
    """The loss of the first distillation batch, by LiSER's loss plugins (as the distil step
    sums them) and by the bare loop's ``kd_loss``, for the same weights and dropout mask."""
    batch = next(iter(loader(ds, batch_size, seed, 0)))
    run = engine.run
    student.train()
    torch.manual_seed(seed)
    out = student(batch.audio, batch.lengths)
    targets = run.targets.batch(batch.index, run.device)
    liser = 0.0
    for w, loss in run.losses.values():
        value = loss(out, batch, targets)
        if value is not None:
            liser = liser + w * value
    torch.manual_seed(seed)
    bare = kd_loss(student(batch.audio, batch.lengths).logits, teacher_logits[batch.index], batch.labels)
    student.eval()
    return liser.item(), bare.item()


@dataclasses.dataclass
class Timing:
    wall: float  # seconds around the whole side (stage), wall clock
    cpu: float  # process CPU seconds over the same span (all threads)
    loop: float  # seconds inside the epoch loops only
    losses: list[float]  # per-epoch mean loss


def max_abs_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2, help="distillation epochs per side and repeat")
    ap.add_argument("--repeats", type=int, default=10, help="timed repeats of each side (alternating)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--teacher-epochs", type=int, default=2, help="fit of the face_cnn teacher (setup)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the run, teacher and store here and reuse them")
    ap.add_argument("--budget", type=float, default=150, help="stop repeating after this many timed seconds (min. 3 repeats)")
    ap.add_argument("--quick", action="store_true", help="1 epoch x 2 repeats, 1 teacher epoch: under a minute")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.repeats, args.teacher_epochs = 1, 2, 1
    torch.set_num_threads(args.threads)

    t_setup = time.perf_counter()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="liser-distil-overhead-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    engine = build_run(args, workdir)
    run, cfg = engine.run, engine.cfg
    clock = EpochClock()
    engine.host.pm.register(clock, name="distil-overhead-clock")

    seed = int(cfg.seed)
    ds = distil_dataset(engine)
    teacher_logits = run.targets.logits[TEACHER]  # (N, C) cached teacher outputs, row = dataset index
    assert not torch.isnan(teacher_logits).any()
    assert run.label_maps[TEACHER].is_identity
    init = copy.deepcopy(run.student.state_dict())
    bare_student = copy.deepcopy(run.student)  # same architecture, same initial weights
    steps = args.epochs * len(loader(ds, args.batch_size, seed, 0))  # optimizer steps per side and repeat
    d = cfg.distil
    losses = ", ".join(f"{w:g} x {k}" for k, (w, _) in run.losses.items())
    print(
        f"student {cfg.student.name} ({run.student.num_parameters():,} params); {len(ds)} clips; batch {args.batch_size}; "
        f"{args.epochs} epochs = {steps} steps per side and repeat; losses {losses}; "
        f"AdamW lr {d.lr:g} wd {d.weight_decay:g}, clip {d.grad_clip:g}; setup {time.perf_counter() - t_setup:.0f}s"
    )

    def reset(model) -> None:
        model.load_state_dict(init)
        torch.manual_seed(seed)  # the same dropout masks on both sides

    reset(bare_student)
    lo_liser, lo_bare = first_step_losses(engine, bare_student, ds, teacher_logits, args.batch_size, seed)
    print(f"first-step loss, same weights and batch: liser {lo_liser:.6f}  bare {lo_bare:.6f}  max abs diff {abs(lo_liser - lo_bare):.2e}")

    def timed(fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        return time.perf_counter() - t0, time.process_time() - c0, out

    def side_liser():
        reset(run.student)
        # the engine continues a stage from the training state saved in its run directory; each
        # repeat must train from scratch, so discard that state first (what `liser run --restart` does)
        state_dir = getattr(engine, "state_dir", None)
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)
        clock.epochs.clear()
        wall, cpu, _ = timed(lambda: stages.distil.run(engine))
        if len(clock.epochs) != args.epochs:
            raise SystemExit(f"LiSER's distil stage ran {len(clock.epochs)} of {args.epochs} epochs: it did not train from scratch")
        return Timing(wall, cpu, sum(e["seconds"] for e in clock.epochs), [e["loss"] for e in clock.epochs])

    def side_bare():
        reset(bare_student)
        wall, cpu, hist = timed(
            lambda: bare_distil(
                bare_student, ds, teacher_logits, epochs=args.epochs, batch_size=args.batch_size, lr=d.lr,
                weight_decay=d.weight_decay, grad_clip=d.grad_clip, seed=seed,
            )
        )
        return Timing(wall, cpu, sum(e["seconds"] for e in hist), [e["loss"] for e in hist])

    sides = {"bare": side_bare, "liser": side_liser}
    load0 = os.getloadavg()[0]
    side_bare(), side_liser()  # warm-up (allocator, threads, caches), not timed
    results: dict[str, list[Timing]] = {"bare": [], "liser": []}
    t_timed = time.perf_counter()
    for r in range(args.repeats):  # alternate the order: bare liser, liser bare, ...
        for name in ("bare", "liser") if r % 2 == 0 else ("liser", "bare"):
            results[name].append(sides[name]())
        if r >= 2 and time.perf_counter() - t_timed > args.budget:
            print(f"time budget of {args.budget:.0f}s spent (a loaded machine?): stopping after {r + 1} repeats")
            break
    args.repeats = len(results["bare"])
    load1 = os.getloadavg()[0]
    loss_diff = max(
        abs(a - b) for lt, bt in zip(results["liser"], results["bare"]) for a, b in zip(lt.losses, bt.losses)
    )
    weight_diff = max_abs_diff(run.student.state_dict(), bare_student.state_dict())
    same = loss_diff <= 1e-5 and weight_diff <= 1e-4 and abs(lo_liser - lo_bare) <= 1e-6
    print(
        f"every repeat, per-epoch mean loss max abs diff {loss_diff:.2e}; "
        f"final weights and BN statistics max abs diff {weight_diff:.2e} -> "
        + ("both sides computed the same training" if same else "WARNING: the two sides did NOT compute the same training")
    )

    def med(name, attr):
        return statistics.median(getattr(t, attr) for t in results[name])

    print()
    print(f"{'side':<7} {'ms/step':>8} {'steps/s':>8} {'range ms/step':>15} {'loop ms/step':>13} {'CPU ms/step':>12}")
    for name in ("bare", "liser"):
        walls = [1e3 * t.wall / steps for t in results[name]]
        print(
            f"{name:<7} {statistics.median(walls):>8.2f} {steps / med(name, 'wall'):>8.2f} "
            f"{f'{min(walls):.1f}-{max(walls):.1f}':>15} {1e3 * med(name, 'loop') / steps:>13.2f} "
            f"{1e3 * med(name, 'cpu') / steps:>12.2f}"
        )
    paired = [lt.wall / bt.wall for lt, bt in zip(results["liser"], results["bare"])]
    logs = [math.log(p) for p in paired]
    spread = 2 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else float("nan")
    ratio = med("liser", "wall") / med("bare", "wall")
    print(
        f"ratio liser / bare, seconds per step: {ratio:.3f} (medians); adjacent pairs: median {statistics.median(paired):.3f}, "
        f"geometric mean {math.exp(statistics.fmean(logs)):.3f} +- {100 * spread:.1f} % (2 s.e., {len(paired)} pairs, "
        f"range {min(paired):.3f}-{max(paired):.3f}); "
        f"fastest repeats {min(t.wall for t in results['liser']) / min(t.wall for t in results['bare']):.3f}; "
        f"epoch loops only {med('liser', 'loop') / med('bare', 'loop'):.3f}; CPU time {med('liser', 'cpu') / med('bare', 'cpu'):.3f}"
    )
    outside = {k: 1e3 * (med(k, "wall") - med(k, "loop")) for k in results}
    print(
        f"outside the epoch loops (optimiser, checkpoints, saving the student...): liser {outside['liser']:.0f} ms, "
        f"bare {outside['bare']:.0f} ms per {args.epochs}-epoch stage"
    )
    print(f"LiSER overhead {100 * (ratio - 1):+.1f} % (goal <= +5 %: {'met' if ratio <= 1.05 else 'NOT met'})")
    busy = max(load0, load1) + args.threads > (os.cpu_count() or 1) + 1
    if busy and args.threads > 1:
        print(
            "WARNING: the machine was busy: with several torch threads per process, timings then measure "
            "scheduling noise (two runs of the same bare loop differ by 30 %+); rerun when it is idle, or use --threads 1"
        )
    print(
        f"(median of {args.repeats} alternating repeats after a warm-up; {args.threads} torch thread(s), "
        f"{os.cpu_count()} CPUs, load average {load0:.2f} at start, {load1:.2f} at end; torch {torch.__version__}; "
        "shared machine: read the ratio, not the absolute times)"
    )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

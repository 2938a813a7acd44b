"""``distil``: the student learns from the teachers' targets with the recipe's weighted losses."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from ..components import BatchTargets, Position, blame, checked_output, loss_value
from ..data import Batch
from ..errors import UsageError
from ..taps import capture
from ..training import train
from . import label
from .common import augmented, loader_for, optimizer_for, student_call, validator

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
    online = online_teachers(engine)

    def step(batch: Batch):
        if batch.lengths.device.type == "cpu":  # the longest labeled clip seen: the saved student's window
            labeled = batch.labels >= 0
            if bool(labeled.any()):
                seen = float(batch.lengths[labeled].max()) / batch.sample_rate
                run.labeled_seconds_seen = max(run.labeled_seconds_seen or 0.0, seen)
        audio, lengths = inputs(batch)
        with blame(student, "forward"), engine.feature_clips(ds, batch):
            if student_taps:  # intermediate features for the losses that read them
                with capture(student, student_taps, lengths) as feats:
                    out = student(audio, lengths)
                batch.extra["features"] = feats
                if feats.frames:
                    batch.extra["feature_frames"] = feats.frames
            else:
                out = student(audio, lengths)
        out = checked_output(student, out, len(batch), classes, student.embedding_dim)
        targets = run.targets.batch(batch.index, run.device) if run.targets else None
        if online:  # the teachers run on this batch, on the view the student saw
            targets = online_targets(engine, online, batch, audio, lengths, targets)
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
    load, steps_per_epoch = loader_for(engine, "distil", ds, cfg.distil, int(cfg.seed) + 1000)
    train(
        [student, *loss_modules],
        step,
        load,
        steps_per_epoch,
        cfg.distil,
        device=run.device,
        name="student (distil)",
        on_epoch_end=engine.epoch_hook("distil", "student"),
        position=position,
        validate=validator(engine, student_call(student), space=run.label_space, rate=student.sample_rate),
        build_optimizer=optimizer_for(engine, "distil", cfg.distil, param_groups(engine, student)),
        scalars=loss_scalars(run.losses),
        **engine.checkpointer("distil", "student"),
    )
    engine.save_student()


def param_groups(engine: Engine, student) -> list[dict] | None:
    """The student's parameters (and those of loss terms without an ``lr`` of their own) in one
    group; each loss term with ``distil.losses.N.lr`` in a group of its own at that rate. None
    when no term sets one: one group, as before parameter groups."""
    losses = list(engine.run.losses.values())
    rates = [lc.lr for lc in engine.cfg.distil.losses]
    if all(r is None for r in rates):
        return None
    main = [p for p in student.parameters() if p.requires_grad]
    own = []
    for (_, loss), lr in zip(losses, rates):
        trained = [p for p in loss.parameters() if p.requires_grad]
        if lr is None:
            main += trained
        elif trained:
            own.append({"params": trained, "lr": float(lr)})
    return [{"params": main}, *own]


def loss_scalars(losses: dict):
    """``scalars`` for :func:`~liser_core.training.train`: what each loss term logged with
    :meth:`Loss.log <liser_core.Loss.log>` during the step, as ``<term>/<name>``."""

    def read() -> dict[str, float]:
        out = {}
        for key, (_, loss) in losses.items():
            taken = getattr(loss, "take_logged", None)
            for name, value in (taken() if callable(taken) else {}).items():
                out[f"{key}/{name}"] = value
        return out

    return read


def online_teachers(engine: Engine) -> dict:
    """Teacher key -> teacher, of those the recipe runs online (``teachers.N.online``); in eval mode."""
    run = engine.run
    out = {k: t for k, t in run.teachers.items() if run.teacher_configs[k].online}
    for t in out.values():
        t.eval()
    return out


def online_targets(engine: Engine, online: dict, batch: Batch, audio, lengths, stored: BatchTargets | None) -> BatchTargets:
    """The online teachers' outputs (and taps) on the student's view of ``batch`` (``audio``,
    ``lengths``, resampled to a teacher's own rate), merged with the stored teachers' targets."""
    import torchaudio.functional as AF

    from ..taps import capture

    run = engine.run
    logits, embs = dict(stored.logits) if stored else {}, dict(stored.embeddings) if stored else {}
    features = dict(stored.features) if stored else {}
    frames: dict = {}
    rate = batch.sample_rate
    with torch.no_grad():
        for key, teacher in online.items():
            view_audio, view_lengths, view_rate = audio, lengths, rate
            if teacher.sample_rate and teacher.sample_rate != rate:
                view_audio = AF.resample(audio, rate, teacher.sample_rate)
                view_lengths = (lengths.double() * teacher.sample_rate / rate).ceil().long().clamp(max=view_audio.shape[-1])
                view_rate = teacher.sample_rate
            view = Batch(audio=view_audio, lengths=view_lengths, sample_rate=view_rate, labels=batch.labels,
                         clip_ids=batch.clip_ids, index=batch.index)
            with blame(teacher, "forward"), capture(teacher, run.taps.get(key, {}), view_lengths) as feats:
                out = teacher(view)
            out = checked_output(teacher, out, len(batch), len(teacher.label_space), teacher.embedding_dim)
            logits[key], embs[key] = out.logits.float(), out.embedding.float()
            if feats:
                features[key] = dict(feats)
                frames[key] = feats.frames
    order = [k for k in run.teachers if k in logits]  # the recipe's order, as the store's targets have it
    return BatchTargets(logits={k: logits[k] for k in order}, embeddings={k: embs[k] for k in order},
                        label_maps=run.label_maps, weights=engine.teacher_weights(), combination=run.combiner,
                        features=features, feature_frames=frames)

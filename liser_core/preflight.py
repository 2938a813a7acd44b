"""The probe every run (and ``liser run --dry-run``) starts with: each component, once, on a
tiny batch of the corpus, before anything is trained or written.

What it proves, each failure a one-line :class:`~liser_core.errors.ConfigError` naming the
recipe key of the component at fault (exit status 2):

* the corpus gives clips each teacher can read: face frames for a teacher that needs them
  (``needs_frames``), audio for every model;
* every teacher returns logits ``(B, len(its label space))`` and an embedding ``(B, D)``,
  finite;
* the student returns logits ``(B, len(corpus label space))`` and its embedding;
* every loss term returns None or a finite one-element tensor for that batch, given the
  teachers' targets.

The probe runs in eval mode without touching any weight, batch-norm statistic or random
generator, so a run that passes it computes exactly what it would have computed without it.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import random
from typing import TYPE_CHECKING

import numpy as np
import torch

from .components import BatchTargets, Teacher, blame, checked_output, component_label, loss_value
from .data import BadClipError, Batch, Clip, ClipDataset
from .errors import ComponentError, ConfigError, LiserError
from .taps import capture

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("liser.preflight")

#: Clips the probe tries per split before it gives up on finding a readable one.
TRIES = 8
_PROBING = contextvars.ContextVar("liser_probing", default=False)


def probing() -> bool:
    """True while the preflight probe is calling components: a component that keeps counters
    or caches of what it has seen (e.g. clips without a face) leaves the probe's clips out."""
    return _PROBING.get()


def probe(engine: Engine) -> None:
    """Run every component of ``engine.run`` once (see the module doc); raise on the first fault."""
    run = engine.run
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    modes = {m: m.training for m in [*run.teachers.values(), run.student, *(lo for _, lo in run.losses.values())]}
    token = _PROBING.set(True)
    try:
        for m in modes:
            m.eval()
        _probe(engine)
    finally:
        _PROBING.reset(token)
        for m, training in modes.items():
            m.train(training)
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])


def _probe(engine: Engine) -> None:
    run, cfg = engine.run, engine.cfg
    corpus = run.corpus
    load = getattr(corpus, "load", None)
    space = run.label_space
    needs_frames = any(t.needs_frames for t in run.teachers.values())
    clips = _sample(run, ClipDataset([], space, 16000, with_frames=needs_frames, loader=load))
    if not clips:
        log.warning("preflight: no readable clip among the first %d of each split; components not probed", TRIES)
        return
    keys = {key: f"teachers.{i}" for i, key in enumerate(run.teachers)}
    teacher_out, teacher_feats = {}, {}
    for key, teacher in run.teachers.items():
        where = keys[key]
        if teacher.needs_frames and any(c.frames is None for c in clips):
            hint = ""
            if (getattr(corpus, "options", None) or {}).get("modality") == "audio":
                hint = " (data.options.modality=audiovisual decodes them)"
            raise ConfigError(
                f"{where}.name",
                f"teacher {teacher.liser_spec['name']!r} needs face frames, but {corpus.name} clips have none{hint}",
            )
        native = min(c.sample_rate for c in clips)
        if teacher.sample_rate and native < teacher.sample_rate:
            run.warn(
                f"teacher {key!r} expects {teacher.sample_rate} Hz audio but {corpus.name} clips are {native} Hz: "
                f"they are upsampled, and nothing above {native // 2} Hz reaches it"
            )
        batch = _batch(clips, space, teacher.sample_rate or native, teacher.needs_frames)
        try:
            with torch.no_grad(), capture(teacher, run.taps.get(key, {}), batch.lengths) as feats:
                out = checked_output(teacher, _call(teacher, batch), len(batch), len(teacher.label_space), teacher.embedding_dim)
            teacher_feats[key] = feats
        except ComponentError as exc:
            raise ConfigError(where, f"preflight: {exc}") from exc
        if not (torch.isfinite(out.logits).all() and torch.isfinite(out.embedding).all()):
            raise ConfigError(where, f"preflight: teacher {key!r} returned non-finite logits or embedding")
        teacher_out[key] = out
    batch = _batch(clips, space, run.student.sample_rate, False)
    try:
        with capture(run.student, run.taps.get("student", {}), batch.lengths) as feats:
            out = checked_output(run.student, _call(run.student, batch), len(batch), len(space), run.student.embedding_dim)
        batch.extra["features"] = feats
        if feats.frames:  # taps at full time resolution
            batch.extra["feature_frames"] = feats.frames
    except ComponentError as exc:
        raise ConfigError("student", f"preflight: {exc}") from exc
    _probe_augmentations(engine, batch)
    targets = None
    if teacher_out:
        targets = BatchTargets(
            logits={k: o.logits for k, o in teacher_out.items()},
            embeddings={k: o.embedding for k, o in teacher_out.items()},
            label_maps=run.label_maps,
            weights=engine.teacher_weights(),
            combination=run.combiner,
            features={k: v for k, v in teacher_feats.items() if v},
            feature_frames={k: v.frames for k, v in teacher_feats.items() if v.frames},
        )
        try:
            with blame(run.combiner, "combine"):
                probs = targets.probs(1.0)
        except ComponentError as exc:
            raise ConfigError("distil.combination", f"preflight: {exc}") from exc
        shape = (len(batch), len(space))
        what = component_label(run.combiner, "combiner")
        if tuple(probs.shape) != shape:
            raise ConfigError("distil.combination", f"preflight: {what} must return {shape} rows of probabilities "
                              f"that sum to 1; it returned shape {tuple(probs.shape)}")
        sums = probs.sum(-1)
        if not torch.isfinite(probs).all() or (probs < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            raise ConfigError("distil.combination", f"preflight: {what} must return rows of finite, non-negative "
                              f"probabilities that sum to 1; its rows sum to "
                              f"{', '.join(f'{v:.4g}' for v in sums.tolist())} (min {float(probs.min()):.4g})")
    if cfg.distil.epochs > 0:
        for i, (_, loss) in enumerate(run.losses.values()):
            where = f"distil.losses.{i}"
            try:
                value = loss_value(loss, out, batch, targets)
            except ComponentError as exc:
                raise ConfigError(where, f"preflight: {exc}") from exc
            if value is not None and not torch.isfinite(value.detach()).all():
                raise ConfigError(where, f"preflight: {component_label(loss, 'loss')} is {value.item()} on a batch "
                                  "of real clips")
    log.info(
        "preflight: %d clip(s) through %d teacher(s), the student and %d loss term(s): shapes and values fine",
        len(clips), len(run.teachers), len(run.losses),
    )


def _probe_augmentations(engine: Engine, batch: Batch) -> None:
    """Each training stage's augmentations, in order, on the student's probe batch, then the
    student on what they leave: a setting that breaks the student's input (a speed factor that
    leaves too few samples) is named here, as ``<stage>.augment.N``, not after the teachers'
    fits inside an epoch, blamed on the student."""
    run, cfg = engine.run, engine.cfg
    trains = {"distil": cfg.distil.epochs > 0, "finetune": cfg.finetune.epochs > 0,
              "baseline": cfg.baseline.enabled and cfg.baseline.epochs > 0}
    for stage, augments in run.augment.items():
        if not augments or not trains.get(stage, True):
            continue
        audio, lengths = batch.audio, batch.lengths
        for i, aug in enumerate(augments):
            where = f"{stage}.augment.{i}"
            try:
                with torch.no_grad(), blame(aug, "forward"):
                    audio, lengths = aug(audio, lengths)
            except ComponentError as exc:
                raise ConfigError(where, f"preflight: {exc}") from exc
            ok = (torch.is_tensor(audio) and audio.ndim == 2 and torch.is_tensor(lengths)
                  and tuple(lengths.shape) == (len(batch),) and audio.shape[0] == len(batch)
                  and bool(torch.isfinite(audio).all()) and int(lengths.min()) >= 1 and int(lengths.max()) <= audio.shape[1])
            if not ok:
                raise ConfigError(where, f"preflight: {component_label(aug, 'augmentation')} must return (audio (B, T), "
                                  "lengths (B,)) of finite samples, each length in 1..T")
        try:
            with torch.no_grad(), blame(run.student, "forward"):
                checked_output(run.student, run.student(audio, lengths), len(batch), len(run.label_space),
                               run.student.embedding_dim)
        except ComponentError as exc:
            raise ConfigError(f"{stage}.augment", f"preflight: the student fails on clips as these augmentations leave "
                              f"them ({int(lengths.min())} samples at {run.student.sample_rate} Hz, shortest): {exc}") from exc


def _call(model, batch):
    with blame(model, "forward"):
        return model(batch) if isinstance(model, Teacher) else model(batch.audio, batch.lengths)


def _sample(run, ds: ClipDataset) -> list[Clip]:
    """Up to two readable clips, loaded as ``ds`` loads them: one labeled and one of the pool
    (its label hidden) when the corpus has them, else from the other splits."""
    picked = []
    for split in ("labeled", "unlabeled", "test", "teacher"):
        for clip in run.split(split)[:TRIES]:
            try:
                loaded = ds.load(clip)
            except BadClipError:
                continue
            except LiserError:
                raise
            except Exception as exc:  # noqa: BLE001 - the dataset's bug, named
                raise ConfigError(
                    "data", f"preflight: dataset {run.corpus.name!r} failed to load {clip.clip_id}: {type(exc).__name__}: {exc}"
                ) from exc
            picked.append(dataclasses.replace(loaded, label=None) if split == "unlabeled" else loaded)
            break
        if len(picked) == 2:
            break
    return picked


def _batch(clips: list[Clip], space, rate: int, frames: bool) -> Batch:
    ds = ClipDataset(clips, space, rate, with_frames=frames)
    return ds.collate([ds[i] for i in range(len(ds))])

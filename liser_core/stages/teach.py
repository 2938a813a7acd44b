"""``teach``: every teacher loaded, used as it arrives, or fitted on the corpus's ``teacher`` split.

A teacher fitted here learns each corpus class as its own class of that name (its label map,
both ways), from a seed drawn from its recipe block and fit set; with a store, a teacher whose
fit key was fitted before is loaded from ``<store>/fitted/`` instead (docs/store.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from liser_cache.store import FITTED, weights_digest
from liser_common import provenance, rundir

from .. import checkpoint, guards, prepare
from ..components import Teacher, blame
from ..config import TeacherConfig, TrainConfig
from ..data import Batch, Clip, ClipDataset
from ..errors import ConfigError, UsageError
from ..training import seed_everything, train
from .common import count_params, lone_batch, optimizer_for, steps, teacher_call, validator

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("liser")


def run(engine: Engine) -> None:
    run = engine.run
    teach_clips = run.split("teacher")
    for i, (key, teacher) in enumerate(run.teachers.items()):
        tc = run.teacher_configs[key]
        if tc.checkpoint:
            log.info("teacher %s: loaded from %s", key, tc.checkpoint)
            continue
        if teacher.pretrained:
            log.info("teacher %s: pretrained (%s), used as is", key, teacher.card.source or teacher.card.backbone)
            continue
        if not teacher.fittable:
            raise ConfigError(f"teachers.{i}.checkpoint", f"teacher {tc.name!r} cannot be fitted in a run; give it a checkpoint")
        if not teach_clips:
            raise ConfigError(
                f"teachers.{i}.checkpoint",
                f"corpus {run.corpus.name!r} has no teacher split to fit {tc.name!r} on; give a checkpoint",
            )
        # labels reach the teacher through its label map, by name, in its own class order
        fit_clips, fit_digests, excluded = prepare.fit_clips(engine, key)
        ds = engine.teacher_dataset(teacher, fit_clips, space=teacher.label_space)
        fit_key = _fit_key(engine, key, fit_clips, ds.sample_rate)
        seed = int(tc.seed) if tc.seed is not None else int(fit_key[:8], 16)
        code = _code_hash(engine.host.code_versions())
        cached = _fitted_dir(engine, fit_key, code)
        stored = _stored_fit(engine, cached, fit_key, code) if cached is not None else None
        reused = stored is not None and stored is not _FOREIGN
        own = reused and str(stored.get("fitted_in") or "") == str(run.run_dir)  # this run's own fit, resumed
        if reused:
            checkpoint.load_weights(teacher, cached, f"teacher {tc.name!r}")
            teacher.eval()
            fitted_in = str(stored.get("fitted_in") or "unknown")
            log.info("teacher %s: %s: weights reused from %s [%s]", key,
                     "fitted earlier in this run" if own else "fitted on this fit set before", cached, fit_key[:12])
        else:
            log.info(
                "teacher %s: fitting on %d clips of the teacher split%s [%s]", key, len(ds),
                f" ({sum(excluded.values())} of classes it cannot represent left out)" if excluded else "",
                fit_key[:12],
            )
            _fit(engine, key, teacher, ds, seed)
            fitted_in = str(run.run_dir)
        card = dataclasses.replace(
            teacher.card,
            trained_on=tuple(dict.fromkeys((*teacher.card.trained_on, f"{run.corpus.name}[teacher]"))),
            source=f"fitted in run {fitted_in}",
            num_parameters=count_params(teacher),
            fit_sets=(*teacher.card.fit_sets, guards.FitSet.of(run.corpus.name, "teacher", fit_clips, fit_digests).to_dict()),
        )
        fit = {"fit_key": fit_key, "code": code, "fitted_in": fitted_in}
        if not reused and cached is not None and engine.dist.is_main and stored is not _FOREIGN:
            # the next run with this fit set reuses it; its card and fit sets go with it
            _publish_fit(engine, teacher, cached, {"card": card.to_dict(), **fit}, provenance=fit)
        if reused and not own:  # where the weights were fitted, and where this run took them from
            card = dataclasses.replace(card, source=f"reused from {cached} (fitted in run {fitted_in})")
            fit["reused_from"] = str(cached)
        teacher.card = card
        reused = reused and not own  # a resumed run reads back what it fitted itself: not another run's teacher
        run.diagnostics.setdefault("teacher_fits", {})[key] = {"fit_key": fit_key, "reused": reused} | (
            {"reused_from": str(cached), "fitted_in": fitted_in} if reused else {}
        )
        if engine.dist.is_main:
            out = rundir.inside(run.run_dir, run.run_dir / "teachers" / rundir.safe_name(key, "teacher"))
            _save_teacher(engine, teacher, out, {"card": teacher.card.to_dict()}, provenance=fit)

def _fit(engine: Engine, key: str, teacher: Teacher, ds: ClipDataset, seed: int) -> None:
    """Fit one teacher on its dataset, from its own seed (not the run's)."""
    fit: TrainConfig = engine.run.teacher_configs[key].fit
    seed_everything(seed)
    if type(teacher).fit is not Teacher.fit and _self_fit(engine, key, teacher, ds, fit, seed):
        return  # it fitted itself

    def step(batch: Batch):
        with blame(teacher, "fit_loss"), engine.feature_clips(ds, batch):
            return teacher.fit_loss(batch)

    train(
        [teacher],
        step,
        lambda epoch, skip: ds.loader(
            fit.batch_size, shuffle=True, seed=seed + 100 + epoch, drop_last=lone_batch(ds, fit.batch_size),
            skip_batches=skip, dist=engine.dist,
        ),
        steps(len(ds), fit.batch_size),
        fit,
        device=engine.run.device,
        name=f"teacher {key}",
        params=teacher.trainable_parameters(),
        on_epoch_end=engine.epoch_hook("teach", key),
        validate=_teacher_validator(engine, key, teacher, ds.sample_rate),
        build_optimizer=optimizer_for(engine, f"teachers.{list(engine.run.teachers).index(key)}.fit", fit),
        **engine.checkpointer("teach", key),
    )


def _teacher_validator(engine: Engine, key: str, teacher: Teacher, rate: int):
    """The validation split in the teacher's own classes (those it cannot represent left out)."""
    clips = prepare.fit_clips(engine, key, "validation")[0]
    return validator(engine, teacher_call(teacher), space=teacher.label_space, clips=clips, rate=rate,
                     frames=teacher.needs_frames) if clips else None


def _self_fit(engine: Engine, key: str, teacher: Teacher, ds: ClipDataset, fit: TrainConfig, seed: int) -> bool:
    """``Teacher.fit``; its result kept in the run's state, so a resumed run does not fit again.
    False when it returns ``NotImplemented`` (the engine's loop fits it then)."""
    done = engine.state_dir / "train" / f"teach-{rundir.safe_name(key, 'teacher')}" / "self-fit"
    if (done / checkpoint.CONFIG_NAME).is_file():
        checkpoint.load_weights(teacher, done, f"teacher {key!r}")
        teacher.eval()
        log.info("teacher %s: its own fit, done before this resume, reloaded", key)
        return True
    with blame(teacher, "fit"):
        metrics = teacher.fit(ds, config=fit, device=engine.run.device, seed=seed)
    if metrics is NotImplemented:  # e.g. a subclass that fits itself only with some options
        return False
    teacher.eval()
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    score = _teacher_validator(engine, key, teacher, ds.sample_rate)
    if score is not None:
        with torch.no_grad():
            metrics |= {f"val_{k}": v for k, v in score().items()}
    log.info("teacher %s: fitted itself on %d clips%s", key, len(ds),
             "  (" + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + ")" if metrics else "")
    engine.epoch_hook("teach", key)(0, metrics)
    if engine.dist.is_main:
        _save_teacher(engine, teacher, done, {})
    return True


def _save_teacher(engine: Engine, teacher: Teacher, directory: Path, extra: dict, provenance: dict | None = None) -> None:
    checkpoint.save_component(
        teacher, directory, kind="teacher", name=teacher.liser_spec["name"],
        options=teacher.liser_spec["options"], label_space=teacher.label_space, extra=extra, provenance=provenance,
        plugin=teacher.liser_spec.get("plugin"), package=teacher.liser_spec.get("package") or None,
    )


def _publish_fit(engine: Engine, teacher: Teacher, cached: Path, extra: dict, provenance: dict) -> None:
    """Into the store's ``fitted/`` folder, safe with concurrent writers on a shared filesystem:
    a new entry is written whole under a name private to this machine and process, then renamed
    into place; if another process published the same fit key first, its entry stays and ours
    is dropped (equal fit keys and code, equal teachers). An entry found unusable before the fit
    (stale or damaged: :func:`_stored_fit`) is replaced."""
    import os
    import shutil
    import socket

    if cached.exists():
        _save_teacher(engine, teacher, cached, extra, provenance=provenance)
        return
    tmp = cached.with_name(f".{cached.name}.{socket.gethostname()}.{os.getpid()}.new")
    shutil.rmtree(tmp, ignore_errors=True)
    _save_teacher(engine, teacher, tmp, extra, provenance=provenance)
    try:
        os.rename(tmp, cached)
    except OSError:  # another process published it first: one entry, whole, theirs
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("fitted teacher %s was published by another process meanwhile: its entry kept", cached.name)


def _fit_key(engine: Engine, key: str, clips: list[Clip], rate: int) -> str:
    """What a fitted teacher is a function of: its recipe block (name, options, label map,
    fit settings, seed), its initial weights, its inputs (rate, frames, precision), each fit
    clip's content and label, and with ``fit.early_stop`` each validation clip's. Equal keys
    (and code), equal fitted teachers."""
    tc, teacher = engine.run.teacher_configs[key], engine.run.teachers[key]
    block = fit_block(tc)
    body = {
        "block": block,
        "init": weights_digest(teacher),
        "inputs": {"rate": rate, "frames": teacher.needs_frames, "precision": engine.precision},
        "fit_set": sorted(f"{engine.store_key(c)}:{c.label}" for c in clips),
    }
    if tc.fit.early_stop.metric is not None:  # the validation clips choose the epoch it ends with
        body["selected_on"] = sorted(f"{engine.store_key(c)}:{c.label}"
                                     for c in prepare.fit_clips(engine, key, "validation")[0])
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def fit_block(tc) -> dict:
    """The part of a teacher's recipe block its fitted weights depend on (not its weight in the
    mix, not how often it checkpoints), less what is at its default: a setting LiSER adds later
    with a default that keeps today's behaviour leaves fit keys, and so teacher seeds, as they
    were."""
    block = provenance.plain_config(tc)
    for k in ("checkpoint", "weight", "allow_test_overlap", "online"):
        block.pop(k, None)
    for k in ("checkpoint_every", "nonfinite_patience"):
        block["fit"].pop(k, None)
    return _changed(block, _DEFAULT_BLOCK)


_DEFAULT_BLOCK = dataclasses.asdict(TeacherConfig(name=""))


def _changed(value, default):
    """``value`` without the entries equal to ``default``'s (recursively in mappings)."""
    if not isinstance(value, dict) or not isinstance(default, dict):
        return value
    return {k: _changed(v, default.get(k)) for k, v in value.items() if k not in default or v != default[k]}


def _code_hash(versions: dict[str, str]) -> str:
    """16 hex digits naming the LiSER and plugin versions (another version fits again)."""
    return hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16]


def _fitted_dir(engine: Engine, fit_key: str, code: str) -> Path | None:
    """Where teachers fitted in runs are kept for reuse: ``<store>/fitted/<fit key + code>``."""
    if not engine.cfg.store:
        return None
    return Path(engine.cfg.store).expanduser() / FITTED / f"{fit_key[:48]}-{code}"


#: :func:`_stored_fit`'s answer for a folder LiSER did not write: neither used nor overwritten.
_FOREIGN: dict = {}


def _stored_fit(engine: Engine, entry: Path, fit_key: str, code: str) -> dict | None:
    """The provenance of the store's fitted teacher ``entry`` if it can be reused for this fit
    (its weights record the full fit key and code version it was written for, and it has its
    card), else None: a miss, with one warning naming the entry when something is there.
    :data:`_FOREIGN` when the folder is not one LiSER wrote (it is then left alone)."""
    if not (entry / checkpoint.CONFIG_NAME).is_file():
        return None
    try:
        config = checkpoint.read_component_config(entry, "teacher")
        marker = checkpoint.read_marker(entry)
    except UsageError as exc:
        engine.run.warn(f"fitted-teacher store entry {entry} not used: {exc}; fitting again")
        return None
    if marker is None and "fit_key" not in config:
        engine.run.warn(f"fitted-teacher store entry {entry} was not written by LiSER: not used, not overwritten")
        return _FOREIGN
    if marker is None:
        why = "its weights carry no LiSER provenance (written before LiSER recorded it)"
    elif (marker.get("fit_key"), marker.get("code")) != (fit_key, code) or config.get("fit_key") != fit_key:
        why = f"it was written for fit key {str(marker.get('fit_key'))[:12]} (code {marker.get('code')}), not this one"
    elif not marker.get("card") or not isinstance(config.get("card"), dict):
        why = "it has no teacher card"
    elif checkpoint.weights_changed(entry):
        why = "its weights changed since LiSER wrote them (their SHA-256 is not the one its config.json records)"
    else:
        return marker
    engine.run.warn(f"fitted-teacher store entry {entry} not used: {why}; fitting again [{fit_key[:12]}]")
    return None

"""``evaluate``: every teacher (projected onto the student's classes), the teachers' combined
targets, the baseline and the student, scored on the test split."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from ..components import BatchTargets
from ..data import Clip, ClipDataset
from ..training import collect
from . import label
from .common import count_params, student_call

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("liser")


def run(engine: Engine) -> None:
    run, cfg = engine.run, engine.cfg
    split = cfg.evaluate.split
    clips = run.split(split)
    scored: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # teacher -> (logits, labels, idx)
    for key, teacher in run.teachers.items():
        if teacher.card.overlaps(run.corpus.name, split):
            run.warn(
                f"!!! teacher {key!r} was trained on {run.corpus.name} ({', '.join(teacher.card.trained_on)}): "
                f"its {split} scores are NOT a fair estimate"
            )
    # teachers' test outputs are kept in the store like their labels of the pool
    outputs = label.label_clips(engine, clips, [(k, t, None) for k, t in run.teachers.items()], engine.store(), "store_test") if run.teachers else {}
    for key, teacher in run.teachers.items():
        lo, _, idx = outputs[key]
        labels = torch.tensor([run.label_space.index(clips[i].label) for i in idx.tolist()])
        probs = run.label_maps[key].project(torch.softmax(lo, -1))
        engine.record(key, "teacher", split, probs, labels, [clips[i].clip_id for i in idx], count_params(teacher))
        scored[key] = (lo, labels, idx)
    if len(scored) > 1:
        _record_targets(engine, scored, clips, split)
    student_trained = cfg.distil.epochs > 0 or cfg.finetune.epochs > 0
    for role, model in (("baseline", run.baseline), ("student", run.student)):
        if model is None or (role == "student" and not student_trained):
            continue
        model.eval()
        ds = engine.dataset(clips, model.sample_rate)
        lo, labels, idx = _predict(engine, student_call(model), ds)
        ids = [clips[i].clip_id for i in idx]
        engine.record(role, role, split, torch.softmax(lo, -1), labels, ids, model.num_parameters())
    counts = {len(e.clip_ids) for e in run.evaluations}
    if counts and min(counts) < len(clips):
        run.flag(
            "bad_test_clips",
            f"{len(clips) - min(counts)} of the {len(clips)} {split} clips could not be used (bad clips: see "
            f"diagnostics.skipped_clips): scores are over {min(counts)} clips"
        )


def _record_targets(engine: Engine, scored: dict, clips: list[Clip], split: str) -> None:
    """The teachers' combined targets (what the student learns from, at temperature 1)
    scored like a model: the ceiling of what distillation passes on, on the same clips."""
    run = engine.run
    common = sorted(set.intersection(*(set(idx.tolist()) for _, _, idx in scored.values())))
    if not common:
        return
    logits, labels = {}, None
    for key, (lo, lab, idx) in scored.items():
        pos = {int(i): r for r, i in enumerate(idx.tolist())}
        rows = torch.tensor([pos[i] for i in common])
        logits[key] = lo[rows]
        labels = lab[rows]
    probs = BatchTargets(
        logits=logits, embeddings={}, label_maps=run.label_maps, weights=engine.teacher_weights(),
        combination=run.combiner,
    ).probs(1.0)
    n_params = sum(count_params(t) for t in run.teachers.values())
    engine.record("targets", "targets", split, probs, labels, [clips[i].clip_id for i in common], n_params)


def _predict(engine: Engine, forward, ds: ClipDataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, labels, dataset indices) of every usable clip of ``ds``, in dataset order;
    with several processes each rank scores its share and the results are gathered."""
    loader = ds.loader(engine.cfg.evaluate.batch_size, dist=engine.dist)
    if not engine.dist.enabled:
        lo, _, labels, idx = collect(forward, loader, engine.run.device, engine.precision)
        return lo, labels, idx
    try:
        lo, _, labels, idx = collect(forward, loader, engine.run.device, engine.precision)
    except ValueError:  # this rank's share held no usable clip
        lo, labels, idx = None, None, None
    parts = [p for p in engine.dist.gather((lo, labels, idx)) if p[0] is not None]
    if not parts:
        raise ValueError("no clip could be used: every clip was skipped as bad")
    lo, labels, idx = (torch.cat(t) for t in zip(*parts))
    order = torch.argsort(idx)
    return lo[order], labels[order], idx[order]

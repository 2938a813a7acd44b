"""``liser bench GRID --plan``: what a grid will cost before it runs.

For every combination it builds the corpus (once per distinct data block) and counts the runs
to do, the teacher fits (one per teacher and fit set when the grid has a store: a fitted
teacher is reused across fractions, students, losses and seeds; one per run without), and the
clips each teacher labels (once per teacher identity and clip with a store; every run's
distillation set and test split without). Then it times each distinct teacher and student once
on a batch of real clips of the corpus -- a forward pass per clip for labeling, a forward and
backward pass per clip for fitting and training -- and multiplies: the estimate is as good as
"this machine, these models, these clip lengths".
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from liser_cache.identity import digests_of
from liser_core.components import Teacher
from liser_core.config import plain
from liser_core.data import SPLITS, ClipDataset
from liser_core.engine import build_component, seed_everything
from liser_core.stages.teach import fit_block

BATCH = 16  # clips per timing batch: per-clip costs at a realistic batch size


@dataclass
class Costs:
    """Seconds per clip, measured once per distinct component."""

    forward: dict[str, float] = field(default_factory=dict)  # component key -> s per clip, inference
    train: dict[str, float] = field(default_factory=dict)  # component key -> s per clip, forward + backward


def _key(name: str, options: Any) -> str:
    return json.dumps({"name": name, "options": options}, sort_keys=True, default=str)


def _time(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def _probe_clips(corpus, n: int):
    ds = ClipDataset([], corpus.label_space, 16000, with_frames=True, loader=getattr(corpus, "load", None))
    out = []
    for s in ("unlabeled", "labeled", "test", "teacher"):
        for clip in corpus.split(s)[: 4 * n]:
            try:
                loaded = ds.load(clip)
            except Exception:  # noqa: BLE001 - a bad or frame-less clip is simply not a probe
                continue
            if loaded.audio is not None and (loaded.label is None or loaded.label in corpus.label_space.classes):
                out.append(loaded)
            if len(out) >= n:
                return out
    return out


def _measure_teacher(teacher, clips, costs: Costs, key: str) -> None:
    if key in costs.forward:
        return
    usable = [c for c in clips if not teacher.needs_frames or c.frames is not None]
    if not usable:
        costs.forward[key] = costs.train[key] = float("nan")
        return
    ds = ClipDataset(usable, teacher.label_space, teacher.sample_rate or usable[0].sample_rate,
                     with_frames=teacher.needs_frames, with_labels=False)
    batch = ds.collate([ds[i] for i in range(len(ds))])
    teacher.eval()
    with torch.no_grad():
        costs.forward[key] = _time(lambda: teacher(batch)) / len(usable)
    params = [p for p in teacher.parameters() if p.requires_grad]
    if params:
        teacher.train()

        def step():
            out = teacher(batch)
            out.logits.float().sum().backward()

        costs.train[key] = _time(step) / len(usable)
        teacher.zero_grad(set_to_none=True)
        teacher.eval()
    else:
        costs.train[key] = costs.forward[key]


def _measure_student(student, clips, costs: Costs, key: str) -> None:
    if key in costs.train:
        return
    ds = ClipDataset(clips, student.label_space, student.sample_rate, with_labels=False)
    batch = ds.collate([ds[i] for i in range(len(ds))])
    student.eval()
    with torch.no_grad():
        costs.forward[key] = _time(lambda: student(batch.audio, batch.lengths)) / len(clips)
    student.train()

    def step():
        student(batch.audio, batch.lengths).logits.sum().backward()

    costs.train[key] = _time(step) / len(clips)
    student.zero_grad(set_to_none=True)


def plan_grid(grid, host, items: list[dict]) -> dict:
    """Counts and the estimated wall time of the combinations still to run (see module doc)."""
    corpora: dict[str, Any] = {}
    contents: dict[str, dict[str, list[str]]] = {}
    probes: dict[str, list] = {}
    costs = Costs()
    fits: dict[str, set] = defaultdict(set)  # teacher key -> distinct fit sets (with a store)
    fits_plain = 0  # teacher fits without a store: one per run and fittable teacher
    labeled: dict[str, set] = defaultdict(set)  # teacher identity -> clip ids it labels (with a store)
    labeled_plain: dict[str, int] = defaultdict(int)
    seconds = 0.0  # estimated compute of the runs to do
    todo = [it for it in items if it["state"] not in ("done", "other code")]  # other code: only with --rerun-code
    teacher_objs: dict[str, Any] = {}
    for it in todo:
        cfg = it["config"]
        data_key = json.dumps({"name": cfg.data.name, "options": plain(cfg.data.options), "seed": int(cfg.seed)}, sort_keys=True)
        if data_key not in corpora:
            corpora[data_key] = build_component(host.registries.dataset, cfg.data.name, plain(cfg.data.options),
                                                "data.options", seed=int(cfg.seed))
            probes[data_key] = _probe_clips(corpora[data_key], BATCH)
        corpus, clips = corpora[data_key], probes[data_key]
        if data_key not in contents:  # clips are known by content: the same id may be another clip
            contents[data_key] = {s: [",".join(d) for d in digests_of(corpus.split(s), corpus)] for s in SPLITS}
        split = contents[data_key]
        distil_ids = split["unlabeled"] + split["labeled"]
        test_ids = split[cfg.evaluate.split]
        for tc in cfg.teachers:
            tkey = _key(tc.name, plain(tc.options))
            if tkey not in teacher_objs:
                seed_everything(0)
                if tc.checkpoint:
                    from liser_core.checkpoint import load_component

                    teacher_objs[tkey] = load_component(tc.checkpoint, host.registries.teacher, kind="teacher")
                else:
                    teacher_objs[tkey] = build_component(host.registries.teacher, tc.name, plain(tc.options),
                                                         label_space=corpus.label_space)
                _measure_teacher(teacher_objs[tkey], clips, costs, tkey)
            teacher = teacher_objs[tkey]
            fitted = not tc.checkpoint and not teacher.pretrained and teacher.fittable
            block = json.dumps(fit_block(tc), sort_keys=True, default=str)  # as the store keys fits
            from liser_tools.taskgraph import fit_validation

            identity = (block + "|" + ",".join(sorted(split["teacher"])) + json.dumps(fit_validation(cfg, tc, split), default=str)
                        if fitted else (tkey + "|" + str(tc.checkpoint)))
            own_fit = type(teacher).fit is not Teacher.fit  # Teacher.fit: about one pass over its clips
            n_fit = len(split["teacher"]) * (1 if own_fit else int(tc.fit.epochs)) if fitted else 0
            if fitted:
                fits_plain += 1
                new_fit = identity not in fits[tc.name]
                fits[tc.name].add(identity)
                if new_fit or not grid.store:
                    seconds += n_fit * (costs.forward if own_fit else costs.train)[tkey]
            need = distil_ids + test_ids if cfg.distil.epochs > 0 else test_ids
            labeled_plain[tc.name] += len(need)
            fresh = set(need) - labeled[identity]
            labeled[identity] |= fresh
            seconds += (len(fresh) if grid.store else len(need)) * costs.forward[tkey]
        skey = _key(cfg.student.name, plain(cfg.student.options))
        if skey not in costs.train:
            seed_everything(0)
            student = build_component(host.registries.student, cfg.student.name, plain(cfg.student.options),
                                      label_space=corpus.label_space)
            _measure_student(student, clips, costs, skey)
        per = costs.train[skey]
        seconds += cfg.distil.epochs * len(distil_ids) * per
        if cfg.baseline.enabled:
            seconds += cfg.baseline.epochs * len(split["labeled"]) * per
        seconds += cfg.finetune.epochs * len(split["labeled"]) * per
        seconds += len(test_ids) * costs.forward[skey] * (2 if cfg.baseline.enabled else 1)
    return {
        "runs": {"total": len(items), "done": sum(1 for it in items if it["state"] == "done"),
                 "stale": sum(1 for it in items if it["state"] == "stale"),
                 "other_code": sum(1 for it in items if it["state"] == "other code"), "todo": len(todo)},
        "store": grid.store,
        "fits": {name: len(v) if grid.store else None for name, v in fits.items()},
        "fits_without_store": fits_plain,
        "labeled_clips": {k: len(v) for k, v in labeled.items()} if grid.store else None,
        "labeled_clips_without_store": dict(labeled_plain),
        "seconds_per_clip": {"forward": costs.forward, "train": costs.train},
        "estimated_seconds": seconds,
    }


def format_plan(grid, result: dict) -> str:
    from liser_tools.bench import _clock

    r = result["runs"]
    other = (f", {r['other_code']} from other code: not counted below; --rerun-code runs them, --keep-code keeps "
             "their rows" if r.get("other_code") else "")
    lines = [f"plan: {r['total']} runs ({r['done']} done, {r['stale']} stale{other}, {r['todo']} to run)"]
    fits = result["fits"]
    if grid.store:
        lines.append("teacher fits: " + (", ".join(f"{n} {k}" for k, n in fits.items()) or "none")
                     + f" (one per fit set, reused from the store; {result['fits_without_store']} without it)")
        total = sum(result["labeled_clips"].values())
        plain_total = sum(result["labeled_clips_without_store"].values())
        lines.append(f"teacher forward passes: {total:,} clips (each clip once per teacher and fit set; "
                     f"{plain_total:,} without the store)")
    else:
        lines.append(f"teacher fits: {result['fits_without_store']} (one per run: the grid has no store)")
        lines.append(f"teacher forward passes: {sum(result['labeled_clips_without_store'].values()):,} clips")
    lines.append("measured per clip (s): " + "; ".join(
        f"{json.loads(k)['name']} {v:.4f} forward / {result['seconds_per_clip']['train'].get(k, float('nan')):.4f} train"
        for k, v in result["seconds_per_clip"]["forward"].items()))
    lines.append(f"estimated wall time: {_clock(result['estimated_seconds'])} on this machine "
                 "(compute only: decoding, start-up and evaluation overheads come on top)")
    return "\n".join(lines)

"""``label``: every teacher runs once over the distillation set (the pool, labels hidden, and the
labeled split); with a store, only over the clips it lacks for that teacher (docs/store.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from liser_cache.store import teacher_meta
from liser_common.progress import progress
from liser_common.trainstate import read_complete_dir, write_complete_dir

from ..context import TargetTable
from ..data import Clip, JointDataset
from ..errors import UsageError
from ..taps import TapView
from ..training import autocast
from .common import teacher_call

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("liser")


def distil_clips(engine: Engine) -> tuple[list[Clip], list[str | None]]:
    """Pool clips with labels hidden, then labeled clips; and the pool's hidden truth."""
    pool = engine.run.split("unlabeled")
    truth = [c.label for c in pool]
    clips = [dataclasses.replace(c, label=None) for c in pool]
    if engine.cfg.distil.include_labeled:
        clips += engine.run.split("labeled")
    return clips, truth


def stored_teachers(engine: Engine) -> list[str]:
    """The teachers whose outputs are labeled once (into the store): all but the online ones."""
    return [k for k in engine.run.teachers if not engine.run.teacher_configs[k].online]


def run(engine: Engine) -> None:
    run = engine.run
    clips, truth = distil_clips(engine)
    if not stored_teachers(engine):  # every teacher runs on the distillation batches instead
        log.info("every teacher is online: nothing to label before distillation")
        run.targets = None
        return
    saved = engine.state_dir / "label"
    restored = None
    if "label" in engine.state.get("completed", []) and saved.is_dir():
        try:
            tensors, meta = read_complete_dir(saved)
            restored = tensors["logits"], tensors["embeddings"], _unflat(tensors.get("features", {}))
            if set(restored[0]) != set(stored_teachers(engine)) or any(len(v) != len(clips) for v in restored[0].values()):
                raise ValueError("it does not hold this run's teachers and clips")
            run.diagnostics.update(meta.get("diagnostics", {}))
            log.info("teacher targets of %d clips restored from %s", len(clips), saved)
        except (UsageError, ValueError, KeyError) as exc:  # damaged (e.g. killed in its rewrite): recompute
            log.warning("%s cannot be used (%s); labeling again", saved, exc)
            restored = None
    logits, embs, features = restored if restored is not None else _label_all(engine, clips)
    run.targets = TargetTable(
        logits=logits,
        embeddings=embs,
        features=features,
        label_maps=run.label_maps,
        weights=engine.teacher_weights(),
        combination=run.combiner,
    )
    # Diagnostic only: how often the combined targets agree with the pool's hidden labels.
    usable = ~torch.isnan(next(iter(logits.values()))).any(1)
    known = [i for i, t in enumerate(truth) if t is not None and usable[i]]
    if known:
        probs = run.targets.batch(torch.tensor(known), torch.device("cpu")).probs(1.0)
        ids = torch.tensor([run.label_space.index(truth[i]) for i in known])
        agree = (probs.argmax(-1) == ids).float().mean().item()
        run.diagnostics["pool_target_accuracy"] = agree
        log.info("combined teacher targets match the pool's hidden labels on %.1f%% of clips", 100 * agree)
    if engine.dist.is_main and restored is None:  # written once, not again on every resume
        write_complete_dir(
            saved, {"logits": logits, "embeddings": embs, **({"features": _flat(features)} if features else {})}, {"diagnostics": {k: v for k, v in run.diagnostics.items() if k == "store"}}
        )


def _flat(features: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{k}/{tap}": v for k, taps in features.items() for tap, v in taps.items()}


def _unflat(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, v in tensors.items():
        k, _, tap = name.rpartition("/")
        out.setdefault(k, {})[tap] = v
    return out


def package_extra(engine: Engine, teacher) -> dict | None:
    """What a teacher's stored outputs also depend on when a third-party package provides it:
    that package's version (``{"package": {distribution: version}}``). Its ``forward`` may
    change with an upgrade while its weights and options do not, and the package cannot bump
    LiSER's ``STORE_FORMAT``; an upgrade so labels anew instead of reusing the old outputs.
    None for LiSER's own teachers (docs/store.md)."""
    spec = getattr(teacher, "liser_spec", None) or {}
    try:
        entry = engine.reg.teacher.get_recorded(spec["name"], [spec.get("plugin")])
    except (KeyError, LookupError):
        return None
    if entry.first_party:
        return None
    info = next((p for p in engine.host.plugins if p.name == entry.plugin and p.status == "loaded"), None)
    if info is None:
        return None
    return {"package": {info.distribution or info.module: engine.host.package_version(info)}}


def _label_all(engine: Engine, clips: list[Clip]):
    """Every teacher's logits and embeddings on ``clips`` (and the taps the losses read)."""
    run = engine.run
    models = []
    for key, teacher in run.teachers.items():
        if run.teacher_configs[key].online:  # run on each distillation batch (distil.py)
            continue
        package = package_extra(engine, teacher)
        models.append((key, teacher, package))
        if run.taps.get(key):  # its intermediate features: labeled and stored like its outputs
            view = TapView(teacher, run.taps[key], {t: run.tap_shapes[(key, t)] for t in run.taps[key]})
            models.append((f"{key} (features)", view, {**view.store_extra, **(package or {})}))
    out = label_clips(engine, clips, models, engine.store(shared=engine.dist.enabled))  # ranks share labels through a store
    logits, embs, features = {}, {}, {}
    for name, model, _ in models:  # rows of clips skipped as bad stay NaN; distil skips them too
        lo, em, idx = out[name]
        full = torch.full((len(clips), lo.shape[1]), float("nan")).index_copy_(0, idx, lo)
        if isinstance(model, TapView):
            features[name.removesuffix(" (features)")] = model.split(full)
        else:
            logits[name] = full
            embs[name] = torch.full((len(clips), em.shape[1]), float("nan")).index_copy_(0, idx, em)
    return logits, embs, features


class _Pass(NamedTuple):
    """One model's share of a labeling pass."""

    name: str
    forward: Callable
    part: int | None  # its ClipDataset in the joint dataset; None: nothing to label
    meta: dict[str, Any] | None  # its store entry's meta (fingerprint), with a store
    todo: set[int]  # the clips it labels


def _at_store_precision(cfg, name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded through ``store_dtype`` (float16 targets, as a float16 store returns them)."""
    if str(getattr(cfg.store_dtype, "value", cfg.store_dtype)) != "float16":
        return t
    out = t.half().float()
    if not torch.isfinite(out).all():
        raise ValueError(f"teacher {name}: its outputs overflow float16 (|x| > 65504); use store_dtype=float32")
    return out


def label_clips(engine: Engine, clips: list[Clip], models, store, diagnostic: str = "store") -> dict:
    """``{name: (logits, embeddings, clip indices)}`` of each ``(name, model, store_extra)`` on
    ``clips``, in one pass: each clip decoded once (:class:`JointDataset`) for the models that
    need it. With a ``store``, each model labels only the clips the store lacks for its
    fingerprint, then all are read from it; several processes share the clips to label
    (docs/store.md). Models that decode alike share a batch: a model must not change its input."""
    run, cfg = engine.run, engine.cfg
    keys = [engine.store_key(c) for c in clips] if store else None
    specs: dict[tuple[int, bool], int] = {}  # (rate, frames) -> part of the joint dataset
    passes = []
    for name, model, extra in models:
        model.eval()
        rate = model.sample_rate or engine.native_rate()
        if store and engine.precision != "fp32":  # outputs computed under autocast: entries of their own
            extra = {**(extra or {}), "precision": engine.precision}
        meta = teacher_meta(model, sample_rate=rate, extra=extra) if store else None
        # rank 0 decides what is missing before any rank writes, so all ranks share one to-do list
        todo = engine.dist.on_main(lambda m=meta: store.missing(m["fingerprint"], keys, embeddings=True)) if store else range(len(clips))
        if store and any(p.meta["fingerprint"] == meta["fingerprint"] for p in passes):
            todo = ()  # the same teacher under another name: labeled once, read back for both
        part = specs.setdefault((rate, model.needs_frames), len(specs)) if todo else None  # nothing to decode for it
        passes.append(_Pass(name, teacher_call(model), part, meta, set(todo)))
    union = sorted(set().union(*(p.todo for p in passes)))
    mine = engine.dist.shard(union) if store else union  # each rank labels its share into its own shards
    chunks: dict[str, list] = {p.name: [] for p in passes}
    t0 = time.perf_counter()
    if mine:
        sub, pos = [clips[i] for i in mine], {i: j for j, i in enumerate(mine)}
        needs = [set() for _ in specs]  # which clips each part decodes: those its models lack
        for p in passes:
            if p.part is not None:
                needs[p.part] |= {pos[i] for i in p.todo if i in pos}
        joint = JointDataset([engine.dataset(sub, rate, labels=False, frames=fr) for rate, fr in specs], needs)
        loader = joint.loader(cfg.evaluate.batch_size)
        with contextlib.ExitStack() as stack, torch.no_grad():
            writers = {p.name: stack.enter_context(store.writer(p.meta["fingerprint"], meta=p.meta))
                       for p in passes if store and p.todo}
            for batches in progress(loader, total=len(loader), desc=f"labeling ({', '.join(chunks)})", unit="batch"):
                for name, forward, part, _, todo in passes:
                    batch = batches[part] if part is not None else None
                    rows = [r for r, j in enumerate(batch.index.tolist()) if mine[j] in todo] if batch is not None else []
                    if not rows:
                        continue  # every clip of the batch bad, or stored for this model
                    batch = batch.select(rows)
                    ids = [mine[j] for j in batch.index.tolist()]
                    with autocast(run.device, engine.precision):  # as without a store: the same targets
                        lo, em = forward(batch.to(run.device))
                    lo, em = lo.detach().float().cpu(), em.detach().float().cpu()  # (a view of a parameter needs grad)
                    bad = (~torch.isfinite(lo)).any(1).nonzero().flatten().tolist()
                    if bad:  # never stored, never distilled from: a broken teacher, named with its clip
                        from ..errors import ComponentError

                        raise ComponentError(
                            f"teacher {name}: its logits are not finite (NaN or inf) on clip {clips[ids[bad[0]]].clip_id}"
                            f"{f' and {len(bad) - 1} more in its batch' if len(bad) > 1 else ''}: its weights or that "
                            "clip are broken (liser data check RECIPE opens every clip); nothing was stored for it"
                        )
                    if store:
                        writers[name].add_many([keys[i] for i in ids], lo, em)
                    else:  # at the precision a store would keep: store_dtype, not whether there is a store, sets the targets
                        lo, em = _at_store_precision(cfg, name, lo), _at_store_precision(cfg, name, em)
                        chunks[name].append((torch.tensor(ids), lo, em))
    if store is None:
        out = {}
        for name, parts in chunks.items():
            if not parts:
                raise ValueError("no clip could be used: every clip was skipped as bad")
            idx, lo, em = (torch.cat(x) for x in zip(*parts))
            out[name] = (lo, em, idx)
            log.info("teacher %s labeled %d clips (%.1fs%s)", name, len(idx), time.perf_counter() - t0,
                     f", one pass with {len(passes) - 1} more" if len(passes) > 1 else "")
        return out
    engine.dist.barrier()  # every rank's shards are complete ...
    out = {}
    for name, _, _, meta, todo in passes:
        fp = meta["fingerprint"]
        gone = set(engine.dist.on_main(lambda fp=fp: store.missing(fp, keys, embeddings=True)))  # ... rank 0 indexes them
        present = [i for i in range(len(clips)) if i not in gone]
        if not present:
            raise ValueError("no clip could be used: every clip was skipped as bad")
        lo, em = store.load(fp, [keys[i] for i in present])
        reused = len(clips) - len(todo)
        log.info("teacher %s: %d clips from the store, %d labeled now%s (%.1fs) [%s]", name, reused, len(todo),
                 f" ({len(todo.intersection(mine))} by this rank)" if engine.dist.enabled else "", time.perf_counter() - t0, fp[:12])
        run.diagnostics.setdefault(diagnostic, {})[name] = {"fingerprint": fp, "from_store": reused, "labeled": len(todo)}
        out[name] = (lo, em, torch.tensor(present))
    return out

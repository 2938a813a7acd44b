"""``label``: every teacher runs once over the distillation set (the pool, labels hidden, and the
labeled split); with a store, only over the clips it lacks for that teacher (docs/store.md)."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

import torch

from liser_cache.store import teacher_meta
from liser_common.progress import progress
from liser_common.trainstate import read_complete_dir, write_complete_dir

from ..context import TargetTable
from ..data import Clip
from ..errors import UsageError
from ..taps import TapView
from ..training import collect
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


def run(engine: Engine) -> None:
    run = engine.run
    clips, truth = distil_clips(engine)
    saved = engine.state_dir / "label"
    restored = None
    if "label" in engine.state.get("completed", []) and saved.is_dir():
        try:
            tensors, meta = read_complete_dir(saved)
            restored = tensors["logits"], tensors["embeddings"], _unflat(tensors.get("features", {}))
            if set(restored[0]) != set(run.teachers) or any(len(v) != len(clips) for v in restored[0].values()):
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


def _label_all(engine: Engine, clips: list[Clip]):
    """Every teacher's logits and embeddings on ``clips`` (and the taps the losses read)."""
    run, cfg = engine.run, engine.cfg
    logits, embs, features = {}, {}, {}
    store = engine.store(shared=engine.dist.enabled)  # ranks share their labels through a store
    keys = [engine.store_key(c) for c in clips] if store else None
    for key, teacher in run.teachers.items():
        teacher.eval()
        ds = engine.teacher_dataset(teacher, clips, labels=False)
        t0 = time.perf_counter()
        if store is None:
            lo, em, _, idx = collect(
                teacher_call(teacher), ds.loader(cfg.evaluate.batch_size), run.device, engine.precision, f"labeling ({key})"
            )
            log.info("teacher %s labeled %d clips in %.1fs", key, len(ds), time.perf_counter() - t0)
        else:
            lo, em, idx = label_with_store(engine, store, keys, key, teacher, clips, ds.sample_rate)
        # rows of clips skipped as bad stay NaN; those clips are skipped in distil too
        logits[key] = torch.full((len(ds), lo.shape[1]), float("nan")).index_copy_(0, idx, lo)
        embs[key] = torch.full((len(ds), em.shape[1]), float("nan")).index_copy_(0, idx, em)
        if run.taps.get(key):  # its intermediate features: labeled and stored like its outputs
            view = TapView(teacher, run.taps[key], {t: run.tap_shapes[(key, t)] for t in run.taps[key]})
            if store is None:
                flat, _, _, idx = collect(teacher_call(view), ds.loader(cfg.evaluate.batch_size), run.device,
                                          engine.precision, f"features ({key})")
            else:
                flat, _, idx = label_with_store(engine, store, keys, f"{key} (features)", view, clips, ds.sample_rate,
                                                extra=view.store_extra)
            full = torch.full((len(ds), flat.shape[1]), float("nan")).index_copy_(0, idx, flat)
            features[key] = view.split(full)
    return logits, embs, features


def label_with_store(engine: Engine, store, keys, key, teacher, clips, sample_rate, diagnostic: str = "store", extra=None):
    """Label only the clips the store lacks for this teacher's fingerprint, then read all."""
    run, cfg = engine.run, engine.cfg
    # what a clip's store key leaves out and the outputs depend on: nothing for clips held in
    # memory (keyed by their samples), the decoding for file-based clips (in their key)
    meta = teacher_meta(teacher, sample_rate=sample_rate, extra=extra)
    fp = meta["fingerprint"]
    # rank 0 decides what is missing before any rank writes, so all ranks share one to-do list
    todo = engine.dist.on_main(lambda: store.missing(fp, keys, embeddings=True))
    t0 = time.perf_counter()
    mine = engine.dist.shard(todo)  # each rank labels its share into its own shards
    if mine:
        sub = engine.teacher_dataset(teacher, [clips[i] for i in mine], labels=False)
        with store.writer(fp, meta=meta) as writer, torch.no_grad():
            loader = sub.loader(cfg.evaluate.batch_size)
            for batch in progress(loader, total=len(loader), desc=f"labeling ({key})", unit="batch"):
                if batch is None:
                    continue  # bad clips are skipped, never stored
                out = teacher_call(teacher)(batch.to(run.device))
                writer.add_many(
                    [keys[mine[i]] for i in batch.index.tolist()], out.logits.float().cpu(), out.embedding.float().cpu()
                )
    engine.dist.barrier()  # every rank's shards are complete ...
    gone = set(engine.dist.on_main(lambda: store.missing(fp, keys, embeddings=True)))  # ... rank 0 indexes them
    present = [i for i in range(len(clips)) if i not in gone]
    if not present:
        raise ValueError("no clip could be used: every clip was skipped as bad")
    lo, em = store.load(fp, [keys[i] for i in present])
    reused = len(clips) - len(todo)
    log.info(
        "teacher %s: %d clips from the store, %d labeled now%s (%.1fs) [%s]",
        key, reused, len(todo), f" ({len(mine)} by this rank)" if engine.dist.enabled else "",
        time.perf_counter() - t0, fp[:12],
    )
    run.diagnostics.setdefault(diagnostic, {})[key] = {"fingerprint": fp, "from_store": reused, "labeled": len(todo)}
    return lo, em, torch.tensor(present)

"""Before any stage: build the corpus and every component, and check what can be checked.

:func:`data` builds the corpus and applies the data guards (content digests, duplicates, missing
speakers and clips, speakers shared with the test split) and sets up the data path (decoded-clip
cache, decoding workers, threads); :func:`components` builds teachers, label maps, student and
losses and applies the teacher guards (fit sets that overlap the test split, the label-map
report). Nothing here writes a file (docs/soundness.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from liser_cache.clipcache import ClipCache
from liser_cache.identity import clip_files, digests_of
from liser_common import provenance

from . import checkpoint, guards
from ._registry import bare_name
from .components import Teacher
from .config import DEFAULT_SAMPLER, DuplicatePolicy, plain, training_blocks
from .data import SPLITS, Clip, Corpus
from .errors import ConfigError
from .labels import LabelMap
from .stages.common import count_params

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("liser")


def build_component(registry, name: str, options: dict, key: str = "", **inject: Any):
    """Build a registered component and remember how (``liser_spec``) so it can be saved.

    A factory that rejects its options (``TypeError``/``ValueError``) is reported as a
    :class:`ConfigError` at ``key``, the recipe path of those options.
    """
    entry = registry.get_recorded(name)  # a validated recipe's names (docs/plugins.md, Names)
    try:
        module = entry.factory(**options, **inject)
    except ConfigError as exc:  # a composite component validating its parts (e.g. fusion)
        raise ConfigError(f"{key}.{exc.key}" if key else exc.key, exc.reason, exc.suggestions) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, f"{registry.kind} {name!r} rejected its options: {exc}") from exc
    _check_built(module, registry.kind, name, entry, key)
    if isinstance(module, torch.nn.Module) or registry.kind in _NAMED_KINDS:
        where = key[: -len(".options")] if key.endswith(".options") else key
        where = where[: -len("_options")] if where.endswith("_options") else where  # distil.combination_options
        try:
            module.liser_spec = {
                "name": name, "options": options, "kind": registry.kind, "plugin": entry.plugin, "key": where,
                "defaults": unset_defaults(entry.factory, options, inject), "package": dict(entry.package),
            }
        except AttributeError:  # an object without a __dict__ (slots): errors then name its class
            pass
    return module


#: what a built component must be, per kind: its base class and the attributes the engine reads
#: (a loss may also be any nn.Module with a Loss's attributes)
_BUILT = {"student": ("Student", ("embedding_dim", "sample_rate", "label_space")),
          "teacher": ("Teacher", ("embedding_dim", "card", "label_space")),
          "loss": ("Loss", ("needs_teacher", "bind"))}


def _check_built(module: Any, kind: str, name: str, entry, key: str) -> None:
    """A plugin's factory that returned something the engine cannot use (not the kind's base
    class, or without an attribute the engine reads) is a one-line error naming the recipe key,
    the plugin and its package -- not an AttributeError deep in the run."""
    if kind not in _BUILT:
        return
    from . import components as comp

    base, attrs = _BUILT[kind]
    where = key[: -len(".options")] if key.endswith(".options") else key
    who = f"{kind} {name!r} of plugin {entry.plugin or '?'}" + (
        f" ({entry.package.get('name')} {entry.package.get('version')})" if entry.package else "")
    duck = kind == "loss" and isinstance(module, torch.nn.Module)
    if not isinstance(module, getattr(comp, base)) and not (duck and all(hasattr(module, a) for a in attrs)):
        raise ConfigError(where, f"{who} built a {type(module).__name__}, not a liser_core.{base} (its factory must "
                          f"return a subclass of {base}: docs/plugins.md)")
    missing = [a for a in attrs if not hasattr(module, a)]
    if missing:
        raise ConfigError(where, f"{who} built a {type(module).__name__} without {', '.join(missing)}, which a "
                          f"{base} sets in __init__ (docs/plugins.md)")


def unset_defaults(factory, options: dict, inject: dict) -> dict[str, Any]:
    """The defaults of ``factory``'s parameters that ``options`` and ``inject`` leave unset (those
    JSON can hold): what the component was built with beyond its recipe options, recorded so that
    a saved student and ``metrics.json`` do not depend on the plugin's defaults of another day."""
    import inspect

    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    out = {}
    for p in params:
        if p.name in options or p.name in inject or p.default is inspect.Parameter.empty:
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = list(p.default) if isinstance(p.default, tuple) else p.default
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[p.name] = value
    return out


#: Kinds whose components need not be modules but are still named in errors by registry name.
_NAMED_KINDS = ("combiner", "optimizer", "scheduler", "sampler")


def _teacher_seed(tc) -> int:
    """The seed of a teacher's initial weights: from its recipe block (its own ``seed`` if set)."""
    if tc.seed is not None:
        return int(tc.seed)
    block = provenance.plain_config(tc)
    return int(hashlib.sha256(json.dumps({k: block.get(k) for k in ("name", "options")}, sort_keys=True).encode()).hexdigest()[:8], 16)


def new_corpus(registries, cfg) -> Corpus:
    """The recipe's corpus (``data.name`` with ``data.options`` and the run's seed), built."""
    corpus = build_component(registries.dataset, cfg.data.name, plain(cfg.data.options), "data.options",
                             seed=int(cfg.seed))
    if not isinstance(corpus, Corpus):
        raise ConfigError("data.name", f"dataset {cfg.data.name!r} returned a {type(corpus).__name__}, not a "
                          "liser_core.data.Corpus (docs/plugins.md)")
    return corpus


def data(engine: Engine) -> None:
    """Build the corpus and apply the data guards (digests, duplicates, missing clips, shared
    speakers); the data path (cache, workers, threads). Nothing is written."""
    run, cfg = engine.run, engine.cfg
    t0 = time.perf_counter()
    run.corpus = new_corpus(engine.reg, cfg)
    log.info(
        "corpus %s (%s): %s  [%.1fs]",
        run.corpus.name,
        run.label_space.name,
        ", ".join(f"{s} {len(run.corpus.split(s))}" for s in SPLITS),
        time.perf_counter() - t0,
    )
    guard_data(engine)
    setup_data_path(engine)
    carve_validation(engine)
    if not run.split(cfg.evaluate.split):
        raise ConfigError("evaluate.split", f"corpus {run.corpus.name!r} has no {cfg.evaluate.split!r} clips")

def _check_checkpoint_teacher(engine: Engine, i: int, tc, teacher) -> None:
    """A teacher loaded from ``teachers.N.checkpoint`` is the component its ``config.json``
    records, built with the options saved there: the recipe's name must be that component and
    its options (when it gives any) those, or the run would say one teacher and run another."""
    import json

    reg = engine.reg.teacher
    saved = reg.get_recorded(teacher.liser_spec["name"], [teacher.liser_spec["plugin"]])
    named = reg.get(str(tc.name))
    if named.qualified != saved.qualified:
        raise ConfigError(f"teachers.{i}.name", f"{tc.checkpoint} holds teacher {saved.qualified!r}, not "
                          f"{named.qualified!r}: name the teacher it holds, or give that teacher's checkpoint")
    given = plain(tc.options)
    if given and json.dumps(given, sort_keys=True, default=str) != json.dumps(teacher.liser_spec["options"],
                                                                                sort_keys=True, default=str):
        raise ConfigError(f"teachers.{i}.options", f"a teacher loaded from {tc.checkpoint} is built with the options "
                          f"saved there ({teacher.liser_spec['options']}), not {given}: leave options out, or fit "
                          "a teacher with these options")


def components(engine: Engine) -> None:
    run, cfg = engine.run, engine.cfg
    names = [bare_name(t.name) for t in cfg.teachers]  # keys name files: never PLUGIN:NAME
    for i, tc in enumerate(cfg.teachers):
        key = names[i] if names.count(names[i]) == 1 else f"{names[i]}.{i}"
        if tc.checkpoint:
            teacher = checkpoint.load_component(tc.checkpoint, engine.reg.teacher, kind="teacher")
            teacher.liser_spec |= {"kind": "teacher", "key": f"teachers.{i}"}
            _check_checkpoint_teacher(engine, i, tc, teacher)
        else:  # its initial weights depend on its own recipe block, not on the run's seed
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_teacher_seed(tc))
                teacher = build_component(
                    engine.reg.teacher, tc.name, plain(tc.options), f"teachers.{i}.options", label_space=run.label_space
                )
        try:
            run.label_maps[key] = LabelMap(
                teacher.label_space,
                run.label_space,
                merge=plain(tc.label_map.merge),
                drop=tuple(tc.label_map.drop),
            )
        except ValueError as exc:
            raise ConfigError(f"teachers.{i}.label_map", str(exc)) from None
        if tc.online and teacher.needs_frames:
            raise ConfigError(f"teachers.{i}.online", f"teacher {tc.name!r} reads face frames, which distillation "
                              "batches do not carry: it cannot run online (leave it to the store)")
        run.teachers[key] = teacher.to(run.device)
        run.teacher_configs[key] = tc
    guard_teachers(engine)

    if engine.dist.enabled:  # every rank needs a part of every global batch
        blocks = {"distil": cfg.distil, "finetune": cfg.finetune, "baseline": cfg.baseline}
        blocks |= {f"teachers.{i}.fit": tc.fit for i, tc in enumerate(cfg.teachers)}
        for key, block in blocks.items():
            if block.batch_size < engine.dist.world_size:
                raise ConfigError(
                    f"{key}.batch_size",
                    f"{block.batch_size} is smaller than the number of processes ({engine.dist.world_size})",
                )
    seed = int(cfg.seed)
    torch.manual_seed(seed + 1)
    opts = plain(cfg.student.options)
    run.student = build_component(engine.reg.student, cfg.student.name, opts, "student.options", label_space=run.label_space)
    run.student.to(run.device)
    if cfg.baseline.enabled:  # same initial weights as the distilled student
        torch.manual_seed(seed + 1)
        run.baseline = build_component(
            engine.reg.student, cfg.student.name, opts, "student.options", label_space=run.label_space
        ).to(run.device)
    for stage in ("distil", "finetune", "baseline"):
        run.augment[stage] = [
            build_component(engine.reg.augmentation, a.name, plain(a.options), f"{stage}.augment.{i}.options",
                            sample_rate=run.student.sample_rate).to(run.device)
            for i, a in enumerate(cfg[stage].augment)
        ]
    for stage in ("distil", "finetune", "baseline"):  # the default order needs no component
        name = str(cfg[stage].sampler)
        default = engine.reg.sampler.get_recorded(name).qualified == f"samplers:{DEFAULT_SAMPLER}"
        run.samplers[stage] = None if default else build_component(
            engine.reg.sampler, name, plain(cfg[stage].sampler_options), f"{stage}.sampler_options")
    check_optimizers(engine)
    run.combiner = build_component(
        engine.reg.combiner, str(cfg.distil.combination), plain(cfg.distil.combination_options), "distil.combination_options"
    )
    for i, lc in enumerate(cfg.distil.losses):
        loss = build_component(engine.reg.loss, lc.name, plain(lc.options), f"distil.losses.{i}.options")
        key = bare_name(lc.name) if bare_name(lc.name) not in run.losses else f"{bare_name(lc.name)}.{i}"
        if loss.needs_teacher and not run.teachers and cfg.distil.epochs > 0:
            raise ConfigError(f"distil.losses.{i}", f"loss {lc.name!r} needs a teacher; the recipe has none")
        try:
            loss.bind(run.student.embedding_dim, {k: t.embedding_dim for k, t in run.teachers.items()})
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"distil.losses.{i}.options", str(exc).strip("'\"")) from None
        if getattr(loss, "needs_labels", False) and not cfg.distil.include_labeled and cfg.distil.epochs > 0:
            run.warn(f"distil.losses.{i}: loss {lc.name!r} learns from labeled clips, and distil.include_labeled is "
                     "false: it never applies in distillation")
        run.losses[key] = (float(lc.weight), loss.to(run.device))
    labeled = [c for c in run.split("labeled") if c.label is not None]
    users = [f"distil.losses.{i} ({lc.name})" for i, ((_, loss), lc) in enumerate(zip(run.losses.values(), cfg.distil.losses))
             if getattr(loss, "needs_labels", False) and cfg.distil.epochs > 0]
    users += ["baseline"] * bool(cfg.baseline.enabled) + ["finetune"] * bool(cfg.finetune.epochs)
    if not labeled and users:  # every class missing: what learns from labels learns nothing
        run.flag("labeled_classes_missing", f"the labeled split has no labeled clips, and {', '.join(users)} learn(s) "
                 "from labels: the labels-only baseline and the ce term see no class")
    if cfg.distil.losses and cfg.distil.epochs > 0 and all(float(lc.weight) == 0 for lc in cfg.distil.losses):
        raise ConfigError("distil.losses", "every loss term has weight 0: distillation would train the student on "
                          "weight decay alone")
    bind_taps(engine)
    for i, ((_, loss), lc) in enumerate(zip(run.losses.values(), cfg.distil.losses)):  # adapters bound by now
        if lc.lr is not None and not any(p.requires_grad for p in loss.parameters()):
            raise ConfigError(f"distil.losses.{i}.lr", f"loss {lc.name!r} has no parameters of its own: "
                              "an lr for them would change nothing (the student's is distil.lr)")
    log.info(
        "student %s: %s parameters; teachers: %s",
        cfg.student.name,
        f"{run.student.num_parameters():,}",
        ", ".join(f"{k} ({count_params(t):,})" for k, t in run.teachers.items()) or "none",
    )


def check_fittable(engine: Engine) -> None:
    """Each teacher the teach stage would fit can be fitted here (a fittable component, a teacher
    split to fit it on): refused by validation, before anything is written -- not at the teach
    stage, after the run directory was."""
    run = engine.run
    for i, (key, teacher) in enumerate(run.teachers.items()):
        tc = run.teacher_configs[key]
        if tc.checkpoint or getattr(teacher, "pretrained", False):
            continue
        if not getattr(teacher, "fittable", True):
            raise ConfigError(f"teachers.{i}.checkpoint", f"teacher {tc.name!r} cannot be fitted in a run; give it a checkpoint")
        if not run.split("teacher"):
            raise ConfigError(f"teachers.{i}.checkpoint", f"corpus {run.corpus.name!r} has no teacher split to fit "
                              f"{tc.name!r} on; give a checkpoint (or a corpus option that makes a teacher split)")


def build_optimizer(engine: Engine, block, key: str, groups: list[dict], total_steps: int):
    """The optimizer and learning-rate schedule a training block names (``key``: its recipe key,
    e.g. ``distil``), over ``groups`` (parameter groups), for ``total_steps`` steps."""
    opt = build_component(engine.reg.optimizer, str(block.optimizer), plain(block.optimizer_options),
                          f"{key}.optimizer_options", params=groups, lr=float(block.lr),
                          weight_decay=float(block.weight_decay))
    if not isinstance(opt, torch.optim.Optimizer):
        raise ConfigError(f"{key}.optimizer", f"optimizer {block.optimizer!r} returned a {type(opt).__name__}, "
                          "not a torch.optim.Optimizer")
    sched = build_component(engine.reg.scheduler, str(block.scheduler), plain(block.scheduler_options),
                            f"{key}.scheduler_options", optimizer=opt, total_steps=int(total_steps))
    if not callable(getattr(sched, "step", None)) or not callable(getattr(sched, "state_dict", None)):
        raise ConfigError(f"{key}.scheduler", f"scheduler {block.scheduler!r} returned a {type(sched).__name__}, "
                          "not a learning-rate scheduler (step, state_dict)")
    return opt, sched


def check_optimizers(engine: Engine) -> None:
    """Every training block's optimizer and schedule built once on a stand-in parameter, so that
    options they reject are refused before any work (at ``<block>.optimizer_options``)."""
    for key, block in training_blocks(engine.cfg).items():
        build_optimizer(engine, block, key, [{"params": [torch.nn.Parameter(torch.zeros(1))]}], 10)


def bind_taps(engine: Engine) -> None:
    """The feature taps the losses ask for: checked to exist, their pooled shapes measured on a
    short synthetic clip, and given to each loss (``Loss.bind_features``) to build adapters."""
    from . import taps as taplib
    from .data import Batch

    run = engine.run
    models = {"student": run.student, **run.teachers}
    asked: dict[int, list[tuple[str, str, int]]] = {}
    for i, (key, (_, loss)) in enumerate(run.losses.items()):
        asked[i] = list(getattr(loss, "feature_requests", list)())  # duck-typed losses may lack it
        for model, tap, bins in asked[i]:
            if model not in models:
                raise ConfigError(f"distil.losses.{i}.options", f"loss {key!r} reads features of {model!r}, which is "
                                  f"not in this run (student, {', '.join(run.teachers) or 'no teachers'})")
            try:
                taplib.resolve(models[model], tap)
            except KeyError as exc:
                raise ConfigError(f"distil.losses.{i}.options", str(exc).strip("'\"")) from None
            if bins is not None and int(bins) < 1:
                raise ConfigError(f"distil.losses.{i}.options", f"bins must be >= 1 (or None: full time resolution), "
                                  f"not {bins}")
            bins = None if bins is None else int(bins)
            if bins is None and model != "student" and not run.teacher_configs[model].online:
                n = list(run.teachers).index(model)
                raise ConfigError(f"distil.losses.{i}.options", f"loss {key!r} reads {model}.{tap} at full time "
                                  f"resolution (bins None): the store keeps pooled features only; set "
                                  f"teachers.{n}.online=true to run that teacher on each batch")
            if tap in run.taps.get(model, {}) and run.taps[model][tap] != bins:
                raise ConfigError(f"distil.losses.{i}.options", f"{model}.{tap} is read with {bins} bins here and "
                                  f"{run.taps[model][tap]} by another loss: use the same")
            run.taps.setdefault(model, {})[tap] = bins
    if not run.taps:
        return
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for model, wanted in run.taps.items():
            m = models[model]
            rate = getattr(m, "sample_rate", None) or 16000
            audio = 0.1 * torch.randn(2, rate, generator=g).to(run.device)
            lengths = torch.tensor([rate, rate // 2], device=run.device)
            was = m.training
            m.eval()
            with taplib.capture(m, wanted, lengths) as feats:
                if model == "student":
                    m(audio, lengths)
                else:
                    frames = torch.rand(2, 4, 64, 64, generator=g).to(run.device) if m.needs_frames else None
                    m(Batch(audio=audio, lengths=lengths, sample_rate=rate, labels=torch.full((2,), -1),
                            clip_ids=["a", "b"], index=torch.arange(2), frames=frames))
            m.train(was)
            for tap, value in feats.items():  # (channels, bins), or (channels, None) at full resolution
                run.tap_shapes[(model, tap)] = (int(value.shape[1]), None if wanted[tap] is None else int(value.shape[2]))
    for i, (_, loss) in enumerate(run.losses.values()):
        if asked[i]:
            loss.bind_features({(m, t): run.tap_shapes[(m, t)] for m, t, _ in asked[i]})
            loss.to(run.device)
    log.info("feature taps: %s", "; ".join(f"{k}.{t} {c}x{b or 'T'}" for (k, t), (c, b) in run.tap_shapes.items()))


# -- soundness guards (liser_core/guards.py, docs/soundness.md) -----------------------------
def guard_data(engine: Engine) -> None:
    """Content digests of every clip; duplicates across splits left out of the pool (and test
    copies out of every training split); missing expected speakers and clips; speakers shared
    with the test split; an empty pool. Nothing here reads audio but file bytes."""
    run, cfg = engine.run, engine.cfg
    corpus = run.corpus
    t0 = time.perf_counter()
    raw = {s: list(corpus.split(s)) for s in SPLITS}
    digests = {s: digests_of(raw[s], corpus) for s in SPLITS}
    engine.corpus_files = any(clip_files(c, corpus) for s in SPLITS for c in raw[s])
    dups = guards.find_duplicates(raw, digests)
    if cfg.data.near_duplicates:  # re-encoded, resampled, trimmed ... copies of test clips
        t1 = time.perf_counter()
        try:
            dups += guards.near_copies(raw, digests, corpus, threshold=cfg.data.near_threshold, found=dups)
        except ValueError as exc:
            raise ConfigError("data.near_threshold", str(exc)) from None
        log.info("near copies of test clips: fingerprints of %d clips compared in %.1fs",
                 sum(map(len, raw.values())), time.perf_counter() - t1)
    policy = DuplicatePolicy(cfg.data.duplicates).value
    splits, engine.dropped = raw, []
    if dups:
        run.diagnostics["duplicates"] = [d.__dict__ for d in dups]
        if policy == "error":
            raise ConfigError(
                "data.duplicates",
                f"{len(dups)} clip(s) repeat another clip's content, e.g. {dups[0].describe()} "
                "(duplicates: skip leaves them out of training)",
            )
        if policy == "skip":
            splits, engine.dropped = guards.drop_duplicates(raw, dups)
        dropped = {(d.split, d.clip_id) for d in engine.dropped}
        if engine.dropped:
            run.flag(
                "duplicates_dropped",
                f"{len(engine.dropped)} clip(s) left out as duplicates by content, e.g. {engine.dropped[0].describe()} "
                "(splits.json lists them)",
            )
        for d in dups:
            if (d.split, d.clip_id) not in dropped:
                if "test" in (d.split, d.of_split):  # a test clip repeated, and kept
                    run.flag("test_duplicates", f"duplicate content: {d.describe()}")
                else:
                    run.warn(f"duplicate content: {d.describe()}")
        keep = {s: {c.clip_id for c in splits[s]} for s in SPLITS}
        digests = {s: [d for c, d in zip(raw[s], digests[s]) if c.clip_id in keep[s]] for s in SPLITS}
    run.splits, run.digests = splits, digests
    log.info("content digests of %d clips in %.1fs", sum(map(len, digests.values())), time.perf_counter() - t0)
    missing, subset = getattr(corpus, "missing", None), getattr(corpus, "subset", None)
    for split, what in (missing() if callable(missing) else {}).items():  # the scores' split: a flag; others: said
        for w in guards.missing_warnings({split: what}):
            if split == cfg.evaluate.split:
                run.flag("test_incomplete", w)
            else:
                run.warn(w)
    for w in guards.subset_notes(subset() if callable(subset) else None):
        run.flag("test_subset", w)
    for w in getattr(corpus, "notes", None) or []:
        run.warn(w)
    present = {c.label for c in run.split(cfg.evaluate.split)}
    if absent := [c for c in run.label_space.classes if c not in present]:
        run.flag("test_classes_missing", f"the {cfg.evaluate.split} split has no clips of {len(absent)} of the "
                 f"{len(run.label_space)} classes ({', '.join(absent[:8])}): UAR and macro-F1 average the classes it "
                 f"has (a constant guess scores UAR 1/{len(present)}), not comparable with a split of every class")
    # classes the training labels never show: the baseline cannot predict them, a fitted teacher
    # never learnt them (a cross-corpus part without the class, a small label fraction)
    for split in ("labeled", "teacher"):
        have = {c.label for c in run.split(split) if c.label is not None}
        if have and split != cfg.evaluate.split and (gone := [c for c in run.label_space.classes if c not in have]):
            text = (f"the {split} split has no clips of {len(gone)} of the {len(run.label_space)} classes "
                    f"({', '.join(gone[:8])})")
            if split == "labeled":
                run.flag("labeled_classes_missing", text + ": what learns from labels (a ce term, the labels-only "
                         "baseline, fine-tuning) never sees them")
            elif any(t.fit is not None and t.fit.epochs for t in cfg.teachers if t.checkpoint is None):
                run.warn(text + ": a teacher fitted on it never learns them")
    test = {c.speaker for c in run.split(cfg.evaluate.split)}
    for s in ("labeled", "unlabeled"):  # the teacher split is the fit guard's (_guard_teachers)
        shared = sorted({c.speaker for c in run.split(s)} & test)
        if s != cfg.evaluate.split and shared:
            run.flag(
                "not_speaker_independent",
                f"speakers {shared[:5]} appear in both {s!r} and the test split: results are NOT speaker-independent",
            )
    if cfg.teachers and cfg.distil.epochs > 0 and not run.split("unlabeled"):
        run.warn(
            "the unlabeled pool is empty (e.g. label_fraction 1.0 without unlabeled_from): distillation "
            "learns from the labeled clips only"
        )

def fits_in_run(engine: Engine, key: str) -> bool:
    teacher, tc = engine.run.teachers[key], engine.run.teacher_configs[key]
    return not tc.checkpoint and not teacher.pretrained and teacher.fittable

def carve_validation(engine: Engine) -> None:
    """Hold whole speakers of ``validation.source`` out of it as the validation split (drawn
    from the run's seed); nothing when the source is ``none``."""
    run, cfg = engine.run, engine.cfg
    source = cfg.validation.source
    run.splits["validation"], run.digests["validation"] = [], []
    if source == "none":
        return
    clips, digests = run.split(source), run.digests[source]
    held = validation_speakers(clips, cfg)
    keep = [i for i, c in enumerate(clips) if c.speaker not in held]
    out = [i for i, c in enumerate(clips) if c.speaker in held]
    run.splits[source], run.digests[source] = [clips[i] for i in keep], [digests[i] for i in keep]
    run.splits["validation"], run.digests["validation"] = [clips[i] for i in out], [digests[i] for i in out]
    log.info("validation: %d clips of %d speaker(s) (%s) held out of the %s split", len(out), len(held),
             ", ".join(sorted(held)[:6]), source)
    if note := validation_note(source, clips, held, run.label_space.classes):
        run.warn(note)


def validation_speakers(clips: Sequence[Clip], cfg) -> set[str]:
    """The speakers of ``clips`` (the ``validation.source`` split) held out for validation: a
    ``validation.speakers`` fraction of them, at least 1 and not all, drawn from the run's seed
    (the run and ``liser data check`` draw the same)."""
    speakers = sorted({c.speaker for c in clips})
    source = cfg.validation.source
    if len(speakers) < 2:
        raise ConfigError("validation.source", f"the {source} split has {len(speakers)} speaker(s): at least 2 are "
                          "needed to hold whole speakers out for validation (e.g. a larger label_fraction, or source: teacher)")
    k = min(len(speakers) - 1, max(1, round(cfg.validation.speakers * len(speakers))))
    return set(random.Random(f"validation-{int(cfg.seed)}").sample(speakers, k))


def validation_note(source: str, clips: Sequence[Clip], held: set[str], classes: Sequence[str]) -> str:
    """What holding ``held`` out of the ``source`` split costs it, when it costs classes or it is
    the labeled split (the labels the recipe chose): "" otherwise."""
    kept = [c for c in clips if c.speaker not in held]
    lost = [c for c in classes if any(x.label == c for x in clips) and not any(x.label == c for x in kept)]
    if source != "labeled" and not lost:
        return ""
    return (f"validation: {len(clips) - len(kept)} of the {source} split's {len(clips)} clips are held out "
            f"(speakers {', '.join(sorted(held)[:6])}): it keeps {len(kept)}"
            + (f", with no clip of {', '.join(lost)} left" if lost else "")
            + (" (the labeled clips the recipe chose, less these: fewer labels to train on)" if source == "labeled" else ""))


def fit_clips(engine: Engine, key: str, split: str = "teacher") -> tuple[list[Clip], list[tuple[str, ...]], Counter]:
    """A split as the teacher ``key`` sees it: each label taken through its label map by name
    into the teacher's own classes; clips of classes it cannot represent left out (and counted)."""
    targets = engine.run.label_maps[key].fit_targets()
    clips, digests, excluded = [], [], Counter()
    for c, d in zip(engine.run.split(split), engine.run.digests[split]):
        t = targets.get(c.label) if c.label is not None else None
        if t is None:
            excluded[str(c.label)] += 1
            continue
        clips.append(dataclasses.replace(c, label=t))
        digests.append(d)
    return clips, digests, excluded

def _checkpoint_fit_sets(run, key: str, where: str, config_key: str) -> list[dict]:
    """The fit sets of the teacher checkpoint ``where`` (a teacher of the run, or a part of one)
    as its weights record them; refused when they contradict its card, flagged
    ``unverified_teacher`` when they cannot be checked (:func:`guards.checkpoint_fit_sets`)."""
    try:
        fit_sets, unchecked = guards.checkpoint_fit_sets(
            where, checkpoint.read_marker(where), checkpoint.read_component_config(where).get("card"))
    except ValueError as exc:
        raise ConfigError(config_key, str(exc)) from None
    if unchecked:
        run.warn(f"!!! teacher {key!r}: {unchecked} (flagged unverified_teacher)")
        if "unverified_teacher" not in run.flags:
            run.flags.append("unverified_teacher")
    return fit_sets


def guard_teachers(engine: Engine) -> None:
    """A teacher fitted on test speakers or clips (in this run, or recorded in its card) is
    refused unless ``allow_test_overlap``; the label-map report; fit sets that lose classes."""
    run, cfg = engine.run, engine.cfg
    split = cfg.evaluate.split
    test, test_d = run.split(split), run.digests[split]
    corpus = run.corpus.name
    for i, (key, teacher) in enumerate(run.teachers.items()):
        tc = run.teacher_configs[key]
        fit_sets = list(teacher.card.fit_sets)
        if tc.checkpoint:  # its fit sets as its weights record them (docs/soundness.md)
            fit_sets = _checkpoint_fit_sets(run, key, str(tc.checkpoint), f"teachers.{i}.checkpoint")
        for part in teacher.modules():  # teachers inside it loaded from checkpoints (av_fusion's branches):
            where = getattr(part, "liser_checkpoint", None)  # checked as if named by teachers.N.checkpoint
            if part is not teacher and isinstance(part, Teacher) and where:
                fit_sets += _checkpoint_fit_sets(run, key, where, f"teachers.{i}.options")
        if fits_in_run(engine, key) and int(tc.fit.epochs) == 0 and type(teacher).fit is Teacher.fit:
            raise ConfigError(f"teachers.{i}.fit.epochs", f"0 epochs fit nothing: teacher {tc.name!r} has no checkpoint "
                              "and is not pretrained, so it would label the clips with its random initial weights; "
                              "give fit.epochs >= 1, or a checkpoint")
        if fits_in_run(engine, key):
            clips, digests, excluded = fit_clips(engine, key)
            if excluded:
                log.warning(
                    "teacher %s cannot represent %s: %d clip(s) of the teacher split left out of its fit",
                    key, ", ".join(f"{c} ({n})" for c, n in sorted(excluded.items())), sum(excluded.values()),
                )
                run.diagnostics.setdefault("fit_excluded", {})[key] = dict(sorted(excluded.items()))
            if run.split("teacher") and not clips:
                raise ConfigError(
                    f"teachers.{i}.label_map",
                    f"teacher {tc.name!r} ({teacher.label_space.name}) can represent no class of the teacher split",
                )
            fit_sets.append(guards.FitSet.of(corpus, "teacher", clips, digests).to_dict())
        speakers, clip_ids = guards.fit_overlap(fit_sets, corpus, test, test_d)
        if speakers or clip_ids:
            msg = guards.describe_overlap(key, speakers, clip_ids, split)
            if not tc.allow_test_overlap:
                raise ConfigError(
                    f"teachers.{i}",
                    f"{msg}: its labels would leak the test split into the student; fit it without them, "
                    f"or set teachers.{i}.allow_test_overlap=true to go on (flagged in every table)",
                )
            run.warn(f"!!! {msg} (allow_test_overlap): this run's scores are NOT a fair estimate")
            if "test_overlap" not in run.flags:
                run.flags.append("test_overlap")
        elif not any(f.get("corpus") == corpus for f in fit_sets):
            seen = [e for e in teacher.card.trained_on if e.partition("[")[0] == corpus]
            if seen:  # trained on this corpus, but which speakers is not recorded
                run.warn(
                    f"!!! teacher {key!r} was trained on {', '.join(seen)} but its card does not record which "
                    f"speakers or clips: LiSER cannot check that they are not in the {split} split"
                )
    if run.teachers:
        report, warnings = guards.label_map_report(
            run.label_maps, engine.teacher_weights(), str(cfg.distil.combination), run.label_space
        )
        run.label_map_report = report
        for line in guards.describe_label_maps(report):
            log.info(line)
        for w in warnings:
            if report.get("unreachable_by_all") and any(c in w for c in report["unreachable_by_all"]):
                run.flag("unreachable_classes", w)
            else:
                run.warn(w)
        if report.get("unreachable_by_all") and "unreachable_classes" not in run.flags:
            run.flags.append("unreachable_classes")

def feature_cache(cfg):
    """The run's cache of fixed frontends' features (liser_core.features): in memory, and on disk
    unless ``data.cache`` is off: ``$LISER_CACHE_DIR/features``, or ``features/`` inside
    ``data.cache_dir`` (where the decoded-clip cache, which keeps to its two-letter folders,
    leaves it alone)."""
    from .features import FeatureCache

    if not cfg.data.feature_cache:
        return None
    disk = None
    if cfg.data.cache:
        from liser_cache.identity import cache_dir

        base = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else cache_dir()
        disk = ClipCache(base / "features", max_bytes=int(cfg.data.cache_max_gb * 2**30))
    return FeatureCache(disk)


def setup_data_path(engine: Engine) -> None:
    """Content keys of clips read from files (their file digests and how they are decoded:
    what the store and the decoded-clip cache key on), the cache, the decoding workers."""
    run, cfg = engine.run, engine.cfg
    lazy = any(c.audio is None for s in SPLITS for c in run.split(s)[:1])
    workers = cfg.data.workers
    if workers is None:  # leave a core to the model; none when the clips are in memory
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(4, max(0, cpus // engine.dist.world_size - 1)) if lazy else 0
    engine.workers = int(workers)
    engine.set_threads()
    engine.feature_cache = feature_cache(cfg)
    if not lazy:
        return
    signature = getattr(run.corpus, "decode_signature", None)
    fallback = {"dataset": cfg.data.name, "options": plain(cfg.data.options)}  # a corpus that cannot say
    for s in SPLITS:
        for clip, digests in zip(run.split(s), run.digests[s]):
            if clip.audio is None:
                engine.content_keys[clip.clip_id] = ClipCache.key(digests, signature(clip) if signature else fallback)
    if cfg.data.cache:
        from liser_cache.identity import cache_dir

        root = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else cache_dir() / "decoded"
        engine.clip_cache = ClipCache(root, max_bytes=int(cfg.data.cache_max_gb * 2**30))
    log.info(
        "decoding: %d worker(s); decoded clips %s", engine.workers,
        f"cached in {engine.clip_cache.root}" if engine.clip_cache else "not cached (data.cache: off)",
    )


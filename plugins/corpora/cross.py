"""``cross_corpus``: each split from another corpus, classes aligned by name.

The teacher split, the labeled split, the unlabeled pool and the test split may each come from
a different corpus (``ravdess``, ``cremad``, ``emobox``, ``video_folder``), e.g. teachers fitted
on CREMA-D, a pool of MELD videos, labeled and test clips from RAVDESS::

    data:
      name: cross_corpus
      options:
        classes: emobox4                  # angry, happy, neutral, sad (EmoBox's cross-corpus set)
        parts:
          teacher:   {name: cremad, split: all, options: {root: /data/CREMA-D}}
          unlabeled: {name: emobox, split: train, options: {corpus: meld, metadata: ..., root: ...}}
          labeled:   {name: ravdess, options: {root: /data/RAVDESS, label_fraction: 0.1}}
          test:      {name: ravdess, options: {root: /data/RAVDESS, label_fraction: 0.1}}

* ``split`` (default: the part's own role) names the member's split to take: one of
  teacher / labeled / unlabeled / test, ``train`` (teacher + labeled + unlabeled + unused) or
  ``all`` (every clip: only for a corpus that gives no other part its test split).
* Parts with the same ``name`` and ``options`` are one corpus, built once, so RAVDESS's labeled and
  test splits above are the same fold's, speaker-disjoint.
* Clip ids and speakers are namespaced ``<corpus>/<id>`` (``ravdess/11``), so the speaker
  guards never confuse two corpora's ids; duplicates and leaks are found by content across
  corpora (clips keep their files).
* Labels map by name onto ``classes``; ``merge`` sends other classes to one of them
  (``{calm: neutral}``); clips of any other class are left out of labeled, teacher and test
  with a note giving the counts; pool clips keep no label a model sees.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from liser_core.data import SPLITS, Clip
from liser_core.labels import CANONICAL_EMOTIONS, LabelSpace, label_space

from . import cremad, emobox, protocols, ravdess, video_folder
from ._base import IndexedCorpus, IndexProblem

log = logging.getLogger("liser.corpora")

#: EmoBox's cross-corpus classes (its fully balanced track-2 test sets).
EMOBOX4 = LabelSpace("emobox4", ("neutral", "happy", "sad", "angry"))
PRESETS = {"emobox4": EMOBOX4}
FACTORIES = {
    "emobox": emobox.emobox,
    "ravdess": ravdess.ravdess,
    "cremad": cremad.cremad,
    "video_folder": video_folder.video_folder,
}
TAKES = (*SPLITS, "train", "all")


def _member_name(name: str, options: dict[str, Any]) -> str:
    return f"{options.get('corpus')}" if name == "emobox" else name


def cross_corpus(
    parts: dict[str, dict[str, Any]],
    classes: str | list[str] = "emobox4",
    merge: dict[str, str] | None = None,
    seed: int = 0,
) -> IndexedCorpus:
    """A corpus whose splits come from other corpora (see the module doc)."""
    bad = sorted(set(parts) - set(SPLITS))
    if bad:
        raise ValueError(f"parts {bad} are not splits (splits: {', '.join(SPLITS)})")
    if "test" not in parts:
        raise ValueError("parts.test is required (the corpus scores are reported on)")
    space = PRESETS.get(classes) if isinstance(classes, str) else None
    space = space or label_space(classes)
    merge = dict(merge or {})
    for src, dst in merge.items():
        if dst not in space.classes:
            raise ValueError(f"merge: {src!r} -> {dst!r}, but {dst!r} is not in classes {space.classes}")
    built: dict[str, Any] = {}
    splits: dict[str, list[Clip]] = {}
    sources: dict[str, Any] = {}
    problems: list[IndexProblem] = []
    notes: list[str] = []
    missing: dict[str, dict[str, list[str]]] = {}
    subset: dict[str, dict[str, list[str]]] = {}
    described = []
    test_fold: tuple[int | None, int | None] = (None, None)
    all_members: dict[str, str] = {}  # member key -> role that takes its 'all'
    for role, part in parts.items():
        if not isinstance(part, dict) or "name" not in part:
            raise ValueError(f"parts.{role}: expected {{name, options, split}}, got {part!r}")
        extra = sorted(set(part) - {"name", "options", "split"})
        if extra:
            raise ValueError(f"parts.{role}: keys {extra} not understood (name, options, split)")
        name, options = part["name"], dict(part.get("options") or {})
        take = part.get("split", role)
        if name not in FACTORIES:
            raise ValueError(f"parts.{role}.name: {name!r} is not one of {', '.join(FACTORIES)}")
        if take not in TAKES:
            raise ValueError(f"parts.{role}.split: {take!r} is not one of {', '.join(TAKES)}")
        key = json.dumps([name, options], sort_keys=True, default=str)
        if key not in built:
            if name != "video_folder":
                options.setdefault("seed", seed)
            try:
                built[key] = FACTORIES[name](**options)
            except TypeError as exc:
                raise ValueError(f"parts.{role}.options: {exc}") from None
            except ValueError as exc:
                raise ValueError(f"parts.{role}: {exc}") from None
        member = built[key]
        prefix = _member_name(name, options)
        if take == "all":
            all_members[key] = role
            clips = [c for s in SPLITS for c in member.split(s)] + list(getattr(member, "unused", []))
        elif take == "train":
            clips = [c for s in ("teacher", "labeled", "unlabeled") for c in member.split(s)]
            clips += list(getattr(member, "unused", []))
        else:
            clips = list(member.split(take))
        dropped: Counter[str] = Counter()
        out = []
        for c in clips:
            label = merge.get(c.label, c.label) if c.label is not None else None
            if label is not None and label not in space.classes:
                if role != "unlabeled":
                    dropped[c.label] += 1
                    continue
                label = None
            cid = f"{prefix}/{c.clip_id}"
            out.append(Clip(clip_id=cid, audio=None, sample_rate=c.sample_rate, speaker=f"{prefix}/{c.speaker}",
                            label=label, path=c.path, seconds_hint=c.seconds_hint))
            sources[cid] = member.source(c.clip_id)
        if dropped:
            notes.append(f"parts.{role} ({prefix}): classes outside {space.name} left out: "
                         + ", ".join(f"{k} ({n})" for k, n in sorted(dropped.items())))
        splits[role] = sorted(out, key=lambda c: c.clip_id)
        fold_of = getattr(getattr(member, "protocol", None), "fold", None) if take != "all" else None
        folds_of = getattr(getattr(member, "protocol", None), "folds", None) if take != "all" else None
        if role == "test":  # the scores are one fold of the test corpus's protocol: averaged per fold
            test_fold = (fold_of, folds_of) if isinstance(fold_of, int) and isinstance(folds_of, int) else (None, None)
        described.append(f"{role}: {prefix} {take}" + (f" (fold {fold_of} of {folds_of})" if fold_of and folds_of else ""))
        problems += [p for p in getattr(member, "index_problems", []) if p not in problems]
        notes += [n for n in getattr(member, "notes", []) if n not in notes]
        if take in ("test", "all"):
            for s, what in (member.missing() if hasattr(member, "missing") else {}).items():
                if s == "test":
                    missing[role] = {k: [f"{prefix}/{x}" for x in v] for k, v in what.items()}
            for s, what in (member.subset() if hasattr(member, "subset") else {}).items():
                if s == "test":
                    subset[role] = {k: [f"{prefix}/{x}" for x in v] for k, v in what.items()}
    # a misspelt source merged nothing (its clips left out as "outside the classes"): a source is a
    # class of some part, or an emotion name LiSER knows (a recipe's rule for corpora that have it)
    known = {c for m in built.values() for c in getattr(getattr(m, "label_space", None), "classes", ())}
    if unknown := sorted(src for src in merge if src not in known and src not in CANONICAL_EMOTIONS):
        raise ValueError(f"merge: {unknown} is a class of none of the parts' corpora and no emotion name LiSER knows "
                         f"(the parts' classes: {', '.join(sorted(known))})")
    test_key = json.dumps([parts["test"]["name"], dict(parts["test"].get("options") or {})], sort_keys=True,
                          default=str)
    if test_key in all_members and all_members[test_key] != "test":
        raise ValueError(
            f"parts.{all_members[test_key]} takes split 'all' of the corpus that gives the test split: "
            "it would hold the test clips (take 'train' instead)"
        )
    full = {s: splits.get(s, []) for s in SPLITS}
    plan = protocols.SplitPlan(
        splits=full, description="cross-corpus, " + space.name + "; " + "; ".join(described),
        speakers={s: sorted({c.speaker for c in cl}) for s, cl in full.items()}, notes=notes,
        missing={"test": missing["test"]} if "test" in missing else {},
        subset={"test": subset["test"]} if "test" in subset else {},
        fold=test_fold[0], folds=test_fold[1],
    )
    for n in notes:
        log.warning(n)
    roots = {str(getattr(m, "root", "")) for m in built.values()}
    return IndexedCorpus("cross_corpus", space, Path(sorted(roots)[0]) if roots else Path("."), plan, sources,
                         problems, options={"parts": {r: p.get("name") for r, p in parts.items()}})

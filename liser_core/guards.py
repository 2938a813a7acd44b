"""Soundness guards: what keeps a run from printing wrong numbers without a word.

Each guard reads recorded provenance (splits, content digests, teacher fit sets, label maps),
never guesses, and ends in a refusal or a warning that stands in ``metrics.json`` (see
``docs/soundness.md`` for the whole table):

* :func:`fit_overlap` -- a teacher fitted on speakers or clips of the test split (in this run,
  or in another fold and loaded from a checkpoint whose card records its :class:`FitSet`);
* :func:`find_duplicates` / :func:`drop_duplicates` -- the same recording (by content) in two
  splits, e.g. a copy of a test clip in a folder of unlabeled videos; :func:`find_near_duplicates`
  -- a re-encoded, resampled, remuxed, trimmed or gain-changed copy of a test clip (by ear);
* :func:`missing_warnings` -- expected speakers or clips of a protocol that are not there;
* :func:`label_map_report` -- what each teacher's label map does, and the classes a teacher
  (or every teacher) cannot express;
* :func:`splits_record` -- which speakers and clips each split held (``splits.json``).

Example::

    >>> fs = FitSet.of("ravdess", "teacher", clips, digests)  # doctest: +SKIP
    >>> fit_overlap([fs.to_dict()], "ravdess", test_clips, test_digests)  # doctest: +SKIP
    (['09'], [])
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .data import SPLITS, Clip
from .labels import LabelMap, LabelSpace

#: Length of the content-digest prefixes a fit set records (64 bits: no accidental collision
#: among the clips of any corpus, a quarter of the size of full digests).
CONTENT_PREFIX = 16
#: Split order for duplicates: a clip duplicating one of an earlier split is the duplicate.
PRIORITY = ("test", "teacher", "labeled", "unlabeled")
DUPLICATE_POLICIES = ("skip", "warn", "error")

#: Every condition that makes a run's scores incomplete or incomparable, by the name that stands
#: in ``metrics.json``'s ``flags`` and next to the scores in every table (``liser summarize``,
#: ``results.csv``, ``leaderboard.md``, ``efficiency.md``, ``report.html``, the model card).
FLAGS: dict[str, str] = {
    "test_overlap": "a teacher was fitted on test speakers or clips (allow_test_overlap)",
    "unverified_teacher": "a teacher checkpoint LiSER did not write: what it was fitted on cannot be fully checked",
    "test_incomplete": "expected test speakers or clips of the protocol are missing",
    "test_subset": "the test split holds only part of the fold's speakers (expect_complete: false)",
    "bad_test_clips": "test clips that could not be decoded were left out of the scores",
    "duplicates_dropped": "clips repeating another clip's content were left out",
    "test_duplicates": "clips of the test split repeat each other or a training clip (kept)",
    "not_speaker_independent": "labeled or pool speakers are also in the test split",
    "unreachable_classes": "a class no teacher can express (its targets come from labels only)",
    "mixed_code": "the scores averaged come from different code (commits or versions)",
    "test_classes_missing": "the test split has no clips of some classes: UAR and macro-F1 average fewer classes "
                            "(chance is not 1/classes), not comparable with a test split of every class",
    "folds_incomplete": "the runs averaged do not cover each fold of the protocol once per seed (folds missing or "
                        "repeated): not the protocol's cross-validated score",
    "labeled_classes_missing": "the labeled split has no clips of some classes: the labels-only baseline and the "
                               "ce term never see them (the student learns them from the teachers alone, if at all)",
}


def fold_coverage(runs: Iterable[tuple[Any, Mapping[str, Any] | None]]) -> str:
    """Whether runs averaged together cover their protocol: each ``(seed, protocol)`` where
    ``protocol`` is a run's ``metrics.json`` record (``fold`` of ``folds``). "" when every fold
    is there once per seed, or the runs are no folds of one protocol; else what they cover
    (``folds 1, 2 of 6 (seed 0)``): the flag ``folds_incomplete``."""
    runs = list(runs)
    folds = {(p or {}).get("folds") for _, p in runs}
    if len(folds) != 1 or not isinstance(next(iter(folds)), int):
        return ""
    n = next(iter(folds))
    by_seed: dict[Any, list[int]] = {}
    for seed, p in runs:
        by_seed.setdefault(seed, []).append(int((p or {}).get("fold") or 0))
    if all(sorted(v) == list(range(1, n + 1)) for v in by_seed.values()):
        return ""
    return "; ".join(f"folds {', '.join(map(str, sorted(v)))} of {n} (seed {seed})" for seed, v in by_seed.items())


def describe_flags(flags: Sequence[str]) -> list[str]:
    """``name: what it means`` for each flag (unknown names, e.g. a plugin's, as they are)."""
    return [f"{f}: {FLAGS[f]}" if f in FLAGS else f for f in flags]


# -- what a teacher was fitted on -----------------------------------------------------------------
@dataclass(frozen=True)
class FitSet:
    """The clips a teacher was fitted on, as its card records them."""

    corpus: str  # corpus name ("ravdess"): speakers are only compared within one corpus
    split: str  # the split it came from ("teacher")
    speakers: tuple[str, ...]  # every speaker of those clips
    clips: int  # number of clips
    digest: str  # sha256 over the sorted content digests: equal fit sets, equal digest
    content: tuple[str, ...]  # content digest prefixes of every clip (every source file)

    @classmethod
    def of(cls, corpus: str, split: str, clips: Sequence[Clip], digests: Sequence[Sequence[str]]) -> FitSet:
        content = sorted({d[:CONTENT_PREFIX] for ds in digests for d in ds})
        return cls(
            corpus=corpus,
            split=split,
            speakers=tuple(sorted({c.speaker for c in clips})),
            clips=len(clips),
            digest=set_digest(digests),
            content=tuple(content),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus, "split": self.split, "speakers": list(self.speakers),
            "clips": self.clips, "digest": self.digest, "content": list(self.content),
        }


def set_digest(digests: Sequence[Sequence[str]]) -> str:
    """sha256 of a set of clips' content digests (order-free)."""
    h = hashlib.sha256(b"liser-fit-set/1\0")
    for d in sorted(",".join(ds) for ds in digests):
        h.update(d.encode() + b"\n")
    return h.hexdigest()


def fit_overlap(
    fit_sets: Sequence[Mapping[str, Any]], corpus: str, test: Sequence[Clip], test_digests: Sequence[Sequence[str]]
) -> tuple[list[str], list[str]]:
    """``(speakers, clip ids)`` of ``test`` that the fit sets share: speakers when a fit set is
    of the same corpus, clips (by content) whatever the corpus."""
    test_speakers = {c.speaker for c in test}
    speakers: set[str] = set()
    content: set[str] = set()
    for fs in fit_sets:
        if fs.get("corpus") == corpus:
            speakers |= test_speakers & set(map(str, fs.get("speakers") or ()))
        content |= set(fs.get("content") or ())
    clips = [c.clip_id for c, ds in zip(test, test_digests) if any(d[:CONTENT_PREFIX] in content for d in ds)]
    return sorted(speakers), clips


def checkpoint_fit_sets(
    where: str, marker: Mapping[str, Any] | None, card: Mapping[str, Any] | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The fit sets the leak guard checks for a teacher loaded from the checkpoint ``where``,
    from LiSER's marker in its weights (``checkpoint.read_marker``) and its card (``config.json``),
    and what cannot be checked (None when everything can).

    * weights LiSER wrote carry their fit sets in their own header: those are checked (a renamed
      folder or a copied file keeps them); such a checkpoint without its card, or with a card
      whose fit sets are not the ones its weights record, is refused (``ValueError``);
    * weights without LiSER's marker (another tool's, or a LiSER before markers) cannot be tied
      to any card: the card's fit sets, if any, are checked, and the second value says what
      remains unchecked (the run is flagged ``unverified_teacher``)."""
    card_sets = [dict(f) for f in (card or {}).get("fit_sets") or ()]
    if marker is not None:
        if not isinstance(card, Mapping):
            raise ValueError(
                f"{where}: weights written by LiSER without their teacher card (config.json has no 'card'): "
                "the card records what the teacher was fitted on; use the whole folder LiSER wrote, or fit again"
            )
        own = [dict(f) for f in marker.get("fit_sets") or ()]
        if sorted(str(f.get("digest")) for f in own) != sorted(str(f.get("digest")) for f in card_sets):
            raise ValueError(
                f"{where}: its card's fit sets are not the ones its weights record (a card of other weights?): "
                "use the whole folder LiSER wrote, or fit again"
            )
        return own, None
    if card_sets:
        return card_sets, (
            f"{where} is not marked as written by LiSER: the fit sets its card records are checked, but "
            "LiSER cannot tell that they belong to these weights"
        )
    return [], (
        f"{where} is not marked as written by LiSER and its card records no fit set: LiSER cannot check "
        "which speakers or clips it was fitted on"
    )


def describe_overlap(teacher: str, speakers: Sequence[str], clips: Sequence[str], split: str) -> str:
    parts = []
    if speakers:
        parts.append(f"{split} speaker(s) {', '.join(speakers[:8])}{' ...' if len(speakers) > 8 else ''}")
    if clips:
        parts.append(f"{len(clips)} {split} clip(s) (e.g. {', '.join(clips[:3])})")
    return f"teacher {teacher!r} was fitted on " + " and ".join(parts)


# -- duplicates by content ------------------------------------------------------------------------
@dataclass(frozen=True)
class Duplicate:
    split: str  # split of the duplicate
    clip_id: str
    of_split: str  # split of the clip it duplicates (earlier in PRIORITY, or the same split)
    of_clip: str
    kind: str = "content"  # content: a file (or the samples) byte for byte; near: the same recording by ear
    similarity: float | None = None  # near copies: the fingerprint similarity (liser_cache.fingerprint)
    shift: float | None = None  # near copies: where the copy starts in the original's time (seconds)

    def describe(self) -> str:
        if self.kind == "near":
            return (f"{self.split} clip {self.clip_id} is a near copy of {self.of_split} clip {self.of_clip} "
                    f"(similarity {self.similarity:.2f}, shift {self.shift:+.2f}s)")
        return f"{self.split} clip {self.clip_id} has the same content as {self.of_split} clip {self.of_clip}"

    def record(self) -> dict[str, Any]:
        """As ``splits.json`` lists it: byte copies as before; near copies with kind and similarity."""
        out = {"split": self.split, "clip_id": self.clip_id, "of_split": self.of_split, "of_clip": self.of_clip}
        if self.kind != "content":
            out |= {"kind": self.kind, "similarity": round(float(self.similarity or 0.0), 4),
                    "shift": round(float(self.shift or 0.0), 3)}
        return out


def find_duplicates(splits: Mapping[str, Sequence[Clip]], digests: Mapping[str, Sequence[Sequence[str]]]) -> list[Duplicate]:
    """Clips whose content (any source file, or the samples) equals an earlier clip's, in the
    order test, teacher, labeled, unlabeled: each duplicate names the clip it copies."""
    seen: dict[str, tuple[str, str]] = {}
    out = []
    for split in PRIORITY:
        for clip, ds in zip(splits.get(split, ()), digests.get(split, ())):
            matches = [seen[d] for d in ds if d in seen]
            if matches:  # name the copy in the earliest split (a test clip before a pool clip)
                out.append(Duplicate(split, clip.clip_id, *min(matches, key=lambda m: PRIORITY.index(m[0]))))
            for d in ds:
                seen.setdefault(d, (split, clip.clip_id))
    return out


def find_near_duplicates(
    splits: Mapping[str, Sequence[Clip]],
    fingerprints: Mapping[str, Sequence[Any]],
    *,
    threshold: float,
    max_shift: float | None = None,
    skip: Collection[tuple[str, str]] = frozenset(),
) -> list[Duplicate]:
    """Clips of the other splits that sound like a test clip (re-encoded, resampled, remuxed,
    trimmed or gain-changed copies: :mod:`liser_cache.fingerprint`), as :class:`Duplicate` of
    kind ``near`` naming the test clip, its similarity and shift. ``fingerprints`` holds one per
    clip (None: nothing to compare); ``(split, clip_id)`` in ``skip`` (byte copies already found)
    are not asked."""
    from liser_cache import fingerprint as fpm

    test = [(c, f) for c, f in zip(splits.get("test", ()), fingerprints.get("test", ())) if f is not None]
    index = fpm.NearIndex([f for _, f in test], max_shift=fpm.MAX_SHIFT if max_shift is None else max_shift)
    out = []
    for split in PRIORITY[1:]:
        for clip, fp in zip(splits.get(split, ()), fingerprints.get(split, ())):
            if fp is None or (split, clip.clip_id) in skip or not index.size:
                continue
            ref, sim, shift = index.query(fp)[0]
            if sim >= threshold:
                out.append(Duplicate(split, clip.clip_id, "test", test[ref][0].clip_id, "near", round(sim, 4), shift))
    return out


def near_copies(
    splits: Mapping[str, Sequence[Clip]],
    digests: Mapping[str, Sequence[Sequence[str]]],
    corpus: Any,
    *,
    threshold: float,
    found: Sequence[Duplicate] = (),
    workers: int = 2,
) -> list[Duplicate]:
    """:func:`find_near_duplicates` over a corpus's splits: each clip's fingerprint read from
    the cache by content or decoded and computed once (``liser_cache.fingerprint``); clips
    already in ``found`` (byte copies) are left alone. ``ValueError`` for a threshold outside
    (0, 1]."""
    from liser_cache.fingerprint import fingerprints_of

    if not 0 < float(threshold) <= 1:
        raise ValueError(f"near_threshold must be in (0, 1], not {threshold}")
    skip = {(d.split, d.clip_id) for d in found}
    if not splits.get("test"):
        return []
    fps = {
        s: fingerprints_of(
            [c for c in splits.get(s, ())], list(digests.get(s, ())), corpus, workers=workers
        ) if s == "test" or splits.get(s) else []
        for s in PRIORITY
    }
    return find_near_duplicates(splits, fps, threshold=float(threshold), skip=skip)


def drop_duplicates(
    splits: Mapping[str, Sequence[Clip]], duplicates: Sequence[Duplicate]
) -> tuple[dict[str, list[Clip]], list[Duplicate]]:
    """Splits without the duplicates a run must not use: pool clips duplicating anything, and
    teacher or labeled clips duplicating a test clip (a leak). Returns the splits and what was
    dropped; what stays (a duplicate inside the test split, teacher/labeled copies of each
    other) is for the caller to warn about."""
    drop = {
        (d.split, d.clip_id): d
        for d in duplicates
        if d.split == "unlabeled" or (d.of_split == "test" and d.split in ("teacher", "labeled"))
    }
    out = {s: [c for c in splits.get(s, ()) if (s, c.clip_id) not in drop] for s in SPLITS}
    return out, list(drop.values())


# -- expected speakers and clips ------------------------------------------------------------------
def missing_warnings(missing: Mapping[str, Mapping[str, Sequence[str]]] | None) -> list[str]:
    """One line per split from a corpus's ``missing()`` (``{split: {"speakers": [...],
    "clips": [...]}}``: what its protocol expects and the files lack)."""
    out = []
    for split, what in (missing or {}).items():
        speakers, clips = list(what.get("speakers") or ()), list(what.get("clips") or ())
        if not speakers and not clips:
            continue
        parts = []
        if speakers:
            parts.append(f"expected speaker(s) {', '.join(map(str, speakers[:8]))} missing")
        if clips:
            parts.append(f"{len(clips)} expected clip(s) missing (e.g. {', '.join(map(str, clips[:3]))})")
        out.append(f"{split} split incomplete: " + "; ".join(parts) + " -- scores are over what is present")
    return out


def subset_notes(subset: Mapping[str, Mapping[str, Sequence[str]]] | None) -> list[str]:
    """One line per split of a deliberate subset tree (``expect_complete: false``): how many of
    the fold's speakers the split holds and which are absent -- said once, never silent."""
    out = []
    for split, what in (subset or {}).items():
        absent, expected = list(what.get("speakers") or ()), list(what.get("expected") or ())
        if absent:
            out.append(
                f"{split} split: {len(expected) - len(absent)} of the fold's {len(expected)} speakers; "
                f"missing {', '.join(map(str, absent))} (expect_complete: false)"
            )
    return out


# -- label maps -----------------------------------------------------------------------------------
def label_map_report(
    maps: Mapping[str, LabelMap], weights: Mapping[str, float], combination: str, space: LabelSpace
) -> tuple[dict[str, Any], list[str]]:
    """Per teacher: mapped, merged, dropped, unreachable classes; and the classes no teacher
    reaches. Returns the report (for ``metrics.json``) and the warnings it calls for."""
    report: dict[str, Any] = {"combination": combination, "teachers": {k: m.report() for k, m in maps.items()}}
    warnings = []
    active = [k for k in maps if weights.get(k, 0) > 0]
    nobody = [c for c in space.classes if all(c in maps[k].unreached for k in active)] if active else []
    report["unreachable_by_all"] = nobody
    if nobody:
        warnings.append(
            f"class(es) {', '.join(nobody)} are reached by no teacher: the distillation targets never "
            "predict them (only labeled clips teach them)"
        )
    if len(active) > 1:
        for k in active:
            lost = [c for c in maps[k].unreached if c not in nobody]
            if lost and combination == "arithmetic":
                warnings.append(
                    f"teacher {k!r} cannot express {', '.join(lost)}: with combination arithmetic their target "
                    "mass is diluted by its weight (combination per_class mixes only the teachers that can)"
                )
            elif lost and combination == "geometric":
                warnings.append(
                    f"teacher {k!r} cannot express {', '.join(lost)}: with combination geometric their target "
                    "mass all but vanishes (combination per_class mixes only the teachers that can)"
                )
    return report, warnings


def describe_label_maps(report: Mapping[str, Any]) -> list[str]:
    """The report as log lines, one per teacher."""
    lines = []
    for k, r in report["teachers"].items():
        parts = [f"mapped {len(r['mapped'])}"]
        if r["merged"]:
            parts.append("merged " + ", ".join(f"{a}->{b}" for a, b in r["merged"]))
        if r["dropped"]:
            parts.append("dropped " + ", ".join(r["dropped"]))
        if r["unreachable"]:
            parts.append("unreachable " + ", ".join(r["unreachable"]))
        lines.append(f"label map {k} ({r['source']}): " + "; ".join(parts))
    return lines


# -- what a run used --------------------------------------------------------------------------------
def splits_changed(before: Mapping[str, Any], now: Mapping[str, Any], *, validation_from: str | None = None) -> list[str]:
    """The clips whose split, label or content differ between two ``splits.json`` records'
    ``splits`` (each as ``SPLIT clip ID is new|is gone|has other content or label``), sorted;
    with ``validation_from``, ``before``'s validation clips count as clips of that split (a
    record ``now`` made before the validation split was carved)."""

    def clips(record: Mapping[str, Any], fold: str | None) -> dict[tuple[str, str], tuple]:
        return {((fold or split) if split == "validation" else split, c["id"]): (c.get("label"), tuple(c.get("content") or ()))
                for split, v in record.items() for c in (v or {}).get("clips", [])}

    old, new = clips(before, validation_from), clips(now, None)
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            how = "is gone" if k not in new else "is new" if k not in old else "has other content or label"
            out.append(f"{k[0]} clip {k[1]} {how}")
    return out


def splits_record(
    splits: Mapping[str, Sequence[Clip]],
    digests: Mapping[str, Sequence[Sequence[str]]],
    *,
    corpus: str,
    dropped: Sequence[Duplicate] = (),
) -> dict[str, Any]:
    """What ``splits.json`` holds: per split, its speakers, and each clip's id, speaker, label
    and content digests; plus the duplicates left out."""
    out: dict[str, Any] = {"corpus": corpus, "splits": {}}
    for s in (*SPLITS, "validation"):
        if s == "validation" and not splits.get(s):
            continue
        clips = list(splits.get(s, ()))
        out["splits"][s] = {
            "speakers": sorted({c.speaker for c in clips}),
            "clips": [
                {"id": c.clip_id, "speaker": c.speaker, "label": c.label, "content": [d[:CONTENT_PREFIX] for d in ds]}
                for c, ds in zip(clips, digests.get(s, ()))
            ],
            "classes": dict(sorted(Counter(c.label or "unlabeled" for c in clips).items())),
        }
    out["dropped_duplicates"] = [d.record() for d in dropped]
    return out

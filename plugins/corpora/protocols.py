"""Evaluation protocols shared by the labeled corpora: speaker-independent folds, custom split
files, label fractions, the teacher split and the unlabeled pool; per-fold results summarised.

How the four splits of one fold are made (see docs/datasets.md):

1. **test** = every clip of the fold's test speakers (RAVDESS: EmoBox's 6 folds of 4 actors;
   CREMA-D: 5 folds by actor id, see :func:`cremad_fold`), or what a ``split_file`` says.
2. **teacher** (optional) = every clip of ``teacher_speakers`` (or of ``teacher_fraction`` of the
   training speakers, drawn with the seed). Default: none -- real teachers come with checkpoints
   or are pretrained, and the engine then requires that of every teacher.
3. **labeled** = ``label_fraction`` of the remaining training clips, drawn stratified by class
   (each class keeps its share, at least one clip) with the seed.
4. **unlabeled** (the pool the teachers label) depends on ``pool``:

   * ``disjoint_speakers`` (default): the remaining training speakers are split first: the
     *labeled speakers* (``ceil(label_fraction x speakers)``, at least one, and at least one
     speaker is left over) give the labeled clips, every clip of the other speakers is the pool.
     The labeled speakers' clips that were not drawn are used nowhere. No speaker is in two of
     (teacher, labeled, unlabeled, test).
   * ``remaining_clips``: the labeled clips are drawn from all remaining training speakers and
     their other clips are the pool: more pool data, but labeled and pool share speakers (a
     warning says so; test stays speaker-independent).

   With ``label_fraction: 1.0`` every remaining training clip is labeled and the pool is empty
   unless the corpus's ``unlabeled_from`` supplies one.

Example::

    >>> ravdess_fold(11)
    1
    >>> summarise_folds([{"uar": 0.5}, {"uar": 0.7}])["uar"]["mean"]
    0.6
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from liser_common.metrics import format_summary  # noqa: F401 - re-exported: per-fold summaries
from liser_common.metrics import summarise as summarise_folds  # noqa: F401
from liser_core.data import SPLITS, Clip

log = logging.getLogger("liser.corpora")

#: EmoBox's speaker-independent RAVDESS folds: fold -> its 4 test actors.
RAVDESS_FOLDS: dict[int, tuple[int, ...]] = {
    1: (1, 11, 20, 21),
    2: (4, 10, 12, 14),
    3: (8, 9, 19, 23),
    4: (3, 5, 7, 24),
    5: (2, 15, 16, 18),
    6: (6, 13, 17, 22),
}
CREMAD_ACTORS = range(1001, 1092)
CREMAD_NUM_FOLDS = 5
POOL_CHOICES = ("disjoint_speakers", "remaining_clips")
#: Split names a split file may use besides :data:`liser_core.data.SPLITS`.
SPLIT_ALIASES = {"train": "train", "training": "train", "pool": "unlabeled"}
#: split names a split file may hold that LiSER does not take as one of its splits (they were
#: trained on as labeled clips, silently): validation is held out of a training split by LiSER
NOT_SPLITS = {"dev": "validation", "valid": "validation", "validation": "validation", "val": "validation"}


def ravdess_fold(actor: int) -> int:
    """EmoBox fold (1-6) in which RAVDESS ``actor`` (1-24) is a test speaker."""
    for fold, actors in RAVDESS_FOLDS.items():
        if actor in actors:
            return fold
    raise ValueError(f"RAVDESS actor {actor} is in no fold (actors are 1-24)")


def cremad_fold(actor: int) -> int:
    """CREMA-D fold (1-5) of ``actor``: the sorted actor ids 1001-1091 dealt round-robin,
    i.e. ``(actor - 1001) % 5 + 1`` (fold 1 = 1001, 1006, ..., 1091: 19 actors; folds 2-5: 18).

    It depends on the id alone, so a partial copy of the corpus keeps every actor's fold.
    """
    if actor not in CREMAD_ACTORS:
        raise ValueError(f"CREMA-D actor {actor} is not in 1001-1091")
    return (actor - CREMAD_ACTORS.start) % CREMAD_NUM_FOLDS + 1


CREMAD_FOLDS: dict[int, tuple[int, ...]] = {
    f: tuple(a for a in CREMAD_ACTORS if cremad_fold(a) == f) for f in range(1, CREMAD_NUM_FOLDS + 1)
}


@dataclass(frozen=True)
class ProtocolOptions:
    """The protocol options every labeled corpus takes (validated here, once)."""

    fold: int = 1  # test fold
    split_file: str | None = None  # CSV/TSV: clip id or path, split name; replaces the folds
    label_fraction: float = 1.0  # share of the training clips that keep their labels
    pool: str = "disjoint_speakers"  # disjoint_speakers | remaining_clips
    teacher_speakers: tuple[str, ...] | None = None  # speakers whose clips form the teacher split
    teacher_fraction: float = 0.0  # or: this share of the training speakers, drawn
    seed: int = 0

    def check(self, num_folds: int) -> None:
        if self.split_file is None and not 1 <= self.fold <= num_folds:
            raise ValueError(f"fold must be 1-{num_folds}, got {self.fold}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.pool not in POOL_CHOICES:
            raise ValueError(f"pool must be one of {POOL_CHOICES}, got {self.pool!r}")
        if not 0.0 <= self.teacher_fraction < 1.0:
            raise ValueError(f"teacher_fraction must be in [0, 1), got {self.teacher_fraction}")
        if self.teacher_speakers is not None and self.teacher_fraction:
            raise ValueError("give teacher_speakers or teacher_fraction, not both")


@dataclass
class SplitPlan:
    """The four splits of one fold and how they were made (kept on the corpus as ``protocol``)."""

    splits: dict[str, list[Clip]]
    description: str  # e.g. "fold 1 of 6 (EmoBox), label_fraction 0.1, pool disjoint_speakers"
    speakers: dict[str, list[str]] = field(default_factory=dict)  # split -> its speakers
    notes: list[str] = field(default_factory=list)  # warnings and shortfalls, also logged
    unused: list[Clip] = field(default_factory=list)  # indexed clips in no split (checked all the same)
    #: what the protocol expects and the files lack: split -> {"speakers": [...], "clips": [...]}
    missing: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    #: a deliberate subset (``expect_complete: false``): split -> {"speakers": the fold's speakers
    #: with no clip, "expected": every speaker the fold names}
    subset: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    #: which fold of how many (None: not a fold of a cross-validation protocol)
    fold: int | None = None
    folds: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "fold": self.fold,
            "folds": self.folds,
            "counts": {s: len(c) for s, c in self.splits.items()} | {"unused": len(self.unused)},
            "speakers": self.speakers,
            "notes": self.notes,
            "missing": self.missing,
            "subset": self.subset,
        }


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % 2**32, *salt])


def _draw_speakers(
    rng: np.random.Generator, speakers: Sequence[str], k: int, group: Callable[[str], str | None]
) -> list[str]:
    """``k`` speakers drawn at random, alternating between groups (e.g. sex) so each is balanced."""
    by_group: dict[str | None, list[str]] = defaultdict(list)
    for s in sorted(speakers):
        by_group[group(s)].append(s)
    keys = sorted(by_group, key=lambda g: "" if g is None else str(g))
    queues = [list(rng.permutation(by_group[g])) for g in keys]
    order = list(rng.permutation(len(queues)))
    out: list[str] = []
    while len(out) < k and any(queues):
        for qi in order:
            if queues[qi] and len(out) < k:
                out.append(str(queues[qi].pop(0)))
    return out


def _stratified(
    rng: np.random.Generator, clips: Sequence[Clip], quota: Mapping[str, int]
) -> tuple[list[Clip], list[str]]:
    """Per class, ``quota[class]`` clips drawn at random; notes for classes short of their quota."""
    by_class: dict[str, list[Clip]] = defaultdict(list)
    for c in sorted(clips, key=lambda c: c.clip_id):
        by_class[c.label].append(c)
    chosen, notes = [], []
    for label in sorted(quota, key=str):
        pool = by_class.get(label, [])
        want = quota[label]
        if len(pool) < want:
            notes.append(f"class {label!r}: {want} labeled clips wanted, the labeled speakers have {len(pool)}")
        idx = rng.permutation(len(pool))[:want]
        chosen += [pool[i] for i in sorted(idx)]
    return chosen, notes


def _quota(clips: Iterable[Clip], fraction: float) -> dict[str, int]:
    counts = Counter(c.label for c in clips)
    return {lab: min(n, max(1, round(fraction * n))) for lab, n in counts.items()}


def carve(
    train: Sequence[Clip],
    opts: ProtocolOptions,
    *,
    fold_salt: int,
    normalise_speaker: Callable[[Any], str] = str,
    group: Callable[[str], str | None] = lambda s: None,
) -> tuple[dict[str, list[Clip]], list[str]]:
    """Teacher, labeled and unlabeled splits from the training clips (see the module doc), and
    ``unused``: the labeled speakers' clips that were not drawn (pool ``disjoint_speakers``)."""
    notes: list[str] = []
    speakers = sorted({c.speaker for c in train})
    teacher_spk: list[str] = []
    if opts.teacher_speakers is not None:
        teacher_spk = sorted({normalise_speaker(s) for s in opts.teacher_speakers})
        unknown = [s for s in teacher_spk if s not in speakers]
        if unknown:
            raise ValueError(
                f"teacher_speakers {unknown} are not training speakers of this fold (training: {speakers})"
            )
    elif opts.teacher_fraction > 0:
        k = max(1, math.ceil(opts.teacher_fraction * len(speakers) - 1e-9))
        teacher_spk = sorted(_draw_speakers(_rng(opts.seed, fold_salt, 1), speakers, k, group))
    rest_spk = [s for s in speakers if s not in teacher_spk]
    if not rest_spk:
        raise ValueError("the teacher split takes every training speaker: none is left for the student")
    teacher = [c for c in train if c.speaker in teacher_spk]
    rest = [c for c in train if c.speaker not in teacher_spk]
    f = opts.label_fraction
    rng = _rng(opts.seed, fold_salt, 2)
    unused: list[Clip] = []
    if f >= 1.0:
        labeled, unlabeled = list(rest), []
    elif opts.pool == "disjoint_speakers":
        if len(rest_spk) < 2:
            raise ValueError(
                "pool 'disjoint_speakers' needs at least 2 training speakers besides the teacher split "
                f"(have {rest_spk}); use pool: remaining_clips or fewer teacher speakers"
            )
        k = min(len(rest_spk) - 1, max(1, math.ceil(f * len(rest_spk) - 1e-9)))
        lab_spk = set(_draw_speakers(rng, rest_spk, k, group))
        labeled, short = _stratified(rng, [c for c in rest if c.speaker in lab_spk], _quota(rest, f))
        notes += short
        chosen = {c.clip_id for c in labeled}
        unused = [c for c in rest if c.speaker in lab_spk and c.clip_id not in chosen]
        unlabeled = [c for c in rest if c.speaker not in lab_spk]
    else:
        labeled, _ = _stratified(rng, rest, _quota(rest, f))
        chosen = {c.clip_id for c in labeled}
        unlabeled = [c for c in rest if c.clip_id not in chosen]
        notes.append(
            "pool 'remaining_clips': labeled and unlabeled clips come from the same speakers "
            "(the test split stays speaker-independent)"
        )
    return {"teacher": teacher, "labeled": labeled, "unlabeled": unlabeled, "unused": unused}, notes


def fold_plan(
    clips: Sequence[Clip],
    test_speakers: Iterable[str],
    opts: ProtocolOptions,
    *,
    description: str,
    normalise_speaker: Callable[[Any], str] = str,
    group: Callable[[str], str | None] = lambda s: None,
    expected_takes: Callable[[str], Iterable[str]] | None = None,
    take: Callable[[Clip], str] = lambda c: c.clip_id,
) -> SplitPlan:
    """The splits of one speaker-independent fold.

    With ``expected_takes`` (speaker -> the takes the published corpus has of that speaker,
    named as ``take(clip)`` names them), the plan's ``missing`` lists the fold's test speakers
    with no clip at all and the expected takes of the others that are not there.
    """
    test_speakers = sorted(set(test_speakers))
    test_set = set(test_speakers)
    test = [c for c in clips if c.speaker in test_set]
    train = [c for c in clips if c.speaker not in test_set]
    parts, notes = carve(train, opts, fold_salt=opts.fold, normalise_speaker=normalise_speaker, group=group)
    plan = _plan({**parts, "test": test}, _describe(description, opts), notes)
    present = {c.speaker for c in test}
    absent = [s for s in test_speakers if s not in present]
    if expected_takes is not None:
        have = {take(c) for c in test}
        gone = [t for s in test_speakers if s in present for t in sorted(expected_takes(s)) if t not in have]
        if absent or gone:
            plan.missing["test"] = {"speakers": absent, "clips": gone}
    elif absent:  # not a problem (the tree is a subset by choice), but never silent
        plan.subset["test"] = {"speakers": absent, "expected": test_speakers}
    return plan


def _describe(head: str, opts: ProtocolOptions) -> str:
    parts = [head, f"label_fraction {opts.label_fraction:g}", f"pool {opts.pool}"]
    if opts.teacher_speakers is not None or opts.teacher_fraction:
        parts.append("teacher split carved from the training speakers")
    return ", ".join(parts)


def _plan(parts: dict[str, list[Clip]], description: str, notes: list[str]) -> SplitPlan:
    splits = {s: sorted(parts.get(s, []), key=lambda c: c.clip_id) for s in SPLITS}
    for n in notes:
        log.warning(n)
    return SplitPlan(
        splits=splits,
        description=description,
        speakers={s: sorted({c.speaker for c in cl}) for s, cl in splits.items()},
        notes=notes,
        unused=sorted(parts.get("unused", []), key=lambda c: c.clip_id),
    )


_HEADER_WORDS = {"split", "set", "subset", "partition", "role"}


def read_split_file(path: str | Path) -> list[tuple[str, str]]:
    """Rows ``(clip id or path, split)`` of a CSV or TSV (tab if the first line has one). An
    optional header names the second column ``split`` (or set, subset, partition, role); ``#``
    starts a comment line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"split_file {str(path)!r} does not exist")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"split_file {str(path)!r} is empty")
    delim = "\t" if "\t" in lines[0] else ","
    rows = [[c.strip() for c in r] for r in csv.reader(lines, delimiter=delim)]
    known = set(SPLITS) | set(SPLIT_ALIASES)
    if len(rows[0]) >= 2 and rows[0][1].lower() in _HEADER_WORDS:
        rows = rows[1:]
    out = []
    for i, r in enumerate(rows, 1):
        if len(r) < 2:
            raise ValueError(f"split_file {str(path)!r} row {i}: expected 'clip,split', got {r}")
        split = r[1].lower()
        if split in NOT_SPLITS:
            raise ValueError(
                f"split_file {str(path)!r} row {i}: split {r[1]!r} is a validation split, which LiSER does not read "
                "from a split file: it holds whole speakers of a training split out itself (validation.source: "
                "labeled | teacher); list these rows as labeled, train or teacher"
            )
        if split not in known:
            raise ValueError(
                f"split_file {str(path)!r} row {i}: unknown split {r[1]!r} "
                f"(splits: {', '.join(SPLITS)}, or train to carve teacher/labeled/unlabeled)"
            )
        out.append((r[0], SPLIT_ALIASES.get(split, split)))
    return out


def _keys(clip: Clip, root: Path | None) -> list[str]:
    keys = [clip.clip_id]
    if clip.path:
        p = Path(clip.path)
        keys += [p.name, p.stem, str(p)]
        if root is not None:
            try:
                rel = PurePosixPath(p.relative_to(root).as_posix())
                keys += [str(rel), str(rel.with_suffix(""))]
            except ValueError:
                pass
    return keys


def split_file_plan(
    clips: Sequence[Clip],
    opts: ProtocolOptions,
    *,
    root: Path | None = None,
    extra_keys: Callable[[Clip], Iterable[str]] = lambda c: (),
    normalise_speaker: Callable[[Any], str] = str,
    group: Callable[[str], str | None] = lambda s: None,
) -> SplitPlan:
    """Splits as a split file lists them. Entries name a clip by id, file name, stem or path
    (relative to the corpus root or absolute). Clips listed as ``train`` are carved into
    teacher/labeled/unlabeled with the protocol options; clips not listed are left out."""
    rows = read_split_file(opts.split_file)
    index: dict[str, Clip] = {}
    for c in clips:
        for k in (*_keys(c, root), *extra_keys(c)):
            index.setdefault(k, c)
    assigned: dict[str, str] = {}
    missing = []
    by_split_missing: dict[str, list[str]] = defaultdict(list)
    for key, split in rows:
        clip = index.get(key) or index.get(key.replace("\\", "/"))
        if clip is None:
            missing.append(key)
            by_split_missing[split].append(key)
            continue
        if assigned.get(clip.clip_id, split) != split:
            raise ValueError(f"split_file lists {key!r} in both {assigned[clip.clip_id]!r} and {split!r}")
        assigned[clip.clip_id] = split
    notes = []
    if missing:
        notes.append(f"split_file: {len(missing)} entries match no clip of the corpus (first: {missing[:3]})")
    unlisted = len(clips) - len(assigned)
    if unlisted:
        notes.append(f"split_file: {unlisted} clips of the corpus are not listed and are left out")
    by_split: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        by_split[assigned.get(c.clip_id, "unused")].append(c)
    parts = {s: by_split.get(s, []) for s in (*SPLITS, "unused")}
    if by_split.get("train"):
        carved, more = carve(by_split["train"], opts, fold_salt=0, normalise_speaker=normalise_speaker, group=group)
        notes += more
        for s, cl in carved.items():
            parts[s] = parts[s] + cl
    plan = _plan(parts, _describe(f"split file {opts.split_file}", opts), notes)
    plan.missing = {s: {"speakers": [], "clips": keys} for s, keys in by_split_missing.items()
                    if s in SPLITS or s == "train"}  # train rows are missing training clips too
    return plan

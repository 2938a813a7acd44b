"""``liser data check``: a preflight of a recipe's data, without training anything.

It builds the recipe's corpus exactly as ``liser run`` would, opens every clip of every split
once (``corpus.load`` for lazily loaded corpora) -- and the clips a corpus indexed but put in no
split, when it lists them as ``unused`` (another fold or label fraction would use them) -- and
reports counts per split, class and speaker, and every problem with its file and reason:

* clips that ``load`` rejects (:class:`~liser_core.data.BadClipError`): unreadable, empty,
  silent, non-finite, too short or too long files, grouped by the reason's leading phrase;
* labels outside the corpus's label space (``mislabeled``);
* files the corpus found but could not index, when it lists them as ``index_problems``
  (a sequence of ``(path, reason)`` or ``(path, kind, reason)``): names that do not parse,
  unknown emotion codes, duplicates;
* test speakers that also appear in another split (results would not be speaker-independent);
* speakers and clips the corpus's protocol expects that are not there (``corpus.missing()``:
  a deleted actor folder, a take whose video is gone);
* clips whose content (file bytes) repeats another clip's, across or within splits
  (``duplicate_content``), and clips of other splits that are near copies of a test clip
  (re-encoded, resampled, remuxed, trimmed, gain-changed: ``near_duplicate``, with
  ``near_duplicates: False`` to leave that out).

Shared speakers between ``labeled`` and ``unlabeled`` are a warning, not a problem: a corpus may
offer that on purpose (e.g. ``pool: remaining_clips``).

Example::

    >>> report = check_recipe("recipes/cremad_kd.yaml", ["data.options.root=/data/CREMA-D"])  # doctest: +SKIP
    >>> report.ok, [p.reason for p in report.problems][:1]  # doctest: +SKIP
    (False, ['silent (RMS 0.0e+00 < min_rms 0.0001)'])
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from liser_cache.identity import digests_of
from liser_core import guards
from liser_core.data import SPLITS, BadClipError, Clip, Corpus
from liser_core.errors import ConfigError
from liser_core.guards import find_duplicates

log = logging.getLogger("liser.datacheck")

#: Problem kinds, recognised from the leading phrase of a BadClipError's reason.
REASON_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("empty_file", ("empty file",)),
    ("no_audio", ("no audio stream",)),
    ("no_video", ("no video stream",)),
    ("unreadable", ("unreadable", "git-lfs", "truncated")),
    ("empty", ("zero length",)),
    ("silent", ("silent",)),
    ("non_finite", ("non-finite",)),
    ("too_short", ("too short",)),
    ("too_long", ("too long",)),
)


def reason_kind(reason: str) -> str:
    text = reason.lower()
    for kind, prefixes in REASON_KINDS:
        if text.startswith(prefixes):
            return kind
    return "other"


@dataclass
class Problem:
    """One file that a run would skip (or stop on), and why."""

    kind: str  # unreadable | empty | silent | non_finite | too_short | too_long | mislabeled | unparsed | ...
    reason: str
    path: str | None = None
    clip_id: str | None = None
    split: str | None = None


@dataclass
class SplitCounts:
    clips: int = 0  # indexed clips
    usable: int = 0  # clips that loaded and passed every check
    seconds: float = 0.0  # audio of the usable clips
    classes: dict[str, int] = field(default_factory=dict)  # usable clips per class ("unlabeled": no label)
    speakers: dict[str, int] = field(default_factory=dict)  # usable clips per speaker


@dataclass
class Report:
    corpus: str
    label_space: list[str]
    splits: dict[str, SplitCounts]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    protocol: Any = None  # the corpus's description of its splits, when it has one
    seconds: float = 0.0  # time the check took

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "corpus": self.corpus,
            "label_space": self.label_space,
            "protocol": self.protocol,
            "splits": {s: asdict(c) for s, c in self.splits.items()},
            "problems": [asdict(p) for p in self.problems],
            "problem_counts": dict(Counter(p.kind for p in self.problems)),
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
        }


def _index_problems(corpus: Corpus) -> list[Problem]:
    out = []
    for item in getattr(corpus, "index_problems", ()) or ():
        if isinstance(item, tuple) and len(item) == 2:
            path, reason = item
            kind = "unparsed"
        else:
            path, kind, reason = item[0], item[1], item[2]
        out.append(Problem(kind=str(kind), reason=str(reason), path=str(path)))
    return out


def check_corpus(
    corpus: Corpus, *, workers: int = 4, progress: Callable[[int, int], None] | None = None,
    near_duplicates: bool = True, near_threshold: float | None = None, scored_split: str | None = None,
) -> Report:
    """Open every clip of every split once and report (see the module doc). ``scored_split``:
    the split a run scores (a recipe's ``evaluate.split``): without a usable clip it is a
    problem, as the run refuses it; a corpus checked on its own (a pool) only warns."""
    t0 = time.perf_counter()
    space = corpus.label_space
    load = getattr(corpus, "load", None)
    report = Report(corpus=corpus.name, label_space=list(space.classes), splits={})
    proto = getattr(corpus, "protocol", None)
    report.protocol = proto.to_dict() if hasattr(proto, "to_dict") else proto
    report.problems += _index_problems(corpus)

    unused = list(getattr(corpus, "unused", None) or [])
    jobs: list[tuple[str, Clip]] = [(s, c) for s in SPLITS for c in corpus.split(s)]
    jobs += [("unused", c) for c in unused]

    def open_clip(job: tuple[str, Clip]) -> tuple[str, Clip, Problem | None]:
        split, clip = job
        try:
            loaded = load(clip) if (clip.audio is None and load is not None) else clip
        except BadClipError as exc:
            return split, clip, Problem(reason_kind(exc.reason), exc.reason, exc.path or clip.path, clip.clip_id, split)
        except Exception as exc:  # noqa: BLE001 - a loader bug is a finding too, not a crash
            return split, clip, Problem("other", f"{type(exc).__name__}: {exc}", clip.path, clip.clip_id, split)
        if loaded.audio is None:
            return split, clip, Problem("other", "not loaded and its corpus has no load()", clip.path, clip.clip_id, split)
        return split, loaded, None

    counts = {s: SplitCounts() for s in (*SPLITS, *(("unused",) if unused else ()))}
    seen: dict[str, str] = {}
    done = 0
    with ThreadPoolExecutor(max(1, workers)) as ex:
        for split, clip, problem in ex.map(open_clip, jobs):
            done += 1
            if progress is not None:
                progress(done, len(jobs))
            sc = counts[split]
            sc.clips += 1
            if clip.clip_id in seen:
                report.problems.append(Problem(
                    "duplicate", f"clip id also in split {seen[clip.clip_id]!r}", clip.path, clip.clip_id, split
                ))
            seen.setdefault(clip.clip_id, split)
            if problem is not None:
                report.problems.append(problem)
                continue
            if clip.label is not None and clip.label not in space.classes:
                report.problems.append(Problem(
                    "mislabeled", f"mislabeled: {clip.label!r} is not in label space {space.name} {space.classes}",
                    clip.path, clip.clip_id, split,
                ))
                continue
            sc.usable += 1
            sc.seconds += clip.seconds
            key = clip.label if clip.label is not None else "unlabeled"
            sc.classes[key] = sc.classes.get(key, 0) + 1
            sc.speakers[clip.speaker] = sc.speakers.get(clip.speaker, 0) + 1
    for sc in counts.values():
        sc.classes = {c: sc.classes[c] for c in [*space.classes, "unlabeled"] if c in sc.classes}
        sc.speakers = dict(sorted(sc.speakers.items()))
        sc.seconds = round(sc.seconds, 3)
    report.splits = counts

    missing = getattr(corpus, "missing", None)
    for split, what in (missing() if callable(missing) else {}).items():
        for spk in what.get("speakers") or ():
            report.problems.append(Problem("missing_speaker", f"expected {split} speaker {spk} has no clip", split=split))
        for cid in what.get("clips") or ():
            report.problems.append(Problem("missing_clip", f"expected {split} clip {cid} is not there", clip_id=str(cid), split=split))
    subset = getattr(corpus, "subset", None)  # expect_complete: false -- said, not a problem
    report.warnings += guards.subset_notes(subset() if callable(subset) else None)
    splits = {s: list(corpus.split(s)) for s in SPLITS}
    digests = {s: digests_of(splits[s], corpus, workers=workers) for s in SPLITS}
    dups = find_duplicates(splits, digests)
    for d in dups:
        report.problems.append(Problem("duplicate_content", d.describe(), clip_id=d.clip_id, split=d.split))
    if near_duplicates:
        from liser_cache.fingerprint import THRESHOLD
        from liser_core.guards import near_copies

        threshold = THRESHOLD if near_threshold is None else near_threshold
        for d in near_copies(splits, digests, corpus, threshold=threshold, found=dups, workers=workers):
            report.problems.append(Problem("near_duplicate", d.describe(), clip_id=d.clip_id, split=d.split))
    speakers = {s: {c.speaker for c in corpus.split(s)} for s in SPLITS}
    for s in ("teacher", "labeled", "unlabeled"):
        shared = sorted(speakers[s] & speakers["test"])
        if shared:
            report.problems.append(Problem(
                "speaker_overlap", f"speakers {shared[:5]} are in both {s!r} and 'test': not speaker-independent"
            ))
    for a, b in (("teacher", "labeled"), ("teacher", "unlabeled"), ("labeled", "unlabeled")):
        shared = sorted(speakers[a] & speakers[b])
        if shared:
            report.warnings.append(f"{len(shared)} speakers are in both {a!r} and {b!r} (e.g. {shared[:3]})")
    pool = all(counts[s].clips == 0 for s in SPLITS if s != "unlabeled")  # a pool checked alone (video_folder)
    if scored_split is not None and not pool and not counts[scored_split].usable:  # a problem: the run refuses it
        report.problems.append(Problem("empty_split", f"the {scored_split} split has no usable clips: liser run "
                                       "would stop (nothing to score)", split=scored_split))
    elif not counts["test"].usable:
        report.warnings.append("the test split has no usable clips: liser run would stop")
    # the protocol's notes, and a corpus's own (what the run warns about: a corpus without a
    # protocol object, such as synth_av's label_fraction shortfalls), each once
    for note in dict.fromkeys(map(str, [*(getattr(proto, "notes", None) or []), *(getattr(corpus, "notes", None) or [])])):
        report.warnings.append(note)
    report.seconds = time.perf_counter() - t0
    return report


def check_recipe(
    recipe: str | os.PathLike | None,
    overrides: Sequence[str] = (),
    *,
    host=None,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Build the recipe's corpus (only its ``data`` block is validated: teachers and students
    need not be installed) and check it."""
    from liser_core._plugins import load_plugins
    from liser_core.config import check_options, load_recipe, plain
    from liser_core.engine import build_component

    host = host or load_plugins()
    cfg = load_recipe(recipe, list(overrides))
    options = plain(cfg.data.options)
    check_options(host.registries.dataset, cfg.data.name, options, "data", "dataset")
    corpus = build_component(host.registries.dataset, cfg.data.name, options, "data.options", seed=int(cfg.seed))
    if not isinstance(corpus, Corpus):
        raise ConfigError("data.name", f"dataset {cfg.data.name!r} returned a {type(corpus).__name__}, not a "
                          "liser_core.data.Corpus (docs/plugins.md)")
    report = check_corpus(corpus, workers=workers, progress=progress, near_duplicates=bool(cfg.data.near_duplicates),
                          near_threshold=float(cfg.data.near_threshold), scored_split=str(cfg.evaluate.split))
    source = str(cfg.validation.source)
    if source != "none":  # the run holds validation speakers out of that split: said, as the run will
        from liser_core.prepare import validation_note, validation_speakers

        clips = list(corpus.split(source))
        held = validation_speakers(clips, cfg)
        report.warnings.append(
            validation_note(source, clips, held, corpus.label_space.classes)
            or f"validation: the run holds speakers {', '.join(sorted(held)[:6])} "
               f"({sum(c.speaker in held for c in clips)} clips) out of the {source} split")
    unfitted = [f"teachers.{i} ({t.name})" for i, t in enumerate(cfg.teachers) if not t.checkpoint]
    if unfitted and not list(corpus.split("teacher")):  # said here, not only after the run has started
        report.warnings.append(f"the teacher split is empty, and {', '.join(unfitted)} name(s) no checkpoint: a "
                               "teacher that is fitted in the run (not pretrained) has nothing to be fitted on; "
                               "give it a checkpoint or a teacher split")
    return report


def format_report(report: Report, *, max_speakers: int = 12) -> str:
    """The report as text: protocol, a counts table, then every problem and warning."""
    lines = [f"corpus {report.corpus} ({len(report.label_space)} classes: {', '.join(report.label_space)})"]
    if isinstance(report.protocol, dict) and report.protocol.get("description"):
        lines.append(f"protocol: {report.protocol['description']}")
    cols = [*report.label_space, "unlabeled"]
    cols = [c for c in cols if any(c in sc.classes for sc in report.splits.values())]
    head = f"{'split':<10} {'clips':>6} {'usable':>6} {'hours':>6} {'spk':>4}  " + " ".join(f"{c[:9]:>9}" for c in cols)
    lines += ["", head]
    for s, sc in report.splits.items():
        lines.append(
            f"{s:<10} {sc.clips:>6} {sc.usable:>6} {sc.seconds / 3600:>6.2f} {len(sc.speakers):>4}  "
            + " ".join(f"{sc.classes.get(c, 0):>9}" for c in cols)
        )
    lines.append("")
    for s, sc in report.splits.items():
        if sc.speakers:
            items = list(sc.speakers.items())
            shown = " ".join(f"{k}:{v}" for k, v in items[:max_speakers])
            more = f" ... (+{len(items) - max_speakers} more)" if len(items) > max_speakers else ""
            lines.append(f"speakers {s}: {shown}{more}")
    if report.warnings:
        lines.append("")
        lines += [f"warning: {w}" for w in report.warnings]
    lines.append("")
    if report.problems:
        by_kind = Counter(p.kind for p in report.problems)
        lines.append(f"{len(report.problems)} problem(s): " + ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())))
        grouped: dict[str, list[Problem]] = defaultdict(list)
        for p in report.problems:
            grouped[p.kind].append(p)
        for kind in sorted(grouped):
            for p in grouped[kind]:
                where = f" [{p.split}]" if p.split else ""
                lines.append(f"  {kind:<15} {p.path or p.clip_id or '-'}{where}: {p.reason}")
    else:
        lines.append("no problems found")
    return "\n".join(lines)

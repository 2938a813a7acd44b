"""The corpus object the three datasets return, and the assembly shared by RAVDESS and CREMA-D."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from liser_core.data import SPLITS, Clip
from liser_core.labels import LabelSpace

from . import protocols
from .decode import DECODER_VERSION, DecodeSpec, Source, load_clip

log = logging.getLogger("liser.corpora")


class IndexProblem(NamedTuple):
    """A file found while indexing that gives no clip (``liser data check`` lists these)."""

    path: str
    kind: str  # unparsed | mislabeled | duplicate | missing_audio
    reason: str


class IndexedCorpus:
    """Clips indexed from files (unloaded: ``audio`` is None) in four splits; ``load`` decodes.

    Attributes besides the :class:`~liser_core.data.Corpus` protocol: ``root``, ``protocol``
    (how the splits were made), ``unused`` (indexed clips in no split: ``liser data check``
    opens them too), ``index_problems``, ``speaker_info`` (speaker -> metadata such as ``sex``),
    ``pool_stats`` (indexing of an external pool, when there is one).
    """

    def __init__(
        self,
        name: str,
        label_space: LabelSpace,
        root: Path,
        plan: protocols.SplitPlan,
        sources: dict[str, Source],
        problems: Sequence[IndexProblem] = (),
        speaker_info: dict[str, dict[str, Any]] | None = None,
        options: dict[str, Any] | None = None,
    ):
        self.name = name
        self.label_space = label_space
        self.root = root
        self.protocol = plan
        self._splits = plan.splits
        self.unused = plan.unused
        self._sources = sources
        self.index_problems = list(problems)
        self.speaker_info = speaker_info or {}
        self.options = options or {}
        self.pool_stats: dict[str, Any] = {}

    def split(self, role: str) -> Sequence[Clip]:
        if role not in SPLITS:
            raise KeyError(f"unknown split {role!r}; splits: {SPLITS}")
        return self._splits.get(role, [])

    def load(self, clip: Clip, *, frames: bool = True) -> Clip:
        """The clip with its audio (and frames, for audio-visual clips, unless ``frames`` is
        False) decoded and checked; :class:`~liser_core.data.BadClipError` with the file and
        reason when it is unusable."""
        return load_clip(clip, self._sources[clip.clip_id], frames=frames)

    def source(self, clip_id: str) -> Source:
        return self._sources[clip_id]

    def source_files(self, clip: Clip) -> list[str]:
        """The files ``clip`` is decoded from (its audio file, and the video of its frames):
        what identifies it by content (:mod:`liser_cache.identity`)."""
        src = self._sources.get(clip.clip_id)
        if src is None:
            return [clip.path] if clip.path else []
        return [f for f in (src.audio, src.video) if f]

    @property
    def notes(self) -> list[str]:
        """What a run should report about how the splits were made (shortfalls, shared speakers)."""
        return self.protocol.notes

    def decode_signature(self, clip: Clip) -> dict[str, Any]:
        """Everything that changes what ``load(clip)`` returns or rejects, besides the files'
        bytes: the decode options of the clip's source (the cache of decoded clips keys on it)."""
        src = self._sources[clip.clip_id]
        return {"corpus": self.name, "spec": dataclasses.asdict(src.spec), "known_problem": src.known_problem,
                "decoder": DECODER_VERSION}

    def missing(self) -> dict[str, dict[str, list[str]]]:
        """What the protocol expects and the files lack, per split (``{"test": {"speakers":
        [...], "clips": [...]}}``): ``liser data check`` reports it as problems, a run as warnings."""
        return self.protocol.missing

    def subset(self) -> dict[str, dict[str, list[str]]]:
        """A deliberate subset tree (``expect_complete: false``): per split, the fold's speakers
        that have no clip and every speaker the fold names. Said once in a run (flag
        ``test_subset``) and by ``liser data check``, not a problem."""
        return self.protocol.subset

    def __iter__(self) -> Iterator[Clip]:
        for s in SPLITS:
            yield from self._splits.get(s, [])

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {len(self._splits.get(s, []))}" for s in SPLITS)
        return f"<{type(self).__name__} {self.name} at {self.root}: {counts}>"


def walk_files(root: Path, extensions: Iterable[str]) -> list[Path]:
    """Files under ``root`` (recursively, following links) whose extension is one of
    ``extensions``; hidden files and macOS ``._`` resource forks are left out. Sorted."""
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__MACOSX"]
        for f in filenames:
            if f.startswith(".") or os.path.splitext(f)[1].lower() not in exts:
                continue
            out.append(Path(dirpath) / f)
    return sorted(out)


def check_root(root: str, what: str) -> Path:
    p = Path(root).expanduser()
    if not p.is_dir():
        raise ValueError(f"{what} root {root!r} is not a directory")
    return p


#: Options of ``unlabeled_from``'s video folder that a labeled corpus passes through
#: ``unlabeled_options`` (the frame options always follow the labeled corpus's own).
POOL_OPTIONS = ("min_seconds", "max_seconds", "min_rms", "sample_rate", "speaker_from", "extensions", "cache_dir", "workers")


def assemble(
    *,
    name: str,
    label_space: LabelSpace,
    root: Path,
    items: Sequence[tuple[Clip, Source]],
    problems: Sequence[IndexProblem],
    opts: protocols.ProtocolOptions,
    num_folds: int,
    test_speakers: Callable[[int], Iterable[str]],
    fold_name: str,
    normalise_speaker: Callable[[Any], str],
    group: Callable[[str], str | None],
    spec: DecodeSpec,
    with_frames: bool,
    unlabeled_from: str | None,
    unlabeled_options: dict[str, Any] | None,
    speaker_info: dict[str, dict[str, Any]],
    options: dict[str, Any],
    expected_takes: Callable[[str], Iterable[str]] | None = None,
    take: Callable[[Clip], str] = lambda c: c.clip_id,
    notes: Sequence[str] = (),
) -> IndexedCorpus:
    """Protocol splits over indexed clips, optionally with an external pool; the corpus.

    ``expected_takes`` (speaker -> takes of the published corpus) makes a fold's missing test
    speakers and clips known (``corpus.missing()``); None when the tree need not be complete."""
    opts.check(num_folds)
    if unlabeled_options and not unlabeled_from:
        raise ValueError("unlabeled_options needs unlabeled_from (a folder of videos)")
    clips = [c for c, _ in items]
    sources = {c.clip_id: s for c, s in items}
    if not clips:
        raise ValueError(
            f"no {name} clips found under {str(root)!r} (expected the published layout; "
            f"{len(problems)} files did not index: {[p.reason for p in problems[:2]]})"
        )
    if opts.split_file is not None:
        plan = protocols.split_file_plan(
            clips, opts, root=root, normalise_speaker=normalise_speaker, group=group
        )
    else:
        plan = protocols.fold_plan(
            clips,
            test_speakers(opts.fold),
            opts,
            description=fold_name.format(fold=opts.fold, folds=num_folds),
            normalise_speaker=normalise_speaker,
            group=group,
            expected_takes=expected_takes,
            take=take,
        )
        plan.fold, plan.folds = int(opts.fold), int(num_folds)
    for note in notes:
        log.warning(note)
    plan.notes += list(notes)
    corpus = IndexedCorpus(name, label_space, root, plan, sources, problems, speaker_info, options)
    if unlabeled_from:
        from .video_folder import index_pool

        extra = dict(unlabeled_options or {})
        bad = sorted(set(extra) - set(POOL_OPTIONS))
        if bad:
            raise ValueError(f"unlabeled_options {bad} not understood (options: {', '.join(POOL_OPTIONS)})")
        pool, pool_sources, pool_problems, stats = index_pool(
            unlabeled_from, spec=spec, with_frames=with_frames, id_prefix="pool/", **extra
        )
        replaced = len(plan.splits["unlabeled"])
        plan.unused += plan.splits["unlabeled"]
        plan.splits["unlabeled"] = pool
        plan.speakers["unlabeled"] = sorted({c.speaker for c in pool})
        plan.description += f"; unlabeled pool: {len(pool)} videos of {unlabeled_from}"
        if replaced:
            plan.notes.append(f"unlabeled_from replaces the {replaced} pool clips of {name} (left unused)")
        corpus._sources.update(pool_sources)
        corpus.index_problems += pool_problems
        corpus.pool_stats = stats
    n_prob = len(corpus.index_problems)
    log.info(
        "%s: %s (%s)%s",
        name,
        ", ".join(f"{s} {len(plan.splits[s])}" for s in SPLITS),
        plan.description,
        f"; {n_prob} files not indexed (liser data check lists them)" if n_prob else "",
    )
    if n_prob:
        log.warning("%s: %d files under %s did not index: liser data check lists them", name, n_prob, root)
    return corpus

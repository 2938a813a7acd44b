"""Clips, corpora and batches: the data vocabulary every component shares."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch

from liser_common.distributed import DistContext, split_batch

from .errors import LiserError
from .labels import LabelSpace

log = logging.getLogger("liser.data")

#: The roles a corpus fills in a run. ``teacher`` stands for the large external labeled data a
#: real teacher was trained on; ``labeled`` is the student's small labeled set; ``unlabeled``
#: is the pool the teachers label; ``test`` is only ever evaluated on.
SPLITS: tuple[str, ...] = ("teacher", "labeled", "unlabeled", "test")


@dataclass
class Clip:
    """One utterance.

    A corpus may return clips *unloaded* (``audio`` is None, ``path`` set) and decode them in its
    ``load(clip)`` method when a model needs them, so that indexing a large corpus reads no audio.
    """

    clip_id: str  # unique within its corpus
    audio: np.ndarray | None  # mono float32 waveform in [-1, 1]; None until loaded
    sample_rate: int  # Hz (of ``audio``, or of the file when unloaded)
    speaker: str  # speaker id; splits are speaker-disjoint
    label: str | None = None  # canonical emotion name; None when unlabeled
    frames: np.ndarray | None = None  # face video, uint8 (T, H, W) grey or (T, H, W, 3)
    fps: float | None = None  # frame rate of ``frames``
    path: str | None = None  # source file, when there is one
    seconds_hint: float | None = None  # duration known from an index, before loading

    @property
    def seconds(self) -> float:
        if self.audio is None:
            if self.seconds_hint is None:
                raise ValueError(f"clip {self.clip_id} is not loaded and has no known duration")
            return self.seconds_hint
        return len(self.audio) / self.sample_rate


class BadClipError(LiserError):
    """A clip that cannot be used (unreadable, empty, silent, non-finite, wrong length...).

    Raised by a corpus's ``load``; the engine's bad-sample policy decides: ``skip`` (logged with
    file and reason, counted in the report) or ``raise`` (stops the run naming file and reason).
    """

    def __init__(self, clip_id: str, path: str | None, reason: str):
        self.clip_id, self.path, self.reason = clip_id, path, reason
        super().__init__(f"{path or clip_id}: {reason}")


@runtime_checkable
class Corpus(Protocol):
    """What a dataset plugin's factory returns.

    Optional members the engine and ``liser data check`` use when a corpus has them:

    * ``load(clip, frames=True) -> Clip`` -- decode an unloaded clip (see :meth:`split`);
    * ``source_files(clip) -> list[str]`` -- every file a clip is decoded from (audio, video):
      its identity by content (:mod:`liser_cache.identity`; default: ``clip.path``);
    * ``missing() -> {split: {"speakers": [...], "clips": [...]}}`` -- what the corpus's
      protocol expects and the files lack (a data-check problem, a run flag ``test_incomplete``);
    * ``subset() -> {split: {"speakers": [...], "expected": [...]}}`` -- a deliberate subset
      tree's absent speakers (a data-check warning, a run flag ``test_subset``);
    * ``notes: list[str]`` -- what a run should report about how the splits were made.
    """

    name: str  # corpus name, e.g. "synth_av" (teacher cards refer to it)
    label_space: LabelSpace  # classes of its labels

    def split(self, role: str) -> Sequence[Clip]:
        """The clips of one of :data:`SPLITS` (empty when the corpus has none for that role).

        Clips may be unloaded (``audio`` None); the corpus then also defines
        ``load(clip) -> Clip`` returning a loaded copy, or raising :class:`BadClipError`.
        """
        ...


@dataclass
class Batch:
    """Clips collated for a model: padded audio, optional frames, labels as class ids."""

    audio: torch.Tensor  # (B, N) float32, zero-padded
    lengths: torch.Tensor  # (B,) valid samples per row
    sample_rate: int
    labels: torch.Tensor  # (B,) class ids, -1 where unlabeled
    clip_ids: list[str]
    index: torch.Tensor  # (B,) position of each clip in the dataset it came from
    frames: torch.Tensor | None = None  # (B, T, H, W) float in [0, 1], or None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.audio.shape[0]

    def select(self, rows: list[int]) -> Batch:
        """The batch of these rows alone (audio trimmed to their longest); itself if all."""
        if len(rows) == len(self):
            return self
        r = torch.tensor(rows)
        lengths = self.lengths[r]
        return Batch(audio=self.audio[r, : int(lengths.max())], lengths=lengths, sample_rate=self.sample_rate,
                     labels=self.labels[r], clip_ids=[self.clip_ids[i] for i in rows], index=self.index[r],
                     frames=self.frames[r] if self.frames is not None else None,
                     extra={k: v[r] if isinstance(v, torch.Tensor) else v for k, v in self.extra.items()})

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory (DataLoader ``pin_memory``: faster copies to a GPU)."""
        return Batch(
            audio=self.audio.pin_memory(),
            lengths=self.lengths.pin_memory(),
            sample_rate=self.sample_rate,
            labels=self.labels.pin_memory(),
            clip_ids=self.clip_ids,
            index=self.index.pin_memory(),
            frames=self.frames.pin_memory() if self.frames is not None else None,
            extra=self.extra,
        )

    def to(self, device: torch.device | str) -> Batch:
        def mv(t):
            return t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t

        return Batch(
            audio=mv(self.audio),
            lengths=mv(self.lengths),
            sample_rate=self.sample_rate,
            labels=mv(self.labels),
            clip_ids=self.clip_ids,
            index=mv(self.index),
            frames=mv(self.frames),
            extra={k: mv(v) for k, v in self.extra.items()},
        )


class _Bad(NamedTuple):
    """A clip a worker could not use: the policy is applied where the batch is read."""

    clip_id: str
    path: str | None
    reason: str


class ClipDataset(torch.utils.data.Dataset):
    """A sequence of clips served to a DataLoader, resampled to one rate, labels as ids.

    With a ``cache`` (:class:`~liser_cache.clipcache.ClipCache`) and ``cache_key`` (clip -> its
    content key, or None), clips read from files are decoded and resampled once: later epochs,
    stages and runs read the cached arrays (and a broken file's reason). ``loader(workers=N)``
    decodes on N processes; the bad-clip policy is applied in the reading process, so skipped
    clips are reported, and ``raise`` raises, as with ``workers=0``.
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        label_space: LabelSpace,
        sample_rate: int,
        *,
        with_labels: bool = True,
        with_frames: bool = False,
        loader: Callable[[Clip], Clip] | None = None,
        on_bad_clip: str = "skip",
        cache=None,
        cache_key: Callable[[Clip], str | None] | None = None,
        workers: int = 0,
        pin_memory: bool = False,
    ):
        self.clips = clips
        self.label_space = label_space
        self.sample_rate = sample_rate
        self.with_labels = with_labels
        self.with_frames = with_frames
        self.load_clip = loader
        # a corpus's load() may take `frames=False` to skip video decoding for audio-only models
        self._load_takes_frames = loader is not None and "frames" in inspect.signature(loader).parameters
        if on_bad_clip not in ("skip", "raise"):
            raise ValueError(f"on_bad_clip must be 'skip' or 'raise', not {on_bad_clip!r}")
        self.on_bad_clip = on_bad_clip
        self.cache = cache if cache_key is not None else None
        self.cache_key = cache_key
        self.workers, self.pin_memory = workers, pin_memory  # the defaults of loader()
        self.skipped: dict[str, str] = {}  # clip id -> reason, for clips skipped by the policy

    def __len__(self) -> int:
        return len(self.clips)

    def load(self, clip: Clip) -> Clip:
        """``clip`` with its audio (and frames, when this dataset serves frames and the corpus
        has them) decoded by the corpus; :class:`BadClipError` when it is unusable."""
        if clip.audio is not None:
            return clip
        if self.load_clip is None:
            raise ValueError(f"clip {clip.clip_id} is not loaded and its corpus has no load()")
        if self._load_takes_frames:
            return self.load_clip(clip, frames=self.with_frames)
        return self.load_clip(clip)

    def _resampled(self, audio: np.ndarray, rate: int) -> torch.Tensor:
        out = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        if rate != self.sample_rate:
            import torchaudio.functional as AF

            out = AF.resample(out, rate, self.sample_rate)
        return out

    def _decoded(self, clip: Clip, load: Callable[[Clip], Clip] | None = None) -> tuple[torch.Tensor, np.ndarray | None]:
        """Audio at this dataset's rate (and frames, if served) of an unloaded clip: from the
        cache when it has them, else decoded (by ``load``, default :meth:`load`), resampled and
        cached."""
        key = self.cache_key(clip) if self.cache is not None else None
        if key is not None:
            bad = self.cache.get_bad(key, self.with_frames)
            if bad is not None:
                raise BadClipError(clip.clip_id, bad.path, bad.reason)
            audio = self.cache.get_audio(key, self.sample_rate)
            frames = self.cache.get_frames(key) if self.with_frames else None
            if audio is not None and (not self.with_frames or frames is not None):
                return torch.from_numpy(audio), (frames[0] if frames is not None else None)
        try:
            loaded = (load or self.load)(clip)
        except BadClipError as exc:
            if key is not None:
                self.cache.put_bad(key, self.with_frames, exc.reason, exc.path)
            raise
        audio = self._resampled(loaded.audio, loaded.sample_rate)
        if key is not None:
            self.cache.put_audio(key, self.sample_rate, audio.numpy())
            if self.with_frames and loaded.frames is not None:
                self.cache.put_frames(key, loaded.frames, loaded.fps)
        return audio, loaded.frames

    def _fetch(self, i: int, load: Callable[[Clip], Clip] | None = None):
        """Item ``i``, or a :class:`_Bad` marker for a clip that cannot be used."""
        clip = self.clips[i]
        if clip.audio is None:
            try:
                audio, frames_arr = self._decoded(clip, load)
            except BadClipError as exc:
                return _Bad(clip.clip_id, exc.path, exc.reason)
        else:
            audio, frames_arr = self._resampled(clip.audio, clip.sample_rate), clip.frames
        label = -1
        if self.with_labels and clip.label is not None:
            label = self.label_space.index(clip.label)
        frames = None
        if self.with_frames:
            if frames_arr is None:
                raise ValueError(f"clip {clip.clip_id} has no video frames")
            frames = torch.from_numpy(np.ascontiguousarray(frames_arr))
        return i, clip.clip_id, audio, label, frames

    def _bad(self, bad: _Bad) -> None:
        """The bad-clip policy: ``raise`` stops naming file and reason; ``skip`` records it."""
        if self.on_bad_clip == "raise":
            raise BadClipError(bad.clip_id, bad.path, bad.reason)
        if bad.clip_id not in self.skipped:
            log.warning("skipping %s: %s", bad.path or bad.clip_id, bad.reason)
        self.skipped[bad.clip_id] = bad.reason

    def __getitem__(self, i: int):
        item = self._fetch(i)
        if isinstance(item, _Bad):
            self._bad(item)
            return None
        return item

    def collate(self, items, *, frames_float: bool = True) -> Batch | None:
        """Pad the items' audio into one batch; frames as floats in [0, 1] (``frames_float``) or
        as the decoded uint8 (a quarter of the bytes, for a worker's batch in transit)."""
        items = [it for it in items if it is not None and not isinstance(it, _Bad)]  # bad clips: skipped
        if not items:
            return None
        idx, ids, audios, labels, frames = zip(*items)
        lengths = torch.tensor([len(a) for a in audios])
        audio = torch.zeros(len(audios), int(lengths.max()))
        for row, a in enumerate(audios):
            audio[row, : len(a)] = a
        fr = None
        if self.with_frames:
            fr = torch.stack(frames)
            if frames_float:
                fr = fr.float() / 255.0
        return Batch(
            audio=audio,
            lengths=lengths,
            sample_rate=self.sample_rate,
            labels=torch.tensor(labels, dtype=torch.long),
            clip_ids=list(ids),
            index=torch.tensor(idx, dtype=torch.long),
            frames=fr,
        )

    def _collate_marked(self, items) -> tuple[Batch | None, list[_Bad]]:
        return self.collate(items, frames_float=False), [it for it in items if isinstance(it, _Bad)]

    def _marked(self) -> torch.utils.data.Dataset:
        return _Marked(self)

    def _deliver(self, got: tuple[Batch | None, list[_Bad]]) -> Batch | None:
        """A batch as the reading process receives it: the bad-clip policy applied here."""
        batch, bad = got
        for b in bad:
            self._bad(b)
        if batch is not None and batch.frames is not None and batch.frames.dtype == torch.uint8:
            batch.frames = batch.frames.float() / 255.0  # sent as uint8: 4x fewer bytes between processes
        return batch

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        skip_batches: int = 0,
        dist: DistContext | None = None,
        workers: int | None = None,
        pin_memory: bool | None = None,
        sampler: Sampler | None = None,
    ) -> ClipLoader:
        """Batches of this dataset. Shuffled, the order is ``torch.randperm`` drawn from ``seed``
        alone; ``skip_batches`` leaves out the first batches of that order without reading
        them (how a resumed epoch continues). The global RNGs are never touched.

        With ``dist`` (several processes), each batch of that order is cut into one contiguous
        part per rank and this rank gets its part: together the ranks see exactly the batches
        one process would. Shuffled (training) loaders leave out batches with fewer clips than
        ranks, so that every rank takes every step; unshuffled ones keep them (a rank may then
        get an empty batch, which collates to None).

        ``workers`` processes (default: the dataset's) decode (and resample) clips ahead of the
        model, two batches each; the batches are the same, in the same order, as with
        ``workers=0``. Clips already in memory are never worth a worker: the loader then reads
        them in-process. ``pin_memory`` (default: the dataset's) for fast copies to a GPU.

        ``sampler`` (a :class:`Sampler`) replaces the shuffled order and ``batch_size``: its
        :meth:`Sampler.epoch` batches, drawn from ``seed``, are used as they are (batches of
        a single clip left out when ``drop_last``).
        """
        workers = self.workers if workers is None else workers
        pin_memory = self.pin_memory if pin_memory is None else pin_memory
        g = torch.Generator().manual_seed(seed)
        if sampler is not None:
            batches = sampler_batches(sampler, self, batch_size, seed, drop_last)[skip_batches:]
            shuffle = True  # a training order: dist leaves out batches smaller than its ranks
        else:
            order = torch.randperm(len(self), generator=g).tolist() if shuffle else list(range(len(self)))
            batches = list(torch.utils.data.BatchSampler(order, batch_size, drop_last))[skip_batches:]
        if dist is not None and dist.enabled:
            if shuffle:
                batches = [b for b in batches if len(b) >= dist.world_size]
            batches = [split_batch(b, dist) for b in batches]
        if workers and all(c.audio is not None for c in self.clips):
            workers = 0
        workers = min(workers, len(batches))
        dl = torch.utils.data.DataLoader(
            self._marked(),
            batch_sampler=batches,
            collate_fn=self._collate_marked,
            generator=g,  # the loader's own seed draw comes from here, not the global RNG
            num_workers=workers,
            prefetch_factor=2 if workers else None,
            worker_init_fn=_decoding_worker if workers else None,
            pin_memory=pin_memory,
        )
        return ClipLoader(self, dl, len(batches))


class Sampler:
    """How a stage's training clips are cut into the batches of each epoch (``distil.sampler``).

    :meth:`epoch` gets what is known of every clip before it is decoded: ``seconds`` (``(N,)``
    float, NaN where a corpus does not know a clip's duration before loading it), ``labels``
    (``(N,)`` class indices, -1 for unlabeled clips), ``speakers`` (``N`` ids), the block's
    ``batch_size`` and a ``torch.Generator`` seeded for the epoch (draw from it alone, so the order
    depends on the epoch and seed only: a resumed epoch skips the batches already seen). It
    returns lists of clip indices; a clip may appear in several batches or in none (class
    balancing). The number of batches of epoch 0 sets the stage's steps per epoch (the
    learning-rate schedule); it should not change much between epochs. First-party: ``random``
    (the default order), ``class_balanced``, ``duration_buckets``, ``dynamic``.
    """

    def epoch(self, seconds: torch.Tensor, labels: torch.Tensor, speakers: Sequence[str], batch_size: int,
              generator: torch.Generator) -> list[list[int]]:
        raise NotImplementedError  # pragma: no cover - interface


def sampler_batches(sampler: Sampler, ds: ClipDataset, batch_size: int, seed: int, drop_last: bool) -> list[list[int]]:
    """``sampler``'s batches of ``ds`` for the epoch seeded with ``seed``, checked: non-empty lists
    of valid clip indices (a :class:`~liser_core.errors.ComponentError` naming the sampler)."""
    from .components import blame, component_label
    from .errors import ComponentError

    seconds = torch.tensor([c.seconds if c.audio is not None or c.seconds_hint is not None else float("nan")
                            for c in ds.clips], dtype=torch.float64)
    space = ds.label_space
    labels = torch.tensor([space.index(c.label) if c.label is not None and c.label in space.classes else -1
                           for c in ds.clips], dtype=torch.long)
    with blame(sampler, "epoch"):
        got = sampler.epoch(seconds, labels, [c.speaker for c in ds.clips], batch_size,
                            torch.Generator().manual_seed(seed))
    batches = [[int(i) for i in b] for b in got]
    n = len(ds)
    if not batches or any(not b or min(b) < 0 or max(b) >= n for b in batches):
        raise ComponentError(f"{component_label(sampler, 'sampler')} must return non-empty batches of clip indices "
                             f"in [0, {n}); it returned {len(batches)} batch(es)")
    if drop_last:
        batches = [b for b in batches if len(b) > 1] or batches
    return batches


class JointDataset(torch.utils.data.Dataset):
    """Several :class:`ClipDataset` over the same clips (each its own rate, frames or not, and
    bad-clip record), decoding each clip once for all of them: one pass feeds every teacher.
    Its loader yields one batch (or None) per part; each part's batches are those its own
    loader would give. A clip whose video fails still serves the parts that need no frames.
    ``needs`` (per part, the clip indices it serves; default all): a part skips the others."""

    def __init__(self, parts: Sequence[ClipDataset], needs: Sequence[set[int]] | None = None):
        self.parts, self.needs = list(parts), needs
        self.clips = self.parts[0].clips
        self.workers, self.pin_memory = self.parts[0].workers, self.parts[0].pin_memory
        self._order = sorted(range(len(self.parts)), key=lambda k: not self.parts[k].with_frames)  # frames first

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        memo: dict[bool, Clip | BadClipError] = {}

        def once(ds: ClipDataset) -> Callable[[Clip], Clip]:
            def load(clip: Clip) -> Clip:
                got = memo.get(ds.with_frames)
                if got is None and not ds.with_frames and isinstance(memo.get(True), Clip):
                    got = memo[True]  # the audio of a decode with frames is the audio alone
                if got is None:
                    try:
                        got = ds.load(clip)
                    except BadClipError as exc:
                        got = exc
                    memo[ds.with_frames] = got
                if isinstance(got, BadClipError):
                    raise got
                return got

            return load

        items = [None] * len(self.parts)
        for k in self._order:
            if self.needs is None or i in self.needs[k]:
                items[k] = self.parts[k]._fetch(i, once(self.parts[k]))
        return tuple(items)

    def _marked(self) -> torch.utils.data.Dataset:
        return self

    def _collate_marked(self, rows):
        return tuple(ds._collate_marked([r[k] for r in rows]) for k, ds in enumerate(self.parts))

    def _deliver(self, got) -> tuple[Batch | None, ...]:
        return tuple(ds._deliver(g) for ds, g in zip(self.parts, got))

    loader = ClipDataset.loader


def _decoding_worker(worker_id: int) -> None:
    """Decoding workers yield the CPU to the process that runs the models: it is the one that
    sets the pace, and their prefetched batches cover the wait (lower priority, same work)."""
    if hasattr(os, "nice"):  # (not on Windows)
        os.nice(10)


class _Marked(torch.utils.data.Dataset):
    """The dataset as a DataLoader's workers see it: bad clips come back as markers."""

    def __init__(self, ds: ClipDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds._fetch(i)


class ClipLoader:
    """Iterates a DataLoader over a :class:`ClipDataset` (or :class:`JointDataset`): batches (None
    when every clip of one was skipped), with the bad-clip policy applied here, in the reading
    process."""

    def __init__(self, ds: ClipDataset | JointDataset, dl: torch.utils.data.DataLoader, n: int):
        self.ds, self.dl, self.n = ds, dl, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for got in self.dl:
            yield self.ds._deliver(got)

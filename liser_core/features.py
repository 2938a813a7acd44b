"""Fixed frontends computed once per clip: the feature cache.

A student's (or teacher's) frontend often has a fixed part -- a log-mel spectrogram with given
settings and nothing learnable -- whose output for a clip is the same in every epoch, every stage
and every run of a grid (RAVDESS: 270 runs x 20 epochs of the same clips). A frontend module
declares that part by calling :func:`per_clip` with a description of its computation
(``config``); the engine, around each training step, names the clips of the batch
(:func:`clips`). While both hold, each clip's features come from the cache, keyed by the clip's
content key (the one the teacher store uses) and a digest of ``config``; the others are computed
and kept:

* in memory for the run (later epochs, the validation split every epoch);
* on disk under ``$LISER_CACHE_DIR/features`` (when ``data.cache`` is on) for the next run and
  every process of a grid, written like decoded clips (:class:`liser_cache.clipcache.ClipCache`:
  temporary file + rename, a CRC per array, the key each entry was written for checked on
  read, least recently used entries trimmed).

Bypassed, without a word, wherever the features would not be the clip's own: the step's audio
went through an augmentation (it is not the batch's tensor any more), the module is traced for
export, the frontend says its computation is not fixed (``config`` None: a learnable part).
Cached or not, :func:`per_clip` computes each clip's features on its own samples alone (one
clip per call; LiSER's ``LogMel`` reflects each clip at its own end, not into its neighbours'
zeros, and fills the frames after it with the log of silence): a clip's features are the same
bits whichever clips share its batch, so training on cached features is bit-identical to
training without the cache (tests/test_feature_cache.py), and training sees the features
inference sees.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: ``compute(audio, lengths)`` -> features: a padded batch (B, N) -> (B, ..., frames(N))
Compute = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class FeatureCache:
    """Features per (clip content key, frontend config digest): in memory, then on disk.

    ``disk``: a :class:`~liser_cache.clipcache.ClipCache` holding the arrays (None: memory only);
    ``max_memory``: bytes held in memory for the run (further features are still written to disk
    and read back from it).
    """

    def __init__(self, disk=None, max_memory: int = 2 * 2**30):
        self.disk = disk
        if disk is not None:  # its warnings name what it holds and what a miss costs
            disk.name, disk.redo = "feature cache", "computing the clip's features again"
        self.max_memory = int(max_memory)
        self.memory: dict[tuple[str, str], torch.Tensor] = {}
        self.bytes = 0
        self.hits = self.misses = 0
        self.disk_hits = 0  # of the hits, those read from disk (a warm cache from earlier runs)

    def get(self, key: str, tag: str) -> torch.Tensor | None:
        t = self.memory.get((key, tag))
        if t is None and self.disk is not None:
            arr = self.disk.get_array(key, f"f{tag}")
            if arr is not None:
                t = torch.from_numpy(arr)
                self._hold(key, tag, t)
                self.disk_hits += 1
        if t is None:
            self.misses += 1
        else:
            self.hits += 1
        return t

    def put(self, key: str, tag: str, features: torch.Tensor) -> None:
        t = features.detach().to("cpu", torch.float32).contiguous().clone()
        self._hold(key, tag, t)
        if self.disk is not None:
            self.disk.put_array(key, f"f{tag}", t.numpy())

    def _hold(self, key: str, tag: str, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        if self.bytes + size <= self.max_memory:
            self.memory[(key, tag)] = t
            self.bytes += size


@dataclass
class _Active:
    cache: FeatureCache
    keys: Sequence[str]
    audio: torch.Tensor
    version: int  # the tensor's version counter: an in-place change in between is seen
    rate: int


_active: contextvars.ContextVar[_Active | None] = contextvars.ContextVar("liser_feature_clips", default=None)


@contextlib.contextmanager
def clips(cache: FeatureCache | None, keys: Sequence[str] | None, audio: torch.Tensor, rate: int) -> Iterator[None]:
    """Within the block, a fixed frontend called on ``audio`` itself (the same tensor, unchanged
    in place: not a copy, not an augmented view) takes row ``i``'s features from ``cache`` under ``keys[i]``.
    A no-op when ``cache`` or ``keys`` is None."""
    if cache is None or keys is None:
        yield
        return
    token = _active.set(_Active(cache, list(keys), audio, audio._version, int(rate)))
    try:
        yield
    finally:
        _active.reset(token)


def config_digest(config: dict[str, Any]) -> str:
    """16 hex digits of sha256 over ``config`` (JSON, sorted keys; tensors by their bytes)."""

    def plain(v):
        if isinstance(v, torch.Tensor):
            return _tensor_digest(v)
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)

    return hashlib.sha256(json.dumps(plain(config), sort_keys=True).encode()).hexdigest()[:16]


def _tensor_digest(v: torch.Tensor) -> dict[str, Any]:
    """A tensor's dtype, shape and sha256, kept on the tensor with its version counter: a
    frontend's buffers are hashed again only when they change (``load_state_dict`` copies in
    place, which moves the counter), not at every step."""
    seen = getattr(v, "_liser_digest", None)
    if seen is not None and seen[0] == v._version:
        return seen[1]
    t = v.detach().to("cpu").contiguous()
    digest = {"dtype": str(t.dtype), "shape": list(t.shape), "sha256": hashlib.sha256(t.numpy().tobytes()).hexdigest()}
    v._liser_digest = (v._version, digest)
    return digest


def per_clip(
    audio: torch.Tensor,
    lengths: torch.Tensor | None,
    compute: Compute,
    frames: Callable[[int], int],
    *,
    config: dict[str, Any] | None,
    pad_value: float,
) -> torch.Tensor:
    """The fixed features of a batch: each clip's computed on its own, or from the cache.

    ``compute(audio, lengths)`` maps a zero-padded batch (B, N) to (B, ..., frames(N)), each
    row's first ``frames(lengths[i])`` frames from that clip's samples alone (``lengths`` None:
    every row whole). Here it is called on one whole clip at a time (a view of its own
    samples): batched FFTs and matrix products round a row differently depending on its
    neighbours, so only one clip per call makes a clip's
    features the same bits in every batch, cached or not. The batch is those rows followed by
    ``pad_value``. ``config`` describes the computation (every setting and buffer that changes
    its output; None: not cacheable). Without ``lengths``, and while traced or exported, the
    batch goes to ``compute`` whole.
    """
    if lengths is None or torch.jit.is_tracing() or torch.jit.is_scripting() or _exporting():
        return compute(audio, lengths)
    active = _active.get()
    usable = (
        active is not None and config is not None and active.audio is audio and audio._version == active.version
        and len(active.keys) == audio.shape[0]
    )
    tag = config_digest({**config, "rate": active.rate}) if usable else ""
    n = [int(x) for x in lengths.tolist()]
    rows = []
    for i, length in enumerate(n):
        row = active.cache.get(active.keys[i], tag) if usable else None
        if row is None or row.shape[-1] != frames(length):
            row = compute(audio[i : i + 1, :length], None)[0]  # the clip alone, whole
            if usable:
                active.cache.put(active.keys[i], tag, row)
        rows.append(row)
    batch = torch.full((len(n), *rows[0].shape[:-1], frames(audio.shape[-1])), pad_value, dtype=rows[0].dtype,
                       device=audio.device)
    for i, r in enumerate(rows):
        batch[i, ..., : r.shape[-1]] = r.to(audio.device)
    return batch


def _exporting() -> bool:
    try:
        return (bool(torch.compiler.is_compiling()) or bool(torch.compiler.is_exporting())
                or bool(torch.onnx.is_in_onnx_export()))
    except AttributeError:  # pragma: no cover - older torch
        return False

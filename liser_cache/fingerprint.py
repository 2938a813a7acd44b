"""Near-copies: a perceptual fingerprint of a clip's audio, cached per clip content.

Identity by bytes (:mod:`liser_cache.identity`) misses a test clip that reached the unlabeled
pool re-encoded (AAC, MP3, Opus), resampled, remuxed, trimmed or with its gain changed: every
byte differs, the recording is the same. This module compares what the clips *sound* like.

**Fingerprint** (:func:`compute`). The audio is taken to mono 16 kHz (torchaudio's resampler),
and a log-mel spectrogram is computed (torchaudio: 32 bands from 100 Hz to 3.8 kHz, so a copy
resampled to 8 kHz or squeezed by a low-bitrate codec keeps every band; 32 ms windows every
10 ms). Then:

* each frame gets a *weight* from its energy relative to the clip's loudest frame (1 above
  -35 dB, 0 below -45 dB, linear between): silence and codec noise count for nothing;
* each band's weighted mean over time is subtracted (the speaker's and the channel's average
  spectrum, and any gain), then each frame's mean over bands, and each frame is scaled to unit
  length: what is left is how the spectrum *moves*, the same whatever the gain;
* frames are multiplied by their weight and stored as int8 (and weights as uint8), plus a
  64-value *signature* (the clip's average spectral shape and per-band variability) used to
  pick candidates.

**Similarity** (:func:`similarity`). Two fingerprints are aligned at every shift up to
``max_shift`` seconds (10 ms steps); at each shift the cosine similarity of the two weighted
frame sequences over their overlap is taken (a frame active in one clip and silent in the other
counts against it); the similarity is the best over shifts whose overlap holds at least half of
each clip's active frames. The same recording re-encoded, resampled, remuxed, trimmed by up to
``max_shift`` or gain-changed scores near 1; another recording -- another take of the same
sentence by the same speaker included -- scores low, because its timing and pitch differ frame
by frame. :data:`THRESHOLD` and its measured margins are in ``docs/soundness.md``.

**Cache** (:class:`FingerprintCache`): ``$LISER_CACHE_DIR/fingerprints.sqlite3``, one row per
content key (the clip's content digests, how it is decoded, and :data:`VERSION`), arrays as raw
little-endian bytes (no pickle); a fingerprint is computed once per clip content.

Example::

    >>> fp = compute(audio, 16000)  # doctest: +SKIP
    >>> similarity(fp, compute(0.5 * audio, 16000))[0] > THRESHOLD  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .identity import cache_dir

log = logging.getLogger("liser.fingerprint")

#: Bumped whenever the fingerprint changes: old cache rows are then never read.
VERSION = 1
RATE = 16000
N_FFT = 512  # 32 ms
HOP = 160  # 10 ms
N_MELS = 64
#: the slow spectral trajectory (a weighted moving mean over +-LOCAL_FRAMES frames) is removed
LOCAL_FRAMES = 10
F_MIN, F_MAX = 100.0, 3800.0
#: frames below ``ACTIVE_DB`` under the loudest frame weigh nothing; full weight ``RAMP_DB`` above
ACTIVE_DB, RAMP_DB = 45.0, 10.0
#: at most this much of a clip is fingerprinted (emotional speech clips are 2-5 s)
MAX_SECONDS = 30.0
#: default decision threshold on :func:`similarity` (docs/soundness.md gives the margins)
THRESHOLD = 0.72
#: default largest shift (seconds) between a copy and its original: trimmed by up to 0.5 s
MAX_SHIFT = 0.5
#: an alignment counts only if its overlap holds this share of each clip's active frames
MIN_COVERAGE = 0.5
#: candidates (nearest signatures) verified per query clip
CANDIDATES = 32
#: at most this many frames (10 s) of each clip are compared
MATCH_FRAMES = 1000


@dataclass(frozen=True)
class Fingerprint:
    """A clip's fingerprint: ``frames`` (T, N_MELS) int8, ``weights`` (T,) uint8, ``signature``
    (2 * N_MELS,) float32 of unit length."""

    frames: np.ndarray
    weights: np.ndarray
    signature: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.weights) * HOP / RATE

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames as float (T, N_MELS) scaled back to unit length, squared weights (T,)."""
        z = torch.from_numpy(self.frames.astype(np.float32) / 127.0)
        w = torch.from_numpy(self.weights.astype(np.float32) / 255.0)
        return z, w * w


_MEL: dict[str, Any] = {}


def _mel() -> Any:
    if "t" not in _MEL:
        import torchaudio

        _MEL["t"] = torchaudio.transforms.MelSpectrogram(
            sample_rate=RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, f_min=F_MIN, f_max=F_MAX, power=2.0,
        )
    return _MEL["t"]


def compute(audio: np.ndarray, rate: int) -> Fingerprint | None:
    """The fingerprint of ``audio`` (mono, or (samples, channels)) at ``rate`` Hz; None when
    it has no frame above the silence floor (nothing to recognise it by)."""
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if x.ndim == 2:
        x = x.mean(dim=1 if x.shape[1] < x.shape[0] else 0)
    x = x[: int(MAX_SECONDS * rate)]
    if int(rate) != RATE:
        import torchaudio

        x = torchaudio.functional.resample(x, int(rate), RATE)
    if x.numel() < N_FFT or not torch.isfinite(x).all():
        return None
    with torch.no_grad():
        mel = _mel()(x).T.double()  # (T, F)
    peak = float(mel.max())
    if peak <= 0:
        return None
    logmel = 10 * torch.log10(mel + peak * 1e-9)
    energy = 10 * torch.log10(mel.sum(1) + peak * 1e-9)
    w = ((energy - (energy.max() - ACTIVE_DB)) / RAMP_DB).clamp(0, 1)
    if float(w.sum()) < 1:
        return None
    z = logmel - (logmel * w[:, None]).sum(0) / w.sum()  # per band, weighted over time
    spread = ((z * z * w[:, None]).sum(0) / w.sum()).sqrt()
    sig = torch.cat([_shape(logmel).T @ w / w.sum(), spread / (spread.norm() + 1e-9)])
    sig = (sig - sig.mean()) / ((sig - sig.mean()).norm() + 1e-12)
    if LOCAL_FRAMES:  # remove the slow trajectory: a moving weighted mean over LOCAL_FRAMES frames
        k = torch.ones(1, 1, 2 * LOCAL_FRAMES + 1, dtype=z.dtype)
        num = torch.nn.functional.conv1d((z * w[:, None]).T[:, None], k, padding=LOCAL_FRAMES)[:, 0].T
        den = torch.nn.functional.conv1d(w[None, None], k, padding=LOCAL_FRAMES)[0, 0]
        z = z - num / den.clamp(min=1e-6)[:, None]
    z = _shape(z)
    frames = (z * w[:, None] * 127).round().clamp(-127, 127).to(torch.int8).numpy()
    weights = (w * 255).round().to(torch.uint8).numpy()
    return Fingerprint(frames, weights, sig.float().numpy())


def _shape(x: torch.Tensor) -> torch.Tensor:
    """Each frame centred over bands and scaled to unit length."""
    x = x - x.mean(1, keepdim=True)
    return x / (x.norm(dim=1, keepdim=True) + 1e-9)


def similarity(a: Fingerprint, b: Fingerprint, max_shift: float = MAX_SHIFT) -> tuple[float, float]:
    """``(similarity, shift in seconds)`` of the best alignment of ``b`` against ``a`` (see
    the module doc; the shift is where ``b`` starts in ``a``'s time); ``(0.0, 0.0)`` when no
    shift covers enough of both."""
    _, sim, shift = NearIndex([a], max_shift=max_shift).query(b, candidates=1)[0]
    return sim, shift


class NearIndex:
    """Reference fingerprints (a test split's), ready to be matched: their signatures for
    candidate retrieval, their frames' Fourier transforms for the alignment at every shift."""

    def __init__(self, refs: Sequence[Fingerprint], *, max_shift: float = MAX_SHIFT):
        self.lag = int(round(max_shift * RATE / HOP))
        self.size = len(refs)
        if not refs:
            return
        lengths = [min(len(r.weights), MATCH_FRAMES) for r in refs]
        self.tmax = max(lengths)
        self.n = self.tmax + 2 * self.lag  # no wrap-around for shifts up to lag (see query)
        self.sigs = torch.from_numpy(np.stack([r.signature for r in refs]))
        z = torch.zeros(len(refs), N_MELS, self.n)
        self.cum = torch.zeros(len(refs), self.tmax + 1, dtype=torch.float64)
        for k, r in enumerate(refs):
            zr, wr = r.tensors()
            t = lengths[k]
            z[k, :, :t] = zr[:t].T
            self.cum[k, 1 : t + 1] = wr[:t].double().cumsum(0)
            self.cum[k, t + 1 :] = self.cum[k, t]
        self.lengths = torch.tensor(lengths)
        self.spectra = torch.fft.rfft(z, dim=2)  # (R, F, n // 2 + 1)

    def query(self, fp: Fingerprint, candidates: int = CANDIDATES) -> list[tuple[int, float, float]]:
        """``(reference index, similarity, shift seconds)`` for the ``candidates`` references
        whose signatures are nearest to ``fp``'s, best first."""
        if not self.size:
            return []
        k = min(candidates, self.size)
        picked = torch.topk(self.sigs @ torch.from_numpy(fp.signature), k).indices
        zq, wq = fp.tensors()
        tq = min(len(wq), self.tmax + self.lag)
        zq, wq = zq[:tq], wq[:tq].double()
        qs = torch.fft.rfft(torch.nn.functional.pad(zq.T, (0, self.n - tq)), dim=1)  # (F, n//2+1)
        corr = torch.fft.irfft((qs.conj()[None] * self.spectra[picked]).sum(1), n=self.n)  # (k, n)
        lag = self.lag
        offsets = torch.arange(-lag, lag + 1)  # frame i of the query meets frame i + o of the reference
        d = corr[:, offsets % self.n].double()
        cq = torch.cat([torch.zeros(1, dtype=torch.float64), wq.cumsum(0)])
        lr = self.lengths[picked][:, None]
        i0 = (-offsets).clamp(0, tq)[None].expand(k, -1)
        i1 = torch.maximum(torch.minimum(torch.full_like(i0, tq), lr - offsets[None]), i0)
        nq = cq[i1] - cq[i0]
        cum = self.cum[picked]
        nr = cum.gather(1, (i1 + offsets).clamp(0, self.tmax)) - cum.gather(1, (i0 + offsets).clamp(0, self.tmax))
        ok = (nq >= MIN_COVERAGE * cq[-1]) & (nr >= MIN_COVERAGE * cum[:, -1:]) & (nq > 0) & (nr > 0)
        sim = torch.where(ok, d / torch.sqrt(nq * nr).clamp(min=1e-12), torch.zeros_like(d)).clamp(max=1.0)
        best, at = sim.max(1)
        out = [(int(picked[j]), float(best[j]), float(offsets[at[j]]) * HOP / RATE) for j in range(k)]
        return sorted(out, key=lambda x: -x[1])


# -- cache ------------------------------------------------------------------------------------------
def content_key(digests: Sequence[str], decode: Any = None) -> str:
    """The cache key of a clip's fingerprint: its content digests, how it is decoded (a
    corpus's ``decode_signature``), and the fingerprint's :data:`VERSION` and parameters."""
    params = [VERSION, RATE, N_FFT, HOP, N_MELS, F_MIN, F_MAX, ACTIVE_DB, RAMP_DB, LOCAL_FRAMES, MAX_SECONDS]
    blob = json.dumps({"fp": params, "content": list(digests), "decode": decode}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class FingerprintCache:
    """content key -> fingerprint, in ``cache_dir()/fingerprints.sqlite3`` (arrays as raw
    little-endian bytes with their shape; no pickle). A cache that cannot be opened is not used."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = os.fspath(path) if path is not None else os.fspath(cache_dir() / "fingerprints.sqlite3")
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(  # fp2: rows with a check (an older version's table fp is left unread)
                "CREATE TABLE IF NOT EXISTS fp2 (key TEXT PRIMARY KEY, frames INTEGER NOT NULL, "
                "z BLOB NOT NULL, w BLOB NOT NULL, sig BLOB NOT NULL, chk TEXT NOT NULL)"
            )
            self._db = db
        except (sqlite3.Error, OSError) as exc:
            log.warning("fingerprint cache %s cannot be used (%s): fingerprints are computed without it (the "
                        "file is kept; remove it to start a new cache)", self.path, exc)

    def get_many(self, keys: Sequence[str]) -> dict[str, Fingerprint]:
        out: dict[str, Fingerprint] = {}
        if self._db is None or not keys:
            return out
        with self._lock:
            try:
                for i in range(0, len(keys), 500):
                    chunk = list(keys[i : i + 500])
                    q = f"SELECT key, frames, z, w, sig, chk FROM fp2 WHERE key IN ({','.join('?' * len(chunk))})"
                    for key, t, z, w, sig, chk in self._db.execute(q, chunk):
                        try:
                            valid = chk == _row_check(key, int(t), z, w, sig)
                        except (TypeError, ValueError):  # a column of the wrong type: a damaged page
                            valid = False
                        if not valid:  # edited or damaged: computed again
                            log.warning("fingerprint cache %s: the row of %s does not match its check (edited or "
                                        "damaged): its fingerprint is computed again", self.path, str(key)[:16])
                            continue
                        fp = _decode_row(int(t), z, w, sig)
                        if fp is not None:
                            out[key] = fp
            except sqlite3.Error as exc:  # a file that is no database, or damaged pages
                if not getattr(self, "_said", False):
                    self._said = True
                    log.warning("fingerprint cache %s cannot be read (%s): fingerprints are computed again (the "
                                "file is kept; remove it to start a new cache)", self.path, exc)
        return out

    def put_many(self, items: Sequence[tuple[str, Fingerprint]]) -> None:
        if self._db is None or not items:
            return
        rows = [(k, len(f.weights), f.frames.tobytes(), f.weights.tobytes(), f.signature.astype("<f4").tobytes())
                for k, f in items]
        rows = [(*r, _row_check(*r)) for r in rows]
        with self._lock:
            try:
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.executemany("INSERT OR REPLACE INTO fp2 VALUES (?, ?, ?, ?, ?, ?)", rows)
            except sqlite3.Error as exc:
                log.debug("fingerprint cache write failed (%s)", exc)


def _row_check(key: str, frames: int, z: bytes, w: bytes, sig: bytes) -> str:
    """A row's check over its key and arrays: a row copied onto another key, edited or damaged
    no longer matches it."""
    h = hashlib.sha256(f"{key}\0{frames}\0".encode())
    for part in (z, w, sig):
        h.update(len(part).to_bytes(8, "little"))
        h.update(bytes(part))
    return h.hexdigest()[:16]


def _decode_row(t: int, z: bytes, w: bytes, sig: bytes) -> Fingerprint | None:
    """A stored row back as a fingerprint; None when its sizes do not add up (a damaged row)."""
    if len(z) != t * N_MELS or len(w) != t or len(sig) != 8 * N_MELS:
        return None
    return Fingerprint(
        np.frombuffer(z, np.int8).reshape(t, N_MELS).copy(),
        np.frombuffer(w, np.uint8).copy(),
        np.frombuffer(sig, "<f4").astype(np.float32),
    )


def fingerprints_of(
    clips: Sequence[Any], digests: Sequence[Sequence[str]], corpus: Any = None, *, workers: int = 2,
    cache: FingerprintCache | None = None,
) -> list[Fingerprint | None]:
    """The fingerprint of each clip (None for a clip that cannot be decoded or is silent):
    read from the cache by content, else decoded (``corpus.load(clip)``, without face frames
    when the corpus allows) and computed on ``workers`` threads, and remembered."""
    cache = cache if cache is not None else FingerprintCache()
    signature = getattr(corpus, "decode_signature", None)
    keys = []
    for clip, ds in zip(clips, digests):
        decode = signature(clip) if (signature is not None and clip.audio is None) else None
        keys.append(content_key(ds, decode))
    known = cache.get_many(list(dict.fromkeys(keys)))
    todo = [i for i, k in enumerate(keys) if k not in known]
    load = getattr(corpus, "load", None)

    def one(i: int) -> Fingerprint | None:
        clip = clips[i]
        if clip.audio is None:
            if load is None:
                return None
            try:
                try:
                    clip = load(clip, frames=False)
                except TypeError:  # a corpus whose load() has no frames option
                    clip = load(clip)
            except Exception as exc:  # noqa: BLE001 - a bad clip is the loader's to report, not ours
                log.debug("no fingerprint for %s: %s", clips[i].clip_id, exc)
                return None
        if clip.audio is None:
            return None
        return compute(clip.audio, clip.sample_rate)

    if workers > 1 and len(todo) > 4:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as ex:
            made = list(ex.map(one, todo))
    else:
        made = [one(i) for i in todo]
    fresh = {}
    for i, fp in zip(todo, made):
        if fp is not None:
            fresh[keys[i]] = fp
    cache.put_many(list(fresh.items()))
    known |= fresh
    return [known.get(k) for k in keys]

"""Decode once: a content-keyed cache of decoded clips, shared by epochs, stages, runs and
processes.

A corpus whose clips live in files (RAVDESS wavs, VoxCeleb2 mp4s) decodes, resamples and samples
face frames every time a model reads a clip. :class:`ClipCache` keeps the result per

* clip content (the digests of the files it is decoded from, :mod:`liser_cache.identity`),
* decoding signature (everything that changes what decoding returns or rejects: the corpus's
  decode options, e.g. its sample rate, frame rate, frame count and size, length limits),
* and consumer: audio at each sample rate a model asks for; face frames once,

so that the second epoch, the next stage and the next run read a finished array. A clip that
cannot be decoded is remembered too (its reason), so a broken file is not decoded again.

Files (``root/<2 hex>/<key>-a16000.safetensors``, ``-frames``, ``-bad<flags>.json``) are
written under a temporary name and renamed, so a reader sees a whole entry or none; each array
carries a CRC-32 of its bytes, checked on every read: a damaged entry is deleted and decoded
again, never used. Each entry also records the key and consumer it was written for (``key``,
``entry``: ``a16000``, ``frames``, ``bad1``), checked against the ones it is read for: an entry
found under another clip's name (two files swapped or copied on disk) is a miss, with one warning
naming it, and the clip is decoded again. Each hit refreshes the entry's modification time; when the folder grows past
``max_bytes`` the least recently used entries are removed (LRU): only entries, named as LiSER
names them in their key's folder, are counted and removed; other files are left alone (and a
folder holding them is refused as ``data.cache_dir``). The entries may be deleted at any time.

Example::

    >>> cache = ClipCache(tmp / "decoded", max_bytes=2**30)  # doctest: +SKIP
    >>> key = cache.key(digests, {"sample_rate": 16000})  # doctest: +SKIP
    >>> cache.put_audio(key, 16000, audio); cache.get_audio(key, 16000)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_HOST = socket.gethostname().replace("/", "_").replace(".", "_")
log = logging.getLogger("liser.clipcache")

FORMAT = 1
#: Fraction of ``max_bytes`` an eviction brings the folder down to.
LOW_WATER = 0.9


class CachedBadClip:
    """A clip remembered as unusable: the reason (and file) its decoding gave."""

    def __init__(self, reason: str, path: str | None):
        self.reason, self.path = reason, path


#: a cache folder's shards and entries (``_entries``): nothing else there is LiSER's
_SHARD = re.compile(r"[0-9a-f]{2}")
_ENTRY = re.compile(r"([0-9a-f]{64})-(?:[A-Za-z0-9]+\.safetensors|bad\d+\.json)")


class ClipCache:
    """Decoded audio (per sample rate), face frames and decoding failures, per content key."""

    def __init__(self, root: str | os.PathLike, max_bytes: int = 50 * 2**30, *,
                 name: str = "decoded-clip cache", redo: str = "decoding the clip again"):
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_bytes)
        self.name, self.redo = name, redo  # what its messages call it, and what a miss costs
        self.hits = self.misses = self.damaged = self.mismatched = 0
        self._written = 0  # bytes written since the last size check
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ClipCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    @staticmethod
    def key(digests: Sequence[str], signature: Mapping[str, Any]) -> str:
        """The cache key of a clip: its content digests and the decoding signature."""
        text = json.dumps({"format": FORMAT, "content": list(digests), "decode": signature}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    # -- entries ---------------------------------------------------------------------------------
    def _path(self, key: str, suffix: str) -> Path:
        return self.root / key[:2] / f"{key}-{suffix}"

    def get_audio(self, key: str, rate: int) -> np.ndarray | None:
        return self._get_array(self._path(key, f"a{int(rate)}.safetensors"), key, f"a{int(rate)}")

    def put_audio(self, key: str, rate: int, audio: np.ndarray) -> None:
        self._put_array(self._path(key, f"a{int(rate)}.safetensors"), np.ascontiguousarray(audio, dtype=np.float32),
                        {"rate": int(rate), "key": key, "entry": f"a{int(rate)}"})

    def get_frames(self, key: str) -> tuple[np.ndarray, float | None] | None:
        path = self._path(key, "frames.safetensors")
        arr = self._get_array(path, key, "frames", meta := {})
        if arr is None:
            return None
        return arr, (float(meta["fps"]) if meta.get("fps") not in (None, "") else None)

    def put_frames(self, key: str, frames: np.ndarray, fps: float | None) -> None:
        self._put_array(self._path(key, "frames.safetensors"), np.ascontiguousarray(frames),
                        {"fps": "" if fps is None else repr(fps), "key": key, "entry": "frames"})

    def get_array(self, key: str, entry: str) -> np.ndarray | None:
        """Another consumer's array of this clip (e.g. ``f<digest>``: a frontend's features,
        :mod:`liser_core.features`), verified like decoded audio."""
        return self._get_array(self._path(key, f"{entry}.safetensors"), key, entry)

    def put_array(self, key: str, entry: str, arr: np.ndarray) -> None:
        if not entry.isalnum():
            raise ValueError(f"cache entry names are letters and digits, not {entry!r}")
        self._put_array(self._path(key, f"{entry}.safetensors"), np.ascontiguousarray(arr),
                        {"key": key, "entry": entry})

    def get_bad(self, key: str, frames: bool) -> CachedBadClip | None:
        path = self._path(key, f"bad{int(frames)}.json")
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self._discard(path)
            return None
        if d.get("format") != FORMAT or not isinstance(d.get("reason"), str):
            self._discard(path)
            return None
        if not self._written_for(path, d, key, f"bad{int(frames)}"):
            return None
        self.hits += 1
        return CachedBadClip(d["reason"], d.get("path"))

    def put_bad(self, key: str, frames: bool, reason: str, path: str | None) -> None:
        entry = f"bad{int(frames)}"
        data = json.dumps({"format": FORMAT, "reason": reason, "path": path, "key": key, "entry": entry}).encode()
        self._write(self._path(key, f"bad{int(frames)}.json"), data)

    # -- files -----------------------------------------------------------------------------------
    def _get_array(self, path: Path, key: str, entry: str, meta_out: dict | None = None) -> np.ndarray | None:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                arr = f.get_tensor("data")
        except FileNotFoundError:
            self.misses += 1
            return None
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            self._damaged(path, str(exc))
            return None
        if meta.get("format") != str(FORMAT) or meta.get("crc32") != str(zlib.crc32(memoryview(arr).cast("B"))):
            self._damaged(path, "checksum mismatch")
            return None
        if not self._written_for(path, meta, key, entry):
            return None
        self.hits += 1
        try:  # least recently used first when the folder is trimmed
            os.utime(path)
        except OSError:
            pass
        if meta_out is not None:
            meta_out.update(meta)
        return arr

    def _put_array(self, path: Path, arr: np.ndarray, meta: Mapping[str, Any]) -> None:
        from safetensors.numpy import save

        body = {"format": str(FORMAT), "crc32": str(zlib.crc32(memoryview(arr).cast("B")))}
        body |= {k: str(v) for k, v in meta.items()}
        self._write(path, save({"data": arr}, metadata=body))

    def _write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # unique per machine, process and thread: writers on one shared (NFS) folder never
            # share a temporary file; the rename is atomic and equal keys hold equal content
            tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{threading.get_ident()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:  # a full disk costs speed, never the run
            log.warning("%s: cannot write %s (%s); going on without it", self.name, path, exc)
            return
        with self._lock:
            self._written += len(data)
            due = self._written > max(1 << 20, self.max_bytes // 100)
            if due:
                self._written = 0
        if due:
            self.trim()

    def _written_for(self, path: Path, meta: Mapping[str, Any], key: str, entry: str) -> bool:
        """True when the entry at ``path`` records the key and consumer it is read for; else a
        miss (the entry removed, so the clip is decoded again and written in its place): an
        entry of another clip with one warning, one of a LiSER that did not record them
        silently."""
        if meta.get("key") == key and meta.get("entry") == entry:
            return True
        self.misses += 1
        if meta.get("key") is not None:
            self.mismatched += 1
            log.warning(
                "%s: %s was written for %s of clip %s, not for this one: not used; %s",
                self.name, path, meta.get("entry"), str(meta.get("key"))[:16], self.redo,
            )
        self._discard(path)
        return False

    def _damaged(self, path: Path, why: str) -> None:
        self.damaged += 1
        log.warning("%s: %s is damaged (%s); %s", self.name, path, why, self.redo)
        self._discard(path)

    def _discard(self, path: Path) -> None:
        try:
            path.unlink()
        except OSError:
            pass

    def size(self) -> int:
        return sum(p.stat().st_size for p in self._entries())

    def _entries(self):
        """The entries LiSER wrote: ``<2 hex>/<64 hex key>-<entry>.safetensors|-bad<n>.json``,
        each in the folder of its key's first two characters. Anything else under ``root`` (a
        user's files, another tool's) is never counted, trimmed or deleted."""
        if not self.root.is_dir():
            return
        for sub in self.root.iterdir():
            if sub.is_dir() and _SHARD.fullmatch(sub.name):
                for p in sub.iterdir():
                    m = _ENTRY.fullmatch(p.name)
                    if m and m.group(1)[:2] == sub.name and p.is_file():
                        yield p

    def foreign(self, limit: int = 3) -> list[str]:
        """Up to ``limit`` names under ``root`` that are not this cache's layout (its two-hex
        folders of entries, the ``features`` folder of the feature cache, hidden files): a
        folder of other files is refused as a cache folder (the cache deletes what it trims)."""
        out: list[str] = []
        if not self.root.is_dir():
            return out
        for child in sorted(self.root.iterdir()):
            if child.name.startswith(".") or (child.is_dir() and child.name == "features"):
                continue
            if child.is_dir() and _SHARD.fullmatch(child.name):
                out += [str(p) for p in sorted(child.iterdir())
                        if not p.name.startswith(".") and not (_ENTRY.fullmatch(p.name) and p.name[:2] == child.name)]
            else:
                out.append(str(child))
            if len(out) >= limit:
                break
        return out[:limit]

    def trim(self) -> int:
        """Remove the least recently used entries until the folder is under ``LOW_WATER`` of
        ``max_bytes``; returns the bytes freed."""
        stats = []
        for p in self._entries():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            stats.append((st.st_mtime_ns, st.st_size, p))
        total = sum(s for _, s, _ in stats)
        if total <= self.max_bytes:
            return 0
        freed = 0
        for _, size, p in sorted(stats, key=lambda t: t[0]):
            if total - freed <= LOW_WATER * self.max_bytes:
                break
            self._discard(p)
            freed += size
        log.info("%s: %d MB freed in %s (limit %d MB)", self.name, freed >> 20, self.root, self.max_bytes >> 20)
        return freed

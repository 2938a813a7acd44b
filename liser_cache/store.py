"""The teacher-output store: each teacher labels each clip once, across runs.

A teacher's outputs (logits, optionally embeddings) are kept per *(teacher fingerprint, clip
key)*, in safetensors shards under ``root/<fingerprint>/``. A run asks which of its clips are
missing (:meth:`TeacherStore.missing`), labels only those through a
:meth:`TeacherStore.writer`, then loads them all (:meth:`TeacherStore.load`). See
``docs/store.md`` for the layout and its guarantees.

* :func:`teacher_fingerprint` hashes what defines a teacher's outputs: registry name and
  options, every parameter and buffer, label space, and the preprocessing (the sample rate the
  audio is resampled to, whether face frames are fed, and anything the caller adds).
* :func:`clip_key` hashes a clip's content (decoded samples, or the bytes of its file), never
  only its path.
* Shards are the source of truth. One is written under a temporary name, fsynced and renamed,
  so it is either absent or complete; ``index.json`` is only a cache of the shards' headers,
  checked against the files on every open. A crash at any point leaves a consistent store.

Example::

    >>> store = TeacherStore(tmp / "store", dtype="float16")  # doctest: +SKIP
    >>> fp = teacher_fingerprint(teacher, sample_rate=16000)  # doctest: +SKIP
    >>> keys = [clip_key(c) for c in clips]  # doctest: +SKIP
    >>> with store.writer(fp) as w:  # doctest: +SKIP
    ...     for i in store.missing(fp, keys):
    ...         out = teacher(batch_of(clips[i]))
    ...         w.add(keys[i], out.logits[0], out.embedding[0])
    >>> logits, embeddings = store.load(fp, keys)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from .files import atomic_write_bytes, atomic_write_json, umask_mode
from .identity import file_digest, stat_signature

log = logging.getLogger("liser.store")

#: Bumped when the fingerprint recipe, the clip-key recipe or the shard layout changes: a new
#: version never reuses outputs stored by an older one.
STORE_FORMAT = 2  # 2: shards name their teacher; runs key file-based clips by content and decoding
SHARD_GLOB = "shard-*.safetensors"
INDEX_NAME = "index.json"
META_NAME = "meta.json"

Dtype = Literal["float16", "float32"]
_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "float32": torch.float32}
_PRECISION = {"float16": 0, "float32": 1}  # an entry serves any request of equal or lower rank

#: A file whose change time is closer than this to the moment it was hashed or verified is
#: "racy" (git's term): a later write in the same timestamp tick would leave its stat unchanged,
#: so its stat is not trusted as a stand-in for its content. Generous, for coarse filesystems.
_RACY_NS = 2_000_000_000
#: Temporary shard files older than this are leftovers of a killed writer and are removed (a
#: live writer holds one only for the few milliseconds of a write + fsync).
_STALE_TMP_SECONDS = 3600.0
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: the store's folder of fitted teachers (liser_core.stages.teach), beside the fingerprints' folders
FITTED = "fitted"


# -- fingerprints -------------------------------------------------------------------------------
def teacher_meta(teacher: torch.nn.Module, *, sample_rate: int, extra: Mapping | None = None) -> dict:
    """What defines ``teacher``'s outputs, as a JSON-able dict, with its ``fingerprint``.

    Hashed (sha256 over canonical JSON, keys sorted): the store format, the registry name and
    options (``teacher.liser_spec``; the class's import path when it was not built through a
    registry), the label space, the modality, the preprocessing (``sample_rate`` the audio is
    resampled to, whether face frames are fed, ``extra``) and ``weights_sha256``, a hash of
    every parameter and buffer (names, dtypes, shapes, bytes; excluded backbone weights
    included, since they define the outputs too). ``card`` is kept for people, not hashed: a
    card's provenance may change while the weights, and so the outputs, do not.

    Example::

        >>> meta = teacher_meta(teacher, sample_rate=16000)  # doctest: +SKIP
        >>> meta["fingerprint"] == teacher_fingerprint(teacher, sample_rate=16000)  # doctest: +SKIP
        True
    """
    spec = getattr(teacher, "liser_spec", None)
    if spec is None:
        cls = type(teacher)
        spec = {"name": f"{cls.__module__}.{cls.__qualname__}", "options": None}
    label_space = getattr(teacher, "label_space", None)
    described = {
        "store_format": STORE_FORMAT,
        "teacher": {"name": spec["name"], "options": spec.get("options")},
        "label_space": label_space.to_dict() if hasattr(label_space, "to_dict") else label_space,
        "modality": getattr(teacher, "modality", None),
        "preprocessing": {
            "sample_rate": int(sample_rate),
            "frames": bool(getattr(teacher, "needs_frames", False)),
            "extra": dict(extra or {}),
        },
        "weights_sha256": weights_digest(teacher),
    }
    text = _canonical_json(described)  # also checks that everything is JSON-able
    card = getattr(teacher, "card", None)
    return {
        "fingerprint": hashlib.sha256(text.encode()).hexdigest(),
        **json.loads(text),
        "card": card.to_dict(content=False) if hasattr(card, "to_dict") else None,
    }


def teacher_fingerprint(teacher: torch.nn.Module, *, sample_rate: int, extra: Mapping | None = None) -> str:
    """The sha256 (hex) naming ``teacher``'s outputs in a store; see :func:`teacher_meta`.

    Deterministic across processes and machines of the same byte order: two teachers get the
    same fingerprint exactly when name, options, weights, label space and preprocessing agree.
    Code is not hashed: after changing a teacher's ``forward``, change ``extra`` (or
    :data:`STORE_FORMAT`) so that nothing stored before is reused.

    Example::

        >>> teacher_fingerprint(teacher, sample_rate=16000)  # doctest: +SKIP
        '3f1c...'
    """
    return teacher_meta(teacher, sample_rate=sample_rate, extra=extra)["fingerprint"]


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer of ``module``: sorted names, dtypes, shapes, bytes."""
    h = hashlib.sha256()
    tensors = {f"param:{n}": t for n, t in module.named_parameters(remove_duplicate=False)}
    tensors.update({f"buffer:{n}": t for n, t in module.named_buffers(remove_duplicate=False)})
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}\0{str(t.dtype)}\0{tuple(t.shape)}\0".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (tuple, set, frozenset)):
        return sorted(obj) if isinstance(obj, (set, frozenset)) else list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(
        f"cannot fingerprint a {type(obj).__name__} ({obj!r:.60}): teacher options and `extra` "
        "must be JSON values (str, number, bool, None, lists, dicts)"
    )


# -- clip keys ----------------------------------------------------------------------------------
def clip_key(clip, *, sources: Iterable[str | os.PathLike] = ()) -> str:
    """The sha256 (hex) of a clip's content, the key of its outputs in a store.

    * a loaded clip (``audio`` set): its samples as little-endian float32, their sample rate,
      and its frames' bytes, dtype and shape when it has frames;
    * an unloaded clip (``audio`` None, ``path`` set): the bytes of the file (streamed, never
      held in memory whole) and the clip's ``sample_rate``. How the corpus decodes the file is
      not part of the key: put decoding options in the fingerprint's ``extra``;
    * ``sources``: further files the clip is decoded from (e.g. the video its frames come
      from), hashed the same way.

    Never the path, the clip id or the label: the same bytes under two names have one key, and
    a file rewritten in place gets a new one. File hashes are cached in memory by (path, device,
    inode, size, mtime, ctime), so asking again for an unchanged file reads nothing; files
    changed within the last two seconds are not cached (their stat cannot vouch for them yet).

    A loaded and an unloaded copy of the same recording have different keys (samples vs file
    bytes): a corpus that switches between the two relabels once.

    Example::

        >>> from liser_core.data import Clip
        >>> clip_key(Clip("a", np.zeros(16000, np.float32), 16000, "spk1"))[:12]
        'ad93d77eff13'
    """
    h = hashlib.sha256(f"liser-clip/{STORE_FORMAT}\0".encode())
    if clip.audio is not None:
        audio = np.ascontiguousarray(clip.audio, dtype="<f4")
        h.update(f"audio\0{int(clip.sample_rate)}\0{audio.shape}\0".encode())
        h.update(memoryview(audio.reshape(-1).view(np.uint8)))
        if clip.frames is not None:
            frames = np.asarray(clip.frames)
            frames = np.ascontiguousarray(frames, dtype=frames.dtype.newbyteorder("<"))
            h.update(f"frames\0{frames.dtype.str}\0{frames.shape}\0".encode())
            h.update(memoryview(frames.reshape(-1).view(np.uint8)))
    elif clip.path:
        h.update(f"file\0{int(clip.sample_rate)}\0".encode())
        h.update(bytes.fromhex(file_digest(clip.path)))
    else:
        raise ValueError(f"clip {clip.clip_id}: neither loaded nor backed by a file; nothing to key it by")
    for src in sources:
        h.update(b"source\0" + bytes.fromhex(file_digest(src)))
    return h.hexdigest()


# -- the store ----------------------------------------------------------------------------------
class CorruptShardError(Exception):
    """A shard file that cannot be read back as written (truncated, altered, not ours)."""


@dataclass
class _Shard:
    """What the index knows of one shard file (its header, and the stat it was checked at)."""

    name: str  # file name in the fingerprint's folder
    keys: list[str]  # clip key of each row
    dtype: str  # float16 | float32
    classes: int  # logits width
    dim: int | None  # embedding width, None when the shard has no embeddings
    digest: str  # sha256 of keys + tensor bytes, also in the shard's own metadata
    stat: tuple  # (dev, ino, size, mtime_ns, ctime_ns) when verified
    verified_ns: int  # wall-clock time of the verification (or of the write)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("keys", "dtype", "classes", "dim", "digest", "verified_ns")} | {
            "stat": list(self.stat)
        }

    @classmethod
    def from_json(cls, name: str, d: Mapping) -> _Shard:
        return cls(
            name=name,
            keys=[str(k) for k in d["keys"]],
            dtype=str(d["dtype"]),
            classes=int(d["classes"]),
            dim=None if d["dim"] is None else int(d["dim"]),
            digest=str(d["digest"]),
            stat=tuple(int(x) for x in d["stat"]),
            verified_ns=int(d["verified_ns"]),
        )


@dataclass
class _State:
    """One fingerprint's shards as this process last saw them, and the key map built from them."""

    shards: dict[str, _Shard]
    entries: dict[str, list[tuple[str, int]]]  # key -> (shard, row), best first
    corrupt: dict[str, str]  # quarantined shard file -> reason


class TeacherStore:
    """Teacher outputs kept per (teacher fingerprint, clip key), in safetensors shards.

    ``dtype`` is the precision new outputs are written in and the least precision a stored
    output must have to count as present: a store opened with ``float32`` relabels clips that
    were only ever stored in ``float16``; one opened with ``float16`` uses either.

    Layout (see ``docs/store.md``)::

        root/<fingerprint>/meta.json                   what the teacher is (written once)
        root/<fingerprint>/shard-<time>-<pid>-<rand>.safetensors
        root/<fingerprint>/index.json                  cache of the shards' headers

    Example::

        >>> store = TeacherStore("~/.cache/liser/store")  # doctest: +SKIP
        >>> todo = store.missing(fp, keys)  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike, dtype: Dtype = "float32"):
        if dtype not in _DTYPES:
            raise ValueError(f"store dtype must be 'float16' or 'float32', not {dtype!r}")
        self.root = Path(root).expanduser()
        self.dtype: Dtype = dtype
        self._states: dict[str, _State] = {}

    def __repr__(self) -> str:
        return f"TeacherStore({str(self.root)!r}, dtype={self.dtype!r})"

    # -- queries --------------------------------------------------------------------------------
    def missing(self, fingerprint: str, keys: Sequence[str], *, embeddings: bool = False) -> list[int]:
        """Positions in ``keys`` of the clips with no stored output (at ``self.dtype`` precision
        or better; with an embedding too when ``embeddings``). Repeated keys repeat positions.

        Example::

            >>> store.missing(fp, ["k1", "k2", "k3"])  # doctest: +SKIP
            [1]
        """
        state = self._refresh(fingerprint)
        return [i for i, k in enumerate(keys) if self._pick(state, k, embeddings=embeddings) is None]

    def load(self, fingerprint: str, keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits (N, C), embeddings (N, D) or None)`` as float32, row i for ``keys[i]``.

        Only the shards holding requested keys are opened (memory-mapped), and of each only the
        row span needed is read. ``embeddings`` is None unless every requested clip has one.
        Raises ``KeyError`` naming the first key :meth:`missing` would report.

        Example::

            >>> logits, embeddings = store.load(fp, keys)  # doctest: +SKIP
        """
        for attempt in range(2):
            state = self._refresh(fingerprint)
            picks = []
            for i, k in enumerate(keys):
                pick = self._pick(state, k, embeddings=True) or self._pick(state, k, embeddings=False)
                if pick is None:
                    n = sum(1 for k2 in keys if self._pick(state, k2, embeddings=False) is None)
                    raise KeyError(
                        f"clip key {k!r} (position {i}) is not stored for teacher {fingerprint[:16]} in "
                        f"{self.root} at {self.dtype} precision ({n} of {len(keys)} requested keys missing)"
                    )
                picks.append(pick)
            try:
                out = self._read(fingerprint, state, picks)
            except CorruptShardError as exc:  # changed on disk since it was indexed: look again
                if attempt:
                    raise
                log.warning("%s; rescanning %s", exc, self._dir(fingerprint))
                self._states.pop(fingerprint, None)
                continue
            if self.dtype == "float32":
                return out
            # rows of a more precise copy read as this store would have written them: a recipe's
            # targets do not depend on what other recipes left in the store
            cast = tuple(None if t is None else t.to(_DTYPES[self.dtype]).float() for t in out)
            if not all(t is None or torch.isfinite(t).all() for t in cast):
                raise ValueError(f"{self._dir(fingerprint)}: stored outputs overflow {self.dtype} (|x| > 65504); "
                                 "use dtype='float32'")
            return cast
        raise AssertionError("unreachable")  # pragma: no cover

    def info(self, fingerprint: str) -> dict[str, Any]:
        """Counts for one fingerprint: clips, rows, shards, bytes, rows per dtype, rows with
        embeddings, quarantined shards (file -> reason) and leftover temporary files, and its
        ``meta.json`` (None if no writer was given one)."""
        state = self._refresh(fingerprint)
        folder = self._dir(fingerprint)
        size = 0
        for name in state.shards:
            try:
                size += (folder / name).stat().st_size
            except FileNotFoundError:
                pass
        by_dtype: dict[str, int] = {}
        for s in state.shards.values():
            by_dtype[s.dtype] = by_dtype.get(s.dtype, 0) + len(s.keys)
        meta_path = folder / META_NAME
        try:
            meta = json.loads(meta_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            meta = None
        return {
            "fingerprint": fingerprint,
            "clips": len(state.entries),
            "rows": sum(len(s.keys) for s in state.shards.values()),
            "shards": len(state.shards),
            "bytes": size,
            "dtypes": by_dtype,
            "with_embeddings": sum(len(s.keys) for s in state.shards.values() if s.dim is not None),
            "corrupt": {
                **{p.name.removesuffix(".corrupt"): "quarantined earlier" for p in folder.glob("*.corrupt")},
                **state.corrupt,
            },
            "tmp_files": len(list(folder.glob(".*.tmp"))),
            "meta": meta,
        }

    def fingerprints(self) -> list[str]:
        """The fingerprints with a folder in this store (not its folder of fitted teachers)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and p.name != FITTED and _NAME_RE.fullmatch(p.name))

    def stats(self) -> dict[str, int]:
        """Totals over the whole store: fingerprints, clips, shards, bytes."""
        infos = [self.info(fp) for fp in self.fingerprints()]
        return {
            "fingerprints": len(infos),
            "clips": sum(i["clips"] for i in infos),
            "shards": sum(i["shards"] for i in infos),
            "bytes": sum(i["bytes"] for i in infos),
        }

    # -- writing --------------------------------------------------------------------------------
    def writer(self, fingerprint: str, *, shard_size: int = 1024, meta: Mapping | None = None) -> ShardWriter:
        """A :class:`ShardWriter` adding outputs for ``fingerprint``, ``shard_size`` rows a shard.

        ``meta`` (usually :func:`teacher_meta`) is saved as ``meta.json`` if the fingerprint has
        none yet; it is written once, by whichever writer comes first.
        """
        folder = self._dir(fingerprint)
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(folder)
        if meta is not None:
            if meta.get("fingerprint", fingerprint) != fingerprint:
                raise ValueError(f"meta describes teacher {meta['fingerprint']!r}, not {fingerprint!r}")
            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            record = {**meta, "fingerprint": fingerprint, "created": created, "dtype": self.dtype}
            _write_once(folder / META_NAME, record)
        return ShardWriter(self, fingerprint, shard_size)

    # -- internals ------------------------------------------------------------------------------
    def _dir(self, fingerprint: str) -> Path:
        if not isinstance(fingerprint, str) or not _NAME_RE.fullmatch(fingerprint):
            raise ValueError(f"not a fingerprint: {fingerprint!r}")
        return self.root / fingerprint

    def _pick(self, state: _State, key: str, *, embeddings: bool) -> tuple[str, int] | None:
        need = _PRECISION[self.dtype]
        for name, row in state.entries.get(key, ()):
            shard = state.shards[name]
            if _PRECISION[shard.dtype] >= need and (shard.dim is not None or not embeddings):
                return name, row
        return None

    def _refresh(self, fingerprint: str) -> _State:
        """Bring this process's view of a fingerprint in line with its folder.

        Every ``shard-*.safetensors`` file counts, and nothing else (temporary files are dotted
        and end in ``.tmp``). A shard is trusted without reading when its stat matches what this
        process saw, or what ``index.json`` recorded at a verification made well after the
        file's last change; otherwise it is read whole and its digest checked. A shard that
        fails is renamed ``*.corrupt`` and its clips count as missing.
        """
        folder = self._dir(fingerprint)
        state = self._states.setdefault(fingerprint, _State({}, {}, {}))
        try:
            names = sorted(p.name for p in folder.glob(SHARD_GLOB))
        except FileNotFoundError:
            names = []
        old = state.shards
        shards: dict[str, _Shard] = {}
        index: dict[str, _Shard] | None = None
        changed = False
        for name in names:
            try:
                sig = stat_signature((folder / name).stat())
            except FileNotFoundError:  # quarantined by another process meanwhile
                continue
            known = old.get(name)
            if known is not None and known.stat == sig:
                shards[name] = known
                continue
            if index is None:
                index = self._read_index(folder)
            cached = index.get(name)
            if (
                cached is not None and cached.stat == sig and sig[4] + _RACY_NS <= cached.verified_ns
                and _header_agrees(folder / name, cached, fingerprint)
            ):
                shards[name] = cached
                continue
            changed = True
            try:
                shards[name] = _verify_shard(folder / name, sig, fingerprint)
            except CorruptShardError as exc:
                state.corrupt[name] = str(exc)
                log.warning("ignoring corrupt shard %s: %s (its clips will be relabeled)", folder / name, exc)
                try:
                    os.replace(folder / name, folder / f"{name}.corrupt")
                except FileNotFoundError:
                    pass
        if shards.keys() != old.keys() or changed:
            state.shards = shards
            state.entries = _key_map(shards)
            if changed or (index is not None and index.keys() != shards.keys()):
                self._write_index(folder, shards)
        return state

    def _read_index(self, folder: Path) -> dict[str, _Shard]:
        path = folder / INDEX_NAME
        try:
            raw = json.loads(path.read_text())
            if raw.get("store_format") != STORE_FORMAT:
                return {}
            return {name: _Shard.from_json(name, d) for name, d in raw["shards"].items()}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable %s (%s); rebuilding it from the shards", path, exc)
            return {}

    def _write_index(self, folder: Path, shards: Mapping[str, _Shard]) -> None:
        # Best effort: the index only saves reading shard headers again. Concurrent writers may
        # overwrite each other's index (each one whole, by atomic rename); the shards decide.
        body = {"store_format": STORE_FORMAT, "shards": {n: s.to_json() for n, s in sorted(shards.items())}}
        try:
            atomic_write_json(folder / INDEX_NAME, body)
        except OSError as exc:
            log.warning("could not update %s: %s", folder / INDEX_NAME, exc)

    def _added(self, fingerprint: str, shard: _Shard) -> None:
        """Record a shard this process has just written (no need to read it back)."""
        state = self._states.setdefault(fingerprint, _State({}, {}, {}))
        state.shards = {**state.shards, shard.name: shard}
        for row, key in enumerate(shard.keys):
            entries = state.entries.setdefault(key, [])
            entries.append((shard.name, row))
            if len(entries) > 1:
                entries.sort(key=lambda e: _rank(state.shards[e[0]]))

    def _read(self, fingerprint: str, state: _State, picks: list[tuple[str, int]]):
        folder = self._dir(fingerprint)
        by_shard: dict[str, list[int]] = {}
        for pos, (name, _) in enumerate(picks):
            by_shard.setdefault(name, []).append(pos)
        shards = [state.shards[n] for n in by_shard]
        widths = {s.classes for s in shards}
        if len(widths) > 1:
            raise ValueError(f"{folder}: shards disagree on the number of classes {sorted(widths)}")
        dims = {s.dim for s in shards}
        with_emb = None not in dims
        if with_emb and len(dims) > 1:
            raise ValueError(f"{folder}: shards disagree on the embedding size {sorted(dims)}")
        n = len(picks)
        logits = torch.empty(n, widths.pop() if widths else 0)
        embs = torch.empty(n, dims.pop()) if with_emb and dims else None
        for name, positions in by_shard.items():
            rows = torch.tensor([picks[p][1] for p in positions])
            lo_row, hi_row = int(rows.min()), int(rows.max()) + 1
            try:
                with safe_open(str(folder / name), framework="pt") as f:
                    meta = f.metadata() or {}
                    if meta.get("digest") != state.shards[name].digest or meta.get("fingerprint") != fingerprint:
                        raise CorruptShardError(f"{folder / name} changed since it was indexed")
                    if [json.loads(meta["keys"])[r] for r in rows.tolist()] != [state.shards[name].keys[r] for r in rows.tolist()]:
                        raise CorruptShardError(f"{folder / name}: its rows are not the keys its index says")
                    logits[positions] = f.get_slice("logits")[lo_row:hi_row][rows - lo_row].float()
                    if embs is not None:
                        embs[positions] = f.get_slice("embeddings")[lo_row:hi_row][rows - lo_row].float()
            except (SafetensorError, OSError) as exc:
                raise CorruptShardError(f"{folder / name} can no longer be read ({exc})") from exc
        return logits, embs


class ShardWriter:
    """Adds one teacher's outputs to a store, ``shard_size`` rows per shard file.

    Rows are kept in memory until a shard is full, then written whole: to a temporary dotted
    name, fsynced, renamed to ``shard-<time>-<pid>-<rand>.safetensors`` (unique per process
    and call), and the folder fsynced. Leaving the ``with`` block, normally or by an exception,
    writes the rows added so far (each is a complete output); a killed process loses only the
    rows of its unfinished shard.

    Example::

        >>> with store.writer(fp, meta=teacher_meta(teacher, sample_rate=16000)) as w:  # doctest: +SKIP
        ...     w.add(key, logits, embedding)
    """

    def __init__(self, store: TeacherStore, fingerprint: str, shard_size: int = 1024):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.store, self.fingerprint, self.shard_size = store, fingerprint, int(shard_size)
        self.folder = store._dir(fingerprint)
        self.dtype = _DTYPES[store.dtype]
        self.shards_written: list[str] = []
        self.rows_written = 0
        self._keys: list[str] = []
        self._logits: list[torch.Tensor] = []
        self._embs: list[torch.Tensor] = []
        self._pending: set[str] = set()
        self._with_emb: bool | None = None
        state = store._refresh(fingerprint)
        widths = {s.classes for s in state.shards.values()}
        self._classes: int | None = widths.pop() if len(widths) == 1 else None
        self._closed = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # keep the complete rows computed before the failure
            self.close()
        except Exception as inner:  # noqa: BLE001 - never mask the original error
            log.warning(
                "could not save %d pending row(s) after %s: %s", len(self._keys), exc_type.__name__, inner
            )

    def add(self, key: str, logits: torch.Tensor, embedding: torch.Tensor | None = None) -> bool:
        """Queue one clip's outputs: ``logits`` (C,), ``embedding`` (D,) or None.

        Returns False (and stores nothing) when ``key`` is already queued in this writer. Raises
        ``ValueError`` for a wrong shape, a mix of rows with and without embeddings, or values
        that are not finite in the store's dtype (float16 overflows beyond ±65504).
        """
        if self._closed:
            raise RuntimeError("this writer is closed")
        if not isinstance(key, str) or not key:
            raise ValueError(f"clip key must be a non-empty string, got {key!r}")
        if key in self._pending:
            return False
        lo = self._row(key, "logits", logits)
        if self._classes is None:
            self._classes = lo.numel()
        elif lo.numel() != self._classes:
            raise ValueError(f"{key}: logits have {lo.numel()} classes; this teacher's have {self._classes}")
        has_emb = embedding is not None
        if self._with_emb is None:
            self._with_emb = has_emb
        elif has_emb != self._with_emb:
            must = "have" if self._with_emb else "lack"
            raise ValueError(f"{key}: every row of one writer must {must} an embedding")
        if has_emb:
            em = self._row(key, "embedding", embedding)
            if self._embs and em.numel() != self._embs[0].numel():
                size, first = em.numel(), self._embs[0].numel()
                raise ValueError(f"{key}: embedding has size {size}, earlier rows {first}")
            self._embs.append(em)
        self._keys.append(key)
        self._logits.append(lo)
        self._pending.add(key)
        if len(self._keys) >= self.shard_size:
            self.flush()
        return True

    def add_many(
        self, keys: Sequence[str], logits: torch.Tensor, embeddings: torch.Tensor | None = None
    ) -> int:
        """:meth:`add` for a batch: ``logits`` (B, C), ``embeddings`` (B, D) or None. Returns rows queued."""
        logits = logits.detach().cpu()
        embeddings = None if embeddings is None else embeddings.detach().cpu()
        return sum(
            self.add(k, logits[i], None if embeddings is None else embeddings[i]) for i, k in enumerate(keys)
        )

    def _row(self, key: str, what: str, value) -> torch.Tensor:
        t = torch.as_tensor(value).detach().to("cpu", torch.float32)
        if t.ndim != 1 or t.numel() == 0:
            shape = tuple(t.shape)
            raise ValueError(f"{key}: {what} must be one non-empty vector per clip, got shape {shape}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{key}: {what} is not finite (NaN or inf); bad outputs are never stored")
        cast = t.to(self.dtype)
        if not torch.isfinite(cast).all():
            raise ValueError(f"{key}: {what} overflows {self.store.dtype} (|x| > 65504); use dtype='float32'")
        return cast

    def flush(self) -> str | None:
        """Write the queued rows as one shard now; returns its file name (None if nothing queued)."""
        if not self._keys:
            return None
        keys, tensors = list(self._keys), {"logits": torch.stack(self._logits)}
        if self._with_emb:
            tensors["embeddings"] = torch.stack(self._embs)
        digest = _shard_digest(keys, tensors)
        metadata = {"liser_store": str(STORE_FORMAT), "keys": json.dumps(keys), "digest": digest,
                    "fingerprint": self.fingerprint}
        data = safetensors_bytes(tensors, metadata=metadata)
        name = f"shard-{time.time_ns():016x}-{os.getpid()}-{secrets.token_hex(4)}.safetensors"
        final = self.folder / name
        atomic_write_bytes(final, data, sync_folder=True)
        shard = _Shard(
            name=name,
            keys=keys,
            dtype=self.store.dtype,
            classes=tensors["logits"].shape[1],
            dim=tensors["embeddings"].shape[1] if self._with_emb else None,
            digest=digest,
            stat=stat_signature(final.stat()),
            verified_ns=time.time_ns(),
        )
        self.store._added(self.fingerprint, shard)
        self.shards_written.append(name)
        self.rows_written += len(keys)
        self._keys, self._logits, self._embs, self._pending = [], [], [], set()
        return name

    def close(self) -> None:
        """Write any queued rows and record the new shards in ``index.json``."""
        if self._closed:
            return
        self._closed = True
        self.flush()
        if self.shards_written:
            state = self.store._refresh(self.fingerprint)
            self.store._write_index(self.folder, state.shards)


# -- file helpers -------------------------------------------------------------------------------
def _shard_digest(keys: Sequence[str], tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(list(keys)).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _header_agrees(path: Path, cached: _Shard, fingerprint: str) -> bool:
    """The shard's own header (no tensors read) says what ``index.json`` says of it: the same
    keys in the same rows, the same digest, this teacher's fingerprint. The index is a cache;
    an edited or swapped one is caught here and the shard read whole instead."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return (
            meta.get("digest") == cached.digest and meta.get("fingerprint") == fingerprint
            and json.loads(meta.get("keys", "null")) == cached.keys
        )
    except (SafetensorError, OSError, ValueError):
        return False


def _verify_shard(path: Path, sig: tuple, fingerprint: str | None = None) -> _Shard:
    """Read a whole shard and check it against its own digest (and, given one, the teacher
    fingerprint it was written for); raise CorruptShardError if not."""
    verified_ns = time.time_ns()
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            names = set(f.keys())
            tensors = {n: f.get_tensor(n) for n in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CorruptShardError(f"unreadable safetensors file ({exc})") from exc
    if meta.get("liser_store") != str(STORE_FORMAT):
        raise CorruptShardError(f"not a LiSER store shard of format {STORE_FORMAT} (metadata {sorted(meta)})")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise CorruptShardError(f"written for teacher {str(meta.get('fingerprint'))[:16]}, not this folder's {fingerprint[:16]}")
    try:
        keys = json.loads(meta["keys"])
    except (KeyError, ValueError) as exc:
        raise CorruptShardError(f"keys missing or unreadable in its metadata ({exc})") from exc
    if not (isinstance(keys, list) and all(isinstance(k, str) and k for k in keys)):
        raise CorruptShardError("its keys are not a list of strings")
    logits, embs = tensors.get("logits"), tensors.get("embeddings")
    if logits is None or names - {"logits", "embeddings"}:
        raise CorruptShardError(f"unexpected tensors {sorted(names)}")
    dtype = next((n for n, d in _DTYPES.items() if d == logits.dtype), None)
    if dtype is None or logits.ndim != 2 or logits.shape[0] != len(keys):
        raise CorruptShardError(f"logits {logits.dtype} {tuple(logits.shape)} do not fit {len(keys)} keys")
    if embs is not None and (embs.dtype != logits.dtype or embs.ndim != 2 or embs.shape[0] != len(keys)):
        raise CorruptShardError(f"embeddings {embs.dtype} {tuple(embs.shape)} do not fit the logits")
    if _shard_digest(keys, tensors) != meta.get("digest"):
        raise CorruptShardError("content does not match its digest")
    return _Shard(
        name=path.name,
        keys=keys,
        dtype=dtype,
        classes=logits.shape[1],
        dim=None if embs is None else embs.shape[1],
        digest=meta["digest"],
        stat=sig,
        verified_ns=verified_ns,
    )


def _rank(shard: _Shard) -> tuple:
    """Order of preference between two stored outputs of one clip: higher precision, then with
    embeddings, then the earliest shard (names start with their write time), so that a later
    duplicate never displaces what earlier loads returned."""
    return (-_PRECISION[shard.dtype], shard.dim is None, shard.name)


def _key_map(shards: Mapping[str, _Shard]) -> dict[str, list[tuple[str, int]]]:
    """key -> its (shard, row)s, best first (see :func:`_rank`)."""
    entries: dict[str, list[tuple[tuple, str, int]]] = {}
    for name, s in shards.items():
        rank = _rank(s)
        for row, key in enumerate(s.keys):
            entries.setdefault(key, []).append((rank, name, row))
    return {k: [(n, r) for _, n, r in sorted(v)] for k, v in entries.items()}


def _write_once(path: Path, obj: Any) -> bool:
    """Create ``path`` with ``obj`` as JSON unless it exists; atomic even between processes."""
    if path.exists():
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2, default=_jsonable) + "\n")
            f.flush()
            os.fchmod(f.fileno(), umask_mode())
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another writer got there first
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _remove_stale_tmp(folder: Path) -> None:
    cutoff = time.time() - _STALE_TMP_SECONDS
    for tmp in folder.glob(".*.tmp"):  # shards, index and meta being written
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                log.info("removed %s, left by a writer that was stopped", tmp)
        except FileNotFoundError:
            pass

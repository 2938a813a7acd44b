"""Identity by content: what a clip *is*, independent of its name, path or split.

Several guards and caches need to know whether two clips are the same recording: the teacher
store (outputs keyed by content), the duplicate guard (a copy of a test clip in the unlabeled
pool), the fit-set record of a teacher (which clips it was fitted on). They all ask this module.

* :func:`file_digest` -- sha256 of a file's bytes. Remembered per file by its stat signature
  (device, inode, size, mtime, ctime), in memory and in a small SQLite table under the LiSER
  cache folder, so a corpus of thousands of files is hashed once, not at every run. A file
  changed within the last two seconds is not remembered (its stat cannot vouch for it yet:
  git's "racy" rule), and a cache that cannot be opened is simply not used.
* :func:`array_digest` -- sha256 of samples held in memory (generated corpora).
* :func:`clip_digests` -- a clip's content digests: one per file it is decoded from (its audio
  file, and the video its frames come from, when the corpus says so through
  ``source_files(clip)``), or of its samples when it has no file. Two clips are duplicates when
  they share a digest.

Example::

    >>> from liser_core.data import Clip
    >>> clip = Clip("a", np.zeros(4, np.float32), 16000, "spk")
    >>> clip_digests(clip)[0][:12]
    'bdafca5cb20c'
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("liser.identity")

#: A file whose change time is closer than this to the moment it was hashed is not remembered.
RACY_NS = 2_000_000_000
CACHE_ENV = "LISER_CACHE_DIR"
_MEMORY_LIMIT = 500_000


def cache_dir() -> Path:
    """LiSER's cache folder: ``$LISER_CACHE_DIR``, else ``$XDG_CACHE_HOME/liser`` or
    ``~/.cache/liser``. Everything in it can be deleted at any time."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "liser"


def stat_signature(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _DigestCache:
    """path -> (stat signature, sha256), in memory and in ``cache_dir()/digests.sqlite3`` (each
    row with a check over its path, signature and digest: :func:`_row_check`)."""

    def __init__(self):
        self._memory: dict[str, tuple[tuple, str]] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._db_path: Path | None = None
        self._pid = os.getpid()

    def _conn(self) -> sqlite3.Connection | None:
        path = cache_dir() / "digests.sqlite3"
        if self._pid != os.getpid():  # a forked worker opens its own connection
            self._db, self._db_path, self._pid = None, None, os.getpid()
        if self._db_path == path:
            return self._db
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, sig TEXT NOT NULL, sha256 TEXT NOT NULL)"
            )
        except (sqlite3.Error, OSError) as exc:
            log.warning("digest cache %s cannot be used (%s): files are hashed without it (the file is kept; "
                        "remove it to start a new cache)", path, exc)
            self._db, self._db_path = None, path
            return None
        self._db, self._db_path = db, path
        return db

    def get_many(self, sigs: dict[str, tuple]) -> dict[str, str]:
        """The remembered digests of those of ``sigs`` (path -> stat signature) still valid."""
        out, ask = {}, []
        for path, sig in sigs.items():
            hit = self._memory.get(path)
            if hit is not None and hit[0] == sig:
                out[path] = hit[1]
            else:
                ask.append(path)
        if not ask:
            return out
        with self._lock:
            db = self._conn()
            if db is None:
                return out
            try:
                for i in range(0, len(ask), 500):
                    chunk = ask[i : i + 500]
                    q = f"SELECT path, sig, sha256 FROM files WHERE path IN ({','.join('?' * len(chunk))})"
                    for path, sig_col, digest in db.execute(q, chunk):
                        if not all(isinstance(x, str) for x in (path, sig_col, digest)) or path not in sigs:
                            log.warning("digest cache %s: a damaged row (%s) is not read: its file is hashed "
                                        "again", self._db_path, path if isinstance(path, str) else "unreadable path")
                            continue
                        sig_text, sep, check = sig_col.partition("|")
                        if sig_text != _sig_text(sigs[path]) or not sep:
                            continue  # the file changed, or a row of an older version: hashed again
                        if check != _row_check(path, sig_text, digest):  # edited or damaged: never trusted
                            log.warning("digest cache %s: the row of %s does not match its check (edited or damaged): "
                                        "the file is hashed again", self._db_path, path)
                            continue
                        out[path] = digest
                        self._remember(path, sigs[path], digest)
            except sqlite3.Error as exc:  # a file that is no database, or damaged pages: hashed without it
                if not getattr(self, "_said", False):
                    self._said = True
                    log.warning("digest cache %s cannot be read (%s): files are hashed again (the file is kept; "
                                "remove it to start a new cache)", self._db_path, exc)
        return out

    def put_many(self, entries: list[tuple[str, tuple, str]]) -> None:
        for path, sig, digest in entries:
            self._remember(path, sig, digest)
        if not entries:
            return
        with self._lock:
            db = self._conn()
            if db is None:
                return
            try:
                with db:  # one transaction
                    db.execute("BEGIN")
                    db.executemany(
                        "INSERT OR REPLACE INTO files VALUES (?, ?, ?)",
                        [(p, f"{_sig_text(s)}|{_row_check(p, _sig_text(s), d)}", d) for p, s, d in entries],
                    )
            except sqlite3.Error as exc:
                log.debug("digest cache write failed (%s)", exc)

    def _remember(self, path: str, sig: tuple, digest: str) -> None:
        if len(self._memory) >= _MEMORY_LIMIT:
            self._memory.clear()
        self._memory[path] = (sig, digest)


def _sig_text(sig: tuple) -> str:
    return ":".join(str(int(x)) for x in sig)


def _row_check(*fields: str) -> str:
    """A row's check: a row edited by hand (a digest copied onto another file's row) or damaged
    no longer matches it (not a defence against someone who recomputes it)."""
    return hashlib.sha256("\0".join(fields).encode()).hexdigest()[:16]


_CACHE = _DigestCache()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of the bytes of ``path``, remembered while the file is unchanged.

    Example::

        >>> file_digest("recipes/synth_kd.yaml")  # doctest: +SKIP
        '5be1...'
    """
    path = os.path.abspath(os.fspath(path))
    return file_digests([path])[path]


def file_digests(paths: Sequence[str | os.PathLike], *, workers: int = 1, strict: bool = True) -> dict[str, str]:
    """:func:`file_digest` of many files at once (one look-up and one write of the cache),
    hashing what is not remembered on ``workers`` threads. Keys are absolute paths. With
    ``strict=False`` a file that cannot be read, or is empty, gets a stand-in digest no
    content has (unique to its path) instead of an error: such a clip is reported as bad when
    it is loaded, and must neither stop the guards that ask first nor equal every other
    empty file."""
    sigs: dict[str, tuple] = {}
    out: dict[str, str] = {}
    for p in paths:
        path = os.path.abspath(os.fspath(p))
        try:
            sigs[path] = stat_signature(os.stat(path))
        except OSError:
            if strict:
                raise
            out[path] = _stand_in("unreadable", path)
            continue
        if not strict and sigs[path][2] == 0:
            out[path] = _stand_in("empty", path)
            del sigs[path]
    out |= _CACHE.get_many(sigs)
    todo = [p for p in sigs if p not in out]
    started = time.time_ns()

    def one(path: str) -> tuple[str, str | None]:
        try:
            return path, _hash_file(path)
        except OSError:
            if strict:
                raise
            return path, None

    if workers > 1 and len(todo) > 8:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as ex:
            hashed = list(ex.map(one, todo))
    else:
        hashed = [one(p) for p in todo]
    keep = []
    for path, digest in hashed:
        if digest is None:
            out[path] = _stand_in("unreadable", path)
            continue
        out[path] = digest
        sig = sigs[path]
        # remembered only if the file did not change while it was read, and is not racily new
        try:
            unchanged = stat_signature(os.stat(path)) == sig
        except OSError:
            unchanged = False
        if unchanged and max(sig[3], sig[4]) + RACY_NS <= started:
            keep.append((path, sig, digest))
    _CACHE.put_many(keep)
    return out


def _stand_in(what: str, path: str) -> str:
    return f"{what}:" + hashlib.sha256(path.encode()).hexdigest()


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def array_digest(array: np.ndarray) -> str:
    """sha256 (hex) of an array's values (little-endian float32 for audio), shape and dtype."""
    a = np.ascontiguousarray(array)
    if a.dtype.kind == "f":
        a = np.ascontiguousarray(a, dtype="<f4")
    h = hashlib.sha256(f"{a.dtype.str}\0{a.shape}\0".encode())
    h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.hexdigest()


def clip_files(clip, corpus=None) -> list[str]:
    """The files ``clip`` is decoded from: ``corpus.source_files(clip)`` when the corpus has
    that method, else the clip's own ``path``; empty for clips held in memory."""
    files = getattr(corpus, "source_files", None)
    if files is not None:
        out = [f for f in files(clip) if f]
        if out:
            return list(dict.fromkeys(os.fspath(f) for f in out))
    return [clip.path] if clip.path else []


def clip_digests(clip, corpus=None) -> tuple[str, ...]:
    """A clip's content digests: one per source file, or one of its samples (see module doc)."""
    return digests_of([clip], corpus)[0]


def digests_of(clips: Sequence, corpus=None, *, workers: int = 4, memo: dict[str, str] | None = None
               ) -> list[tuple[str, ...]]:
    """:func:`clip_digests` of many clips: the files of all of them looked up in the cache at
    once, the others hashed on ``workers`` threads (hashlib and file reads release the GIL).
    ``memo`` (absolute path -> digest), shared by calls that list the same files within one
    short task (a grid's plan lists a corpus per fold and seed), spares looking each file up
    again."""
    files = [clip_files(c, corpus) for c in clips]
    wanted = [f for fs in files for f in fs]
    if memo is None:
        known = file_digests(wanted, workers=workers, strict=False)
    else:
        memo.update(file_digests([f for f in wanted if os.path.abspath(f) not in memo], workers=workers, strict=False))
        known = memo
    out = []
    for clip, fs in zip(clips, files):
        if fs:
            out.append(tuple(known[os.path.abspath(f)] for f in fs))
        elif clip.audio is not None:
            out.append((array_digest(clip.audio),))
        else:
            raise ValueError(f"clip {clip.clip_id}: neither loaded nor backed by a file; nothing to identify it by")
    return out

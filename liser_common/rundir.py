"""Run directories: what LiSER may write, replace or remove there, and who holds one.

* **Only LiSER's own folders.** A run directory is LiSER's when it holds ``liser-run.json``
  (written first, when a run claims an empty or new folder; folders of runs older than this
  marker are recognised by ``state/run.json``). ``liser run`` refuses a folder that is not empty
  and not LiSER's, so it never writes among someone else's files.
* **Only LiSER's own files.** When a run starts afresh in its folder it removes only the state
  entries LiSER creates (:data:`STATE_ENTRIES`), never anything else in ``state/``; a component
  folder it replaces keeps whatever files besides the component someone put there.
* **One process at a time.** :class:`RunLock` holds an exclusive ``flock`` on
  ``<run_dir>/.liser.lock`` (pid, host and start time inside, for the message) while a run goes;
  a second ``liser run`` on the folder is refused naming the holder. The kernel releases the
  lock when the process dies, so a killed run leaves no stale lock.
* **Paths stay inside.** :func:`safe_name` checks a name before it becomes a path segment
  (a teacher called ``../../evil`` writes nowhere), and :func:`inside` that a path is under its
  root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

from .errors import UsageError

MARKER = "liser-run.json"
LOCK = ".liser.lock"
#: What LiSER itself creates in ``state/``: a fresh start removes these and nothing else.
STATE_ENTRIES = ("run.json", "recipe.yaml", "label", "train", "store")
#: Component and file names that may become path segments.
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")


def safe_name(name: str, what: str = "name") -> str:
    """``name`` if it can be a path segment (letters, digits, ``_ . + -``; no ``..``)."""
    if not isinstance(name, str) or not _SAFE.fullmatch(name) or ".." in name:
        raise UsageError(f"{what} {name!r} cannot name a file: use letters, digits and _ . + - (no '..', no '/')")
    return name


def inside(root: Path, path: Path) -> Path:
    """``path``, checked to resolve inside ``root`` (symlinks followed)."""
    r, p = Path(root).resolve(), Path(path).resolve()
    if p != r and r not in p.parents:
        raise UsageError(f"{path} is outside {root}: LiSER writes only inside its run directory")
    return path


def is_run_dir(path: Path) -> bool:
    return (path / MARKER).is_file() or (path / "state" / "run.json").is_file()


def check_claim(path: Path) -> None:
    """Refuse a folder LiSER may not use: a file, or a non-empty folder that is not a run's."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"run_dir {path} is a file, not a folder")
    if path.is_dir() and not is_run_dir(path) and any(p.name != LOCK for p in path.iterdir()):
        raise UsageError(
            f"run_dir {path} is not empty and is not a LiSER run directory: LiSER does not write among "
            "other files; choose an empty or new folder"
        )


def claim(path: Path, fingerprint: str) -> None:
    """Make ``path`` a run directory (``liser-run.json``), after :func:`check_claim`."""
    from liser_cache.files import atomic_write_json

    check_claim(path)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / MARKER
    if not marker.is_file():
        atomic_write_json(marker, {"liser_run": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "recipe_fingerprint": fingerprint})


def clear_state(state_dir: Path) -> None:
    """Remove what LiSER put in ``state/`` (:data:`STATE_ENTRIES`); leave anything else."""
    for name in STATE_ENTRIES:
        p = state_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def move_aside(path: Path) -> Path:
    """Rename a run directory to ``<name>.replaced-<time>`` (``--overwrite``: nothing deleted)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
        n += 1
    path.rename(target)
    return target


class RunLock:
    """An exclusive lock on a run directory for this process's lifetime (see module doc)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (OSError, ValueError):
                holder = {}
            os.close(fd)
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started', '?')}"
            raise UsageError(f"run_dir {self.path.parent} is in use by another liser run ({who}); wait for it or choose another run_dir") from None
        self._fd = fd

    def announce(self) -> None:
        """Write who holds the lock into it (for the message a second process gets); called
        once the run goes ahead, so a refused run leaves the file as it found it."""
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, info.encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

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
* **Files a user may edit are written once.** :func:`write_editable` (model cards) records the
  SHA-256 of what LiSER wrote in ``<run_dir>/.liser-written.json``; a file changed since then,
  or one LiSER has no record of, is kept, and the new version goes beside it
  (``README.liser-new.md``) with a line saying so.
* **Room to write, checked first.** :func:`check_writable` and :func:`check_free` refuse a
  read-only or full run directory, store or cache before any work, in one line naming the path.
* **A run's records are its own.** :func:`run_recipe` reads ``config.yaml`` (the recipe a card,
  a summary or a quantization's test split is built from) only where it agrees with the recipe
  the engine recorded in ``state/run.json`` when the run started; a hand edit since is refused
  naming the keys (:func:`recipe_edits`), so no artifact describes a recipe the run did not run.
* **Records are checked.** A run's ``metrics.json`` (its scores) is recorded in
  ``.liser-written.json`` as written (:func:`record_written`); summaries and model cards refuse
  one changed since (:func:`changed_since_written`).
* **Paths stay inside.** :func:`safe_name` checks a name before it becomes a path segment
  (a teacher called ``../../evil`` writes nowhere), and :func:`inside` that a path is under its
  root.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import UsageError

MARKER = "liser-run.json"
LOCK = ".liser.lock"
#: what LiSER wrote of the files a user may edit: relative path -> sha256 of the bytes
WRITTEN = ".liser-written.json"
#: What LiSER itself creates in ``state/``: a fresh start removes these and nothing else.
STATE_ENTRIES = ("run.json", "recipe.yaml", "label", "train", "store")
#: Component and file names that may become path segments.
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")


def safe_name(name: str, what: str = "name") -> str:
    """``name`` if it can be a path segment (letters, digits, ``_ . + -``; no ``..``)."""
    if not isinstance(name, str) or not _SAFE.fullmatch(name) or ".." in name:
        raise UsageError(f"{what} {name!r} cannot name a file: use letters, digits and _ . + - (no '..', no '/')")
    return name


def first_party_plugins() -> set[str]:
    """Entry-point names of LiSER's own plugins (read from the installed metadata, nothing imported)."""
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group="liser") if ep.value.startswith("liser_plugins")}


def recipe_edits(run_dir: Path, cfg: Any) -> list[str]:
    """Keys where ``cfg`` (a run's ``config.yaml``, as read) differs from the recipe its engine
    recorded in ``state/run.json``; [] when they agree or no record exists (runs older than the
    record). First-party components compare bare: either side may name them ``losses:kl``."""
    from .provenance import comparable, diff_keys

    try:
        recorded = json.loads((Path(run_dir) / "state" / "run.json").read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(recorded, dict) or not isinstance(cfg, dict):
        return []
    ours = first_party_plugins()

    def bare(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: bare(v) for k, v in node.items()}
        if isinstance(node, list):
            return [bare(v) for v in node]
        if isinstance(node, str):
            plugin, sep, name = node.partition(":")
            return name if sep and plugin in ours else node
        return node

    try:
        return sorted(diff_keys(comparable(bare(recorded)), comparable(bare(cfg))))
    except Exception:  # noqa: BLE001 - a foreign or partial record: nothing to compare
        return []


def edited_message(run_dir: Path, keys: list[str]) -> str:
    return (f"{Path(run_dir) / 'config.yaml'} differs from the recipe the run recorded (state/run.json) at "
            f"{', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}: it was edited since the run, and "
            "its scores are not that recipe's")


def run_recipe(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``config.yaml`` as a mapping (None when it has none), refused with a
    :class:`UsageError` naming the keys when it was edited since the run (:func:`recipe_edits`)."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        from . import typedyaml

        cfg = typedyaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"{path}: unreadable ({err})") from None
    if edited := recipe_edits(run_dir, cfg):
        raise UsageError(edited_message(run_dir, edited) + "; put it back as the run wrote it")
    return cfg


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


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the folder a new ``path`` would be made in)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, what: str, hint: str) -> None:
    """Refuse a folder LiSER cannot write in (read-only file system, permissions), or, when
    ``path`` does not exist yet, one it cannot be made in; one line naming the path and
    ``hint`` (what to do). A probe file is made and removed at once: nothing is left."""
    base = _existing(path)
    if not base.is_dir():
        return  # a file where a folder should be: check_claim and the config checks say so
    try:
        fd, probe = tempfile.mkstemp(prefix=".liser-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = "is on a read-only file system" if exc.errno == errno.EROFS else (
            "is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else f"cannot be written ({exc.strerror})"
        )
        where = f"{path}" if base == Path(path).absolute() else f"{path} (in {base})"
        raise UsageError(f"{what} {where} {why}: {hint}") from None


def check_free(path: Path, need: int, what: str, hint: str) -> None:
    """Refuse a folder whose file system has less than ``need`` bytes free (one line)."""
    base = _existing(path)
    try:
        free = shutil.disk_usage(base).free
    except OSError:
        return  # no figure to go by: the writes themselves will say
    if free < need:
        raise UsageError(
            f"{what} {path}: only {_size(free)} free on its file system, about {_size(need)} needed; {hint}"
        )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_editable(root: Path, rel: str, text: str) -> Path:
    """Write ``root/rel``, a file a user may edit (a model card), unless it changed since LiSER
    wrote it: then it is kept, the new version is written beside it (``README.liser-new.md``)
    and a warning says so. Returns the path written. What LiSER wrote is recorded by SHA-256
    in ``root/.liser-written.json``; a file with no record there is a user's."""
    from liser_cache.files import atomic_write_json, atomic_write_text

    root, path = Path(root), Path(root) / rel
    record_path = root / WRITTEN
    record = _written(root)
    data = text.encode()
    target = path
    if path.exists() or path.is_symlink():
        current = _sha256(path.read_bytes()) if path.is_file() and not path.is_symlink() else None
        if current != _sha256(data) and (current is None or record.get(rel) != current):
            target = path.with_name(f"{path.stem}.liser-new{path.suffix}")
            logging.getLogger("liser").warning(
                "%s was changed since LiSER wrote it (or not written by LiSER): kept as it is; "
                "the new version is %s", path, target,
            )
    atomic_write_text(target, text)
    if target == path:
        record[rel] = _sha256(data)
        atomic_write_json(record_path, record)
    return target


def _written(root: Path) -> dict:
    """``root/.liser-written.json``: relative path -> SHA-256 of the bytes LiSER wrote there."""
    try:
        record = json.loads((Path(root) / WRITTEN).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def record_written(root: Path, rel: str) -> None:
    """Record the SHA-256 of ``root/rel`` as LiSER just wrote it (a run's ``metrics.json``):
    :func:`changed_since_written` tells a hand edit from LiSER's record later."""
    from liser_cache.files import atomic_write_json

    record = _written(root)
    record[rel] = _sha256((Path(root) / rel).read_bytes())
    atomic_write_json(Path(root) / WRITTEN, record)


def changed_since_written(root: Path, rel: str) -> bool:
    """Whether ``root/rel`` differs from what LiSER recorded writing there (False when nothing
    is recorded: runs older than the record)."""
    recorded = _written(root).get(rel)
    if not isinstance(recorded, str):
        return False
    try:
        return _sha256((Path(root) / rel).read_bytes()) != recorded
    except OSError:
        return True


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

"""Durable files: atomic writes (a reader sees the old file or the whole new one), umask-respecting
permissions and private temporary folders. Used by the caches here and by LiSER's checkpoints."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` as the process's umask leaves it (what ``open`` would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def private_tempdir(parent: Path, prefix: str, suffix: str = "") -> Path:
    """``tempfile.mkdtemp`` in ``parent``, with the permissions a plain ``mkdir`` would give
    (mkdtemp's are 0700 whatever the umask: a shared run directory would become unreadable)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(tmp, umask_mode(0o777))
    return tmp


def atomic_write_bytes(path: str | Path, data: bytes, *, sync_folder: bool = False) -> None:
    """Write ``data`` to ``path`` via a temporary ``.<name>.*.tmp`` file in the same folder,
    fsync, then rename: readers see the old file or the whole new one, never a part.
    ``sync_folder`` also fsyncs the folder, so the rename itself survives a power cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), umask_mode())  # mkstemp makes 0600 whatever the umask
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_folder:
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY)
        except OSError:  # platforms where folders cannot be opened (Windows)
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")

"""Weight files and where they come from: safetensors read without ever unpickling, and a local
folder or a Hugging Face Hub id resolved to a folder."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import UsageError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def resolve_source(source: str | Path, *, revision: str | None = None) -> Path:
    """A local folder, or a Hugging Face Hub id (``org/name``) resolved through huggingface_hub's
    cache: downloaded once, then read from the cache; ``HF_HUB_OFFLINE=1`` reads the cache only.
    A path that exists always wins over a Hub id of the same spelling."""
    path = Path(source).expanduser()
    if path.exists() or not HUB_ID.fullmatch(str(source)):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id=str(source), revision=revision, repo_type="model"))
    except LocalEntryNotFoundError:
        raise UsageError(f"{source}: no such folder, and not in the Hugging Face cache (offline, or the Hub "
                         "unreachable); download it once online, or give a folder") from None
    except RepositoryNotFoundError:
        raise UsageError(f"{source}: no such folder, and no such model on the Hugging Face Hub") from None
    except (HfHubHTTPError, OSError) as exc:
        raise UsageError(f"{source}: could not be fetched from the Hugging Face Hub: {exc}") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, refusing anything else (a pickle is never unpickled)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        head = path.read_bytes()[:2] if path.is_file() else b""
        hint = (
            " It looks like a pickle (e.g. a torch.save file): LiSER never unpickles checkpoint "
            "files, since unpickling can run arbitrary code."
            if head[:1] == b"\x80" or head == b"PK"
            else ""
        )
        raise UsageError(f"{path}: not a valid safetensors file ({exc}).{hint}") from None


def canonical_header(path: str | Path) -> None:
    """Rewrite a safetensors file's JSON header with its keys sorted, in place (same length, so
    no offset moves). The safetensors writer emits ``__metadata__`` in its hash map's random
    order: the same tensors and metadata saved twice gave two files of different SHA-256
    (``weights_sha256``, export and card checks). Left as it is when the sorted header would
    not fit the original's bytes."""
    import json
    import struct

    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        new = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(new) <= n:
            f.seek(8)
            f.write(new + b" " * (n - len(new)))

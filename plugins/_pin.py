"""Pins: what a saved teacher reloads from its source, checked when a checkpoint is loaded.

A teacher whose backbone is left out of its checkpoints (``checkpoint_exclude``: a frozen
encoder reloaded from a file, a hub id or a model folder) keeps a digest of that backbone in a
buffer, which its checkpoints save. Loading a checkpoint onto another backbone (the file
replaced, the folder's weights or settings edited) then fails loudly instead of running the
saved head on other features; and the digest, a buffer, is part of the teacher's weights
digest, so the teacher-output store and the fit key see the change too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from liser_core.errors import UsageError


def file_sha256(path: str | Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def pin_digest(module: torch.nn.Module, digest: bytes, changed: str, buffer: str = "source_sha256") -> None:
    """Keep ``digest`` in ``module``'s buffer ``buffer``; loading a state dict whose value
    differs raises :class:`UsageError` with ``changed`` (what differs, and what to do), one
    that lacks it (saved before the pin) says so."""
    module.register_buffer(buffer, torch.tensor(list(digest), dtype=torch.uint8))

    def check(mod, incompatible):
        if buffer in incompatible.missing_keys:
            raise UsageError(f"{changed.split(':')[0]}: the checkpoint does not record which backbone it was saved "
                             "with (saved by an earlier LiSER): fit the teacher again")
        if bytes(getattr(mod, buffer).tolist()) != digest:
            raise UsageError(changed)
        return None

    module.register_load_state_dict_post_hook(check)


def pin_source_file(module: torch.nn.Module, path: str | Path, buffer: str = "source_sha256") -> None:
    """Keep ``path``'s SHA-256 in a buffer that LiSER checkpoints save (:func:`pin_digest`)."""
    pin_digest(module, file_sha256(path), f"{path}: this weights file differs from the one the checkpoint was saved "
               "with (SHA-256 mismatch); restore that file or fit the teacher again", buffer)

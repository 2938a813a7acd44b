"""Saving and loading components: safetensors weights + a JSON config, written atomically.

A component directory holds ``config.json`` (registry kind and name, the options it was built
with, its label space) and ``model.safetensors``. No pickle is read or written anywhere.

A module may name state-dict key prefixes in ``checkpoint_exclude`` (e.g. ``("backbone.",)``
for a frozen pretrained backbone that its options reload from the hub id or directory it came
from): those weights are neither saved nor required when loading.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UsageError
from .labels import LabelSpace

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


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


def save_component(
    module: torch.nn.Module,
    directory: str | Path,
    *,
    kind: str,
    name: str,
    options: dict,
    label_space: LabelSpace,
    extra: dict | None = None,
) -> Path:
    """Save ``module`` into ``directory`` atomically (built in a temporary sibling, then renamed)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        exclude = tuple(getattr(module, "checkpoint_exclude", ()))
        state = {
            k: v.detach().contiguous().cpu()
            for k, v in module.state_dict().items()
            if not (exclude and k.startswith(exclude))
        }
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        config = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "name": name,
            "options": options,
            "label_space": label_space.to_dict(),
            **(extra or {}),
        }
        atomic_write_json(tmp / CONFIG_NAME, config)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


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


def read_component_config(directory: str | Path, kind: str | None = None) -> dict:
    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise UsageError(
            f"{directory}: not a LiSER checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{cfg_path}: invalid JSON: {exc}") from None
    if kind is not None and config.get("kind") != kind:
        raise UsageError(f"{directory}: holds a {config.get('kind')!r}, expected a {kind!r}")
    return config


def load_weights(module: torch.nn.Module, directory: str | Path, what: str = "") -> None:
    """Load a component directory's weights into ``module`` (strictly, but for the state-dict
    prefixes it names in ``checkpoint_exclude``)."""
    directory = Path(directory)
    state = read_tensors(directory / WEIGHTS_NAME)
    missing, unexpected = module.load_state_dict(state, strict=False)
    exclude = tuple(getattr(module, "checkpoint_exclude", ()))
    missing = [k for k in missing if not (exclude and k.startswith(exclude))]
    if missing or unexpected:
        raise UsageError(
            f"{directory}: weights do not fit {what or type(module).__name__} "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )


def load_component(directory: str | Path, registry, *, kind: str, **inject: Any) -> torch.nn.Module:
    """Rebuild a saved component through ``registry`` and load its weights (strictly)."""
    directory = Path(directory)
    config = read_component_config(directory, kind)
    label_space = LabelSpace.from_dict(config["label_space"])
    module = registry.build(config["name"], label_space=label_space, **config["options"], **inject)
    load_weights(module, directory, f"{kind} {config['name']!r}")
    module.liser_spec = {"name": config["name"], "options": config["options"]}
    if kind == "teacher" and isinstance(config.get("card"), dict):  # provenance comes back with it
        from .components import TeacherCard

        module.card = TeacherCard.from_dict(config["card"])
    return module

"""Resumable training state: checkpoints a training loop can continue from exactly.

A checkpoint is a folder ``step-<global step>/`` holding

``modules.safetensors``    every trained module's state dict (``<module index>.<key>``);
``optimizer.safetensors``  the optimiser's tensors (``<param index>.<name>``);
``rng.safetensors``        torch's CPU (and CUDA) generator states;
``state.json``             position (epoch, batch within the epoch, optimiser step), the running
                           loss sums, the history, the optimiser's hyper-parameters, the
                           scheduler and scaler states, python's and numpy's RNG states;
``COMPLETE.json``          the completeness marker, written last: each file's size and SHA-256.

It is built under a temporary name in the same folder and renamed into place; a folder whose
marker is missing or does not match its files (a kill during the write, a copy cut short) is
never loaded: :meth:`Checkpointer.load` says so and falls back to the previous complete one.
Nothing is pickled: tensors are safetensors, everything else JSON. A file that is not what it
claims (e.g. a pickle named ``.safetensors``) is refused with a message, never unpickled.

Data order needs no state of its own: epoch ``e`` visits the clips in an order drawn from
``seed + e`` alone, so a resumed epoch skips the batches already seen, without reading them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from liser_cache.files import atomic_write_json, private_tempdir, umask_mode

from .errors import UsageError
from .weights import read_tensors

log = logging.getLogger("liser.checkpoint")

MARKER = "COMPLETE.json"
FORMAT = "liser-train-state/1"


@dataclass
class Progress:
    """Where a training loop stands; saved in ``state.json``."""

    epoch: int = 0  # epoch being run (== epochs when finished)
    batch: int = 0  # batches of that epoch already consumed (incl. skipped ones)
    step: int = 0  # optimiser steps taken so far, all epochs
    nonfinite: int = 0  # non-finite losses skipped so far
    sums: dict[str, float] = field(default_factory=dict)  # running loss sums of this epoch
    n: int = 0  # steps summed in ``sums``
    seconds: float = 0.0  # time spent in this epoch before the checkpoint
    history: list[dict[str, float]] = field(default_factory=list)  # finished epochs' metrics
    finished: bool = False
    best_epoch: int = -1  # the epoch with the best validation metric so far (early_stop)
    best_value: float | None = None
    stopped: bool = False  # stopped early: no improvement for `patience` epochs


# -- RNG ------------------------------------------------------------------------------------------
def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Every global RNG state: (JSON-able part, tensor part)."""
    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    js = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    return js, tensors


def set_rng_state(js: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    v, keys, gauss = js["python"]
    random.setstate((v, tuple(keys), gauss))
    name, keys, pos, has_gauss, g = js["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, g))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


# -- optimiser state without pickle --------------------------------------------------------------
def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def _optimizer_join(js: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, st in js["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    return {"state": state, "param_groups": js["param_groups"]}


# -- files ---------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    from .provenance import sha256_file  # the one file hash

    return sha256_file(path)


def snapshot(tensors: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    """Copies on the CPU of every tensor: what a write may take while training goes on."""
    return {name: {k: v.detach().to("cpu", copy=True).contiguous() for k, v in group.items()}
            for name, group in tensors.items()}


def write_complete_dir(directory: Path, tensors: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any], *,
                       copied: bool = False) -> Path:
    """Write ``<name>.safetensors`` per entry of ``tensors`` and ``state.json`` into a temporary
    sibling of ``directory``, then the marker, then rename it into place. ``copied``: the tensors
    are a :func:`snapshot` already (nothing else holds them)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_tempdir(directory.parent, f".{directory.name}.", ".tmp")
    if not copied:
        tensors = snapshot(tensors)
    try:
        for name, group in tensors.items():
            save_file(group, str(tmp / f"{name}.safetensors"))
            os.chmod(tmp / f"{name}.safetensors", umask_mode())  # safetensors writes 0600 whatever the umask
        atomic_write_json(tmp / "state.json", meta)
        files = sorted(p.name for p in tmp.iterdir())
        _write_marker(tmp, {"format": FORMAT, "files": {n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)} for n in files}})
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _write_marker(folder: Path, marker: dict[str, Any]) -> None:
    atomic_write_json(folder / MARKER, marker)


def check_complete(directory: Path) -> str | None:
    """Why ``directory`` is not a complete checkpoint, or None when it is."""
    marker = directory / MARKER
    if not marker.is_file():
        return f"no {MARKER} (written last): the write was interrupted"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MARKER}: {exc}"
    for name, info in files.items():
        p = directory / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != info["bytes"]:
            return f"{name} has {p.stat().st_size} bytes, {info['bytes']} expected"
        if _sha256(p) != info["sha256"]:
            return f"{name} does not match its checksum"
    return None


def read_complete_dir(directory: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    reason = check_complete(directory)
    if reason is not None:
        raise UsageError(f"{directory}: incomplete checkpoint: {reason}")
    tensors = {p.stem: read_tensors(p) for p in sorted(directory.glob("*.safetensors"))}
    try:
        meta = json.loads((directory / "state.json").read_text())
    except ValueError as exc:
        raise UsageError(f"{directory / 'state.json'}: invalid JSON: {exc}") from None
    return tensors, meta


# -- the checkpointer ----------------------------------------------------------------------------
class Checkpointer:
    """Saves and finds a training loop's checkpoints under ``directory`` (``step-N`` folders).

    Keeps the newest ``keep`` complete checkpoints. ``enabled=False`` (e.g. ranks other than 0 in
    a distributed run) loads but never writes.

    ``save(..., background=True)`` copies the state (on the caller's thread: training may change
    it right after) and writes it on a writer thread while training goes on; one write at a
    time (the next save, :meth:`latest`, :meth:`load` and :meth:`wait` wait for it), and a write
    that failed raises its error on the training thread at the next of those. ``done`` callbacks
    run on the training thread once their checkpoint is complete (:meth:`poll`, :meth:`wait`).
    """

    def __init__(self, directory: str | Path, *, keep: int = 2, enabled: bool = True):
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self.enabled = enabled
        self._pending: tuple[threading.Thread, dict[str, Any], Path, Any] | None = None

    def poll(self) -> None:
        """Finish a background write that has ended (its error raised, its callback run)."""
        if self._pending is not None and not self._pending[0].is_alive():
            self.wait()

    def wait(self) -> None:
        """Wait for the background write, if any; raise its error or run its callback."""
        if self._pending is None:
            return
        thread, box, path, done = self._pending
        thread.join()
        self._pending = None
        if "error" in box:
            raise box["error"]
        if done is not None:
            done(path)

    def candidates(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        dirs = [p for p in self.directory.iterdir() if p.is_dir() and p.name.startswith("step-")]
        return sorted(dirs, key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else -1, reverse=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint; incomplete newer ones are reported and passed over."""
        self.wait()
        for d in self.candidates():
            reason = check_complete(d)
            if reason is None:
                return d
            log.warning("ignoring checkpoint %s: %s", d, reason)
        return None

    def save(
        self,
        progress: Progress,
        modules: list[torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: Any = None,
        extra: dict[str, dict[str, torch.Tensor]] | None = None,
        *,
        background: bool = False,
        done=None,
    ) -> Path | None:
        """``extra``: more named tensor groups to keep with the state (e.g. the best epoch's
        weights); ``background``: write on the writer thread (see the class); ``done(path)``: run
        once the checkpoint is complete."""
        if not self.enabled:
            return None
        rng_js, rng_t = rng_state()
        opt_js, opt_t = _optimizer_split(optimizer)
        mods = {f"{i}.{k}": v for i, m in enumerate(modules) for k, v in _unwrap(m).state_dict().items()}
        meta = {
            "format": FORMAT,
            "progress": progress.__dict__,
            "optimizer": opt_js,
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "rng": rng_js,
        }
        tensors = snapshot({"modules": mods, "optimizer": opt_t, "rng": rng_t, **(extra or {})})
        meta = json.loads(json.dumps(meta))  # a copy: the progress goes on changing
        directory = self.directory / f"step-{progress.step:09d}"
        self.wait()

        def write() -> Path:
            path = write_complete_dir(directory, tensors, meta, copied=True)
            self._prune(path)
            return path

        if not background:
            path = write()
            if done is not None:
                done(path)
            return path
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                write()
            except BaseException as exc:  # raised on the training thread by wait()
                box["error"] = exc

        thread = threading.Thread(target=run, name=f"liser-checkpoint {directory.name}", daemon=True)
        self._pending = (thread, box, directory, done)
        thread.start()
        return directory

    def _prune(self, newest: Path) -> None:
        # checkpoints this loop wrote got their marker last; its presence suffices here (a full
        # check would re-hash every kept checkpoint at every save)
        complete = [d for d in self.candidates() if d == newest or (d / MARKER).is_file()]
        for old in complete[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
        for leftover in self.directory.glob(".step-*.tmp"):  # temp folders of killed writes
            shutil.rmtree(leftover, ignore_errors=True)

    def load(
        self,
        modules: list[torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: Any = None,
    ) -> tuple[Progress, dict[str, Any], dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]] | None:
        """Restore modules, optimiser, scheduler and scaler from the newest complete checkpoint.

        Returns (progress, RNG JSON part, RNG tensors, the other tensor groups) — the caller
        restores the RNG at the moment the interrupted loop had reached — or None when there is
        no checkpoint.
        """
        path = self.latest()
        if path is None:
            return None
        tensors, meta = read_complete_dir(path)
        if meta.get("format") != FORMAT:
            raise UsageError(f"{path}: not a LiSER training state ({meta.get('format')!r})")
        for i, m in enumerate(modules):
            prefix = f"{i}."
            sd = {k[len(prefix):]: v for k, v in tensors["modules"].items() if k.startswith(prefix)}
            try:
                _unwrap(m).load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise UsageError(f"{path}: the checkpoint does not fit this run's models: {exc}") from None
        optimizer.load_state_dict(_optimizer_join(meta["optimizer"], tensors.get("optimizer", {})))
        scheduler.load_state_dict(meta["scheduler"])
        if scaler is not None and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        progress = Progress(**meta["progress"])
        if progress.finished:
            log.info("%s: training already finished (step %d); weights restored", path, progress.step)
        else:
            log.info("resuming from %s: epoch %d, batch %d, step %d", path, progress.epoch + 1, progress.batch, progress.step)
        others = {k: v for k, v in tensors.items() if k not in ("modules", "optimizer", "rng")}
        return progress, meta["rng"], tensors.get("rng", {}), others


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (checkpoints hold plain keys)."""
    return getattr(module, "module", module) if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module

"""What a run has built and found, shared by the engine, its stages and every hook (``run``).

:class:`RunContext` is the run's state: the resolved recipe, the corpus and its splits as the run
uses them, the teachers, label maps, student and losses, the teachers' targets, the evaluations
and the report material (warnings, flags, diagnostics). :class:`EvalResult` is one model scored
on one split; :class:`TargetTable` the teachers' outputs on the distillation set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig

from liser_common.distributed import SINGLE, DistContext

from .components import BatchTargets, Loss, Student, Teacher
from .data import Clip, Corpus
from .labels import LabelMap, LabelSpace

if TYPE_CHECKING:
    from ._plugins import PluginHost

log = logging.getLogger("liser")


class ReadOnlyDict(dict):
    """A dict hooks may read, iterate, copy and serialise but not change: what a run records is
    handed to loggers as these (a logger that wrote into the metrics it was given changed every
    report of the run). ``dict(d)`` gives a copy to change."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("LiSER's record, read-only for hooks: copy it (dict(metrics)) to change it")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse


@dataclass
class EvalResult:
    """One model scored on one split, in the student's label space."""

    model: str  # teacher key, "student" or "baseline"
    role: str  # teacher | student | baseline
    split: str
    metrics: dict[str, float]  # accuracy (WA), uar (UA), macro_f1
    confusion: torch.Tensor  # (C, C) counts, rows = true class
    label_space: LabelSpace
    probs: torch.Tensor  # (N, C) predicted distribution per clip
    clip_ids: list[str]
    num_parameters: int = 0
    labels: torch.Tensor | None = None  # (N,) true class ids, row i = clip_ids[i]
    speakers: list[str] = field(default_factory=list)  # speaker of each clip
    #: WA/UAR per test speaker (``liser_common.metrics.per_group_metrics``)
    per_speaker: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class TargetTable:
    """Every teacher's outputs on the distillation set, row i = clip i of that set."""

    logits: dict[str, torch.Tensor]
    embeddings: dict[str, torch.Tensor]
    label_maps: dict[str, LabelMap]
    weights: dict[str, float]
    combination: Any  # the run's Combiner (or a labels.combine method name)
    features: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # teacher -> tap -> (N, C, bins)

    def batch(self, index: torch.Tensor, device: torch.device) -> BatchTargets:
        idx = index.cpu()
        return BatchTargets(
            logits={k: v[idx].to(device) for k, v in self.logits.items()},
            embeddings={k: v[idx].to(device) for k, v in self.embeddings.items()},
            label_maps=self.label_maps,
            weights=self.weights,
            combination=self.combination,
            features={k: {t: v[idx].to(device) for t, v in taps.items()} for k, taps in self.features.items()},
        )


@dataclass
class RunContext:
    """Everything a run has built; hooks receive it as ``run``."""

    config: DictConfig
    run_dir: Path
    host: PluginHost
    device: torch.device
    dist: DistContext = SINGLE  # this process's rank in a torchrun job
    resumed: bool = False  # continues an interrupted run from its saved state
    corpus: Corpus | None = None
    teachers: dict[str, Teacher] = field(default_factory=dict)
    teacher_configs: dict[str, Any] = field(default_factory=dict)
    label_maps: dict[str, LabelMap] = field(default_factory=dict)
    student: Student | None = None
    baseline: Student | None = None
    losses: dict[str, tuple[float, Loss]] = field(default_factory=dict)
    combiner: Any = None  # the distil.combination Combiner
    augment: dict[str, list[Any]] = field(default_factory=dict)  # stage -> its Augmentations, in order
    samplers: dict[str, Any] = field(default_factory=dict)  # stage -> its Sampler (None: the default order)
    #: feature taps the losses read: "student" or a teacher key -> {tap: bins}; and their (C, bins)
    taps: dict[str, dict[str, int]] = field(default_factory=dict)
    tap_shapes: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    targets: TargetTable | None = None
    evaluations: list[EvalResult] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: the longest labeled clip the student was distilled on, in seconds (from its batches): its
    #: window at inference where the corpus knows no durations before decoding
    labeled_seconds_seen: float | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: short markers every table shows next to this run's scores (e.g. "test_overlap")
    flags: list[str] = field(default_factory=list)
    #: the splits as the run uses them (after the duplicate guard), and each clip's content digests
    splits: dict[str, list[Clip]] = field(default_factory=dict)
    digests: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    #: per teacher: mapped, merged, dropped and unreachable classes (guards.label_map_report)
    label_map_report: dict[str, Any] = field(default_factory=dict)
    #: sha256 of the resolved recipe (less where/how fast it runs) and the code versions
    fingerprint: str = ""
    #: the code that ran it: LiSER's and each plugin package's version, git commit and dirty
    #: flag (``PluginHost.code_sources``); not in the fingerprint (see docs/leaderboard.md)
    code: dict[str, Any] = field(default_factory=dict)

    @property
    def label_space(self) -> LabelSpace:
        return self.corpus.label_space

    def split(self, role: str) -> list[Clip]:
        """The clips of one split as this run uses them (duplicates left out)."""
        if role in self.splits:
            return self.splits[role]
        return list(self.corpus.split(role))

    def results(self) -> dict[str, dict[str, Any]]:
        return {e.model: {"role": e.role, **e.metrics} for e in self.evaluations}

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)

    def flag(self, name: str, message: str) -> None:
        """A condition that makes this run's scores incomplete or incomparable: a warning, and
        the named flag (``guards.FLAGS``) every table, report and card shows next to the scores."""
        if name not in self.flags:
            self.flags.append(name)
        self.warn(message)

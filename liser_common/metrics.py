"""Classification metrics, named as the SER literature names them, computed by torchmetrics.

* ``accuracy`` — WA (weighted accuracy): the fraction of clips classified correctly.
* ``uar`` — UA / UAR (unweighted average recall): the mean of the per-class recalls.
* ``macro_f1`` — the mean of the per-class F1 scores.
* the confusion matrix: counts, rows = true class, columns = predicted class.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

METRIC_NAMES = {"accuracy": "WA", "uar": "UAR", "macro_f1": "macro-F1"}


def classification_metrics(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int
) -> tuple[dict[str, float], torch.Tensor]:
    """Metrics of class predictions (or (N, C) scores) against class ids: ``accuracy`` (WA),
    ``uar`` (UA: the mean recall) and ``macro_f1``, both averaged over the classes the targets
    hold. A class with no clip here has no recall; predicting it is already a miss of the clip's
    own class (torchmetrics' macro average would count it as a class of recall 0 and lower UAR by
    a factor present/(present + 1)). With every class present, these are torchmetrics' macro means.

    Example::

        >>> m, _ = classification_metrics(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 0, 1, 1]), 3)
        >>> m["uar"]  # (1/2 + 2/2) / 2: class 2 has no clip
        0.75
    """
    # imported here: torchmetrics imports transformers when installed (seconds of CLI start-up)
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassRecall,
    )

    preds = preds.detach().cpu()
    target = target.detach().cpu()
    if preds.ndim == 2:
        preds = preds.argmax(-1)
    kw = {"num_classes": num_classes, "validate_args": True}
    present = torch.bincount(target, minlength=num_classes) > 0
    recall = MulticlassRecall(average=None, **kw)(preds, target)
    f1 = MulticlassF1Score(average=None, **kw)(preds, target)
    metrics = {
        "accuracy": MulticlassAccuracy(average="micro", **kw)(preds, target).item(),
        "uar": recall[present].mean().item() if bool(present.any()) else math.nan,
        "macro_f1": f1[present].mean().item() if bool(present.any()) else math.nan,
    }
    confusion = MulticlassConfusionMatrix(**kw)(preds, target).long()
    return metrics, confusion


def per_group_metrics(
    preds: torch.Tensor, target: torch.Tensor, groups: Sequence[str], num_classes: int
) -> dict[str, dict[str, float]]:
    """WA and UAR of each group of clips (e.g. each test speaker), by torchmetrics.

    A speaker rarely has clips of every class, so a group's ``uar`` is the mean recall over the
    classes *it has clips of* (a class it lacks has no recall, not a recall of 0); ``classes``
    says how many those are. ``num_clips`` is the group's size.

    Example::

        >>> p, t = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0])
        >>> per_group_metrics(p, t, ["a", "a", "b", "b"], 3)["b"]
        {'num_clips': 2, 'classes': 1, 'accuracy': 0.5, 'uar': 0.5}
    """
    from torchmetrics.classification import MulticlassRecall

    preds = preds.detach().cpu()
    target = target.detach().cpu()
    if preds.ndim == 2:
        preds = preds.argmax(-1)
    out: dict[str, dict[str, float]] = {}
    for g in sorted(set(groups), key=str):
        rows = torch.tensor([i for i, x in enumerate(groups) if x == g])
        p, t = preds[rows], target[rows]
        present = torch.bincount(t, minlength=num_classes) > 0
        recall = MulticlassRecall(num_classes=num_classes, average=None)(p, t)
        out[str(g)] = {
            "num_clips": len(rows),
            "classes": int(present.sum()),
            "accuracy": (p == t).float().mean().item(),
            "uar": recall[present].mean().item(),
        }
    return out


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    if len(values) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def summarise(per_fold: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean ± sample standard deviation of each numeric metric present in every run.

    ``per_fold`` holds one metrics dict per fold or seed (e.g. ``metrics.json``'s ``student``
    block).

    Example::

        >>> s = summarise([{"uar": 0.5, "accuracy": 0.6}, {"uar": 0.7, "accuracy": 0.6}])
        >>> round(s["uar"]["std"], 4), s["accuracy"]["n"]
        (0.1414, 2)
    """
    if not per_fold:
        return {}
    common = set.intersection(*(set(m) for m in per_fold))
    out = {}
    for key in sorted(common):
        values = [m[key] for m in per_fold]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            mean, std = mean_std(float(v) for v in values)
            out[key] = {"mean": mean, "std": std, "n": len(values)}
    return out


def format_summary(summary: Mapping[str, Mapping[str, float]], keys: Sequence[str] = ("accuracy", "uar", "macro_f1")) -> str:
    """``"accuracy 0.612 ± 0.031  uar ..."`` for the keys present."""
    return "  ".join(
        f"{k} {summary[k]['mean']:.3f} ± {summary[k]['std']:.3f}" for k in keys if k in summary
    )

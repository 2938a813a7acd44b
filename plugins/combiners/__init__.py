"""First-party target combiners: ``per_class`` (the default), ``arithmetic``, ``geometric``.

How several teachers' distributions over the student's classes become the one target the
student learns from (``distil.combination``); see :func:`liser_core.labels.combine` for the
formulas. A plugin registers its own :class:`liser_core.Combiner` the same way.
"""

from __future__ import annotations

import torch

from liser_core import Combiner, hookimpl
from liser_core.labels import combine


class LabelsCombine(Combiner):
    """One of :func:`liser_core.labels.combine`'s methods."""

    method = "per_class"

    def __call__(self, probs: list[torch.Tensor], weights: list[float], reached: list[torch.Tensor]) -> torch.Tensor:
        return combine(probs, weights, reached, self.method)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PerClass(LabelsCombine):
    """Each class mixes only the teachers that can express it, weights renormalised over them."""

    method = "per_class"


class Arithmetic(LabelsCombine):
    """``sum_i w_i p_i``: a class a teacher cannot express loses that teacher's share."""

    method = "arithmetic"


class Geometric(LabelsCombine):
    """``softmax(sum_i w_i log p_i)``, a product of experts: a class any teacher rules out vanishes."""

    method = "geometric"


@hookimpl
def liser_register_combiners(registry):
    registry.register("per_class", PerClass, summary="per class, a mixture of the teachers that can express it (default)")
    registry.register("arithmetic", Arithmetic, summary="weighted mixture of the teachers' distributions")
    registry.register("geometric", Geometric, summary="product of experts: weighted mean of log-probabilities")


__all__ = ["Arithmetic", "Geometric", "PerClass"]

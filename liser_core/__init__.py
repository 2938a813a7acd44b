"""LiSER core: registries, hooks, recipes, label spaces and the distillation engine.

The core names no concrete model; every teacher, student, loss, dataset and logger comes from
a plugin found through the ``liser`` entry-point group.
"""

from __future__ import annotations

import pluggy

from liser_common import __version__ as __version__  # one version for every package

hookimpl = pluggy.HookimplMarker("liser")

from ._plugins import ENTRY_POINT_GROUP, PluginHost, PluginInfo, load_plugins  # noqa: E402
from ._registry import Registry  # noqa: E402
from .components import (  # noqa: E402
    Augmentation,
    BatchTargets,
    Combiner,
    Loss,
    ModelOutput,
    Position,
    Student,
    Teacher,
    TeacherCard,
)
from .context import EvalResult, RunContext  # noqa: E402
from .data import SPLITS, BadClipError, Batch, Clip, ClipDataset, Corpus, Sampler  # noqa: E402
from .engine import run  # noqa: E402
from .errors import ComponentError, ConfigError, LiserError, UnknownComponentError, UsageError  # noqa: E402
from .labels import CANONICAL_EMOTIONS, LabelMap, LabelSpace, label_space  # noqa: E402

__all__ = [
    "Augmentation",
    "Combiner",
    "CANONICAL_EMOTIONS",
    "BadClipError",
    "ComponentError",
    "ENTRY_POINT_GROUP",
    "SPLITS",
    "Batch",
    "BatchTargets",
    "Clip",
    "ClipDataset",
    "ConfigError",
    "Corpus",
    "EvalResult",
    "LabelMap",
    "LabelSpace",
    "LiserError",
    "Loss",
    "ModelOutput",
    "PluginHost",
    "PluginInfo",
    "Position",
    "Registry",
    "RunContext",
    "Sampler",
    "Student",
    "Teacher",
    "TeacherCard",
    "UnknownComponentError",
    "UsageError",
    "hookimpl",
    "label_space",
    "load_plugins",
    "run",
]

"""Every hook LiSER calls, in one place (the counterpart of pytest's ``hookspec.py``).

A plugin is a module (or object) with functions named like these and decorated with
``liser_core.hookimpl``. It is found through the ``liser`` entry-point group::

    # pyproject.toml of a third-party package
    [project.entry-points.liser]
    my_plugin = "my_pkg.plugin"

    # my_pkg/plugin.py
    from liser_core import hookimpl

    @hookimpl
    def liser_register_students(registry):
        registry.register("my_student", build_my_student)

Rules that hold for every hook:

* Arguments are passed by keyword; an implementation may accept fewer of them than the
  specification lists, so hooks can gain arguments without breaking plugins.
* A misspelt hook name (``liser_register_student``) is an error at load time naming the plugin.
* Registration hooks are *historic*: a plugin registered after the call still receives it.
* Run-lifecycle hooks are events: every implementation is called; one that raises is reported
  as a warning and the run goes on (a logger must never cost a user their run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from ._registry import Registry
    from .context import EvalResult, RunContext

hookspec = pluggy.HookspecMarker("liser")

# ---------------------------------------------------------------------------------------------
# Registration hooks: called once per plugin manager, historic.
# ---------------------------------------------------------------------------------------------


@hookspec(historic=True)
def liser_register_datasets(registry: Registry) -> None:
    """Register dataset factories: ``registry.register(name, factory)``.

    A factory takes the recipe's ``data.options`` as keyword arguments (plus ``seed``) and
    returns a :class:`liser_core.data.Corpus`. Return value ignored.
    """


@hookspec(historic=True)
def liser_register_teachers(registry: Registry) -> None:
    """Register teacher factories.

    A factory takes the recipe's ``teachers[i].options`` plus ``label_space`` (the corpus's,
    for teachers that are fitted in the run) and returns a :class:`liser_core.Teacher`.
    Pass ``modality="audio"|"face"|"audiovisual"`` to ``register`` so that
    ``liser list teachers`` can show it.
    """


@hookspec(historic=True)
def liser_register_students(registry: Registry) -> None:
    """Register student factories: options plus ``label_space`` -> :class:`liser_core.Student`."""


@hookspec(historic=True)
def liser_register_losses(registry: Registry) -> None:
    """Register loss factories: options -> :class:`liser_core.Loss`."""


@hookspec(historic=True)
def liser_register_loggers(registry: Registry) -> None:
    """Register logger factories: options -> an object with run-lifecycle hook implementations.

    A logger named in the recipe's ``loggers`` block is built at run start and registered with
    the plugin manager for the run's duration, so its ``liser_*`` methods receive the events.
    """


@hookspec(historic=True)
def liser_register_combiners(registry: Registry) -> None:
    """Register target combiners: options -> :class:`liser_core.Combiner` (how several
    teachers' distributions over the student's classes become one; ``distil.combination``)."""


@hookspec(historic=True)
def liser_register_augmentations(registry: Registry) -> None:
    """Register training augmentations of the student's audio: options (and the injected
    ``sample_rate``) -> :class:`liser_core.Augmentation` (``distil.augment`` and the like)."""


@hookspec(historic=True)
def liser_register_optimizers(registry: Registry) -> None:
    """Register optimizers: options plus the injected ``params`` (a list of parameter groups,
    ``[{"params": [...]}, {"params": [...], "lr": 0.01}]``), ``lr`` and ``weight_decay`` (the
    stage block's) -> a ``torch.optim.Optimizer`` (``distil.optimizer`` and the like; default
    ``adamw``). A group's own ``lr`` (a loss's adapters, ``distil.losses.N.lr``) must be kept."""


@hookspec(historic=True)
def liser_register_schedulers(registry: Registry) -> None:
    """Register learning-rate schedules: options plus the injected ``optimizer`` and
    ``total_steps`` (the stage's optimiser steps) -> a ``torch.optim.lr_scheduler.LRScheduler``,
    stepped once per optimiser step (``distil.scheduler``; default ``warmup_cosine``)."""


@hookspec(historic=True)
def liser_register_samplers(registry: Registry) -> None:
    """Register batch samplers: options -> :class:`liser_core.Sampler`, which cuts a stage's
    training clips into the batches of each epoch (``distil.sampler``; default ``random``)."""


# ---------------------------------------------------------------------------------------------
# Run-lifecycle hooks: events, every implementation is called, return values are ignored.
# ---------------------------------------------------------------------------------------------


@hookspec
def liser_run_start(run: RunContext) -> None:
    """After the recipe is validated and the run directory exists, before any stage runs.

    ``run.config`` is the resolved recipe, ``run.run_dir`` the run directory.
    """


@hookspec
def liser_stage_start(run: RunContext, stage: str) -> None:
    """Before a stage runs: ``teach``, ``label``, ``distil``, ``finetune``, ``evaluate``
    (and ``baseline`` when a labels-only baseline is trained)."""


@hookspec
def liser_stage_end(run: RunContext, stage: str, seconds: float) -> None:
    """After a stage has finished, with its wall time."""


@hookspec
def liser_epoch_end(
    run: RunContext, stage: str, model: str, epoch: int, metrics: dict[str, float], replayed: bool
) -> None:
    """After each training epoch of ``model`` (a teacher's name, ``student`` or ``baseline``).

    ``epoch`` counts from 0.
    ``metrics`` holds at least ``loss`` and the mean of each loss term (``loss/kl``...), and the
    epoch means of the scalars loss terms report with ``Loss.log`` (``annealed_kl/temperature``).
    ``replayed`` is True when a resumed run reports again an epoch hooks were already told of:
    one its checkpoint had done, or one told before a kill that came before its checkpoint was on
    disk, computed again bit for bit (a report that lost an epoch to a kill catches up; one that
    has it ignores it). ``metrics``
    is read-only (``liser_core.context.ReadOnlyDict``): ``dict(metrics)`` to change a copy.
    """


@hookspec
def liser_checkpoint(run: RunContext, stage: str, model: str, path: Path, step: int, finished: bool) -> None:
    """After a resumable training checkpoint has been written completely (``path``, a folder
    with its completeness marker), e.g. to copy it to remote storage.

    ``step`` counts optimiser steps of that training loop; ``finished`` is True for the
    checkpoint written when the loop's last epoch ended.
    """


@hookspec
def liser_evaluation(run: RunContext, result: EvalResult) -> None:
    """After a model has been evaluated on a split.

    ``result.model`` names it, ``result.role`` is ``teacher``, ``targets`` (the teachers'
    combined soft labels scored as a model), ``student`` or ``baseline``; ``result.metrics`` has
    ``accuracy`` (WA), ``uar`` (UA), ``macro_f1``; ``result.confusion`` is the (C, C) count
    matrix, rows = true class. ``result`` is a copy, its ``metrics`` and ``per_speaker`` read-only:
    nothing a hook does to it reaches the run's record.
    """


@hookspec
def liser_run_end(run: RunContext, results: dict[str, Any], error: BaseException | None) -> None:
    """When the run ends, successfully (``error`` is None) or not.

    ``results`` maps each evaluated model to its metrics; the report writers flush here.
    Not called when the recipe fails validation (building the components, the soundness
    guards, the preflight probe): such a run has written nothing and has nothing to report.
    """

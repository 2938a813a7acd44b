"""The interfaces every teacher, student and loss implements.

Plugins subclass :class:`Teacher`, :class:`Student` and :class:`Loss` and register factories
for them; the engine only ever talks to these interfaces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ComponentError, LiserError, UsageError, one_line
from .labels import LabelMap, LabelSpace, combine

if TYPE_CHECKING:
    from .config import TrainConfig
    from .data import Batch, ClipDataset

MODALITIES = ("audio", "face", "audiovisual")


def component_label(component: Any, kind: str = "") -> str:
    """``"loss 'dkd' (plugin my_plugin, recipe key distil.losses.1)"``: how errors name a
    component built through a registry (its ``liser_spec``); the class name otherwise."""
    spec = getattr(component, "liser_spec", None) or {}
    kind = spec.get("kind") or kind or type(component).__name__
    name = spec.get("name") or type(component).__name__
    where = []
    if spec.get("plugin"):
        where.append(f"plugin {spec['plugin']}")
    if spec.get("key"):
        where.append(f"recipe key {spec['key']}")
    return f"{kind} {name!r}" + (f" ({', '.join(where)})" if where else "")


@contextlib.contextmanager
def blame(component: Any, what: str = "", kind: str = "") -> Iterator[None]:
    """Run a call into a plugin component; an exception it raises becomes a one-line
    :class:`~liser_core.errors.ComponentError` naming the component (the original is chained,
    shown with ``--debug``). LiSER's own errors and Ctrl-C pass through unchanged.

    Example::

        >>> with blame(loss, "forward"):  # doctest: +SKIP
        ...     value = loss(out, batch, targets)
    """
    try:
        yield
    except (LiserError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: BLE001 - re-raised, named (a sys.exit() in a plugin too)
        doing = f" in {what}" if what else ""
        raise ComponentError(f"{component_label(component, kind)} failed{doing}: {type(exc).__name__}: {one_line(exc)}") from exc


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # (B, C) unnormalised class scores
    embedding: torch.Tensor  # (B, D) clip embedding (what feature matching compares)


def checked_output(component: Any, out: Any, batch_size: int, classes: int, dim: int | None) -> ModelOutput:
    """``out`` if it is a :class:`ModelOutput` of logits ``(batch_size, classes)`` and an
    embedding ``(batch_size, dim)``; else a :class:`~liser_core.errors.ComponentError` naming
    the component and what is wrong (rather than a shape error deep inside a loss)."""
    label = component_label(component)
    if not (isinstance(out, tuple) and len(out) == 2 and all(torch.is_tensor(t) for t in out)):
        raise ComponentError(f"{label} returned {type(out).__name__}, not ModelOutput(logits, embedding)")
    logits, emb = out
    if tuple(logits.shape) != (batch_size, classes):
        raise ComponentError(
            f"{label} returned logits of shape {tuple(logits.shape)} for a batch of {batch_size} clips; "
            f"expected ({batch_size}, {classes}): one score per class of its label space"
        )
    if emb.ndim != 2 or emb.shape[0] != batch_size or (dim is not None and emb.shape[1] != dim):
        raise ComponentError(
            f"{label} returned an embedding of shape {tuple(emb.shape)}; expected ({batch_size}, "
            f"{dim if dim is not None else 'D'}) (its embedding_dim)"
        )
    return ModelOutput(logits, emb)


def loss_value(loss: Any, student: ModelOutput, batch: Any, targets: Any) -> torch.Tensor | None:
    """Call one loss term; its value must be None (does not apply) or a one-element tensor."""
    with blame(loss, "forward"):
        value = loss(student, batch, targets)
    if value is not None and not (torch.is_tensor(value) and value.numel() == 1):
        what = f"a tensor of shape {tuple(value.shape)}" if torch.is_tensor(value) else f"a {type(value).__name__}"
        raise ComponentError(f"{component_label(loss)} returned {what}; a loss returns a scalar tensor or None")
    return value


@dataclass
class TeacherCard:
    """What a teacher is and where it comes from (one flat record, like timm's pretrained cfg)."""

    name: str  # registry name, plus ".tag" for a checkpoint
    modality: str  # audio | face | audiovisual
    backbone: str  # architecture, e.g. "wav2vec2-base" or "cnn6"
    label_space: str  # label space name
    sample_rate: int | None = None  # audio rate the teacher expects (None for face-only)
    trained_on: tuple[str, ...] = ()  # corpora, "corpus" or "corpus[split]"
    licence: str = "unknown"  # licence of the weights
    source: str = ""  # hub id, local path or "fitted in run"
    num_parameters: int = 0  # parameter count
    notes: str = ""  # anything a user must know
    #: what it was fitted on, one record per fit (liser_core.guards.FitSet.to_dict): corpus,
    #: split, speakers, clip count, a digest of the clips' contents and the content digests
    fit_sets: tuple[dict, ...] = ()

    def to_dict(self, *, content: bool = True) -> dict:
        """As JSON. ``content=False`` leaves out the per-clip content digests of the fit sets
        (reports show counts and speakers; checkpoints keep everything)."""
        d = asdict(self)
        d["trained_on"] = list(self.trained_on)
        d["fit_sets"] = [
            dict(f) if content else {k: v for k, v in f.items() if k != "content"} for f in self.fit_sets
        ]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TeacherCard:
        known = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in d.items() if k in known}
        return cls(**{
            **d,
            "trained_on": tuple(d.get("trained_on") or ()),
            "fit_sets": tuple(dict(f) for f in d.get("fit_sets") or ()),
        })

    def overlaps(self, corpus: str, split: str) -> bool:
        """True when evaluating on ``corpus``/``split`` would test on this teacher's training data."""
        for entry in self.trained_on:
            name, _, rest = entry.partition("[")
            if name != corpus:
                continue
            if not rest or rest.rstrip("]") == split:
                return True
        return False


class Teacher(nn.Module):
    """A large model that labels clips. Subclasses set the attributes below and ``forward``.

    A teacher without a LiSER checkpoint that is not ``pretrained`` is fitted by the engine on
    the corpus's ``teacher`` split, provided it is ``fittable``: by its own :meth:`fit` if it
    has one (closed-form or scikit-learn heads, feature caches), else by the engine's gradient
    loop (:meth:`fit_loss` on :meth:`trainable_parameters`).
    """

    modality: str = "audio"
    label_space: LabelSpace
    embedding_dim: int
    card: TeacherCard
    fittable: bool = True  # the engine may fit it (cross-entropy) on the teacher split
    pretrained: bool = False  # True when it arrives trained (a classification head with weights):
    #                           the engine then uses it as is and never fits it
    needs_frames: bool = False  # True when forward reads ``batch.frames``
    sample_rate: int | None = None  # rate the engine resamples audio to, if any
    #: state-dict key prefixes left out of checkpoints (a frozen backbone reloaded from its source)
    checkpoint_exclude: tuple[str, ...] = ()

    def forward(self, batch: Batch) -> ModelOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def fit(self, dataset: ClipDataset, *, config: TrainConfig, device: torch.device, seed: int) -> dict[str, float] | None:
        """Optional: fit yourself on ``dataset`` (the teacher split, labels in your own classes).

        Return ``NotImplemented`` (the default) to be fitted by the engine's gradient loop, or
        fit and return a few metrics to log (or None). ``dataset.loader(batch_size)`` gives
        :class:`Batch` es; ``config`` is the recipe's ``teachers.N.fit`` block; the engine has
        seeded every generator from ``seed``. Keep what you fit in parameters or buffers: it is
        saved (safetensors) and reloaded like any weights, and reused from the store.
        """
        return NotImplemented

    def fit_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss the engine minimises when it fits this teacher, and its named terms.

        Default: cross-entropy of ``forward(batch).logits`` against the batch's labels.
        Composite teachers override it (e.g. a fusion teacher adds each branch's own term).
        """
        loss = F.cross_entropy(self(batch).logits, batch.labels)
        return loss, {"ce": loss.detach()}


class Student(nn.Module):
    """A small audio-only model: waveform in, class scores and an embedding out.

    The audio frontend (features, normalisation) lives inside the student, so a saved student
    cannot be fed different features from those it was trained on.
    """

    label_space: LabelSpace
    embedding_dim: int
    sample_rate: int

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> ModelOutput:
        raise NotImplementedError  # pragma: no cover - interface

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_second(self, seconds: float = 1.0) -> int:
        """Multiply-accumulates per second of audio (convolutions and matrix products)."""
        from liser_common.profile import macs_per_second

        return macs_per_second(self, seconds=seconds)

    def stream(self, chunks, *, window: float = 1.0, hop: float = 0.25, smoothing: float = 0.5):
        """Streaming recognition: yields a :class:`liser_core.streaming.Hop` (start, end,
        probabilities, smoothed probabilities, milliseconds) each time ``hop`` seconds of the
        ``chunks`` (mono float32 arrays at ``sample_rate``, any sizes) complete a ``window``
        seconds window, then the window aligned to the stream's end; the same windows and
        probabilities as offline windowed prediction (see :mod:`liser_core.streaming`)."""
        from .streaming import StreamRecognizer

        @torch.no_grad()
        def score(audio):
            return torch.softmax(self(torch.from_numpy(audio)).logits, -1)[0].numpy()

        return StreamRecognizer(score, self.sample_rate, window=window, hop=hop, smoothing=smoothing).run(chunks)

    def save_pretrained(self, directory, **extra) -> None:
        """Save as ``model.safetensors`` + ``config.json`` (see :mod:`liser_core.checkpoint`).

        The student must have been built through a registry (``liser_spec`` records how).
        """
        from .checkpoint import save_component

        spec = getattr(self, "liser_spec", None)
        if spec is None:
            raise ValueError("build the student through the registry (host.registries.student.build) to save it")
        save_component(
            self,
            directory,
            kind="student",
            name=spec["name"],
            options=spec["options"],
            label_space=self.label_space,
            # the factory defaults it was built with: loaded later, it is this model whatever the defaults then
            extra={"sample_rate": self.sample_rate, "num_parameters": self.num_parameters(),
                   "defaults": spec.get("defaults", {}),
                   # the clip length it was trained on (predict's window), when it was loaded with one
                   **({"train_seconds": spec["train_seconds"]} if "train_seconds" in spec else {}), **extra},
            plugin=spec.get("plugin"),
            package=spec.get("package") or None,
        )

    @classmethod
    def from_pretrained(cls, source, host=None, *, revision: str | None = None) -> Student:
        """Load a saved student (any registered architecture) in eval mode, from a folder or a
        Hugging Face Hub id (``org/name``, through huggingface_hub's cache; offline mode honoured).

        Example::

            >>> student = Student.from_pretrained("runs/synth_kd/student")  # doctest: +SKIP
            >>> student = Student.from_pretrained("org/liser-ser-student")  # doctest: +SKIP
        """
        import logging

        from ._plugins import default_host
        from .checkpoint import load_component, resolve_source, weights_changed

        folder = resolve_source(source, revision=revision)
        model = load_component(folder, (host or default_host()).registries.student, kind="student")
        if weights_changed(folder):  # loaded as asked; what describes it (card, scores, exports) does not
            logging.getLogger("liser").warning(
                "%s/model.safetensors is not the file LiSER saved there (config.json records another SHA-256): "
                "replaced since; the folder's model card, scores and exports describe other weights", folder)
        return model.eval()

    def push_to_hub(self, repo_id: str, *, run_dir=None, private: bool = False, api=None, onnx: bool = True,
                    edited_card: bool = False) -> str:
        """Upload this student (weights, config, model card, ONNX export) to the Hub as ``repo_id``;
        see :func:`liser_core.hub.push`. ``run_dir``: the run it comes from, for its model card
        and recipe: refused unless that run's student has these very weights (its card states
        that student's scores)."""
        import tempfile
        from pathlib import Path

        from safetensors.torch import load_file

        from .checkpoint import WEIGHTS_NAME
        from .hub import push

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(Path(tmp) / "student")
            if run_dir is None:
                return push(Path(tmp) / "student", repo_id, private=private, api=api, onnx=onnx)
            theirs = Path(run_dir) / "student"
            if not (theirs / WEIGHTS_NAME).is_file():
                raise UsageError(f"run_dir={run_dir}: no student/{WEIGHTS_NAME} there (not a finished run's folder)")
            mine, saved = load_file(str(Path(tmp) / "student" / WEIGHTS_NAME)), load_file(str(theirs / WEIGHTS_NAME))
            if mine.keys() != saved.keys() or any(not torch.equal(mine[k], saved[k]) for k in mine):
                raise UsageError(
                    f"run_dir={run_dir}: its student has other weights than this one, so its model card states another "
                    "model's scores; give the run this student comes from, or no run_dir"
                )
        return push(theirs, repo_id, private=private, api=api, onnx=onnx, edited_card=edited_card)


@dataclass
class BatchTargets:
    """Teacher targets for the clips of one batch, already aligned with the batch's rows."""

    logits: dict[str, torch.Tensor]  # teacher name -> (B, C_teacher) logits
    embeddings: dict[str, torch.Tensor]  # teacher name -> (B, D_teacher)
    label_maps: dict[str, LabelMap]  # teacher name -> map onto the student's label space
    weights: dict[str, float]  # teacher name -> weight (sums to 1)
    combination: Any = "per_class"  # a Combiner, or per_class | arithmetic | geometric (labels.combine)
    features: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # teacher -> tap -> (B, C, bins)
    #: online teacher -> tap -> valid frames (B,) of the taps read at full time resolution (B, C, T)
    feature_frames: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    def probs(self, temperature: float = 1.0) -> torch.Tensor:
        """The teachers' combined distribution over the student's classes at ``temperature``:
        each teacher softened at T, projected by its label map, then combined by
        :func:`liser_core.labels.combine` (``per_class``: each class mixes the teachers that can
        express it; ``arithmetic``: ``sum_i w_i p_i``; ``geometric``: a product of experts).
        """
        key = (float(temperature), self.combination)
        if key not in self._cache:
            names = list(self.logits)
            parts = [
                self.label_maps[n].project(torch.softmax(self.logits[n].float() / temperature, -1)) for n in names
            ]
            weights, reached = [self.weights[n] for n in names], [self.label_maps[n].reached for n in names]
            if callable(self.combination):  # a registered Combiner
                self._cache[key] = self.combination(parts, weights, reached)
            else:
                self._cache[key] = combine(parts, weights, reached, self.combination)
        return self._cache[key]


@dataclass
class Position:
    """Where training is, for loss terms with schedules (warm-ups, annealed temperatures).

    The engine gives every loss term of a stage one :class:`Position` (``loss.position``) and
    moves it before each step; it is restored with the rest of the training state, so a resumed
    run sees the same positions as an uninterrupted one.
    """

    step: int = 0  # optimiser steps taken before this one (0 at the first step)
    epoch: int = 0  # the current epoch, from 0
    epochs: int = 1  # epochs of the stage
    steps_per_epoch: int = 1

    @property
    def total_steps(self) -> int:
        return max(1, self.epochs * self.steps_per_epoch)

    @property
    def progress(self) -> float:
        """Fraction of the stage's steps taken, 0 at the first step, < 1 at the last."""
        return min(1.0, self.step / self.total_steps)


class Loss(nn.Module):
    """One named loss term. Every term has the same call signature.

    ``forward(student, batch, targets)`` returns a scalar. ``targets`` is None when no teacher
    is involved (labels-only training); terms that need it return ``None`` then and are skipped.
    Terms with parameters (e.g. a projection) get them in :meth:`bind`, before the optimiser is
    built. ``self.position`` (:class:`Position`) says where training is: step, epoch and
    progress (0..1), for schedules. :meth:`log` reports a scalar of the term's own (its current
    temperature, a weight) into each epoch's metrics.
    """

    needs_teacher: bool = False
    #: True when it learns from labels only (cross-entropy): without labeled clips in the stage
    #: (``distil.include_labeled: false``) it never applies, which the run says
    needs_labels: bool = False

    @property
    def position(self) -> Position:
        return self.__dict__.get("_position") or Position()

    @position.setter
    def position(self, value: Position) -> None:
        self.__dict__["_position"] = value

    def log(self, name: str, value: float | torch.Tensor) -> None:
        """Report a scalar of this term during ``forward`` (e.g. its current temperature). Its mean
        over the epoch's steps joins the epoch's metrics as ``<term key>/<name>``
        (``annealed_kl/temperature``): in the epoch event, ``history.jsonl``, wandb and the log
        line. The last value of a step counts; the preflight probe's calls are not recorded.

        Example::

            >>> def forward(self, student, batch, targets):  # doctest: +SKIP
            ...     t = self.temperature()
            ...     self.log("temperature", t)
        """
        from .preflight import probing

        if probing():
            return
        value = float(value.detach()) if torch.is_tensor(value) else float(value)
        self.__dict__.setdefault("_logged", {})[str(name)] = value

    def take_logged(self) -> dict[str, float]:
        """The scalars :meth:`log` recorded since the last call (the engine reads them each step)."""
        return self.__dict__.pop("_logged", None) or {}

    def bind(self, student_dim: int, teacher_dims: dict[str, int]) -> None:
        """Called once with the student's and each teacher's embedding size."""

    def feature_requests(self) -> list[tuple[str, str, int]]:
        """Intermediate features this term reads, after :meth:`bind`: ``(model, tap, bins)`` with
        ``model`` ``"student"`` or a teacher's key and ``tap`` a tap or submodule path
        (:mod:`liser_core.taps`). The student's arrive in ``batch.extra["features"][tap]``, a
        teacher's in ``targets.features[teacher][tap]``, each ``(B, channels, bins)``."""
        return []

    def bind_features(self, shapes: dict[tuple[str, str], tuple[int, int]]) -> None:
        """Called once with each requested tap's ``(channels, bins)``, before the optimiser is
        built: create adapters (projections) here; they train with the student and are not part
        of the saved or exported student."""

    def forward(
        self, student: ModelOutput, batch: Batch, targets: BatchTargets | None
    ) -> torch.Tensor | None:  # pragma: no cover - interface
        raise NotImplementedError


class Combiner:
    """How several teachers' distributions over the student's classes become one target.

    ``__call__(probs, weights, reached)``: ``probs`` one ``(B, C)`` distribution per teacher
    (already projected onto the student's classes by its label map), ``weights`` theirs (sum 1),
    ``reached`` one ``(C,)`` bool mask per teacher (the classes its label map can express).
    Returns ``(B, C)`` rows that sum to 1. First-party: ``per_class``, ``arithmetic``,
    ``geometric`` (:func:`liser_core.labels.combine`).
    """

    def __call__(self, probs: list[torch.Tensor], weights: list[float], reached: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - interface


class Augmentation(nn.Module):
    """A random transform of the student's training audio, applied to whole batches.

    ``forward(audio, lengths) -> (audio, lengths)``: ``audio`` ``(B, N)`` at the student's rate
    (``sample_rate``, injected), ``lengths`` the valid samples per row; a transform may change
    the length (speed perturbation). It runs in training only, after the batch reaches the
    device, and draws from torch's generator (seeded per stage and saved with every checkpoint,
    so a resumed run draws the same). Teachers always see the clean clip.
    """

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - interface

"""One-line conformance checks for plugin components, like scikit-learn's ``check_estimator``.

Each builds a component through a registry exactly as the engine does and exercises what the
engine relies on: attributes, shapes and dtypes, label spaces, finiteness, gradients,
determinism, padding, save/load round trips (safetensors) and export; a failure is an
:class:`AssertionError` naming the check and the component. Re-exported by
:mod:`liser_core.testing`::

    from liser_core.testing import check_student
    def test_my_student(liser_host):
        check_student("my_student", {"hidden": 8}, host=liser_host)
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from liser_core.components import (
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
from liser_core.data import SPLITS, Batch, ClipDataset
from liser_core.labels import LabelMap, LabelSpace
from liser_core.labels import label_space as _space


class CheckFailed(AssertionError):
    """A component failed one of the conformance checks."""


def _ensure(cond: bool, what: str, check: str) -> None:
    if not cond:
        raise CheckFailed(f"{what}: {check}")


def _host(host):
    from liser_core._plugins import default_host

    return host or default_host()


def _build(host, kind: str, name: str, options: dict, **inject):
    from liser_core.prepare import build_component

    return build_component(host.registries[kind], name, dict(options or {}), f"{kind}.options", **inject)


def _built(host, kind: str, name: str, options, label_space):
    """(host, label space, "kind 'name'", the component built from seed 0)."""
    host = _host(host)
    space = _space(label_space) if isinstance(label_space, str) else label_space
    torch.manual_seed(0)
    return host, space, f"{kind} {name!r}", _build(host, kind, name, options, label_space=space)


def _batch(n: int, rate: int, seconds=(1.0, 0.6, 0.8), frames: bool = False, classes: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([int(seconds[i % len(seconds)] * rate) for i in range(n)])
    audio = torch.zeros(n, int(lengths.max()))
    for i, k in enumerate(lengths.tolist()):
        t = torch.arange(k) / rate
        audio[i, :k] = 0.3 * torch.sin(2 * math.pi * (150 + 40 * i) * t) + 0.02 * torch.randn(k, generator=g)
    video = torch.rand(n, 4, 48, 48, generator=g) if frames else None
    return Batch(audio=audio, lengths=lengths, sample_rate=rate, labels=torch.arange(n) % classes,
                 clip_ids=[f"c{i}" for i in range(n)], index=torch.arange(n), frames=video)


def _finite_output(out, n: int, classes: int, dim: int, what: str) -> None:
    _ensure(isinstance(out, ModelOutput) or (isinstance(out, tuple) and len(out) == 2), what, "forward returns ModelOutput(logits, embedding)")
    logits, emb = out
    _ensure(tuple(logits.shape) == (n, classes), what, f"logits shape {tuple(logits.shape)}, expected {(n, classes)}")
    _ensure(tuple(emb.shape) == (n, dim), what, f"embedding shape {tuple(emb.shape)}, expected {(n, dim)} (embedding_dim)")
    _ensure(logits.dtype.is_floating_point and emb.dtype.is_floating_point, what, "outputs are floating point")
    _ensure(bool(torch.isfinite(logits).all() and torch.isfinite(emb).all()), what, "outputs are finite")


def check_student(name: str, options: dict | None = None, *, host=None, label_space: str | LabelSpace = "ravdess8",
                  padding: bool = True, export: bool = True, atol: float = 1e-4) -> Student:
    """Build ``name`` with ``options`` and check it; returns the student. ``padding``: a row's
    output must not depend on the zeros after its valid samples; ``export``: ONNX export
    through ``liser export`` matches PyTorch (onnxruntime)."""
    host, space, what, s = _built(host, "student", name, options, label_space)
    _ensure(isinstance(s, Student), what, "is a liser_core.Student")
    _ensure(s.label_space == space, what, "keeps the label_space it was given")
    _ensure(isinstance(s.embedding_dim, int) and s.embedding_dim > 0, what, "embedding_dim is a positive int")
    _ensure(isinstance(s.sample_rate, int) and s.sample_rate > 0, what, "sample_rate is a positive int")
    b = _batch(3, s.sample_rate)
    s.eval()
    with torch.no_grad():
        out = s(b.audio, b.lengths)
        _finite_output(out, 3, len(space), s.embedding_dim, what)
        again = s(b.audio, b.lengths)
        _ensure(torch.allclose(out.logits, again.logits), what, "eval forward is deterministic")
        one = s(b.audio[:1, : int(b.lengths[0])], b.lengths[:1])
        _ensure(torch.allclose(one.logits, out.logits[:1], atol=atol, rtol=1e-3), what,
                "a clip scores the same alone as in a padded batch")
        if padding:
            noisy = b.audio.clone()
            tail = torch.arange(noisy.shape[1])[None] >= (b.lengths[:, None] + s.sample_rate // 20)
            noisy[tail] = 0.5
            moved = s(noisy, b.lengths)
            _ensure(torch.allclose(moved.logits, out.logits, atol=atol, rtol=1e-3), what,
                    "what lies after a row's valid samples does not change its output (padding=False to skip)")
    s.train()
    s(b.audio, b.lengths).logits.sum().backward()
    _ensure(any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in s.parameters()), what,
            "gradients reach its parameters")
    s.zero_grad(set_to_none=True)
    s.eval()  # the training forward moved normalisation statistics: score again
    with torch.no_grad():
        out = s(b.audio, b.lengths)
    with tempfile.TemporaryDirectory() as tmp:
        s.save_pretrained(Path(tmp) / "student")
        loaded = Student.from_pretrained(Path(tmp) / "student", host=host)
        with torch.no_grad():
            _ensure(torch.allclose(loaded(b.audio, b.lengths).logits, out.logits, atol=atol), what,
                    "save_pretrained / from_pretrained round trip gives the same outputs")
        if export:
            import numpy as np
            import onnxruntime as ort

            from .deploy import export as export_student

            onnx = Path(tmp) / "student.onnx"
            export_student(Path(tmp) / "student", onnx, host=host)
            sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
            x = b.audio[:2, : int(b.lengths[:2].min())]
            got = sess.run(["logits"], {"audio": x.numpy()})[0]
            with torch.no_grad():
                want = s(x).logits.numpy()
            _ensure(bool(np.allclose(got, want, atol=1e-3, rtol=1e-3)), what, "ONNX export matches PyTorch (onnxruntime)")
    return s


def check_teacher(name: str, options: dict | None = None, *, host=None, label_space: str | LabelSpace = "ravdess8",
                  fit: bool = True, atol: float = 1e-4) -> Teacher:
    """Build ``name`` with ``options`` and check it; returns the teacher. ``fit``: one fit
    step (``fit_loss`` backward, or its own :meth:`Teacher.fit`) on a tiny batch."""
    from liser_core.checkpoint import load_component, save_component
    from liser_core.config import TrainConfig

    host, space, what, t = _built(host, "teacher", name, options, label_space)
    _ensure(isinstance(t, Teacher), what, "is a liser_core.Teacher")
    _ensure(t.modality in ("audio", "face", "audiovisual"), what, f"modality {t.modality!r} is audio, face or audiovisual")
    _ensure(isinstance(t.label_space, LabelSpace) and len(t.label_space) >= 2, what, "has a label_space of >= 2 classes")
    _ensure(isinstance(t.card, TeacherCard) and t.card.label_space == t.label_space.name, what,
            "card is a TeacherCard naming its label space")
    _ensure(isinstance(t.embedding_dim, int) and t.embedding_dim > 0, what, "embedding_dim is a positive int")
    LabelMap(t.label_space, space)  # its classes map onto the corpus's by name (raises if none do)
    rate = t.sample_rate or 16000
    b = _batch(3, rate, frames=t.needs_frames, classes=len(t.label_space))
    t.eval()
    with torch.no_grad():
        out = t(b)
        _finite_output(out, 3, len(t.label_space), t.embedding_dim, what)
        _ensure(torch.allclose(t(b).logits, out.logits), what, "eval forward is deterministic")
    if fit and t.fittable and not t.pretrained:
        if type(t).fit is not Teacher.fit:
            clips = [_clip(b, i, t.label_space) for i in range(len(b))]
            ds = ClipDataset(clips, t.label_space, rate, with_frames=t.needs_frames)
            t.fit(ds, config=TrainConfig(epochs=1, batch_size=2), device=torch.device("cpu"), seed=0)
        else:
            t.train()
            loss, terms = t.fit_loss(b)
            _ensure(torch.is_tensor(loss) and loss.numel() == 1 and bool(torch.isfinite(loss)), what,
                    "fit_loss returns a finite scalar")
            _ensure(isinstance(terms, dict), what, "fit_loss returns (loss, {name: term})")
            loss.backward()
            _ensure(any(p.grad is not None for p in t.trainable_parameters()), what,
                    "fit_loss reaches trainable_parameters()")
            t.zero_grad(set_to_none=True)
        t.eval()
    with torch.no_grad():
        out = t(b)
    with tempfile.TemporaryDirectory() as tmp:
        save_component(t, Path(tmp), kind="teacher", name=t.liser_spec["name"], options=t.liser_spec["options"],
                       label_space=t.label_space)
        loaded = load_component(Path(tmp), host.registries.teacher, kind="teacher").eval()
        with torch.no_grad():
            _ensure(torch.allclose(loaded(b).logits, out.logits, atol=atol), what,
                    "save / load round trip (safetensors) gives the same outputs")
    return t


def _clip(b: Batch, i: int, space: LabelSpace):
    from liser_core.data import Clip

    frames = None
    if b.frames is not None:
        frames = (b.frames[i].numpy() * 255).astype("uint8")
    return Clip(clip_id=b.clip_ids[i], audio=b.audio[i, : int(b.lengths[i])].numpy(), sample_rate=b.sample_rate,
                speaker=f"s{i}", label=space.classes[int(b.labels[i])], frames=frames, fps=25.0 if frames is not None else None)


def check_loss(name: str, options: dict | None = None, *, host=None, student_dim: int = 6,
               teacher_dims: dict[str, int] | None = None) -> Loss:
    """Build ``name`` with ``options`` and check it on a labeled + unlabeled batch; returns it.

    ``teacher_dims`` maps each teacher key to its embedding size, as :meth:`Loss.bind` receives
    them; default ``{"t": 5}``: one teacher under the key ``"t"``. A loss with a ``teacher``
    option (``fitnets``, ``attention_transfer``) must name a key of ``teacher_dims``, e.g.
    ``check_loss("fitnets", {"teacher": "t", ...})``, or pass ``teacher_dims`` with its own.
    """
    host = _host(host)
    what = f"loss {name!r}"
    torch.manual_seed(0)
    loss = _build(host, "loss", name, options)
    _ensure(isinstance(loss, Loss), what, "is a liser_core.Loss")
    teacher_dims = teacher_dims or {"t": 5}
    loss.bind(student_dim, teacher_dims)
    requests = list(loss.feature_requests())
    shapes = {(m, t): (3 + i, None if bins is None else int(bins)) for i, (m, t, bins) in enumerate(requests)}
    for m, _, _ in requests:
        _ensure(m == "student" or m in teacher_dims, what, f"feature_requests names 'student' or a bound teacher, not {m!r}")
    if requests:
        loss.bind_features(shapes)
    space = LabelSpace("three", ("neutral", "happy", "sad"))
    b = _batch(4, 16000, classes=3)
    b.labels = torch.tensor([0, 2, -1, -1])
    g = torch.Generator().manual_seed(1)
    frames = torch.tensor([7, 5, 6, 3])  # valid frames per clip of full-resolution taps (bins None)

    def feats(m, t, grad=False):
        c, bins = shapes[(m, t)]
        x = torch.randn(4, c, bins or 7, generator=g)
        if bins is None:
            x = x * (torch.arange(7)[None, :] < frames[:, None])[:, None, :]
        return x.requires_grad_(grad)

    student_feats = {t: feats(m, t, True) for m, t, _ in requests if m == "student"}
    b.extra["features"] = student_feats
    b.extra["feature_frames"] = {t: frames for m, t, bins in requests if m == "student" and bins is None}
    teacher_feats: dict = {}
    for m, t, _ in requests:
        if m != "student":
            teacher_feats.setdefault(m, {})[t] = feats(m, t)
    targets = BatchTargets(
        logits={k: torch.randn(4, 3, generator=g) for k in teacher_dims},
        embeddings={k: torch.randn(4, d, generator=g) for k, d in teacher_dims.items()},
        label_maps={k: LabelMap(space, space) for k in teacher_dims},
        weights={k: 1 / len(teacher_dims) for k in teacher_dims},
        features=teacher_feats,
        feature_frames={m: {t: frames} for m, t, bins in requests if m != "student" and bins is None},
    )
    logits = torch.randn(4, 3, generator=g, requires_grad=True)
    emb = torch.randn(4, student_dim, generator=g, requires_grad=True)
    for pos in (Position(0, 0, 4, 2), Position(7, 3, 4, 2)):
        loss.position = pos
        value = loss(ModelOutput(logits, emb), b, targets)
        if value is None:
            _ensure(not loss.needs_teacher, what, "a loss that needs a teacher gives a value when targets are given")
            continue
        _ensure(torch.is_tensor(value) and value.numel() == 1, what, "returns a one-element tensor or None")
        _ensure(bool(torch.isfinite(value)), what, f"is finite (at {pos})")
        grads = torch.autograd.grad(value, [logits, emb, *student_feats.values()], allow_unused=True)
        _ensure(any(g is not None and bool(g.abs().sum() > 0) for g in grads), what,
                "has a gradient w.r.t. the student's logits, embedding or features")
        again = loss(ModelOutput(logits, emb), b, targets)
        _ensure(bool(torch.allclose(again, value)), what, "gives the same value twice")
    if loss.needs_teacher:
        _ensure(loss(ModelOutput(logits, emb), b, None) is None, what, "returns None without targets (labels-only training)")
    return loss


def check_combiner(name: str, options: dict | None = None, *, host=None, classes: int = 4,
                   atol: float = 1e-5) -> Combiner:
    """Build the target combiner ``name`` with ``options`` and check it; returns it.

    On three teachers (one that cannot express the last class) and two: ``(B, C)`` rows that
    are finite, non-negative and sum to 1, floating point; the same output twice; inputs not
    modified in place; teachers that agree (and express every class) give their common
    distribution back; a single teacher's distribution is returned unchanged.
    """
    host = _host(host)
    what = f"combiner {name!r}"
    torch.manual_seed(0)
    comb = _build(host, "combiner", name, options)
    _ensure(callable(comb), what, "is callable (a liser_core.Combiner)")
    g = torch.Generator().manual_seed(2)
    n = 5
    every = torch.ones(classes, dtype=torch.bool)
    partial = every.clone()
    partial[-1] = False

    def dist(mask):
        p = torch.softmax(torch.randn(n, classes, generator=g) * 2, -1) * mask
        return p / p.sum(-1, keepdim=True)

    cases = {
        "three teachers, one without the last class": ([dist(every), dist(every), dist(partial)], [0.5, 0.3, 0.2],
                                                       [every, every, partial]),
        "two teachers": ([dist(every), dist(every)], [0.6, 0.4], [every, every]),
    }
    for case, (probs, weights, reached) in cases.items():
        before = [p.clone() for p in probs]
        out = comb(probs, weights, reached)
        _ensure(torch.is_tensor(out) and tuple(out.shape) == (n, classes), what,
                f"{case}: returns a ({n}, {classes}) tensor, not "
                f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}")
        _ensure(out.dtype.is_floating_point and bool(torch.isfinite(out).all()), what, f"{case}: rows are finite floats")
        _ensure(bool((out >= 0).all()), what, f"{case}: probabilities are >= 0")
        sums = out.sum(-1)
        _ensure(bool(torch.allclose(sums, torch.ones(n), atol=1e-4)), what,
                f"{case}: rows sum to 1 (sums: {', '.join(f'{v:.4g}' for v in sums.tolist())})")
        _ensure(all(torch.equal(a, b) for a, b in zip(probs, before)), what, f"{case}: inputs are not modified in place")
        _ensure(torch.allclose(comb(probs, weights, reached), out), what, f"{case}: gives the same output twice")
    p = dist(every)
    agree = comb([p, p.clone()], [0.7, 0.3], [every, every])
    _ensure(torch.allclose(agree, p, atol=atol), what, "teachers that agree give their common distribution")
    alone = comb([p], [1.0], [every])
    _ensure(torch.allclose(alone, p, atol=atol), what, "a single teacher's distribution is returned unchanged")
    return comb


def check_augmentation(name: str, options: dict | None = None, *, host=None, sample_rate: int = 16000) -> Augmentation:
    """Build the training augmentation ``name`` with ``options`` (and ``sample_rate``, as the
    engine injects it) and check it on a padded batch; returns it.

    ``forward(audio, lengths)`` returns ``(audio, lengths)``: ``(B, N')`` floating point audio
    of the input's dtype, finite, lengths ``(B,)`` in ``[1, N']``; the input is not modified in
    place; the same torch seed gives the same output (it draws from torch's generator, which
    the engine seeds and checkpoints); it runs under ``torch.no_grad`` as in training.
    """
    host = _host(host)
    what = f"augmentation {name!r}"
    torch.manual_seed(0)
    aug = _build(host, "augmentation", name, options, sample_rate=sample_rate)
    _ensure(isinstance(aug, Augmentation), what, "is a liser_core.Augmentation")
    b = _batch(4, sample_rate)
    audio, lengths = b.audio.clone(), b.lengths.clone()

    def apply(seed: int):
        torch.manual_seed(seed)
        with torch.no_grad():
            return aug(audio, lengths)

    aug.train()
    got = apply(1)
    _ensure(isinstance(got, tuple) and len(got) == 2 and all(torch.is_tensor(t) for t in got), what,
            "forward returns (audio, lengths)")
    out, new = got
    _ensure(torch.equal(audio, b.audio) and torch.equal(lengths, b.lengths), what, "the input is not modified in place")
    _ensure(out.ndim == 2 and out.shape[0] == 4, what, f"audio stays (B, N): got shape {tuple(out.shape)}")
    _ensure(out.dtype == audio.dtype, what, f"audio keeps its dtype ({audio.dtype}, got {out.dtype})")
    _ensure(bool(torch.isfinite(out).all()), what, "audio is finite")
    _ensure(tuple(new.shape) == (4,) and not new.dtype.is_floating_point, what, "lengths are (B,) integers")
    _ensure(bool((new >= 1).all() and (new <= out.shape[1]).all()), what,
            f"lengths lie in [1, {out.shape[1]}] (got {new.tolist()})")
    again = apply(1)
    _ensure(torch.equal(again[0], out) and torch.equal(again[1], new), what,
            "the same torch seed gives the same output (draw from torch's generator only)")
    return aug


def check_sampler(name: str, options: dict | None = None, *, host=None, batch_size: int = 4) -> Any:
    """Build the batch sampler ``name`` with ``options`` and check it on 23 clips (labeled in three
    classes and unlabeled, durations 0.5-4 s, one unknown); returns it.

    ``epoch(...)`` returns non-empty lists of valid clip indices; the same seed gives the same
    batches and another seed (usually) others; every labeled class is drawn; the global RNGs are
    not used (torch's, Python's, NumPy's stay as they were); the same holds when no duration is
    known (a corpus indexed without them).
    """
    import random

    import numpy as np

    from liser_core.data import Sampler

    host = _host(host)
    what = f"sampler {name!r}"
    sampler = _build(host, "sampler", name, options)
    _ensure(isinstance(sampler, Sampler), what, "is a liser_core.Sampler")
    n = 23
    seconds = torch.linspace(0.5, 4.0, n, dtype=torch.float64)
    seconds[5] = float("nan")
    labels = torch.tensor([i % 3 if i % 2 == 0 else -1 for i in range(n)])
    speakers = [f"s{i % 5}" for i in range(n)]

    def epoch(seed: int, secs=seconds):
        return [[int(i) for i in b] for b in sampler.epoch(secs, labels, speakers, batch_size, torch.Generator().manual_seed(seed))]

    state = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    first = epoch(3)
    _ensure(bool(first) and all(len(b) > 0 for b in first), what, "returns non-empty batches")
    _ensure(all(0 <= i < n for b in first for i in b), what, f"indices lie in [0, {n})")
    _ensure(torch.equal(torch.get_rng_state(), state[0]) and random.getstate() == state[1]
            and bool((np.random.get_state()[1] == state[2]).all()), what,
            "draws from the generator it is given only (the global RNGs are untouched)")
    _ensure(epoch(3) == first, what, "the same seed gives the same batches")
    seen = {int(labels[i]) for b in first for i in b}
    _ensure({0, 1, 2} <= seen, what, "every labeled class is drawn in an epoch")
    unknown = epoch(3, torch.full((n,), float("nan"), dtype=torch.float64))
    _ensure(bool(unknown) and all(len(b) > 0 and all(0 <= i < n for i in b) for b in unknown), what,
            "works when no clip's duration is known (NaN)")
    return sampler


def check_dataset(name: str, options: dict | None = None, *, host=None, seed: int = 0, load: int = 4) -> Any:
    """Build the corpus ``name`` with ``options`` and check it; returns it. ``load``: clips per
    split decoded (``Corpus.load`` or in memory)."""
    host = _host(host)
    what = f"dataset {name!r}"
    c = _build(host, "dataset", name, options, seed=seed)
    for attr in ("name", "label_space", "split"):
        _ensure(hasattr(c, attr), what, f"the corpus has {attr!r}")
    _ensure(isinstance(c.label_space, LabelSpace), what, "label_space is a LabelSpace")
    ids, speakers = set(), {}
    for s in SPLITS:
        clips = list(c.split(s))
        speakers[s] = {x.speaker for x in clips}
        for x in clips:
            _ensure(x.clip_id not in ids, what, f"clip ids are unique (again: {x.clip_id!r})")
            ids.add(x.clip_id)
            _ensure(x.label is None or x.label in c.label_space.classes, what,
                    f"labels are class names of its label space ({x.clip_id!r}: {x.label!r})")
            _ensure(x.sample_rate > 0 and bool(x.speaker), what, f"{x.clip_id!r} has a sample rate and a speaker")
        ds = ClipDataset(clips[:load], c.label_space, clips[0].sample_rate if clips else 16000, with_labels=False,
                         loader=getattr(c, "load", None))
        for i in range(len(ds)):
            item = ds.load(clips[i])
            _ensure(item.audio is not None and item.audio.ndim == 1 and len(item.audio) > 0, what,
                    f"{item.clip_id!r} loads to a mono waveform")
    _ensure(bool(c.split("test")), what, "has test clips")
    for s in ("teacher", "labeled", "unlabeled"):
        shared = speakers[s] & speakers["test"]
        _ensure(not shared, what, f"speaker-independent: {s!r} and 'test' share speakers {sorted(shared)[:3]}")
    again = _build(host, "dataset", name, options, seed=seed)
    _ensure([x.clip_id for s in SPLITS for x in again.split(s)] == [x.clip_id for s in SPLITS for x in c.split(s)],
            what, "the same options and seed give the same splits")
    return c


__all__ = ["CheckFailed", "check_augmentation", "check_combiner", "check_dataset", "check_loss", "check_sampler",
           "check_student", "check_teacher"]

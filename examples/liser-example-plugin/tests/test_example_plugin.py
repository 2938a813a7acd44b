"""A plugin author's own tests, written with the fixtures LiSER ships in ``liser_core.testing``
(a pytest plugin that pytest loads automatically once ``liser`` is installed).

Run them from this folder with ``pytest`` (installed or not: ``fake_distribution`` declares the
entry point and puts ``src`` on ``sys.path``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from liser_core import BatchTargets, LabelMap, ModelOutput, label_space, load_plugins

SRC = Path(__file__).parents[1] / "src"


@pytest.fixture
def plugin(fake_distribution, monkeypatch):
    """Declare the package's entry point as ``pip install`` would, and import the plugin module."""
    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    fake_distribution("liser-example-plugin", {"example": "liser_example.plugin"}, version="0.1.0", path=SRC)
    import liser_example.plugin

    yield liser_example.plugin
    for name in [m for m in sys.modules if m.split(".")[0] == "liser_example"]:
        del sys.modules[name]


@pytest.fixture
def host(plugin):
    return load_plugins(strict=True)  # strict: a failure to load this plugin fails the test


def test_registers_one_student_and_one_loss(host):
    info = next(p for p in host.plugins if p.name == "example")
    assert info.status == "loaded"
    assert info.components == {"student": ["example_gru"], "loss": ["symmetric_kl"]}


def test_student_shapes_and_attributes(host):
    space = label_space("cremad6")
    student = host.registries.student.build("example_gru", label_space=space, hidden=12)
    out = student(torch.randn(3, 16000), torch.tensor([16000, 12000, 4000]))
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (3, len(space)) and out.embedding.shape == (3, 12)
    assert (student.label_space, student.sample_rate, student.embedding_dim) == (space, 16000, 12)


def test_student_ignores_the_padding(plugin):
    """Whatever fills a row after its valid samples must not change that row's output."""
    student = plugin.GRUStudent(label_space("ravdess8"), hidden=8).eval()
    n = 6000
    audio = torch.zeros(2, 16000)
    audio[:, :n] = torch.randn(n)
    noisy = audio.clone()
    # frames counted as valid end at most half a 25 ms window (200 samples) past sample n
    noisy[:, n + 200 :] = torch.randn(16000 - n - 200)
    lengths = torch.tensor([n, n])
    with torch.no_grad():
        clean, dirty = student(audio, lengths), student(noisy, lengths)
        unmasked = student(noisy, torch.tensor([16000, 16000]))
    torch.testing.assert_close(dirty.embedding, clean.embedding)
    assert not torch.allclose(unmasked.embedding, clean.embedding)  # the noise does matter


def _two_class(teacher_logits, student_logits, temperature=1.0):
    space = label_space(["happy", "sad"])
    targets = BatchTargets(
        logits={"t": torch.tensor(teacher_logits)},
        embeddings={},
        label_maps={"t": LabelMap(space, space)},
        weights={"t": 1.0},
    )
    return ModelOutput(torch.tensor(student_logits), torch.zeros(1, 1)), targets


def test_symmetric_kl_properties(plugin):
    loss = plugin.SymmetricKL(temperature=2.0)
    a, b = [[2.0, -1.0]], [[0.5, 0.5]]
    out, targets = _two_class(a, b)
    swapped_out, swapped_targets = _two_class(b, a)
    value = loss(out, None, targets)
    assert value.item() > 0
    assert value.item() == pytest.approx(loss(swapped_out, None, swapped_targets).item())  # symmetric
    same_out, same_targets = _two_class(a, a)
    assert loss(same_out, None, same_targets).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(out, None, None) is None  # no teacher: the term is skipped


def test_symmetric_kl_stays_finite_on_unreached_classes(plugin):
    """A student class no teacher class maps to (angry here) has target probability 0."""
    teacher = label_space(["happy", "sad"])
    student = label_space(["happy", "sad", "angry"])
    targets = BatchTargets(
        logits={"t": torch.tensor([[1.0, 0.0]])},
        embeddings={},
        label_maps={"t": LabelMap(teacher, student)},
        weights={"t": 1.0},
    )
    value = plugin.SymmetricKL()(ModelOutput(torch.zeros(1, 3), torch.zeros(1, 1)), None, targets)
    assert math.isfinite(value.item()) and value.item() > 0


def test_options_rejected_at_construction(plugin):
    with pytest.raises(ValueError, match="temperature"):
        plugin.SymmetricKL(temperature=0.0)
    with pytest.raises(ValueError, match="hidden"):
        plugin.GRUStudent(label_space("ravdess8"), hidden=0)


def test_tiny_run(host, run_tiny):
    ctx = run_tiny(
        overrides=[
            "student.name=example_gru",
            "student.options={hidden: 16}",
            "distil.losses=[{name: symmetric_kl}, {name: ce, weight: 0.5}]",
        ],
        host=host,
    )
    assert ctx.config.student.name == "example_gru"
    assert list(ctx.losses) == ["symmetric_kl", "ce"]
    assert math.isfinite(ctx.results()["student"]["uar"])

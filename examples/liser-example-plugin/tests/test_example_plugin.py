"""A plugin author's own tests, written with the fixtures of LiSER's pytest plugin (``liser_tools.testing``)
(a pytest plugin that pytest loads automatically once ``liser`` is installed).

Run them from this folder with ``pytest`` (installed or not: ``fake_distribution`` declares the
entry point and puts ``src`` on ``sys.path``).
"""

from __future__ import annotations

import json
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
    assert info.components == {"student": ["example_gru"], "loss": ["annealed_kl", "attention_transfer", "energy_contour", "symmetric_kl"], "teacher": ["prosody"], "combiner": ["confidence"], "augmentation": ["polarity"], "logger": ["epoch_csv"],
                               "optimizer": ["sign_sgd"], "scheduler": ["linear_decay"], "sampler": ["speaker_mix"]}


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


# -- the second edition's extension points, one component each ------------------------------------
def test_every_component_passes_liser_checks(host):
    from liser_core.testing import (
        check_augmentation,
        check_combiner,
        check_loss,
        check_sampler,
        check_student,
        check_teacher,
    )

    check_student("example_gru", {"hidden": 8}, host=host, export=False)
    check_teacher("prosody", {}, host=host)
    check_loss("symmetric_kl", host=host)
    check_loss("annealed_kl", host=host)
    check_loss("attention_transfer", {"student_tap": "s", "teacher_tap": "t", "bins": 3}, host=host)
    check_combiner("confidence", {"sharpness": 2.0}, host=host)
    check_augmentation("polarity", host=host)
    check_sampler("speaker_mix", host=host)
    check_loss("energy_contour", {"student_tap": "s", "teacher_tap": "t"}, host=host)


def test_prosody_teacher_fits_itself_in_closed_form(plugin):
    """The fitted head is the ridge solution: the gradient of the penalised squared error is 0."""
    from liser_core import Clip, ClipDataset
    from liser_core.config import TrainConfig

    space = label_space(["happy", "sad"])
    g = torch.Generator().manual_seed(0)
    clips = []
    for i in range(12):
        t = torch.arange(8000) / 16000
        freq, amp = (300.0, 0.5) if i % 2 == 0 else (120.0, 0.05)  # happy: high and loud
        audio = amp * torch.sin(2 * math.pi * freq * t) + 0.01 * torch.randn(8000, generator=g)
        clips.append(Clip(f"c{i}", audio.numpy(), 16000, f"s{i}", ["happy", "sad"][i % 2]))
    teacher = plugin.ProsodyTeacher(space, ridge=0.5)
    ds = ClipDataset(clips, space, 16000)
    out = teacher.fit(ds, config=TrainConfig(batch_size=5), device=torch.device("cpu"), seed=0)
    assert out["train_accuracy"] == 1.0  # two well separated classes
    batch = ds.collate([ds[i] for i in range(len(ds))])
    z = torch.nn.functional.pad(teacher.embed(batch), (0, 1), value=1.0).double()
    y = torch.nn.functional.one_hot(batch.labels, 2).double()
    w = teacher.weight.double()
    penalty = torch.eye(7, dtype=torch.float64)
    penalty[-1, -1] = 0
    grad = z.T @ (z @ w - y) + 0.5 * penalty @ w
    assert grad.abs().max() < 1e-3


def test_annealed_kl_temperature_follows_progress(plugin):
    from liser_core import Position

    loss = plugin.AnnealedKL(t_start=4.0, t_end=1.0)
    loss.position = Position(step=0, epochs=2, steps_per_epoch=5)
    assert loss.temperature() == pytest.approx(4.0)
    loss.position = Position(step=5, epoch=1, epochs=2, steps_per_epoch=5)
    assert loss.temperature() == pytest.approx(2.5)
    out, targets = _two_class([[2.0, -1.0]], [[0.5, 0.5]])
    t = 2.5
    p = torch.softmax(torch.tensor([2.0, -1.0]) / t, 0)
    q = torch.softmax(torch.tensor([0.5, 0.5]) / t, 0)
    assert loss(out, None, targets).item() == pytest.approx(t * t * float((p * (p / q).log()).sum()), rel=1e-5)


def test_attention_transfer_by_hand(plugin):
    from liser_core import Batch

    loss = plugin.AttentionTransfer(student_tap="s", teacher_tap="t", teacher="x", bins=2)
    s = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # energy (1, 0) -> attention (1, 0)
    t = torch.tensor([[[3.0, 4.0]]])  # energy (9, 16) -> (9, 16) / sqrt(337)
    b = Batch(audio=torch.zeros(1, 2), lengths=torch.tensor([2]), sample_rate=1, labels=torch.tensor([-1]),
              clip_ids=["a"], index=torch.tensor([0]), extra={"features": {"s": s}})
    tg = BatchTargets(logits={}, embeddings={}, label_maps={}, weights={}, features={"x": {"t": t}})
    n = math.sqrt(81 + 256)
    want = (1 - 9 / n) ** 2 + (16 / n) ** 2
    assert loss(ModelOutput(torch.zeros(1, 2), torch.zeros(1, 1)), b, tg).item() == pytest.approx(want, rel=1e-5)


def test_confidence_combiner_and_polarity_by_hand(plugin):
    a, b = torch.tensor([[0.9, 0.1]]), torch.tensor([[0.5, 0.5]])
    got = plugin.ConfidenceCombiner(sharpness=1.0)([a, b], [0.5, 0.5], [torch.tensor([True, True])] * 2)
    wa, wb = 0.9 / 1.4, 0.5 / 1.4  # weights 0.5 x confidence, renormalised
    torch.testing.assert_close(got, torch.tensor([[wa * 0.9 + wb * 0.5, wa * 0.1 + wb * 0.5]]))
    x = torch.randn(4, 10)
    y, n = plugin.Polarity(p=1.0)(x, torch.full((4,), 10))
    torch.testing.assert_close(y, -x)
    y, _ = plugin.Polarity(p=0.0)(x, n)
    torch.testing.assert_close(y, x)


def test_energy_contour_by_hand(plugin):
    from liser_core import Batch

    loss = plugin.EnergyContour(student_tap="s", teacher_tap="t", teacher="x")
    fs = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])  # (B=1, C=1, T=4); 2 valid frames: energy [1, 1]
    ft = torch.tensor([[[0.0, 2.0, 2.0]], ])  # its teacher: 3 valid frames, energy [0, 4, 4]
    b = Batch(audio=torch.zeros(1, 8), lengths=torch.tensor([8]), sample_rate=1, labels=torch.tensor([-1]),
              clip_ids=["a"], index=torch.tensor([0]),
              extra={"features": {"s": fs}, "feature_frames": {"s": torch.tensor([2])}})
    tg = BatchTargets(logits={}, embeddings={}, label_maps={}, weights={}, features={"x": {"t": ft}},
                      feature_frames={"x": {"t": torch.tensor([3])}})
    # the teacher's contour [0, 4, 4] resampled linearly to 2 frames: [1, 4]; normalised [1, 4] / sqrt(17)
    a = torch.tensor([1.0, 1.0]) / 2**0.5
    t = torch.tensor([1.0, 4.0]) / 17**0.5
    got = loss(ModelOutput(torch.zeros(1, 2), torch.zeros(1, 2)), b, tg)
    assert got.item() == pytest.approx(float((a - t).pow(2).sum()), rel=1e-5)


def test_sign_sgd_linear_decay_and_speaker_mix_by_hand(plugin):
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = plugin.SignSGD([{"params": [w]}], lr=0.1, weight_decay=0.5, beta=0.0)
    sched = plugin.linear_decay(opt, total_steps=4, end=0.5)
    w.grad = torch.tensor([3.0, -0.01])
    opt.step()  # w - 0.1 (sign(g) + 0.5 w) = [1 - 0.1 * 1.5, -2 - 0.1 * (-1 - 1)]
    torch.testing.assert_close(w.detach(), torch.tensor([0.85, -1.8]))
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 0.5 * 1 / 4))
    speakers = ["a", "a", "a", "b", "b", "c"]
    batches = plugin.SpeakerMix().epoch(torch.ones(6), torch.full((6,), -1), speakers, 3, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert len({speakers[i] for i in batches[0]}) == 3  # the first batch: one clip of each speaker


def test_a_run_with_every_extension_point(host, run_tiny):
    ctx = run_tiny(
        overrides=[
            "validation={source: teacher, speakers: 0.5}",
            "teachers=[{name: prosody}, {name: audio_cnn, online: true, fit: {epochs: 1, batch_size: 16}, options: {channels: [4, 8], hidden: 16}}]",
            "student.name=example_gru",
            "student.options={hidden: 8}",
            "distil.combination=confidence",
            "distil.augment=[{name: polarity}]",
            "distil.epochs=2",
            "distil.early_stop={metric: uar, patience: 2}",
            "distil.optimizer=sign_sgd",
            "distil.optimizer_options={beta: 0.8}",
            "distil.lr=0.0005",
            "distil.scheduler=linear_decay",
            "distil.sampler=speaker_mix",
            "distil.losses=[{name: annealed_kl}, {name: attention_transfer, weight: 0.5, options: {teacher: audio_cnn, bins: 4}}, {name: ce, weight: 0.5}, {name: energy_contour, weight: 0.5, options: {teacher: audio_cnn, teacher_tap: block1}}]",
            "loggers={run_dir: {confusion_png: false}, epoch_csv: {}}",
        ],
        host=host,
    )
    assert math.isfinite(ctx.results()["student"]["uar"])
    rows = (ctx.run_dir / "epochs.csv").read_text().splitlines()
    assert any(",val_uar," in r for r in rows) and any(r.startswith("distil,student,") for r in rows)
    assert ctx.teachers["prosody"].weight.abs().sum() > 0  # it fitted itself
    manifest = json.loads((ctx.run_dir / "manifest.json").read_text())["components"]
    assert manifest["distil.optimizer"] == "example:sign_sgd" and manifest["distil.sampler"] == "example:speaker_mix"
    assert manifest["distil.scheduler"] == "example:linear_decay"
    history = [json.loads(line) for line in (ctx.run_dir / "history.jsonl").read_text().splitlines()]
    temps = [r["annealed_kl/temperature"] for r in history if r["stage"] == "distil"]
    assert len(temps) == 2 and 4.0 >= temps[0] > temps[1] >= 1.0  # annealed from t_start 4 towards t_end 1

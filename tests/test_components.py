"""Every registered student and teacher, parametrised over the registries: a component added
to a first-party plugin is tested the day it is added."""

import pytest
import torch
import torch.nn.functional as F

from liser_core import Batch, load_plugins
from liser_core.checkpoint import load_component, save_component
from liser_core.labels import CREMAD6, RAVDESS8

HOST = load_plugins()
TINY = {  # small sizes so the parametrised tests stay fast
    "logmel_cnn": {"channels": [4, 8], "dropout": 0.0},
    "ecapa_tdnn": {
        "channels": [16, 16, 48],
        "kernel_sizes": [5, 3, 1],
        "dilations": [1, 2, 1],
        "res2net_scale": 2,
        "attention_channels": 8,
        "se_channels": 8,
        "lin_neurons": 16,
        "dropout": 0.0,
    },
    "timm_mobile": {"model": "test_efficientnet", "n_mels": 32, "dropout": 0.0},
    "audio_cnn": {"channels": [4, 8], "hidden": 16, "dropout": 0.0},
    "face_cnn": {"channels": [4, 8], "hidden": 16, "dropout": 0.0},
    "av_fusion": {
        "mode": "learned",
        "hidden": 16,
        "dropout": 0.0,
        "audio": {"name": "audio_cnn", "options": {"channels": [4, 8], "hidden": 16, "dropout": 0.0}},
        "face": {"name": "face_cnn", "options": {"channels": [4, 8], "hidden": 16, "dropout": 0.0}},
    },
}


def needs_checkpoint(kind, name) -> bool:
    """Components whose factory requires options a generic test cannot invent (a model path):
    they have their own test module (tests/test_<plugin>.py) with tiny local checkpoints."""
    params = HOST.registries[kind].get(name).signature().parameters.values()
    required = {p.name for p in params if p.default is p.empty and p.name != "label_space"}
    return bool(required - set(TINY.get(name, {})))


def make_batch(n=4, seconds=0.5, frames=3, sr=16000):
    """Clip i: a tone whose pitch and a face whose brightness depend on its class (learnable)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 6
    t = torch.arange(int(seconds * sr)) / sr
    tones = torch.sin(2 * torch.pi * (200 + 150 * labels[:, None].float()) * t)
    return Batch(
        audio=0.1 * tones + 0.01 * torch.randn(n, int(seconds * sr), generator=g),
        lengths=torch.full((n,), int(seconds * sr)),
        sample_rate=sr,
        labels=labels,
        clip_ids=[f"c{i}" for i in range(n)],
        index=torch.arange(n),
        frames=0.5 * torch.rand(n, frames, 48, 48, generator=g) + labels[:, None, None, None] / 12,
    )


def forward(kind, model, batch):
    return model(batch.audio, batch.lengths) if kind == "student" else model(batch)


# components that need a model path (a checkpoint or a local model folder) are left out here:
# their own test files build one
COMPONENTS = [
    (kind, n) for kind in ("student", "teacher") for n in HOST.registries[kind].list() if not needs_checkpoint(kind, n)
]


@pytest.mark.parametrize("kind, name", COMPONENTS)
def test_shapes_and_declared_attributes(kind, name):
    model = HOST.registries[kind].build(name, label_space=CREMAD6, **TINY.get(name, {})).eval()
    out = forward(kind, model, make_batch())
    # fresh heads take the corpus's classes; pretrained teachers keep their own label space
    assert out.logits.shape == (4, 6 if not getattr(model, "pretrained", False) else len(model.label_space))
    assert len(model.label_space) == out.logits.shape[1]
    assert out.embedding.shape == (4, model.embedding_dim)
    assert torch.isfinite(out.logits).all()
    if kind == "teacher":
        assert model.card.modality == model.modality and model.card.label_space == model.label_space.name


@pytest.mark.parametrize("kind, name", COMPONENTS)
def test_save_load_round_trip_is_exact(kind, name, tmp_path):
    opts = TINY.get(name, {})
    model = HOST.registries[kind].build(name, label_space=RAVDESS8, **opts)
    batch = make_batch()
    # train a step so BatchNorm statistics and weights differ from a fresh build
    model.train()
    if any(p.requires_grad for p in model.parameters()):
        F.cross_entropy(forward(kind, model, batch).logits, batch.labels).backward()
    model.eval()
    save_component(model, tmp_path / name, kind=kind, name=name, options=opts, label_space=RAVDESS8)
    loaded = load_component(tmp_path / name, HOST.registries[kind], kind=kind).eval()
    with torch.no_grad():
        assert torch.equal(forward(kind, model, batch).logits, forward(kind, loaded, batch).logits)
    assert loaded.label_space == model.label_space


@pytest.mark.parametrize("kind, name", COMPONENTS)
def test_a_few_steps_reduce_the_loss(kind, name):
    torch.manual_seed(0)
    model = HOST.registries[kind].build(name, label_space=CREMAD6, **TINY.get(name, {}))
    batch = make_batch(n=12)
    if getattr(model, "pretrained", False) and not any(p.requires_grad for p in model.parameters()):
        return  # a frozen pretrained teacher (e.g. fer_xception) is never fitted: nothing to train
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        model.train()
        loss = F.cross_entropy(forward(kind, model, batch).logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_students_are_far_smaller_than_teachers():
    student = HOST.registries.student.build("logmel_cnn", label_space=RAVDESS8)
    # the teachers fitted in a run stand for big pretrained models: much larger than the student
    for name in ("audio_cnn", "face_cnn"):
        teacher = HOST.registries.teacher.build(name, label_space=RAVDESS8)
        assert sum(p.numel() for p in teacher.parameters()) > 10 * student.num_parameters()
    assert student.num_parameters() < 100_000


def test_student_uses_lengths_to_ignore_padding():
    student = HOST.registries.student.build("logmel_cnn", label_space=RAVDESS8).eval()
    audio = 0.1 * torch.randn(1, 8000)
    padded = torch.cat([audio, torch.zeros(1, 24000)], 1)
    with torch.no_grad():
        a = student(audio, torch.tensor([8000])).logits
        b = student(padded, torch.tensor([8000])).logits
        c = student(padded, torch.tensor([32000])).logits
    # masking keeps padding out: far closer than when the padding counts as audio
    assert (a - b).abs().max() < 0.05 * (a - c).abs().max()


def test_wrong_checkpoint_kind_is_refused(tmp_path):
    from liser_core.errors import UsageError

    model = HOST.registries.student.build("logmel_cnn", label_space=RAVDESS8, channels=[4])
    save_component(model, tmp_path / "s", kind="student", name="logmel_cnn", options={"channels": [4]}, label_space=RAVDESS8)
    with pytest.raises(UsageError, match="expected a 'teacher'"):
        load_component(tmp_path / "s", HOST.registries.teacher, kind="teacher")
    with pytest.raises(UsageError, match="not a LiSER checkpoint"):
        load_component(tmp_path, HOST.registries.student, kind="student")

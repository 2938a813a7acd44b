import math

import pytest
import torch

from liser_core import ConfigError, ModelOutput, Teacher, TeacherCard, hookimpl, load_plugins
from liser_core.checkpoint import load_component
from liser_core.labels import FER2013_7, RAVDESS8, LabelSpace

THREE = LabelSpace("three", ("neutral", "happy", "sad"))


class Fixed(Teacher):
    """A pretrained stub teacher with fixed logits, for hand-computed fusion checks."""

    pretrained = True

    def __init__(self, label_space, modality="audio", logits=(0.0, 0.0, 0.0), space=None):
        super().__init__()
        self.modality = modality
        self.needs_frames = modality == "face"
        self.label_space = LabelSpace("x", tuple(space)) if space else THREE
        self.logits = torch.tensor(logits)
        self.embedding_dim = 2
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.card = TeacherCard(name="fixed", modality=modality, backbone="stub",
                                label_space=self.label_space.name, trained_on=(f"{modality}_corpus",))

    def forward(self, batch):
        n = batch.audio.shape[0]
        return ModelOutput(self.logits.expand(n, -1) + 0 * self.w, torch.ones(n, 2))


class StubPlugin:
    @hookimpl
    def liser_register_teachers(self, registry):
        registry.register("fixed_audio", lambda label_space, logits=(0.0, 0.0, 0.0), space=None: Fixed(label_space, "audio", logits, space), modality="audio")
        registry.register("fixed_face", lambda label_space, logits=(0.0, 0.0, 0.0), space=None: Fixed(label_space, "face", logits, space), modality="face")


@pytest.fixture
def host():
    h = load_plugins()
    h.add("stubs", StubPlugin())
    return h


def batch(n=2):
    from liser_core import Batch

    return Batch(audio=torch.zeros(n, 100), lengths=torch.full((n,), 100), sample_rate=16000,
                 labels=torch.zeros(n, dtype=torch.long), clip_ids=["a"] * n, index=torch.arange(n),
                 frames=torch.zeros(n, 2, 8, 8))


def test_late_fusion_by_hand_with_label_maps(host):
    # audio teacher: (neutral, happy, sad) = softmax(0, log 2, 0) = (1/4, 1/2, 1/4)
    # face teacher in another order with a class to drop: (sad, neutral, happy, contempt)
    fusion = host.registries.teacher.build(
        "av_fusion", label_space=THREE, weights=[3, 1],
        audio={"name": "fixed_audio", "options": {"logits": [0.0, math.log(2), 0.0]}},
        face={"name": "fixed_face", "options": {"logits": [0.0, 0.0, math.log(2), 0.0],
                                                "space": ["sad", "neutral", "happy", "contempt"]}},
        face_label_map={"drop": ["contempt"]},
    )
    assert fusion.pretrained  # both branches arrive trained: used as is
    p = torch.softmax(fusion(batch()).logits, -1)[0]
    # face: (1,1,2,1)/5 -> drop contempt -> sad 1/4, neutral 1/4, happy 1/2
    face = torch.tensor([0.25, 0.5, 0.25])
    audio = torch.tensor([0.25, 0.5, 0.25])
    assert torch.allclose(p, 0.75 * audio + 0.25 * face, atol=1e-6)
    assert fusion.card.modality == "audiovisual"
    assert set(fusion.card.trained_on) == {"audio_corpus", "face_corpus"}


def test_branch_errors_name_the_nested_key(host):
    with pytest.raises(ConfigError) as e:
        host.registries.teacher.build("av_fusion", label_space=RAVDESS8, audio={"name": "audio_cn"}, face={"name": "face_cnn"})
    assert e.value.key == "audio.name" and "audio_cnn" in str(e.value)
    with pytest.raises(ConfigError) as e:
        host.registries.teacher.build("av_fusion", label_space=RAVDESS8, audio={"name": "face_cnn"}, face={"name": "face_cnn"})
    assert "is a face teacher, not audio" in str(e.value)
    with pytest.raises(ConfigError) as e:
        host.registries.teacher.build("av_fusion", label_space=RAVDESS8, audio={"name": "audio_cnn", "options": {"chanels": [4]}}, face={"name": "face_cnn"})
    assert e.value.key == "audio.options.chanels"
    with pytest.raises(ConfigError) as e:
        host.registries.teacher.build(
            "av_fusion", label_space=RAVDESS8, audio={"name": "audio_cnn"},
            face={"name": "fixed_face", "options": {"space": ["neutral", "contempt"], "logits": [0.0, 0.0]}},
        )
    assert e.value.key == "face_label_map" and "contempt" in str(e.value)


def test_recipe_key_path_for_a_bad_branch(run_tiny):
    with pytest.raises(ConfigError) as e:
        run_tiny(overrides=["teachers=[{name: av_fusion, options: {audio: {name: audio_cn}, face: {name: face_cnn}}}]"])
    assert e.value.key == "teachers.0.options.audio.name"


TINY_FUSION = (
    "teachers=[{name: av_fusion, fit: {epochs: 2, batch_size: 8}, options: {mode: learned, hidden: 16,"
    " audio: {name: audio_cnn, options: {channels: [4, 8], hidden: 16}},"
    " face: {name: face_cnn, options: {channels: [4, 8], hidden: 16}}}}]"
)


def test_learned_fusion_end_to_end_and_reload(run_tiny, tmp_path):
    host = load_plugins()
    ctx = run_tiny(host=host, overrides=[TINY_FUSION])
    assert {"av_fusion", "student"} <= set(ctx.results())
    history = (ctx.run_dir / "history.jsonl").read_text()
    for term in ("loss/fused", "loss/audio", "loss/face"):  # fresh branches fitted jointly
        assert term in history
    saved = ctx.run_dir / "teachers" / "av_fusion"
    teacher = load_component(saved, host.registries.teacher, kind="teacher")
    assert teacher.card.modality == "audiovisual"
    again = run_tiny(host=host, overrides=[TINY_FUSION, f"teachers.0.checkpoint={saved}", f"run_dir={tmp_path / 'again'}"])
    a = next(e for e in ctx.evaluations if e.model == "av_fusion").probs
    b = next(e for e in again.evaluations if e.model == "av_fusion").probs
    assert torch.allclose(a, b, atol=1e-6)


def test_trained_branches_are_frozen_in_learned_mode(run_tiny, tmp_path):
    host = load_plugins()
    first = run_tiny(host=host)  # fits face_cnn and audio_cnn (tiny) and saves them
    face_dir = first.run_dir / "teachers" / "face_cnn"
    audio_dir = first.run_dir / "teachers" / "audio_cnn"
    fusion = host.registries.teacher.build(
        "av_fusion", label_space=first.label_space, mode="learned", hidden=8,
        audio={"name": "audio_cnn", "checkpoint": str(audio_dir)}, face={"name": "face_cnn", "checkpoint": str(face_dir)},
    )
    trainable = {n for n, p in fusion.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("fusion.", "head.")) for n in trainable)
    fusion.train()
    assert not fusion.face.training and fusion.fusion.training


def test_fer_space_maps_onto_ravdess_without_calm(host):
    fusion = host.registries.teacher.build(
        "av_fusion", label_space=RAVDESS8,
        audio={"name": "fixed_audio", "options": {"logits": [0.0] * 8, "space": list(RAVDESS8.classes)}},
        face={"name": "fixed_face", "options": {"logits": [0.0] * 7, "space": list(FER2013_7.classes)}},
    )
    assert fusion.face_map.unreached == ("calm",)
    p = torch.softmax(fusion(batch(1)).logits, -1)[0]
    # per_class (default): calm takes the audio branch's 1/8 undiluted; the other seven mix both
    # branches (1/16 + 1/14); then everything is renormalised: calm = (1/8) / (1/8 + 7 (1/16 + 1/14))
    calm = (1 / 8) / (1 / 8 + 7 * (1 / 16 + 1 / 14))
    assert p[RAVDESS8.index("calm")].item() == pytest.approx(calm, abs=1e-6)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    old = host.registries.teacher.build(
        "av_fusion", label_space=RAVDESS8, combination="arithmetic",
        audio={"name": "fixed_audio", "options": {"logits": [0.0] * 8, "space": list(RAVDESS8.classes)}},
        face={"name": "fixed_face", "options": {"logits": [0.0] * 7, "space": list(FER2013_7.classes)}},
    )
    p = torch.softmax(old(batch(1)).logits, -1)[0]
    assert p[RAVDESS8.index("calm")].item() == pytest.approx(0.5 / 8, abs=1e-6)  # arithmetic halves it

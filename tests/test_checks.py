"""liser_core.testing's conformance checks: every first-party component passes them, and each
check fails on a component broken in the way it looks for."""

from __future__ import annotations

import pytest
import torch

from liser_core import (
    Augmentation,
    Combiner,
    Loss,
    ModelOutput,
    Student,
    Teacher,
    TeacherCard,
    load_plugins,
)
from liser_core.labels import LabelSpace
from liser_core.testing import (
    CheckFailed,
    check_augmentation,
    check_combiner,
    check_dataset,
    check_loss,
    check_student,
    check_teacher,
)

SMALL_STUDENTS = {"logmel_cnn": {"channels": [4, 8]}, "ecapa_tdnn": {}, "timm_mobile": {}}


@pytest.mark.parametrize("name", sorted(SMALL_STUDENTS))
def test_first_party_students_pass(liser_host, name):
    # export is checked once (logmel_cnn); the others' export is tests/test_deploy.py's
    check_student(name, SMALL_STUDENTS[name], host=liser_host, export=name == "logmel_cnn")


def test_every_registered_student_loss_and_combiner_is_covered(liser_host):
    assert set(liser_host.registries.student.list()) == set(SMALL_STUDENTS)
    assert set(liser_host.registries.loss.list()) == {"ce", "dkd", "feature_matching", "fitnets", "kl"}


@pytest.fixture(scope="module")
def teacher_options(tmp_path_factory):
    import timm
    from safetensors.torch import save_file

    from liser_plugins.hf_speech.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    save_file(timm.create_model("test_resnet", pretrained=False, num_classes=1000).state_dict(), str(root / "r.safetensors"))
    small = {"channels": [4, 8], "hidden": 16}
    return {
        "audio_cnn": small,
        "face_cnn": small,
        "hf_speech": {"model": str(save_tiny_model(root / "wavlm"))},
        "timm_face": {"model": "test_resnet", "image_size": 48, "checkpoint": str(root / "r.safetensors")},
        "fer_xception": {},
        "av_fusion": {"audio": {"name": "audio_cnn", "options": small}, "face": {"name": "face_cnn", "options": small}},
    }


def test_first_party_teachers_pass(liser_host, teacher_options):
    assert set(teacher_options) == set(liser_host.registries.teacher.list())
    for name, options in teacher_options.items():
        check_teacher(name, options, host=liser_host)


@pytest.mark.parametrize("name", ["kl", "dkd", "ce", "feature_matching", "fitnets"])
def test_first_party_losses_pass(liser_host, name):
    options = {"student_tap": "s", "teacher_tap": "t", "bins": 2} if name == "fitnets" else {}
    check_loss(name, options, host=liser_host)


@pytest.mark.parametrize("name", ["per_class", "arithmetic", "geometric"])
def test_first_party_combiners_pass(liser_host, name):
    check_combiner(name, host=liser_host)


@pytest.mark.parametrize("name", ["gain", "noise", "speed", "time_mask"])
def test_first_party_augmentations_pass(liser_host, name):
    check_augmentation(name, host=liser_host)


class HalfCombiner(Combiner):
    def __call__(self, probs, weights, reached):
        return 0.5 * sum(w * p for w, p in zip(weights, probs))  # rows sum to 0.5


class InPlaceCombiner(Combiner):
    def __call__(self, probs, weights, reached):
        probs[0].mul_(1.0)  # harmless value, but writes into the teacher's tensor
        probs[0] /= probs[0].sum(-1, keepdim=True)
        return probs[0]


class Crop(Augmentation):
    def __init__(self, sample_rate: int = 16000):
        super().__init__()

    def forward(self, audio, lengths):
        return audio[:, : audio.shape[1] // 2], lengths  # lengths now exceed the audio


class Unseeded(Augmentation):
    def __init__(self, sample_rate: int = 16000):
        super().__init__()

    def forward(self, audio, lengths):
        import random

        return audio * random.random(), lengths  # Python's generator: not seeded or checkpointed


def test_check_combiner_and_check_augmentation_catch_broken_components():
    host = load_plugins()
    host.registries.combiner.register("half", HalfCombiner)
    host.registries.combiner.register("inplace", InPlaceCombiner)
    host.registries.augmentation.register("crop", Crop)
    host.registries.augmentation.register("unseeded", Unseeded)
    with pytest.raises(CheckFailed, match=r"rows sum to 1 \(sums: 0.5, 0.5"):
        check_combiner("half", host=host)
    with pytest.raises(CheckFailed, match="not modified in place"):
        check_combiner("inplace", host=host)
    with pytest.raises(CheckFailed, match=r"lengths lie in \[1, 8000\]"):
        check_augmentation("crop", host=host)
    with pytest.raises(CheckFailed, match="same torch seed"):
        check_augmentation("unseeded", host=host)


def test_synth_av_passes(liser_host):
    check_dataset("synth_av", {"teacher_clips": 1, "labeled_clips": 1, "unlabeled_clips": 1, "test_clips": 1},
                  host=liser_host)


# -- each check can fail ------------------------------------------------------------------------
class Wrong(Student):
    def __init__(self, label_space, mode: str = "ok"):
        super().__init__()
        self.label_space, self.sample_rate, self.embedding_dim, self.mode = label_space, 16000, 4, mode
        self.lin = torch.nn.Linear(1, 4)
        self.head = torch.nn.Linear(4, len(label_space))

    def forward(self, audio, lengths=None):
        if self.mode == "leaks_padding":
            x = audio.mean(1, keepdim=True)  # the padding is in the mean
        else:
            valid = torch.arange(audio.shape[1])[None] < (lengths if lengths is not None else torch.full((len(audio),), audio.shape[1]))[:, None]
            x = (audio * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True)
        emb = self.lin(x)
        if self.mode == "short_embedding":
            emb = emb[:, :3]
        return ModelOutput(self.head(emb if self.mode != "short_embedding" else torch.nn.functional.pad(emb, (0, 1))), emb)


@pytest.mark.parametrize(("mode", "message"), [("ok", None), ("leaks_padding", "padding"), ("short_embedding", "embedding shape")])
def test_check_student_catches_a_broken_student(mode, message):
    host = load_plugins()
    host.registries.student.register("wrong", Wrong)
    if message is None:
        check_student("wrong", {"mode": mode}, host=host, export=False)
        return
    with pytest.raises(CheckFailed, match=message):
        check_student("wrong", {"mode": mode}, host=host, export=False)


class BadTeacher(Teacher):
    modality = "audio"
    sample_rate = 16000
    embedding_dim = 2

    def __init__(self, label_space):
        super().__init__()
        self.label_space = label_space
        self.lin = torch.nn.Linear(1, 2)
        self.card = TeacherCard(name="bad", modality="audio", backbone="x", label_space="another")

    def forward(self, batch):
        e = self.lin(batch.audio.mean(1, keepdim=True))
        return ModelOutput(torch.cat([e, e], 1)[:, : len(self.label_space)], e)


class VectorLoss(Loss):
    def forward(self, student, batch, targets):
        return student.logits.sum(1)  # one value per clip, not a scalar


def test_check_teacher_and_check_loss_catch_broken_components():
    host = load_plugins()
    host.registries.teacher.register("bad", BadTeacher)
    host.registries.loss.register("vector", VectorLoss)
    with pytest.raises(CheckFailed, match="card is a TeacherCard naming its label space"):
        check_teacher("bad", host=host, label_space=LabelSpace("two", ("happy", "sad")))
    with pytest.raises(CheckFailed, match="one-element tensor"):
        check_loss("vector", host=host)


def test_check_dataset_catches_shared_speakers(liser_host):
    from liser_core.data import Clip

    class Leaky:
        name = "leaky"

        def __init__(self, seed=0):
            import numpy as np

            self.label_space = LabelSpace("two", ("happy", "sad"))
            a = np.zeros(1600, dtype="float32")
            self.clips = {"teacher": [Clip("a", a, 16000, "s1", "happy")], "test": [Clip("b", a, 16000, "s1", "sad")]}

        def split(self, role):
            return self.clips.get(role, [])

    host = load_plugins()
    host.registries.dataset.register("leaky", Leaky)
    with pytest.raises(CheckFailed, match="speaker-independent"):
        check_dataset("leaky", host=host)

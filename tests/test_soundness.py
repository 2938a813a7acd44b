"""Trustworthy experiments: no silent wrong labels, leaks, stale or mixed results.

Each test here failed on the main branch before the soundness guards: a run printed wrong or
misleading numbers with exit 0 and no warning (docs/soundness.md lists every guard).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

import liser_core
from liser_core import BatchTargets, LabelMap, hookimpl, load_plugins
from liser_core.errors import ComponentError, UnknownComponentError
from liser_core.guards import Duplicate, drop_duplicates, find_duplicates, fit_overlap
from liser_core.labels import AFFECTNET8, FER2013_7, RAVDESS8, LabelSpace, combine
from liser_plugins.cnn_teachers import AudioCNNTeacher
from liser_plugins.corpora import fixtures
from liser_plugins.corpora.ravdess import ravdess
from liser_tools.cli import main

# -- a small RAVDESS-layout tree of real (generated) speech ----------------------------------------


def write_ravdess(root: Path, actors, emotions=range(1, 9), takes=((1, 1, 1),), seconds=0.4) -> Path:
    """Actor folders with one wav per (actor, emotion, take); every file distinct."""
    for a in actors:
        for e in emotions:
            for intensity, statement, rep in takes:
                if e == 1 and intensity == 2:
                    continue
                name = f"Actor_{a:02d}/03-01-{e:02d}-{intensity:02d}-{statement:02d}-{rep:02d}-{a:02d}.wav"
                fixtures.write_wav(root / name, rate=16000, seconds=seconds, freq=110 + 23 * e + 3 * a + statement,
                                   seed=1000 * a + 100 * e + 10 * intensity + 2 * statement + rep)
    return root


RECIPE = """\
name: sound
threads: 1
data: {{name: ravdess, options: {{root: {root}, min_seconds: 0.2, expect_complete: false, {options}}}}}
teachers: [{{name: audio_cnn, fit: {{epochs: 1, batch_size: 8}}, options: {{channels: [4, 8], hidden: 16}}}}]
student: {{name: logmel_cnn, options: {{channels: [4, 8]}}}}
distil: {{epochs: 1, batch_size: 8, losses: [{{name: kl}}, {{name: ce, weight: 0.5}}]}}
loggers: {{run_dir: {{confusion_png: false}}}}
"""


def recipe(tmp_path: Path, root: Path, options: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(RECIPE.format(root=root, options=options))
    return path


@pytest.fixture(scope="module")
def rav(tmp_path_factory):
    # fold 1 tests actor 01 (11, 20, 21 absent); fold 3 tests 08 and 09
    return write_ravdess(tmp_path_factory.mktemp("rav") / "RAVDESS", (1, 2, 3, 4, 8, 9))


def one_line_error(capsys, refused: bool = True) -> str:
    """The error: one line, last, no traceback. A recipe ``refused`` before any work prints only
    that line (what validation logged is held back: liser_core.engine.ConsoleGate); an error
    during the run follows the run's own progress lines."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith("liser: error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not any("Traceback" in ln for ln in err)
    if refused:
        assert err == errors, err
    return errors[0]


# -- 1. a teacher with its own label space is fitted on its own classes, by name -------------------


class Recorder:
    seen: list = []


class AffectTeacher(AudioCNNTeacher):
    """An AffectNet-style teacher (8 classes in AffectNet's order), fitted in the run."""

    def __init__(self, label_space, space: list[str] | None = None, **kw):
        super().__init__(LabelSpace("mine", tuple(space)) if space else AFFECTNET8, channels=(4,), hidden=8, **kw)

    def forward(self, batch):
        if self.training:
            Recorder.seen += [(cid, self.label_space.classes[int(y)]) for cid, y in zip(batch.clip_ids, batch.labels)]
        return super().forward(batch)


class LabelPlugin:
    @hookimpl
    def liser_register_teachers(self, registry):
        registry.register("affect_teacher", AffectTeacher, modality="audio")


def test_a_teacher_with_its_own_classes_is_fitted_on_them_by_name(run_tiny, caplog):
    host = load_plugins()
    host.add("labels", LabelPlugin())
    Recorder.seen = []
    ctx = run_tiny(host=host, overrides=[
        "teachers=[{name: affect_teacher, label_map: {drop: [contempt]}, fit: {epochs: 2, batch_size: 8}}]",
    ])
    truth = {c.clip_id: c.label for c in ctx.corpus.split("teacher")}
    assert Recorder.seen and all(truth[cid] == name for cid, name in Recorder.seen)  # calm never trained as happy
    assert "calm" not in {name for _, name in Recorder.seen}  # AffectNet cannot represent calm
    n_calm = sum(1 for lab in truth.values() if lab == "calm")
    assert f"cannot represent calm ({n_calm})" in caplog.text
    assert ctx.diagnostics["fit_excluded"]["affect_teacher"] == {"calm": n_calm}


def test_a_teacher_with_a_subset_of_the_classes_fits_without_index_errors(run_tiny):
    host = load_plugins()
    host.add("labels", LabelPlugin())
    Recorder.seen = []
    ctx = run_tiny(host=host, overrides=["teachers=[{name: affect_teacher, options: {space: [sad, neutral]}, "
                                         "fit: {epochs: 1, batch_size: 8}}]"])
    assert {name for _, name in Recorder.seen} == {"sad", "neutral"}
    truth = {c.clip_id: c.label for c in ctx.corpus.split("teacher")}
    assert all(truth[cid] == name for cid, name in Recorder.seen)
    assert set(ctx.label_map_report["teachers"]["affect_teacher"]["unreachable"]) == set(RAVDESS8.classes) - {"sad", "neutral"}


def test_fit_targets_go_through_the_label_map_in_both_directions():
    m = LabelMap(AFFECTNET8, RAVDESS8, drop=("contempt",))
    assert m.fit_targets() == {"neutral": "neutral", "calm": None, "happy": "happy", "sad": "sad", "angry": "angry",
                               "fearful": "fearful", "disgust": "disgust", "surprised": "surprised"}
    merged = LabelMap(LabelSpace("x", ("calm", "happy", "sad")), LabelSpace("y", ("neutral", "happy", "sad")),
                      merge={"calm": "neutral"})
    assert merged.fit_targets() == {"neutral": "calm", "happy": "happy", "sad": "sad"}
    two = LabelMap(LabelSpace("x", ("calm", "neutral", "sad")), LabelSpace("y", ("neutral", "sad")), merge={"calm": "neutral"})
    assert two.fit_targets()["neutral"] == "neutral"  # the same name wins over a merged class


# -- 2. a saved teacher reused in another fold -----------------------------------------------------


def test_a_teacher_fitted_on_a_test_speaker_of_another_fold_is_refused(rav, tmp_path, capsys):
    first = recipe(tmp_path, rav, "fold: 1, label_fraction: 0.5, teacher_speakers: [9]", "f1.yaml")
    assert main(["run", str(first), f"run_dir={tmp_path / 'f1'}"]) == 0
    saved = tmp_path / "f1" / "teachers" / "audio_cnn"
    card = json.loads((saved / "config.json").read_text())["card"]
    (fit,) = card["fit_sets"]
    assert fit["corpus"] == "ravdess" and fit["speakers"] == ["09"] and fit["clips"] == 8 and len(fit["content"]) == 8
    splits = json.loads((tmp_path / "f1" / "splits.json").read_text())
    assert splits["splits"]["teacher"]["speakers"] == ["09"] and splits["splits"]["test"]["speakers"] == ["01"]

    third = recipe(tmp_path, rav, "fold: 3, label_fraction: 0.5", "f3.yaml")
    capsys.readouterr()
    code = main(["run", str(third), f"teachers.0.checkpoint={saved}", f"run_dir={tmp_path / 'f3'}"])
    line = one_line_error(capsys)
    assert code == 2 and "teachers.0" in line and "'audio_cnn'" in line and "test speaker(s) 09" in line
    assert "8 test clip(s)" in line and "allow_test_overlap" in line
    assert not (tmp_path / "f3").exists()  # refused before anything was written

    assert main(["run", str(third), f"teachers.0.checkpoint={saved}", "teachers.0.allow_test_overlap=true",
                 f"run_dir={tmp_path / 'f3'}"]) == 0
    out = capsys.readouterr().out
    flagged = next(ln for ln in out.splitlines() if ln.startswith("!!! flagged: "))
    assert "test_overlap" in flagged
    metrics = json.loads((tmp_path / "f3" / "metrics.json").read_text())
    # fold 3 tests actors 08 09 19 23: this tree has 08 and 09 only (a subset, said and flagged)
    assert metrics["flags"] == ["test_subset", "test_overlap"]
    assert any("fitted on test speaker(s) 09" in w and "NOT a fair estimate" in w for w in metrics["warnings"])


def test_a_teacher_fitted_in_the_run_on_test_speakers_is_refused(rav, tmp_path, capsys):
    path = recipe(tmp_path, rav, "split_file: " + str(tmp_path / "split.csv"))
    rows = [f"03-01-0{e}-01-01-01-{a:02d},{s}" for a, s in ((2, "labeled"), (3, "unlabeled"), (4, "unlabeled"))
            for e in range(1, 9)]
    rows += [f"03-01-0{e}-01-01-01-01,{'teacher' if e > 6 else 'test'}" for e in range(1, 9)]  # one actor in both
    (tmp_path / "split.csv").write_text("\n".join(rows) + "\n")
    assert main(["run", str(path), f"run_dir={tmp_path / 'run'}"]) == 2
    line = one_line_error(capsys)
    assert "teachers.0: teacher 'audio_cnn' was fitted on test speaker(s) 01" in line


def test_a_labeled_speaker_in_the_test_split_is_a_warning(rav, tmp_path):
    path = recipe(tmp_path, rav, "split_file: " + str(tmp_path / "split.csv"))
    rows = [f"03-01-0{e}-01-01-01-{a:02d},{s}" for a, s in ((3, "unlabeled"), (4, "unlabeled"), (9, "teacher"))
            for e in range(1, 9)]
    rows += [f"03-01-0{e}-01-01-01-02,{'labeled' if e > 4 else 'test'}" for e in range(1, 9)]
    (tmp_path / "split.csv").write_text("\n".join(rows) + "\n")
    ctx = liser_core.run(path, [f"run_dir={tmp_path / 'run'}"])
    assert any("speakers ['02'] appear in both 'labeled' and the test split" in w for w in ctx.warnings)


def test_fit_overlap_by_content_across_corpora():
    from liser_core.data import Clip

    clips = [Clip("a", None, 16000, "s1"), Clip("b", None, 16000, "s2")]
    fit = {"corpus": "other", "speakers": ["s1"], "content": ["ab" * 8]}
    assert fit_overlap([fit], "mine", clips, [("cd" * 32,), ("ab" * 32,)]) == ([], ["b"])  # speakers: other corpus
    assert fit_overlap([fit | {"corpus": "mine"}], "mine", clips, [("cd" * 32,), ("ef" * 32,)]) == (["s1"], [])


# -- 3. duplicates by content --------------------------------------------------------------------


def test_a_copy_of_a_test_clip_in_a_video_pool_is_left_out_and_reported(tmp_path, capsys):
    root = write_ravdess(tmp_path / "RAVDESS", (2, 3, 4))
    for e in range(1, 9):  # the test actor's takes as audio-video mp4s
        fixtures.write_video(root / f"Actor_01/01-01-0{e}-01-01-01-01.mp4", seconds=0.6, size=(32, 24), freq=150 + 30 * e)
    pool = tmp_path / "videos"
    for i in range(3):
        fixtures.write_video(pool / f"id0000{i}/v/00001.mp4", seconds=0.6, size=(32, 24), freq=400 + 50 * i)
    (pool / "id00009" / "copy").mkdir(parents=True)
    shutil.copy(root / "Actor_01/01-01-03-01-01-01-01.mp4", pool / "id00009/copy/00001.mp4")  # a test clip
    opts = f"fold: 1, label_fraction: 0.5, teacher_speakers: [4], unlabeled_from: {pool}, unlabeled_options: {{cache_dir: {tmp_path / 'c'}}}"
    path = recipe(tmp_path, root, opts)
    assert main(["run", str(path), f"run_dir={tmp_path / 'run'}"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any("1 clip(s) left out as duplicates" in w and "pool/id00009/copy/00001" in w for w in metrics["warnings"])
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    pool_ids = [c["id"] for c in splits["splits"]["unlabeled"]["clips"]]
    assert "pool/id00009/copy/00001" not in pool_ids and len(pool_ids) == 3
    (dropped,) = splits["dropped_duplicates"]
    assert dropped == {"split": "unlabeled", "clip_id": "pool/id00009/copy/00001", "of_split": "test",
                       "of_clip": "01-01-03-01-01-01-01"}
    capsys.readouterr()
    assert main(["data", "check", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [p["clip_id"] for p in report["problems"] if p["kind"] == "duplicate_content"] == ["pool/id00009/copy/00001"]
    assert main(["run", str(path), "data.duplicates=error", "--dry-run"]) == 2
    assert "data.duplicates" in one_line_error(capsys)


def test_duplicate_rules():
    from liser_core.data import Clip

    def clips(split, n):
        return [Clip(f"{split}{i}", None, 16000, f"{split}-spk") for i in range(n)]

    splits = {"test": clips("t", 2), "teacher": clips("h", 1), "labeled": clips("l", 2), "unlabeled": clips("u", 3)}
    digests = {"test": [("A",), ("A",)], "teacher": [("B",)], "labeled": [("A",), ("C",)],
               "unlabeled": [("C",), ("D",), ("D", "B")]}
    dups = find_duplicates(splits, digests)
    assert dups == [Duplicate("test", "t1", "test", "t0"), Duplicate("labeled", "l0", "test", "t0"),
                    Duplicate("unlabeled", "u0", "labeled", "l1"), Duplicate("unlabeled", "u2", "teacher", "h0")]
    kept, dropped = drop_duplicates(splits, dups)
    assert [c.clip_id for c in kept["labeled"]] == ["l1"] and [c.clip_id for c in kept["unlabeled"]] == ["u1"]
    assert len(kept["test"]) == 2 and len(dropped) == 3  # test keeps its own repeat (warned, not dropped)


# -- 4. missing speakers and clips -------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_names(tmp_path_factory):
    import csv

    path = fixtures.REFERENCE / "ravdess_speech_audio.tsv"
    with open(path) as f:
        wavs = [r["file"] for r in csv.DictReader(f, delimiter="\t")]
    return wavs + [w.replace("/03-", "/01-").replace(".wav", ".mp4") for w in wavs]


def test_a_deleted_test_actor_or_its_videos_are_missing_not_silent(full_names, tmp_path, capsys):
    root = tmp_path / "RAVDESS"
    fixtures.touch_tree(root, [n for n in full_names if not n.startswith("Actor_05/")])
    for mp4 in (root / "Actor_03").glob("01-01-*-*-01-*-03.mp4"):  # half of a test actor's videos
        mp4.unlink()
    corpus = ravdess(str(root), fold=4, modality="audiovisual")
    missing = corpus.missing()["test"]
    assert missing["speakers"] == ["05"]  # fold 4: actors 3 5 7 24
    assert len(missing["clips"]) == 30 and all(c.endswith("-01-01-03") or c.endswith("-01-02-03") for c in missing["clips"])
    assert len(corpus.split("test")) == 150  # 07 and 24, and half of 03
    assert ravdess(str(root), fold=4, modality="audiovisual", expect_complete=False).missing() == {}
    path = tmp_path / "r.yaml"
    path.write_text(f"data: {{name: ravdess, options: {{root: {root}, fold: 4, modality: audiovisual}}}}\n"
                    "student: {name: logmel_cnn}\n")
    assert main(["data", "check", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    kinds = Counter(p["kind"] for p in report["problems"])
    assert kinds["missing_speaker"] == 1 and kinds["missing_clip"] == 30


def test_a_run_says_which_expected_test_speakers_and_clips_are_missing(rav, tmp_path):
    path = recipe(tmp_path, rav, "fold: 1, label_fraction: 0.5, teacher_speakers: [9]")
    text = path.read_text().replace("expect_complete: false", "expect_complete: true")
    path.write_text(text)
    ctx = liser_core.run(path, [f"run_dir={tmp_path / 'run'}"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    line = next(w for w in metrics["warnings"] if w.startswith("test split incomplete"))
    assert "expected speaker(s) 11, 20, 21 missing" in line and "52 expected clip(s) missing" in line  # 01 has 8 of 60
    assert ctx.warnings == metrics["warnings"]


def test_bad_test_clips_are_a_warning_with_the_count(tmp_path):
    root = write_ravdess(tmp_path / "RAVDESS", (1, 2, 3, 4, 9))
    (root / "Actor_01/03-01-02-01-01-01-01.wav").write_bytes(b"RIFF....WAVEjunk")
    path = recipe(tmp_path, root, "fold: 1, label_fraction: 0.5, teacher_speakers: [9]")
    liser_core.run(path, [f"run_dir={tmp_path / 'run'}"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["student"]["num_clips"] == 7
    assert any("1 of the 8 test clips could not be used" in w and "over 7 clips" in w for w in metrics["warnings"])


# -- 5. classes a teacher cannot express -------------------------------------------------------------


def test_per_class_combination_does_not_dilute_a_class_one_teacher_cannot_express():
    audio = torch.full((1, 8), 1 / 8)
    fer = torch.tensor([[1 / 7] * 7])
    maps = {"audio": LabelMap(RAVDESS8, RAVDESS8), "face": LabelMap(FER2013_7, RAVDESS8)}
    t = BatchTargets(logits={"audio": audio.log(), "face": fer.log()}, embeddings={}, label_maps=maps,
                     weights={"audio": 0.5, "face": 0.5})
    calm = RAVDESS8.index("calm")
    others = 0.5 / 8 + 0.5 / 7
    assert t.probs()[0, calm].item() == pytest.approx((1 / 8) / (1 / 8 + 7 * others), abs=1e-6)  # the default
    old = BatchTargets(logits=t.logits, embeddings={}, label_maps=maps, weights=t.weights, combination="arithmetic")
    assert old.probs()[0, calm].item() == pytest.approx(1 / 16, abs=1e-6)
    geo = BatchTargets(logits=t.logits, embeddings={}, label_maps=maps, weights=t.weights, combination="geometric")
    assert geo.probs()[0, calm].item() < 1e-3  # all but vanishes
    # one teacher alone: per_class is that teacher's distribution
    alone = combine([maps["face"].project(fer)], [1.0], [maps["face"].reached])
    assert torch.allclose(alone, maps["face"].project(fer))


class FixedFER(liser_core.Teacher):
    modality, pretrained = "face", True

    def __init__(self, label_space):
        super().__init__()
        self.label_space, self.embedding_dim = FER2013_7, 4
        self.card = liser_core.TeacherCard("fixed_fer", "face", "fixed", "fer2013_7", trained_on=("fer2013",))
        self.bias = torch.nn.Parameter(torch.zeros(7))

    def forward(self, batch):
        n = len(batch)
        return liser_core.ModelOutput(self.bias.expand(n, 7), torch.zeros(n, 4))


class FERPlugin:
    @hookimpl
    def liser_register_teachers(self, registry):
        registry.register("fixed_fer", FixedFER, modality="face")


@pytest.mark.parametrize("combination", ["per_class", "arithmetic"])
def test_the_label_map_report_lists_unreachable_classes(run_tiny, combination, caplog):
    host = load_plugins()
    host.add("fer", FERPlugin())
    ctx = run_tiny(host=host, overrides=[
        "teachers=[{name: fixed_fer}, {name: audio_cnn, fit: {epochs: 1, batch_size: 16}, options: {channels: [4], hidden: 8}}]",
        f"distil.combination={combination}",
    ])
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    report = metrics["label_maps"]["teachers"]["fixed_fer"]
    assert report["unreachable"] == ["calm"] and len(report["mapped"]) == 7 and report["dropped"] == []
    assert metrics["label_maps"]["combination"] == combination and metrics["label_maps"]["unreachable_by_all"] == []
    assert "label map fixed_fer (fer2013_7): mapped 7; unreachable calm" in caplog.text
    diluted = [w for w in metrics["warnings"] if "cannot express calm" in w]
    assert bool(diluted) == (combination == "arithmetic")


# -- 8. the dry run builds and runs every component ----------------------------------------------------

PLUGIN = '''
import torch
from liser_core import ModelOutput, Teacher, TeacherCard, hookimpl
from liser_core.labels import FER2013_7
from liser_plugins.logmel_cnn import LogMelCNN
from liser_plugins.cnn_teachers import AudioCNNTeacher


class FewLogits(LogMelCNN):
    def forward(self, audio, lengths=None):
        out = super().forward(audio, lengths)
        return ModelOutput(out.logits[:, :3], out.embedding)


class VectorLoss(torch.nn.Module):
    needs_teacher = False

    def __init__(self, late: bool = False):
        super().__init__()
        self.late = late

    def bind(self, student_dim, teacher_dims):
        pass

    def forward(self, student, batch, targets):
        if self.late and not self.training:
            return student.logits.sum() * 0
        return (student.logits ** 2).mean(-1)  # (B,): not a scalar


class WrongTeacher(AudioCNNTeacher):
    def forward(self, batch):
        out = super().forward(batch)
        return ModelOutput(out.logits[:, :2], out.embedding)


class FerSpace(AudioCNNTeacher):
    def __init__(self, label_space, **kw):
        super().__init__(FER2013_7, channels=(4,), hidden=8)


@hookimpl
def liser_register_students(registry):
    registry.register("few_logits", FewLogits)


@hookimpl
def liser_register_losses(registry):
    registry.register("vector_loss", VectorLoss)


@hookimpl
def liser_register_teachers(registry):
    registry.register("wrong_teacher", WrongTeacher, modality="audio")
    registry.register("fer_space", FerSpace, modality="audio")
'''


@pytest.fixture
def soundness_plugin(fake_distribution, tmp_path, monkeypatch):
    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "soundness_plugin.py").write_text(PLUGIN)
    fake_distribution("soundness-plugin", {"soundness": "soundness_plugin"}, path=src)
    return src


TEACHERS = "teachers=[{name: audio_cnn, fit: {epochs: 1, batch_size: 8}, options: {channels: [4], hidden: 8}}]"
DRY_RUN_CASES = {
    "loss_needs_a_teacher": (["teachers=[]", "distil.losses=[{name: kl}]"], "distil.losses.0", "needs a teacher"),
    "class_left_out_of_label_map": (["data.options.classes=cremad6", "teachers=[{name: fer_space}]"],
                                    "teachers.0.label_map", "leaves ['surprised'] unmapped"),
    "dataset_root_missing": (["data.name=ravdess", "data.options={root: /no/such/folder}"], "data.options",
                             "is not a directory"),
    "constructor_rejects_options": (["distil.losses=[{name: kl, options: {temperature: 0}}]"], "distil.losses.0.options",
                                    "temperature must be > 0"),
    "face_teacher_without_frames": (["data.name=ravdess", "data.options={root: RAV, expect_complete: false, min_seconds: 0.2}",
                                     "teachers=[{name: face_cnn}]"], "teachers.0.name", "needs face frames"),
    "student_logits_wrong_shape": (["student={name: few_logits}"], "student", "logits of shape (2, 3)"),
    "loss_not_a_scalar": (["distil.losses=[{name: kl}, {name: vector_loss}]"], "distil.losses.1", "shape (2,)"),
    "teacher_output_wrong_shape": (["teachers=[{name: wrong_teacher, options: {channels: [4], hidden: 8}}]"],
                                   "teachers.0", "logits of shape (2, 2)"),
}


@pytest.mark.parametrize("case", list(DRY_RUN_CASES))
def test_dry_run_builds_and_probes_every_component(case, soundness_plugin, rav, tmp_path, capsys):
    from liser_core.testing import TINY_OVERRIDES, TINY_RECIPE

    overrides, key, phrase = DRY_RUN_CASES[case]
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    overrides = [o.replace("RAV", str(rav)) for o in overrides]
    args = ["run", str(tmp_path / "tiny.yaml"), "--dry-run", *TINY_OVERRIDES, TEACHERS, *overrides,
            f"run_dir={tmp_path / 'run'}"]
    assert main(args) == 2
    line = one_line_error(capsys)
    assert f"liser: error: {key}:" in line and phrase in line, line
    assert not (tmp_path / "run").exists()


# -- 9. errors inside plugin code name the component -------------------------------------------------


def test_a_plugin_error_during_training_names_the_component(soundness_plugin, tmp_path, capsys):
    from liser_core.testing import TINY_OVERRIDES, TINY_RECIPE

    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    args = ["run", str(tmp_path / "tiny.yaml"), *TINY_OVERRIDES, TEACHERS,
            "distil.losses=[{name: kl}, {name: vector_loss, options: {late: true}}]", f"run_dir={tmp_path / 'run'}"]
    assert main(args) == 1  # the probe sees a scalar; training sees (B,)
    line = one_line_error(capsys, refused=False)  # raised in training, after the run started
    assert "loss 'vector_loss' (plugin soundness, recipe key distil.losses.1) returned a tensor of shape (16,)" in line
    with pytest.raises(ComponentError):
        main([*args, "--debug", "--restart"])


# -- 10. smaller ones ------------------------------------------------------------------------------------


def test_an_empty_pool_is_said(rav, tmp_path):
    ctx = liser_core.run(recipe(tmp_path, rav, "fold: 1, label_fraction: 1.0, teacher_speakers: [9]"),
                         [f"run_dir={tmp_path / 'run'}"])
    assert any("the unlabeled pool is empty" in w for w in ctx.warnings)


def test_channel_messages(rav, tmp_path):
    with pytest.raises(ValueError, match="no song takes .* holds 48 speech takes; channel: speech reads them"):
        ravdess(str(rav), channel="song")
    both = ravdess(str(rav), channel="both", expect_complete=False)
    assert any("channel both" in n and "no song takes" in n for n in both.notes)


def test_video_folder_problems_have_their_own_kinds(tmp_path):
    from liser_plugins.corpora.video_folder import video_folder
    from liser_tools.datacheck import check_corpus

    root = tmp_path / "videos"
    fixtures.write_video(root / "a/ok.mp4", seconds=1.2)
    fixtures.write_video(root / "a/mute.mp4", seconds=1.2, audio=False)
    fixtures.write_video(root / "a/blind.mkv", seconds=1.2, video=False)
    (root / "a/empty.mp4").write_bytes(b"")
    report = check_corpus(video_folder(str(root), cache_dir=str(tmp_path / "c")))
    kinds = {Path(p.path).name: p.kind for p in report.problems}
    assert kinds == {"mute.mp4": "no_audio", "blind.mkv": "no_video", "empty.mp4": "empty_file"}


def test_splits_json_lists_speakers_and_clips(run_tiny):
    ctx = run_tiny()
    splits = json.loads((ctx.run_dir / "splits.json").read_text())
    for s in ("teacher", "labeled", "unlabeled", "test"):
        clips = ctx.corpus.split(s)
        assert [c["id"] for c in splits["splits"][s]["clips"]] == [c.clip_id for c in clips]
        assert splits["splits"][s]["speakers"] == sorted({c.speaker for c in clips})
        assert all(len(c["content"]) == 1 and len(c["content"][0]) == 16 for c in splits["splits"][s]["clips"])


def test_small_fixes():
    assert "registered losses: none" in str(UnknownComponentError("loss", "x", []))
    assert liser_core.BadClipError is liser_core.data.BadClipError

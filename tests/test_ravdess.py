"""RAVDESS from its published layout: indexing, names, folds, pairing of video and audio, decoding,
and the recipe."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from liser_core.data import SPLITS, BadClipError
from liser_plugins.corpora import fixtures, protocols
from liser_plugins.corpora.ravdess import parse_name, ravdess, speaker_id

DATA = fixtures.REFERENCE
REPO = Path(__file__).resolve().parents[1]
PUBLISHED = {"neutral": 96, "calm": 192, "happy": 192, "sad": 192, "angry": 192, "fearful": 192,
             "disgust": 192, "surprised": 192}


@pytest.fixture(scope="module")
def rows():
    path = DATA / "ravdess_speech_audio.tsv"
    return fixtures.read_metadata(path)


@pytest.fixture(scope="module")
def tree(rows, tmp_path_factory):
    root = tmp_path_factory.mktemp("RAVDESS")
    fixtures.touch_tree(root, [r["file"] for r in rows])  # empty files: indexing reads no audio
    return root


def test_full_speech_tree_indexes_1440_clips_with_published_counts(tree):
    corpus = ravdess(str(tree))
    clips = [c for s in SPLITS for c in corpus.split(s)]
    assert len(clips) == 1440 and len({c.clip_id for c in clips}) == 1440
    assert Counter(c.label for c in clips) == PUBLISHED
    assert len({c.speaker for c in clips}) == 24
    assert all(c.audio is None and c.sample_rate == 48000 and Path(c.path).is_file() for c in clips)
    assert corpus.index_problems == []
    assert corpus.name == "ravdess" and corpus.label_space.name == "ravdess8"


def test_labels_actors_and_sex_decode_like_the_metadata(rows):
    for r in rows:
        n = parse_name(Path(r["file"]).stem)
        assert (n.label, n.actor, n.channel, n.modality) == (r["emotion"], int(r["actor"]), 1, 3), r
        assert n.sex == ("male" if int(r["actor"]) % 2 else "female")
        assert protocols.ravdess_fold(n.actor) == int(r["emobox_test_fold"])
    n = parse_name("02-02-06-02-02-01-18")
    assert (n.modality, n.channel, n.label, n.intensity, n.statement, n.repetition, n.speaker) == (
        2, 2, "fearful", 2, 2, 1, "18")
    for bad in ("03-01-09-01-01-01-01", "03-01-01-01-01-01-25", "04-01-01-01-01-01-01", "03-01-01-01", "x"):
        with pytest.raises(ValueError):
            parse_name(bad)
    assert speaker_id(3) == speaker_id("Actor_03") == speaker_id("03") == "03"


@pytest.mark.parametrize("fold", range(1, 7))
def test_test_split_is_the_emobox_fold(tree, rows, fold):
    corpus = ravdess(str(tree), fold=fold)
    expected = {Path(r["file"]).stem for r in rows if int(r["emobox_test_fold"]) == fold}
    assert {c.clip_id for c in corpus.split("test")} == expected and len(expected) == 240
    assert {int(c.speaker) for c in corpus.split("test")} == set(protocols.RAVDESS_FOLDS[fold])
    assert not {c.clip_id for c in corpus.split("labeled")} & expected


def test_channels_modalities_and_flat_layout(tmp_path):
    flat = tmp_path / "flat"
    names = [
        "03-01-05-01-01-01-02.wav", "01-01-05-01-01-01-02.mp4", "02-01-05-01-01-01-02.mp4",  # full take
        "01-01-03-02-02-02-05.mp4",  # audio-video mp4 only: audio from the mp4
        "02-01-04-01-01-01-07.mp4", "03-01-04-01-01-01-07.wav",  # video-only paired with the wav
        "02-01-04-01-01-02-07.mp4",  # video only, no audio anywhere
        "03-02-03-01-01-01-09.wav", "01-02-03-01-01-01-09.mp4",  # song
        "sub/dir/03-01-02-01-01-01-11.wav",  # nested
        "03-01-09-01-01-01-02.wav", "notes.wav", "03-01-01-01-01-01-02.mp4",  # broken names
        "._03-01-05-01-01-01-02.wav", "03-01-05-01-01-01-13.txt",  # resource fork, not media: ignored
    ]
    fixtures.touch_tree(flat, names)
    speech = ravdess(str(flat), teacher_speakers=None)
    ids = {c.clip_id: c for s in SPLITS for c in speech.split(s)}
    assert set(ids) == {"03-01-05-01-01-01-02", "01-01-03-02-02-02-05", "03-01-04-01-01-01-07", "03-01-02-01-01-01-11"}
    assert speech.source("03-01-05-01-01-01-02").audio.endswith("03-01-05-01-01-01-02.wav")
    assert speech.source("03-01-05-01-01-01-02").video is None  # modality audio: no frames
    kinds = Counter(p.kind for p in speech.index_problems)
    assert kinds == {"unparsed": 1, "mislabeled": 2, "missing_audio": 1}, speech.index_problems
    assert ids["03-01-04-01-01-01-07"].label == "sad" and ids["01-01-03-02-02-02-05"].speaker == "05"

    av = ravdess(str(flat), modality="audiovisual")
    assert av.source("03-01-05-01-01-01-02").video.endswith("01-01-05-01-01-01-02.mp4")  # 01 preferred
    assert av.source("03-01-04-01-01-01-07").video.endswith("02-01-04-01-01-01-07.mp4")  # 02 + 03 paired
    assert av.source("01-01-03-02-02-02-05").audio == av.source("01-01-03-02-02-02-05").video
    assert "03-01-02-01-01-01-11" not in {c.clip_id for c in av}  # no video for this take
    assert any(p.kind == "missing_video" for p in av.index_problems)

    song = ravdess(str(flat), channel="song", label_fraction=1.0, fold=4)  # actor 9 is not in fold 4
    assert [c.clip_id for c in song] == ["03-02-03-01-01-01-09"]
    both = ravdess(str(flat), channel="both", fold=4)
    assert len(list(both)) == 5


def test_load_decodes_checks_and_resamples(tmp_path):
    root = tmp_path / "r"
    fixtures.write_wav(root / "Actor_02/03-01-05-01-01-01-02.wav", rate=48000, seconds=0.8)
    fixtures.write_wav(root / "Actor_01/03-01-03-01-01-01-01.wav", rate=48000, seconds=0.8)
    fixtures.write_wav(root / "Actor_01/03-01-04-01-01-01-01.wav", np.zeros(48000, np.float32), 48000)
    fixtures.write_wav(root / "Actor_02/03-01-06-01-01-01-02.wav", rate=48000, seconds=0.2)
    corpus = ravdess(str(root))  # fold 1: actor 1 is test, actor 2 training
    clip = next(c for c in corpus.split("labeled") if c.clip_id == "03-01-05-01-01-01-02")
    loaded = corpus.load(clip)
    assert loaded.audio.dtype == np.float32 and loaded.sample_rate == 48000
    assert loaded.audio.shape == (38400,) and loaded.label == "angry" and clip.audio is None
    hidden = corpus.load(dataclasses.replace(clip, label=None))  # the engine hides pool labels
    assert hidden.label is None
    resampled = ravdess(str(root), sample_rate=16000)
    assert resampled.load(resampled.split("labeled")[0]).audio.shape == (12800,)
    with pytest.raises(BadClipError, match=r"03-01-04-01-01-01-01\.wav: silent"):
        corpus.load(next(c for c in corpus.split("test") if c.label == "sad"))
    with pytest.raises(BadClipError, match="too short"):
        corpus.load(next(c for c in corpus.split("labeled") if c.label == "fearful"))


def test_audiovisual_clips_carry_frames(tmp_path):
    pytest.importorskip("av")
    root = tmp_path / "r"
    fixtures.write_video(root / "Actor_01/01-01-05-01-01-01-01.mp4", seconds=1.0, size=(96, 64), rate=48000)
    fixtures.write_wav(root / "Actor_02/03-01-05-01-01-01-02.wav", rate=48000, seconds=1.0)
    fixtures.write_video(root / "Actor_02/02-01-05-01-01-01-02.mp4", seconds=1.0, size=(96, 64), audio=False)
    corpus = ravdess(str(root), modality="audiovisual", num_frames=4, frame_size=32)
    for clip in corpus:
        loaded = corpus.load(clip)
        assert loaded.frames.shape == (4, 32, 32, 3) and loaded.frames.dtype == np.uint8
        assert loaded.audio.size > 40000 and loaded.fps == pytest.approx(4.0, rel=0.1)
        assert corpus.load(clip, frames=False).frames is None  # audio-only consumers skip the video


def test_recipe_validates_on_a_fixture_tree(tmp_path, liser_host, capsys):
    from liser_core.config import load_recipe, plain
    from liser_tools.cli import main

    recipe = REPO / "recipes" / "ravdess_kd.yaml"
    cfg = load_recipe(recipe, [f"data.options.root={tmp_path}"])
    missing = [t.name for t in cfg.teachers if t.name not in liser_host.registries.teacher]
    assert not missing, f"teacher(s) {missing} named by ravdess_kd.yaml are not registered"
    names = [f"Actor_{a:02d}/{m}-01-0{e}-01-01-01-{a:02d}.{x}"
             for a in range(1, 25) for e in range(1, 9) for m, x in (("03", "wav"), ("01", "mp4"))]
    fixtures.touch_tree(tmp_path, names)
    from liser_plugins.hf_speech.tiny import save_tiny_model

    tiny = save_tiny_model(tmp_path / "tiny-wavlm")  # the dry run builds every teacher: no hub here
    assert main(["run", str(recipe), "--dry-run", f"data.options.root={tmp_path}", f"teachers.0.options.model={tiny}"]) == 0
    assert f"root: {tmp_path}" in capsys.readouterr().out
    options = plain(cfg.data.options)
    corpus = liser_host.registries.dataset.build("ravdess", **options, seed=0)
    assert all(corpus.split(s) for s in SPLITS)
    assert all(corpus.source(c.clip_id).video for c in corpus)  # audiovisual, as the face teacher needs


def test_audiovisual_run_feeds_frames_to_a_face_teacher(tmp_path):
    pytest.importorskip("av")
    import json

    from liser_core import run

    root = tmp_path / "RAVDESS"
    for a in (1, 2, 3, 4, 6):  # fold 1: actor 1 is the test speaker
        for e in range(1, 9):
            fixtures.write_video(root / f"Actor_{a:02d}/01-01-0{e}-01-01-01-{a:02d}.mp4", seconds=0.8,
                                 size=(64, 48), rate=48000, freq=120 + 30 * e + 3 * a,
                                 seed=100 * a + e, noise=0.05)  # distinct recordings, not near copies
    recipe = tmp_path / "av.yaml"
    recipe.write_text(f"""\
name: av
threads: 1
data: {{name: ravdess, options: {{root: {root}, modality: audiovisual, label_fraction: 0.5,
        teacher_speakers: [2], num_frames: 4, frame_size: 48}}}}
teachers:
  - {{name: face_cnn, weight: 0.5, fit: {{epochs: 1, batch_size: 8}}, options: {{channels: [4, 8], hidden: 16}}}}
  - {{name: audio_cnn, weight: 0.5, fit: {{epochs: 1, batch_size: 8}}, options: {{channels: [4, 8], hidden: 16}}}}
student: {{name: logmel_cnn, options: {{channels: [4, 8]}}}}
distil: {{epochs: 1, batch_size: 8, losses: [{{name: kl}}, {{name: ce, weight: 0.5}}]}}
loggers: {{run_dir: {{confusion_png: false}}}}
""")
    ctx = run(recipe, [f"run_dir={tmp_path / 'run'}"])
    assert {s: len(ctx.corpus.split(s)) for s in SPLITS} == {"teacher": 8, "labeled": 16, "unlabeled": 8, "test": 8}
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "skipped_clips" not in metrics["diagnostics"]
    assert metrics["teachers"]["face_cnn"]["num_clips"] == 8 and metrics["student"]["num_clips"] == 8

"""CREMA-D from its published layout: indexing, names, folds, known-bad files under the bad-clip
policy (and a whole run that skips them), video, and the recipe."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from liser_core.data import SPLITS, BadClipError
from liser_plugins.corpora import fixtures, protocols
from liser_plugins.corpora.cremad import EMOTIONS, KNOWN_BAD, cremad, parse_name

DATA = fixtures.REFERENCE
REPO = Path(__file__).resolve().parents[1]
GOOD_ACTORS = (1001, 1076, 1002, 1064, 1003, 1004, 1005)  # 1001/1076: fold 1; 1064: fold 4
LFS = "1001_ITS_ANG_XX"


@pytest.fixture(scope="module")
def rows():
    path = DATA / "cremad_audio.tsv"
    return fixtures.read_metadata(path)


@pytest.fixture(scope="module")
def tree(rows, tmp_path_factory):
    root = tmp_path_factory.mktemp("CREMA-D")
    fixtures.touch_tree(root, [r["file"] for r in rows])
    return root


def tiny_tree(root: Path) -> dict[str, str]:
    """One real 0.6 s wav per actor and emotion, plus the known-bad files; returns the bad ones."""
    for i, actor in enumerate(GOOD_ACTORS):
        for j, code in enumerate(EMOTIONS):
            fixtures.write_wav(root / "AudioWAV" / f"{actor}_DFA_{code}_XX.wav", seconds=0.6,
                               freq=140.0 + 40 * j, seed=7 * i + j)
    return fixtures.plant_cremad_bad_files(root / "AudioWAV", [LFS])


def test_full_tree_indexes_7442_clips_with_published_counts(tree):
    corpus = cremad(str(tree))
    clips = list(corpus)
    assert len(clips) == 7442 and len({c.clip_id for c in clips}) == 7442
    counts = Counter(c.label for c in clips)
    assert counts == {"angry": 1271, "disgust": 1271, "fearful": 1271, "happy": 1271, "sad": 1271, "neutral": 1087}
    assert len({c.speaker for c in clips}) == 91
    assert all(c.audio is None and c.sample_rate == 16000 for c in clips)
    assert corpus.index_problems == [] and corpus.label_space.name == "cremad6"


def test_names_decode_like_the_metadata(rows):
    for r in rows:
        actor, sentence, label, level = parse_name(Path(r["file"]).stem)
        assert (actor, label) == (int(r["actor"]), EMOTIONS[r["emotion"]]), r
    assert parse_name("1064_IEO_DIS_MD") == (1064, "IEO", "disgust", "MD")
    for bad, why in (("1001_DFA_XYZ_XX", "emotion"), ("1000_DFA_ANG_XX", "actor"), ("1001_ABC_ANG_XX", "sentence"),
                     ("1001_DFA_ANG_ZZ", "level"), ("1001-DFA-ANG-XX", "not a CREMA-D")):
        with pytest.raises(ValueError, match=why):
            parse_name(bad)


@pytest.mark.parametrize("fold", range(1, 6))
def test_folds_by_actor_id(tree, rows, fold):
    corpus = cremad(str(tree), fold=fold)
    actors = set(protocols.CREMAD_FOLDS[fold])
    assert {int(c.speaker) for c in corpus.split("test")} == actors
    expected = {Path(r["file"]).stem for r in rows if int(r["actor"]) in actors}
    assert {c.clip_id for c in corpus.split("test")} == expected
    train = {c.speaker for s in ("teacher", "labeled", "unlabeled") for c in corpus.split(s)}
    assert not train & {str(a) for a in actors} and len(train) == 91 - len(actors)


def test_misnamed_files_are_listed_not_indexed(tmp_path):
    fixtures.touch_tree(tmp_path, ["AudioWAV/1001_DFA_ANG_XX.wav", "AudioWAV/1002_DFA_ANG_XX.wav",
                                   "AudioWAV/1001_DFA_XYZ_XX.wav", "AudioWAV/readme.wav",
                                   "AudioWAV/sub/1001_DFA_ANG_XX.wav", "VideoFlash/1002_DFA_ANG_XX.flv"])
    corpus = cremad(str(tmp_path), teacher_speakers=None)
    assert sorted(c.clip_id for c in corpus) == ["1001_DFA_ANG_XX", "1002_DFA_ANG_XX"]
    assert Counter(p.kind for p in corpus.index_problems) == {"mislabeled": 1, "unparsed": 1, "duplicate": 1}
    assert corpus.source("1002_DFA_ANG_XX").audio.endswith(".wav")  # wav preferred over the flv's audio


def test_demographics_give_sex_and_balance_the_labeled_speakers(tmp_path):
    names = [f"AudioWAV/{a}_DFA_{e}_XX.wav" for a in range(1002, 1012) for e in EMOTIONS]
    fixtures.touch_tree(tmp_path, names + ["AudioWAV/1001_DFA_ANG_XX.wav"])
    (tmp_path / "VideoDemographics.csv").write_text(
        "ActorID,Age,Sex,Race,Ethnicity\n"
        + "".join(f"{a},30,{'Male' if a < 1007 else 'Female'},Caucasian,Not Hispanic\n" for a in range(1001, 1012))
    )
    for seed in range(4):
        corpus = cremad(str(tmp_path), label_fraction=0.2, seed=seed)
        assert corpus.speaker_info["1002"]["sex"] == "male" and corpus.speaker_info["1010"]["sex"] == "female"
        sexes = {corpus.speaker_info[s]["sex"] for s in {c.speaker for c in corpus.split("labeled")}}
        assert sexes == {"male", "female"}


def test_each_known_bad_file_is_a_bad_clip_with_its_reason(tmp_path):
    bad = tiny_tree(tmp_path)
    assert set(KNOWN_BAD) <= set(bad)
    corpus = cremad(str(tmp_path))
    by_id = {c.clip_id: c for c in corpus}
    for clip_id, phrase in bad.items():
        with pytest.raises(BadClipError) as e:
            corpus.load(by_id[clip_id])
        assert e.value.reason.startswith(phrase), (clip_id, e.value.reason)
        assert e.value.path.endswith(f"{clip_id}.wav") and e.value.clip_id == clip_id
    good = corpus.load(by_id["1003_DFA_HAP_XX"])
    assert good.audio.shape == (9600,) and np.isfinite(good.audio).all()


def test_run_with_skip_policy_reports_each_bad_file(tmp_path):
    from liser_core import run

    bad = tiny_tree(tmp_path / "CREMA-D")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"""\
name: cremad_tiny
threads: 1
data:
  name: cremad
  bad_clips: skip
  options: {{root: {tmp_path / 'CREMA-D'}, fold: 1, label_fraction: 0.5, teacher_speakers: [1002, 1064]}}
teachers:
  - {{name: audio_cnn, fit: {{epochs: 1, batch_size: 8}}, options: {{channels: [4, 8], hidden: 16}}}}
student: {{name: logmel_cnn, options: {{channels: [4, 8]}}}}
distil:
  epochs: 1
  batch_size: 8
  losses: [{{name: kl, options: {{temperature: 2.0}}}}, {{name: ce, weight: 0.5}}]
loggers: {{run_dir: {{confusion_png: false}}}}
""")
    ctx = run(recipe, [f"run_dir={tmp_path / 'run'}"])
    corpus = ctx.corpus
    assert {c.speaker for c in corpus.split("teacher")} == {"1002", "1064"}
    assert {c.speaker for c in corpus.split("test")} == {"1001", "1076"}
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["corpus"] == "cremad"
    skipped = metrics["diagnostics"]["skipped_clips"]
    assert set(skipped) == set(bad)
    for clip_id, phrase in bad.items():
        assert skipped[clip_id].startswith(phrase), (clip_id, skipped[clip_id])
    n_test_bad = sum(1 for c in corpus.split("test") if c.clip_id in bad)
    assert n_test_bad == 3 and metrics["student"]["num_clips"] == len(corpus.split("test")) - n_test_bad
    log = (ctx.run_dir / "log.txt").read_text()
    for clip_id in bad:
        assert f"{clip_id}.wav: {skipped[clip_id]}" in log
    # CREMA-D's clips have no duration before decoding: the student's window (predict's, serve's)
    # is the longest labeled clip it was distilled on, read from its batches (it was None)
    import soundfile as sf

    longest = max(sf.info(c.path).duration for c in corpus.split("labeled") if c.clip_id not in bad)
    saved = json.loads((ctx.run_dir / "student" / "config.json").read_text())
    assert saved["train_seconds"] == pytest.approx(longest, abs=1e-3)


def test_audiovisual_clips_from_videoflash(tmp_path):
    pytest.importorskip("av")
    fixtures.write_video(tmp_path / "VideoFlash/1001_DFA_ANG_XX.flv", seconds=1.0, size=(80, 60))
    fixtures.write_video(tmp_path / "VideoFlash/1002_DFA_SAD_XX.flv", seconds=1.0, size=(80, 60))
    fixtures.write_wav(tmp_path / "AudioWAV/1002_DFA_SAD_XX.wav", seconds=1.0)
    fixtures.touch_tree(tmp_path, ["AudioWAV/1003_DFA_SAD_XX.wav"])  # no video: left out
    corpus = cremad(str(tmp_path), modality="audiovisual", num_frames=3, frame_size=24)
    assert sorted(c.clip_id for c in corpus) == ["1001_DFA_ANG_XX", "1002_DFA_SAD_XX"]
    assert corpus.source("1002_DFA_SAD_XX").audio.endswith(".wav")
    assert corpus.source("1001_DFA_ANG_XX").audio.endswith(".flv")
    for clip in corpus:
        loaded = corpus.load(clip)
        assert loaded.frames.shape == (3, 24, 24, 3) and 15000 < loaded.audio.size < 18500
    assert [p.kind for p in corpus.index_problems] == ["missing_video"]


def test_recipe_validates_on_a_fixture_tree(rows, tmp_path, liser_host, capsys):
    from liser_core.config import load_recipe, plain
    from liser_plugins.hf_speech.tiny import save_tiny_model
    from liser_tools.cli import main

    tree = tmp_path / "CREMA-D"  # index-only placeholders, videos included (the recipe is audio-visual)
    fixtures.touch_tree(tree, [r["file"] for r in rows])
    fixtures.touch_tree(tree, [r["file"].replace("AudioWAV", "VideoFlash").replace(".wav", ".flv") for r in rows])
    recipe = REPO / "recipes" / "cremad_kd.yaml"
    cfg = load_recipe(recipe, [f"data.options.root={tree}"])
    missing = [t.name for t in cfg.teachers if t.name not in liser_host.registries.teacher]
    assert not missing, f"teacher(s) {missing} named by cremad_kd.yaml are not registered"
    tiny = save_tiny_model(tmp_path / "tiny-wavlm")  # the dry run builds every teacher: no hub here
    assert main(["run", str(recipe), "--dry-run", f"data.options.root={tree}", f"teachers.0.options.model={tiny}"]) == 0
    assert f"root: {tree}" in capsys.readouterr().out
    options = plain(cfg.data.options)
    corpus = liser_host.registries.dataset.build("cremad", **options, seed=0)
    assert all(corpus.split(s) for s in SPLITS)
    assert len({c.speaker for c in corpus.split("teacher")}) == 15

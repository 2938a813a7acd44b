"""video_folder: PyAV decoding (resampled audio, frames at a set rate), the manifest cache, broken
files as bad clips, speakers from folders, and use as the pool of a labeled corpus."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from liser_core.data import BadClipError
from liser_plugins.corpora import decode, fixtures
from liser_plugins.corpora.ravdess import ravdess
from liser_plugins.corpora.video_folder import manifest_path, video_folder

pytest.importorskip("av")


@pytest.fixture
def vox(tmp_path):
    """A VoxCeleb2-like folder: idXXXXX/<video id>/NNNNN.mp4, plus one file of each broken kind."""
    root = tmp_path / "vox"
    fixtures.write_video(root / "id00012/21Uxsk56VDQ/00001.mp4", seconds=2.0, rate=48000)
    fixtures.write_video(root / "id00012/21Uxsk56VDQ/00002.mkv", seconds=1.2)
    fixtures.write_video(root / "id00015/0fijmz4vTVU/00001.webm", seconds=1.5)
    fixtures.write_video(root / "id00015/0fijmz4vTVU/00002.avi", seconds=1.5)
    fixtures.write_video(root / "id00020/silentfilm/00001.mp4", seconds=1.5, audio=False)
    fixtures.write_video(root / "id00020/radio/00001.mkv", seconds=1.5, video=False)
    (root / "id00020/broken").mkdir(parents=True)
    (root / "id00020/broken/00001.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    fixtures.write_video(root / "id00020/long/00001.mp4", seconds=3.0)
    (root / "notes.txt").write_text("not a video")
    return root


def test_audio_is_resampled_and_frames_taken_at_the_set_rate(tmp_path):
    path = fixtures.write_video(tmp_path / "v/a/clip.mp4", seconds=2.0, fps=25, size=(96, 64), rate=48000)
    spec = decode.DecodeSpec(sample_rate=16000, fps=5.0, num_frames=None, frame_size=None)
    audio, rate = decode.read_audio(path, spec)
    assert rate == 16000 and abs(audio.size - 32000) < 1200 and audio.dtype == np.float32
    frames, fps = decode.read_frames(path, spec)
    assert frames.shape == (10, 64, 96, 3) and fps == pytest.approx(5.0)
    # frame i of the video has red (8*i) % 256: at 5 fps of a 25 fps video frames 0, 5, 10... are taken
    red = frames[:, 0, 0, 0].astype(int)
    diff = (red - 40 * np.arange(10)) % 256
    assert np.minimum(diff, 256 - diff).max() <= 6, red
    thinned, _ = decode.read_frames(path, decode.DecodeSpec(fps=5.0, num_frames=4, frame_size=32, grey=True))
    assert thinned.shape == (4, 32, 32)
    padded, _ = decode.read_frames(path, decode.DecodeSpec(fps=2.0, num_frames=6, frame_size=16))
    assert padded.shape == (6, 16, 16, 3)


def test_folder_index_speakers_and_bad_files(vox, tmp_path):
    corpus = video_folder(str(vox), cache_dir=str(tmp_path / "cache"), max_seconds=2.5, num_frames=4, frame_size=32)
    pool = corpus.split("unlabeled")
    assert [corpus.split(s) for s in ("teacher", "labeled", "test")] == [[], [], []]
    assert len(pool) == 8 and all(c.label is None and c.audio is None for c in pool)
    by_id = {c.clip_id: c for c in pool}
    assert by_id["id00012/21Uxsk56VDQ/00001"].speaker == "id00012"
    assert by_id["id00012/21Uxsk56VDQ/00001"].seconds_hint == pytest.approx(2.0, abs=0.1)
    expected_bad = {
        "id00020/silentfilm/00001": "no audio stream",
        "id00020/radio/00001": "no video stream",
        "id00020/broken/00001": "unreadable",
        "id00020/long/00001": "too long",
    }
    for clip_id, clip in by_id.items():
        if clip_id in expected_bad:
            with pytest.raises(BadClipError) as e:
                corpus.load(clip)
            assert e.value.reason.startswith(expected_bad[clip_id]) and e.value.path == clip.path
        else:
            loaded = corpus.load(clip)
            assert loaded.sample_rate == 16000 and loaded.frames.shape == (4, 32, 32, 3), clip_id
    audio_only = video_folder(str(vox), cache_dir=str(tmp_path / "cache"), frames=False)
    radio = next(c for c in audio_only.split("unlabeled") if c.clip_id == "id00020/radio/00001")
    assert audio_only.load(radio).frames is None  # no frames wanted: an audio-only file is fine
    by_parent = video_folder(str(vox), cache_dir=str(tmp_path / "cache"), speaker_from="parent_folder")
    assert {c.speaker for c in by_parent.split("unlabeled")} >= {"id00012/21Uxsk56VDQ", "id00020/radio"}


def test_manifest_is_reused_and_changed_files_are_reprobed(vox, tmp_path, monkeypatch):
    from liser_plugins.corpora import video_folder as vf

    cache = tmp_path / "cache"
    calls = []
    real_probe = decode.probe
    monkeypatch.setattr(decode, "probe", lambda p: calls.append(Path(p).name) or real_probe(p))
    before = sorted(p.relative_to(vox) for p in vox.rglob("*"))
    first = video_folder(str(vox), cache_dir=str(cache))
    assert len(calls) == 8 and first.pool_stats["probed"] == 8
    calls.clear()  # files written in the last two seconds: probed again, their stat cannot vouch for them yet
    assert video_folder(str(vox), cache_dir=str(cache)).pool_stats["probed"] == 8 and len(calls) == 8
    monkeypatch.setattr(vf, "RACY_NS", 0)  # as if they were older
    calls.clear()
    first = video_folder(str(vox), cache_dir=str(cache))
    assert len(calls) == 8
    mpath = manifest_path(vox, cache)
    assert mpath.is_file() and mpath.parent.parent == cache
    assert sorted(p.relative_to(vox) for p in vox.rglob("*")) == before  # nothing written in the folder

    calls.clear()
    mtime = mpath.stat().st_mtime_ns
    second = video_folder(str(vox), cache_dir=str(cache))
    assert calls == [] and second.pool_stats == {**second.pool_stats, "probed": 0, "cached": 8}
    assert mpath.stat().st_mtime_ns == mtime  # unchanged manifest is not rewritten
    assert [c.seconds_hint for c in second.split("unlabeled")] == [c.seconds_hint for c in first.split("unlabeled")]
    assert second.source("id00020/radio/00001").known_problem == "no video stream"

    fixtures.write_video(vox / "id00015/0fijmz4vTVU/00002.avi", seconds=2.2)  # changed: size differs
    (vox / "id00012/21Uxsk56VDQ/00002.mkv").unlink()
    calls.clear()
    third = video_folder(str(vox), cache_dir=str(cache))
    assert calls == ["00002.avi"]
    assert third.pool_stats["removed"] == 1 and len(third.split("unlabeled")) == 7
    changed = next(c for c in third.split("unlabeled") if c.clip_id == "id00015/0fijmz4vTVU/00002")
    assert changed.seconds_hint == pytest.approx(2.2, abs=0.1)

    # rewritten in place, the same size, its old mtime put back (touch -r): its ctime tells
    path = vox / "id00012/21Uxsk56VDQ/00001.mp4"
    st, data = path.stat(), path.read_bytes()
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    calls.clear()
    video_folder(str(vox), cache_dir=str(cache))
    assert calls == ["00001.mp4"]  # size and mtime alone kept its old probe


def test_nan_silence_and_garbage_are_bad_clips(tmp_path):
    spec = decode.DecodeSpec(sample_rate=None, min_seconds=0.1)
    nan = np.full(8000, 0.1, np.float32)
    nan[100] = np.nan
    import soundfile as sf

    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    fixtures.write_wav(tmp_path / "quiet.wav", np.full(8000, 1e-6, np.float32) * np.sign(np.random.randn(8000)).astype(np.float32))
    (tmp_path / "noise.wav").write_bytes(os.urandom(4000))
    (tmp_path / "lfs.mp4").write_text(fixtures.LFS_POINTER)
    (tmp_path / "empty.webm").write_bytes(b"")
    for name, phrase in (("nan.wav", "non-finite"), ("quiet.wav", "silent"), ("noise.wav", "unreadable"),
                         ("lfs.mp4", "git-lfs pointer"), ("empty.webm", "empty file")):
        with pytest.raises(decode.Unusable) as e:
            decode.read_audio(tmp_path / name, spec)
        assert e.value.reason.startswith(phrase), (name, e.value.reason)


def test_ravdess_with_a_video_folder_as_its_pool(vox, tmp_path):
    names = [f"Actor_{a:02d}/03-01-0{e}-01-01-01-{a:02d}.wav" for a in range(1, 25) for e in range(1, 9)]
    fixtures.touch_tree(tmp_path / "rav", names)
    plain = ravdess(str(tmp_path / "rav"), label_fraction=0.25)
    pooled = ravdess(str(tmp_path / "rav"), label_fraction=0.25, unlabeled_from=str(vox),
                     unlabeled_options={"cache_dir": str(tmp_path / "cache"), "max_seconds": 2.5})
    assert [c.clip_id for c in pooled.split("labeled")] == [c.clip_id for c in plain.split("labeled")]
    assert [c.clip_id for c in pooled.split("test")] == [c.clip_id for c in plain.split("test")]
    pool = pooled.split("unlabeled")
    assert len(pool) == 8 and all(c.clip_id.startswith("pool/") and c.label is None for c in pool)
    assert {c.speaker for c in pool} == {"pool/id00012", "pool/id00015", "pool/id00020"}
    loaded = pooled.load(next(c for c in pool if c.clip_id == "pool/id00012/21Uxsk56VDQ/00001"))
    assert loaded.frames is None and loaded.sample_rate == 16000  # ravdess is audio-only here
    with pytest.raises(ValueError, match="not understood"):
        ravdess(str(tmp_path / "rav"), unlabeled_from=str(vox), unlabeled_options={"fps": 3})
    with pytest.raises(ValueError, match="needs unlabeled_from"):
        ravdess(str(tmp_path / "rav"), unlabeled_options={"max_seconds": 3})


def test_data_check_of_a_pool_alone_warns_that_it_has_no_test_split(tmp_path, capsys):
    """A video folder checked on its own (docs/datasets.md) is a pool: no test split is no
    problem there (a recipe scoring a split with no usable clip is one: tests/test_datacheck.py)."""
    from liser_tools.cli import main

    fixtures.write_video(tmp_path / "vids" / "spk1" / "a.mp4", seconds=1.0, freq=220.0)
    fixtures.write_video(tmp_path / "vids" / "spk2" / "b.mp4", seconds=1.0, freq=660.0)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "synth_kd.yaml"
    rc = main(["data", "check", str(recipe), "data.name=video_folder",
               f"data.options={{root: {tmp_path / 'vids'}, cache_dir: {tmp_path / 'c'}}}"])
    out = capsys.readouterr().out
    assert rc == 0 and "the test split has no usable clips" in out and "empty_split" not in out, out + capsys.readouterr().err

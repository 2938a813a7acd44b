"""Bad input planted into a RAVDESS fixture tree (and its video pool): every kind of broken file
is skipped with its file and reason under ``data.bad_clips=skip`` (the run completes and the
report counts it) and stops the run naming them under ``raise`` — never a crash."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from faults import run_cli

from liser_core.testing import TINY_OVERRIDES
from liser_plugins.corpora import decode, fixtures
from liser_plugins.corpora.ravdess import ravdess

pytest.importorskip("av")

RATE = 16000


def _wav_bytes(tmp: Path, **kw) -> bytes:
    return fixtures.write_wav(tmp / "x.wav", **kw).read_bytes()


def _float_wav(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    sf.write(str(path), audio, RATE, subtype="FLOAT")


#: kind -> (how to make the file at PATH, the leading phrase of the reason)
def _makers(scratch: Path):
    good = _wav_bytes(scratch, seconds=1.0)
    no_rate = bytearray(good)
    no_rate[24:28] = struct.pack("<I", 0)  # the fmt chunk's sample rate
    nan = fixtures.tone(1.0, RATE)
    nan[100] = np.nan
    inf = fixtures.tone(1.0, RATE)
    inf[5] = np.inf
    return {
        "empty": (lambda p: p.write_bytes(b""), "empty file"),
        "truncated": (lambda p: p.write_bytes(good[: len(good) // 2]), "truncated"),
        "header_only": (lambda p: p.write_bytes(good[:30]), "unreadable"),
        "lfs_pointer": (
            lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab12\nsize 123456\n"),
            "git-lfs pointer",
        ),
        "text": (lambda p: p.write_text("this is a transcript, not audio\n" * 20), "unreadable"),
        "silent": (lambda p: fixtures.write_wav(p, np.zeros(RATE, np.float32), RATE), "silent"),
        "nan": (lambda p: _float_wav(p, nan), "non-finite samples"),
        "inf": (lambda p: _float_wav(p, inf), "non-finite samples"),
        "too_short": (lambda p: fixtures.write_wav(p, seconds=0.1), "too short"),
        "too_long": (lambda p: fixtures.write_wav(p, seconds=4.0), "too long"),
        "no_sample_rate": (lambda p: p.write_bytes(bytes(no_rate)), "unreadable"),
    }


# RAVDESS names: modality-channel-emotion-intensity-statement-repetition-actor
def _name(actor: int, emotion: int) -> str:
    return f"Actor_{actor:02d}/03-01-{emotion:02d}-01-01-01-{actor:02d}.wav"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """24 actors x 8 emotions, one bad file of each kind in place of a good one (spread over
    actors, hence over the teacher, labeled and test splits), and a video pool with a video
    without sound and one without picture (usable by this audio-only run)."""
    root = tmp_path_factory.mktemp("bad_input")
    rav = root / "RAVDESS"
    makers = _makers(root)
    planted = {}
    for (kind, (_, phrase)), actor in zip(makers.items(), range(1, 25, 2)):
        planted[kind] = (_name(actor, 1 + actor % 8), phrase)
    bad_names = {name for name, _ in planted.values()}
    for actor in range(1, 25):
        for emotion in range(1, 9):
            name = _name(actor, emotion)
            if name not in bad_names:
                fixtures.write_wav(rav / name, seconds=0.6, seed=actor * 8 + emotion, freq=150 + 40 * emotion)
    for kind, (name, _) in planted.items():
        (rav / name).parent.mkdir(parents=True, exist_ok=True)
        makers[kind][0](rav / name)
    # a wav at 8 kHz where the corpus asks for 16 kHz: usable, resampled
    fixtures.write_wav(rav / _name(2, 3), seconds=0.6, rate=8000)
    vox = root / "pool"
    fixtures.write_video(vox / "id00001/a/00001.mp4", seconds=1.0)
    fixtures.write_video(vox / "id00001/a/00002.mp4", seconds=1.0)
    fixtures.write_video(vox / "id00002/b/00001.mp4", seconds=1.0, audio=False)  # no audio stream
    fixtures.write_video(vox / "id00002/b/00002.mkv", seconds=1.0, video=False)  # no video stream
    return root, {Path(n).stem: p for n, p in planted.values()} | {"pool/id00002/b/00001": "no audio stream"}


def _options(root: Path) -> list[str]:
    return [
        "data.name=ravdess",
        f"data.options={{root: {root / 'RAVDESS'}, sample_rate: 16000, max_seconds: 3.0, label_fraction: 1.0,"
        f" teacher_fraction: 0.25, unlabeled_from: {root / 'pool'},"
        f" unlabeled_options: {{cache_dir: {root / 'cache'}, max_seconds: 3.0}}}}",
        "teachers=[{name: audio_cnn, options: {channels: [4, 8], hidden: 16}, fit: {epochs: 1, batch_size: 16}}]",
        "student.name=logmel_cnn",
        "student.options={channels: [4, 8]}",
        "distil.losses=[{name: kl}, {name: ce, weight: 0.5}]",
        "distil.batch_size=16",
    ]


def test_each_bad_file_is_found_with_its_reason(tree, tmp_path):
    root, expected = tree
    corpus = ravdess(str(root / "RAVDESS"), sample_rate=16000, max_seconds=3.0)
    clips = {c.clip_id: c for c in corpus}
    for clip_id, phrase in expected.items():
        if clip_id.startswith("pool/"):
            continue
        with pytest.raises(Exception) as e:
            corpus.load(clips[clip_id])
        assert str(e.value).split(": ", 1)[1].startswith(phrase), (clip_id, str(e.value))
        assert f"{clip_id}.wav" in str(e.value)
    low = corpus.load(clips["03-01-03-01-01-01-02"])  # the 8 kHz file, resampled
    assert low.sample_rate == 16000 and abs(low.audio.size - 9600) <= 1
    no_video = root / "pool/id00002/b/00002.mkv"
    assert decode.read_audio(no_video, decode.DecodeSpec(sample_rate=16000))[0].size > 0
    with pytest.raises(decode.Unusable, match="no video stream"):
        decode.read_frames(no_video, decode.DecodeSpec())


def test_skip_policy_completes_and_reports_every_bad_file(tree, tmp_path):
    root, expected = tree
    run_dir = tmp_path / "run"
    p = run_cli(["run", "recipes/synth_kd.yaml", *TINY_OVERRIDES, *_options(root), f"run_dir={run_dir}"])
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    skipped = metrics["diagnostics"]["skipped_clips"]
    assert set(skipped) == set(expected), set(skipped) ^ set(expected)
    for clip_id, phrase in expected.items():
        assert skipped[clip_id].startswith(phrase), (clip_id, skipped[clip_id])
    log = (run_dir / "log.txt").read_text()
    assert "RAVDESS/Actor_01/03-01-02-01-01-01-01.wav: empty file" in log
    assert f"{len(expected)} clip(s) skipped as bad" in p.stderr


def test_raise_policy_stops_naming_the_file_and_reason(tree, tmp_path):
    root, expected = tree
    p = run_cli(["run", "recipes/synth_kd.yaml", *TINY_OVERRIDES, *_options(root), "data.bad_clips=raise",
                 f"run_dir={tmp_path / 'run'}"])
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("liser: error: ")
    assert any(f"{cid.removeprefix('pool/')}" in line and phrase in line for cid, phrase in expected.items()), line


def test_an_unreadable_file_is_a_bad_clip_not_a_crash(tmp_path):
    """Permission denied. Root reads any file, so as root the check runs in a process whose
    capabilities to bypass file permissions are dropped (util-linux ``setpriv``)."""
    import shutil

    path = fixtures.write_wav(tmp_path / "locked.wav", seconds=0.6)
    path.chmod(0o000)
    code = (
        "from liser_plugins.corpora import decode\n"
        "try:\n"
        f"    decode.read_audio({str(path)!r}, decode.DecodeSpec())\n"
        "except decode.Unusable as e:\n"
        "    print('REASON', e.reason)\n"
    )
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions cannot be enforced")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    finally:
        path.chmod(0o644)
    assert "REASON unreadable" in out.stdout and "ermission denied" in out.stdout, out.stdout + out.stderr

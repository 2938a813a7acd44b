"""Near copies: a test clip re-encoded, resampled, remuxed, trimmed or gain-changed into another
split is a duplicate, like a byte copy; another take of the same sentence by the same speaker is
not (liser_cache/fingerprint.py, docs/soundness.md)."""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from liser_cache import fingerprint as fpm
from liser_cache.fingerprint import THRESHOLD, FingerprintCache, compute, similarity

av = pytest.importorskip("av")

RATE = 16000
VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (660, 1720, 2410),
          (300, 870, 2240), (570, 840, 2410), (440, 1020, 2240), (490, 1350, 1690), (390, 1990, 2550)]


def speech(speaker: int, sentence: int, take: int, rate: int = RATE) -> np.ndarray:
    """A speech-like clip: a speaker (pitch, vocal-tract length) says a sentence (a sequence of
    vowels and fricatives) in one take (its own timing, +-15% per syllable, and pitch contour),
    with 0.3-0.6 s of near-silence before and after."""
    rs = np.random.default_rng(1000 + speaker)
    f0_base, tract = rs.uniform(95, 230), rs.uniform(0.88, 1.15)
    rq = np.random.default_rng(2000 + sentence)
    n = 9
    vowels, base_dur, gaps = rq.integers(0, len(VOWELS), n), rq.uniform(0.10, 0.22, n), rq.uniform(0.03, 0.08, n)
    fric = rq.random(n) < 0.6
    rt = np.random.default_rng(10_000 * speaker + 100 * sentence + take)
    dur, gap = base_dur * rt.uniform(0.85, 1.15, n), gaps * rt.uniform(0.8, 1.2, n)
    lead, tail = rt.uniform(0.3, 0.6), rt.uniform(0.3, 0.6)
    total = lead + tail + dur.sum() + gap.sum()
    size = int(total * rate)
    t = np.arange(size) / rate
    amp, noise_env = np.zeros(size), np.zeros(size)
    formants = np.zeros((3, size))
    formants[:] = np.array(VOWELS[vowels[0]])[:, None] * tract
    pos = lead
    for k in range(n):
        a, b = int(pos * rate), int((pos + dur[k]) * rate)
        amp[a:b] = np.sin(np.pi * np.arange(b - a) / max(1, b - a)) ** 0.6 * rt.uniform(0.6, 1.0)
        formants[:, a:] = np.array(VOWELS[vowels[k]])[:, None] * tract
        pos += dur[k]
        c, d = int(pos * rate), int((pos + gap[k]) * rate)
        noise_env[c:d] = np.sin(np.pi * np.arange(d - c) / max(1, d - c)) * 0.15 * fric[k]
        pos += gap[k]
    width = int(0.04 * rate)  # formant transitions: a 40 ms moving average
    formants = np.stack([np.convolve(np.pad(f, width, mode="edge"), np.ones(width) / width, "same")[width:-width]
                         for f in formants])
    contour = (1 + rt.uniform(0.05, 0.2) * np.sin(2 * np.pi * rt.uniform(0.3, 0.8) * t + rt.uniform(0, 6))
               - rt.uniform(0.0, 0.15) * t / total)
    f0 = f0_base * rt.uniform(0.9, 1.15) * contour
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = np.zeros(size)
    for h in range(1, int(4500 / f0.min()) + 1):
        fh = h * f0
        g = sum(1.0 / (1 + ((fh - formants[i]) / (60 + 30 * i)) ** 2) for i in range(3)) / np.sqrt(h)
        g[fh > rate / 2 - 200] = 0
        x += g * np.sin(h * phase)
    x *= amp
    peak = np.abs(x).max()
    x += noise_env * np.diff(rt.standard_normal(size), prepend=0) * peak * 2 + 0.0005 * peak * rt.standard_normal(size)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def _frames(fmt: str, x: np.ndarray) -> np.ndarray:
    if fmt.startswith("s16"):
        return (x * 32767).astype(np.int16)
    if fmt.startswith("s32"):
        return (x * 2_147_483_000).astype(np.int32)
    return x.astype(np.float32)


def write_media(target, audio: np.ndarray, rate: int, *, fmt: str, acodec: str, bitrate: int | None = None,
                video: bool = False, out_rate: int | None = None) -> None:
    """``audio`` encoded with ``acodec`` (at ``bitrate``, resampled to ``out_rate``) into a
    ``fmt`` container (a path or a buffer), with a tiny video stream when ``video``."""
    out_rate = out_rate or rate
    if out_rate != rate:
        audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, out_rate).numpy()
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        target = str(target)
    with av.open(target, "w", format=fmt) as c:
        vs = None
        if video:
            vs = c.add_stream("h264" if fmt == "mp4" else "mpeg4", rate=10)
            vs.width, vs.height, vs.pix_fmt = 32, 24, "yuv420p"
        st = c.add_stream(acodec, rate=out_rate)
        st.layout = "mono"
        if bitrate:
            st.bit_rate = bitrate
        if vs is not None:
            for i in range(int(len(audio) / out_rate * 10)):
                img = np.full((24, 32, 3), (8 * i) % 256, np.uint8)
                for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in vs.encode():
                c.mux(pkt)
        step = st.codec_context.frame_size or 1024
        sample_fmt = st.codec_context.format.name
        for pts in range(0, audio.size, step):
            frame = av.AudioFrame.from_ndarray(_frames(sample_fmt, audio[pts: pts + step][None]), format=sample_fmt,
                                               layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = out_rate, pts, Fraction(1, out_rate)
            for pkt in st.encode(frame):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)


def decode(source) -> tuple[np.ndarray, int]:
    with av.open(source) as c:
        s = c.streams.audio[0]
        chunks = [f.to_ndarray().astype(np.float32).reshape(-1) for f in c.decode(s)]
        return np.concatenate(chunks), s.codec_context.sample_rate


def reencoded(x: np.ndarray, fmt: str, acodec: str, bitrate: int, out_rate: int = RATE) -> tuple[np.ndarray, int]:
    buf = io.BytesIO()
    write_media(buf, x, RATE, fmt=fmt, acodec=acodec, bitrate=bitrate, out_rate=out_rate)
    buf.seek(0)
    return decode(buf)


def resampled(x: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    return torchaudio.functional.resample(torch.from_numpy(x), RATE, rate).numpy(), rate


# -- the fingerprint itself -------------------------------------------------------------------------
def test_copies_are_near_and_other_takes_are_not():
    """Every kind of copy scores at or above the threshold; other takes of the same sentence by
    the same speaker, other sentences and other speakers below it (margins in docs/soundness.md)."""
    original = speech(0, 0, 0)
    ref = compute(original, RATE)
    trim = int(0.4 * RATE)
    copies = {
        "aac 32 kb/s": reencoded(original, "adts", "aac", 32_000),
        "mp3 32 kb/s": reencoded(original, "mp3", "libmp3lame", 32_000),
        "opus 16 kb/s at 48 kHz": reencoded(original, "ogg", "libopus", 16_000, 48_000),
        "resampled to 8 kHz": resampled(original, 8000),
        "resampled to 44.1 kHz": resampled(original, 44100),
        "trimmed 0.4 s at the start": (original[trim:], RATE),
        "trimmed 0.4 s at the end": (original[:-trim], RATE),
        "0.4 s of silence added": (np.concatenate([np.zeros(trim, np.float32), original]), RATE),
        "-6 dB": (original * 0.5, RATE),
        "trimmed 0.43 s and aac": reencoded(original[int(0.43 * RATE):], "adts", "aac", 32_000),
    }
    sims = {name: similarity(ref, compute(x, r)) for name, (x, r) in copies.items()}
    low = {k: round(v[0], 3) for k, v in sims.items() if v[0] < THRESHOLD}
    assert not low, f"copies below the threshold {THRESHOLD}: {low}"
    assert sims["trimmed 0.4 s at the start"][1] == pytest.approx(0.4, abs=0.011)  # the shift is found
    assert sims["0.4 s of silence added"][1] == pytest.approx(-0.4, abs=0.011)
    others = {
        "another take, same speaker and sentence": speech(0, 0, 1),
        "a third take, same speaker and sentence": speech(0, 0, 2),
        "same speaker, another sentence": speech(0, 1, 0),
        "another speaker, same sentence": speech(1, 0, 0),
        "another speaker, another sentence": speech(2, 1, 1),
    }
    high = {k: round(similarity(ref, compute(x, RATE))[0], 3) for k, x in others.items()}
    assert max(high.values()) < THRESHOLD, f"different recordings at or above the threshold: {high}"


def test_gain_and_sample_rate_do_not_change_the_fingerprint_and_silence_has_none():
    x = speech(3, 0, 0)
    a, b = compute(x, RATE), compute(0.25 * x, RATE)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 1  # int8 rounding only
    assert similarity(a, b)[0] == pytest.approx(1.0, abs=2e-3)
    assert compute(np.zeros(RATE, np.float32), RATE) is None


def test_fingerprints_are_cached_by_content_without_pickle(tmp_path):
    from liser_core.data import Clip

    cache = FingerprintCache(tmp_path / "fp.sqlite3")
    clips = [Clip("a", speech(0, 0, 0), RATE, "s"), Clip("b", speech(1, 1, 1), RATE, "s")]
    first = fpm.fingerprints_of(clips, [("d1",), ("d2",)], cache=cache)
    again = fpm.fingerprints_of([Clip("a", None, RATE, "s")], [("d1",)], cache=FingerprintCache(tmp_path / "fp.sqlite3"))
    assert again[0] is not None and np.array_equal(again[0].frames, first[0].frames)  # read, not decoded
    assert np.array_equal(again[0].signature, first[0].signature)
    assert fpm.fingerprints_of([Clip("c", None, RATE, "s")], [("d3",)], cache=cache) == [None]  # nothing to decode
    import sqlite3

    with sqlite3.connect(tmp_path / "fp.sqlite3") as db:  # rows are raw arrays with their length, no pickle
        rows = db.execute("SELECT frames, length(z), length(w), length(sig) FROM fp2").fetchall()
    assert sorted(rows) == sorted((len(f.weights), len(f.weights) * fpm.N_MELS, len(f.weights), 8 * fpm.N_MELS)
                                  for f in first)


# -- a run and liser data check -------------------------------------------------------------------
def test_near_copies_of_a_test_clip_in_a_video_pool_are_left_out_and_reported(tmp_path, capsys):
    from liser_plugins.corpora import fixtures
    from liser_tools.cli import main
    from tests.test_soundness import recipe, write_ravdess

    root = write_ravdess(tmp_path / "RAVDESS", (2, 3, 4))
    takes = {}
    for e in range(1, 9):  # the test actor: speech-like takes (sentence 1 or 2) as mp4s
        x = takes[e] = speech(1, e % 2, e)
        write_media(root / f"Actor_01/01-01-0{e}-01-01-01-01.mp4", x, RATE, fmt="mp4", acodec="aac",
                    bitrate=96_000, video=True)
    pool = tmp_path / "videos"
    for i in range(2):
        fixtures.write_video(pool / f"id0000{i}/v/00001.mp4", seconds=1.2, size=(32, 24), freq=400 + 50 * i)
    test_mp4 = root / "Actor_01/01-01-03-01-01-01-01.mp4"
    x, rate = decode(str(test_mp4))
    write_media(pool / "id00009/reencoded.mp4", x, rate, fmt="mp4", acodec="aac", bitrate=32_000, video=True)
    write_media(pool / "id00009/resampled.avi", x, rate, fmt="avi", acodec="pcm_s16le", video=True, out_rate=44100)
    cut = int(0.4 * rate)
    write_media(pool / "id00009/trimmed.mp4", 0.5 * x[cut:], rate, fmt="mp4", acodec="aac", bitrate=64_000, video=True)
    with av.open(str(test_mp4)) as src, av.open(str(pool / "id00009/remuxed.mkv"), "w", format="matroska") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}  # -c copy
        for pkt in src.demux():
            if pkt.dts is not None:
                pkt.stream = streams[pkt.stream.index]
                dst.mux(pkt)
    # another take of the same sentence by the same speaker: not a copy
    write_media(pool / "id00009/another_take.mp4", speech(1, 1, 11), RATE, fmt="mp4", acodec="aac", video=True)
    opts = (f"fold: 1, label_fraction: 0.5, teacher_speakers: [4], unlabeled_from: {pool}, "
            f"unlabeled_options: {{cache_dir: {tmp_path / 'c'}}}")
    path = recipe(tmp_path, root, opts)
    assert main(["run", str(path), f"run_dir={tmp_path / 'run'}"]) == 0
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    near = {d["clip_id"]: d for d in splits["dropped_duplicates"]}
    copies = {f"pool/id00009/{n}" for n in ("reencoded", "resampled", "trimmed", "remuxed")}
    assert set(near) == copies
    for d in near.values():
        assert d["kind"] == "near" and d["of_split"] == "test" and d["of_clip"] == "01-01-03-01-01-01-01"
        assert THRESHOLD <= d["similarity"] <= 1.0
    assert near["pool/id00009/trimmed"]["shift"] == pytest.approx(0.4, abs=0.011)
    pool_ids = {c["id"] for c in splits["splits"]["unlabeled"]["clips"]}
    assert "pool/id00009/another_take" in pool_ids and not pool_ids & copies
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any("4 clip(s) left out as duplicates" in w and "near copy" in w for w in metrics["warnings"])

    capsys.readouterr()
    assert main(["data", "check", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert {p["clip_id"] for p in report["problems"] if p["kind"] == "near_duplicate"} == copies
    assert main(["data", "check", str(path), "--json", "data.near_duplicates=false"]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "data.duplicates=error", "--dry-run"]) == 2
    assert "data.duplicates" in capsys.readouterr().err

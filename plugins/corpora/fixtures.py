"""Fixture trees that follow the real corpora's layouts and file naming, for tests and demos.

The reference metadata (``ravdess_speech_audio.tsv``, ``cremad_audio.tsv``: every file of the
published corpora with its emotion, actor and duration) gives the names; the files themselves
are placeholders (empty, for indexing), short generated signals (soundfile) or tiny videos
(PyAV). Nothing here is imported by the corpora.

Example::

    >>> rows = read_metadata(REFERENCE / "cremad_audio.tsv")  # doctest: +SKIP
    >>> touch_tree(tmp / "CREMA-D", [r["file"] for r in rows])  # doctest: +SKIP
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 71244\n"
)

#: Video and audio codecs PyAV's own FFmpeg can write, per container extension.
_CODECS = {
    ".mp4": ("mp4", "h264", "aac"),
    ".flv": ("flv", "flv", "aac"),
    ".mkv": ("matroska", "mpeg4", "aac"),
    ".webm": ("webm", "libvpx", "libopus"),
    ".avi": ("avi", "mpeg4", "pcm_s16le"),
}


#: The reference metadata shipped with the package (see ``reference/README.md``): every speech
#: file of the published RAVDESS (1,440) and CREMA-D (7,442) corpora, with labels, actors,
#: durations and EmoBox's folds. No audio.
REFERENCE = Path(__file__).resolve().parent / "reference"


def read_metadata(path: str | Path) -> list[dict[str, str]]:
    """Rows of a reference TSV as dicts (``file``, ``emotion``, ``actor``, ...). A bare file name
    (``"ravdess_speech_audio.tsv"``) is read from :data:`REFERENCE`."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (REFERENCE / path).is_file():
        path = REFERENCE / path
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def touch_tree(root: str | Path, relpaths: Iterable[str], content: bytes = b"") -> list[Path]:
    """Create every ``root/relpath`` as a placeholder file (for indexing-only tests)."""
    root = Path(root)
    out = []
    for rel in relpaths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        out.append(p)
    return out


def tone(seconds: float, rate: int, freq: float = 220.0, amplitude: float = 0.2, seed: int = 0) -> np.ndarray:
    """A voiced-sounding test signal: harmonics of ``freq`` with a syllable-rate envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    x = sum(np.sin(2 * np.pi * freq * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 5))
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6.28))
    x = x * env + 0.01 * rng.standard_normal(t.size)
    return (amplitude * x / max(1e-9, np.abs(x).max())).astype(np.float32)


def write_wav(path: str | Path, audio: np.ndarray | None = None, rate: int = 16000, *, seconds: float = 0.5,
              freq: float = 220.0, seed: int = 0) -> Path:
    """A PCM-16 wav of ``audio`` (default: :func:`tone`)."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if audio is None:
        audio = tone(seconds, rate, freq, seed=seed)
    sf.write(str(path), audio, rate, subtype="PCM_16")
    return path


def write_video(
    path: str | Path,
    *,
    seconds: float = 1.0,
    fps: int = 25,
    size: tuple[int, int] = (64, 48),
    rate: int = 16000,
    audio: bool = True,
    video: bool = True,
    freq: float = 330.0,
    seed: int = 0,
    noise: float = 0.0,
) -> Path:
    """A tiny video (moving gradient; a tone for sound) in the container of ``path``'s extension.

    Frame ``i`` has red channel ``(8 * i) % 256`` at its top-left pixel, so tests can tell which
    frames were sampled. ``seed`` and ``noise`` (the standard deviation of white noise added to
    the tone) make clips that are not near copies of each other by content.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt, vcodec, acodec = _CODECS[path.suffix.lower()]
    if acodec == "libopus":
        rate = 48000
    with av.open(str(path), "w", format=fmt) as c:
        vs = st = None  # every stream is added before the first packet is muxed
        if video:
            vs = c.add_stream(vcodec, rate=fps)
            vs.width, vs.height = size
            vs.pix_fmt = "yuv420p"
        if audio:
            st = c.add_stream(acodec, rate=rate)
            st.layout = "mono"
        if vs is not None:
            yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
            for i in range(int(round(seconds * fps))):
                img = np.zeros((size[1], size[0], 3), np.uint8)
                img[..., 0] = (8 * i) % 256
                img[..., 1] = (xx * 255 // max(1, size[0] - 1)).astype(np.uint8)
                img[..., 2] = (yy * 255 // max(1, size[1] - 1)).astype(np.uint8)
                for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in vs.encode():
                c.mux(pkt)
        if st is not None:
            ctx = st.codec_context
            x = tone(seconds, rate, freq, seed=seed)
            if noise:
                x = x + noise * np.random.default_rng(seed).standard_normal(x.size).astype(np.float32)
            step = ctx.frame_size or 1024
            sample_fmt = ctx.format.name
            for pts in range(0, x.size, step):
                chunk = x[pts : pts + step][None, :]
                if sample_fmt.startswith("s16"):
                    chunk = (chunk * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(chunk, format=sample_fmt, layout="mono")
                frame.sample_rate = rate
                frame.pts = pts
                frame.time_base = Fraction(1, rate)
                for pkt in st.encode(frame):
                    c.mux(pkt)
            for pkt in st.encode():
                c.mux(pkt)
    return path


def plant_cremad_bad_files(audio_dir: str | Path, lfs_names: Iterable[str] = ()) -> dict[str, str]:
    """Write CREMA-D's known-bad files as they are broken in the wild, plus git-lfs pointers.

    Returns clip id -> the leading phrase of the reason ``load`` must give.
    """
    d = Path(audio_dir)
    d.mkdir(parents=True, exist_ok=True)
    rate = 16000
    (d / "1076_MTI_NEU_XX.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    write_wav(d / "1076_MTI_SAD_XX.wav", np.zeros(int(2.5 * rate), np.float32), rate)
    write_wav(d / "1064_TIE_SAD_XX.wav", np.zeros(0, np.float32), rate)
    write_wav(d / "1064_IEO_DIS_MD.wav", tone(61.0, rate), rate)
    expected = {
        "1076_MTI_NEU_XX": "unreadable",
        "1076_MTI_SAD_XX": "silent",
        "1064_TIE_SAD_XX": "zero length",
        "1064_IEO_DIS_MD": "too long",
    }
    for name in lfs_names:
        (d / f"{name}.wav").write_text(LFS_POINTER)
        expected[name] = "git-lfs pointer"
    return expected

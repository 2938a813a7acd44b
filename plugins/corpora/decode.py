"""Decoding audio and face frames from corpus files, and the checks that make a clip usable.

Audio files (wav, flac, ogg) are read with soundfile; everything else, and any audio file
soundfile refuses, with PyAV (imported on first use). Every failure becomes a
:class:`~liser_core.data.BadClipError` naming the file and the reason, so the recipe's
``data.bad_clips`` policy (skip | raise) decides what happens and ``liser data check`` can list
it. Reasons start with a fixed phrase that ``liser data check`` groups by:

``empty file`` (0 bytes), ``git-lfs pointer`` (a pointer text file instead of the media),
``unreadable: ...`` (the decoder's own message), ``no audio stream``, ``no video stream``,
``truncated`` (a wav cut short), ``zero length`` (no samples), ``non-finite samples``, ``silent``, ``too short``, ``too long``.

Example::

    >>> spec = DecodeSpec(sample_rate=16000, max_seconds=20.0)
    >>> audio, rate = read_audio("AudioWAV/1001_DFA_ANG_XX.wav", spec)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liser_common.audio import SILENT_RMS, av_mono, av_resampler, cut_short, wav_truncation
from liser_core.data import BadClipError, Clip

#: Extensions read with soundfile first (PyAV is the fallback).
SOUNDFILE_EXTS = frozenset({".wav", ".flac", ".ogg"})
#: Extensions of video containers the corpora index.
VIDEO_EXTS = (".mp4", ".flv", ".mkv", ".webm", ".avi", ".mov", ".m4v")
LFS_HEADER = b"version https://git-lfs"
#: what decoding gives, beyond the spec: part of every clip's decode signature, so decoded
#: clips, teacher outputs and features of an older decoder are not reused (2: a multichannel
#: stream in a container is made mono by the mean of its channels, as soundfile-read files;
#: FFmpeg's downmix made a stereo track 3 dB louder)
DECODER_VERSION = 2


class Unusable(Exception):
    """A file that cannot give a clip; the caller turns it into BadClipError with the clip id."""

    def __init__(self, reason: str, path: str | Path | None = None):
        super().__init__(reason)
        self.reason = reason
        self.path = str(path) if path is not None else None


@dataclass(frozen=True)
class DecodeSpec:
    """How a corpus turns its files into clips (one per corpus, from its options)."""

    sample_rate: int | None = None  # rate of the decoded audio; None keeps the file's own
    min_seconds: float = 0.0  # shorter clips are BadClipError("too short ...")
    max_seconds: float | None = None  # longer clips are BadClipError("too long ..."); None: no limit
    min_rms: float = SILENT_RMS  # clips quieter than this RMS (-80 dBFS) are "silent"
    fps: float = 5.0  # face frames taken per second of video
    num_frames: int | None = 8  # frames per clip after sampling (thinned or repeated evenly)
    frame_size: int | None = 160  # frames scaled (short side) and centre-cropped to a square
    grey: bool = False  # (T, H, W) grey frames instead of (T, H, W, 3) RGB

    def __post_init__(self):
        if self.sample_rate is not None and self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {self.sample_rate}")
        if self.min_seconds < 0:
            raise ValueError(f"min_seconds must be >= 0, got {self.min_seconds}")
        if self.max_seconds is not None and self.max_seconds <= self.min_seconds:
            raise ValueError(f"max_seconds ({self.max_seconds}) must exceed min_seconds ({self.min_seconds})")
        if self.min_rms < 0:
            raise ValueError(f"min_rms must be >= 0, got {self.min_rms}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1 or null, got {self.num_frames}")
        if self.frame_size is not None and self.frame_size < 8:
            raise ValueError(f"frame_size must be >= 8 or null, got {self.frame_size}")


@dataclass(frozen=True)
class Source:
    """Where one clip's audio (and frames) come from."""

    audio: str  # file the audio is decoded from
    video: str | None = None  # file the face frames are decoded from; None: audio only
    spec: DecodeSpec = DecodeSpec()
    known_problem: str = ""  # found while indexing (e.g. "no audio stream"): load fails at once


def torch_worker():
    """The DataLoader worker this code runs in, or None in the main process."""
    import torch.utils.data

    return torch.utils.data.get_worker_info()


def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - av is a dependency of the 'video' extra
        raise Unusable("unreadable: decoding this file needs PyAV (pip install 'liser[video]')") from None
    return av


def _decode_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, ValueError, RuntimeError, EOFError, IndexError, KeyError]
    try:
        import av

        errors.append(av.FFmpegError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def precheck(path: str | Path) -> None:
    """Reject files that are no media at all: missing, 0 bytes, or a git-lfs pointer."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size == 0:
            raise Unusable("empty file (0 bytes)", p)
        if size < 1024:
            with open(p, "rb") as f:
                head = f.read(len(LFS_HEADER))
            if head == LFS_HEADER:
                raise Unusable("git-lfs pointer, not media (fetch the real files: git lfs pull)", p)
    except OSError as exc:
        raise Unusable(f"unreadable: {exc.strerror or exc}", p) from None


def _too_long(seconds: float, spec: DecodeSpec) -> str | None:
    if spec.max_seconds is not None and seconds > spec.max_seconds:
        return f"too long ({seconds:.1f} s > max_seconds {spec.max_seconds:g})"
    return None


def check_audio(audio: np.ndarray, rate: int, spec: DecodeSpec) -> str | None:
    """The reason a decoded waveform is unusable, or None."""
    if audio.size == 0:
        return "zero length (no audio samples)"
    if not np.isfinite(audio).all():
        return "non-finite samples (NaN or Inf)"
    seconds = audio.size / rate
    if (reason := _too_long(seconds, spec)) is not None:
        return reason
    if seconds < spec.min_seconds:
        return f"too short ({seconds:.2f} s < min_seconds {spec.min_seconds:g})"
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms < spec.min_rms:
        return f"silent (RMS {rms:.1e} < min_rms {spec.min_rms:g})"
    return None


def _resample(audio: np.ndarray, rate: int, target: int | None) -> tuple[np.ndarray, int]:
    if target is None or target == rate:
        return audio, rate
    import torch
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(np.ascontiguousarray(audio)), rate, target)
    return out.numpy(), target


_MAGIC = {".wav": (b"RIFF", b"RIFX", b"RF64"), ".flac": (b"fLaC",), ".ogg": (b"OggS",)}


def _container_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head in _MAGIC.get(path.suffix.lower(), ())


def _soundfile_audio(path: Path, spec: DecodeSpec) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if path.suffix.lower() == ".wav" and (reason := wav_truncation(path)):
        raise Unusable(reason, path)
    info = sf.info(str(path))
    if info.frames > 0 and (reason := _too_long(info.frames / info.samplerate, spec)):
        raise Unusable(reason, path)  # before reading a long file
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if reason := cut_short(info.frames, len(data), int(rate)):
        raise Unusable(reason, path)
    return data.mean(axis=1, dtype=np.float32), int(rate)


def _av_audio(path: Path, spec: DecodeSpec) -> tuple[np.ndarray, int]:
    av = _av()
    with av.open(str(path), metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise Unusable("no audio stream", path)
        if container.duration and (reason := _too_long(container.duration / 1e6, spec)):
            raise Unusable(reason, path)
        stream = container.streams.audio[0]
        rate = spec.sample_rate or stream.codec_context.sample_rate or stream.rate
        if not rate:
            raise Unusable("unreadable: the audio stream has no sample rate", path)
        resampler = av_resampler(av, int(rate))
        chunks, total = [], 0
        limit = None if spec.max_seconds is None else (spec.max_seconds + 1.0) * rate
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunk = av_mono(out)  # the mean of its channels, as soundfile-read files
                chunks.append(chunk)
                total += chunk.size
            if limit is not None and total > limit:  # a container that lied about its duration
                raise Unusable(f"too long (> {spec.max_seconds:g} s = max_seconds)", path)
        for out in resampler.resample(None):
            chunks.append(av_mono(out))
            total += chunks[-1].size
        declared = (stream.duration * stream.time_base if stream.duration and stream.time_base
                    else (container.duration or 0) / 1e6)
        if reason := cut_short(int(float(declared) * int(rate)), total, int(rate)):
            raise Unusable(reason, path)
    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    return audio, int(rate)


def read_audio(path: str | Path, spec: DecodeSpec) -> tuple[np.ndarray, int]:
    """Decode a file's audio as mono float32 at ``spec.sample_rate``; check it against ``spec``.

    Raises :class:`Unusable` with the reason.
    """
    path = Path(path)
    precheck(path)
    errors = _decode_errors()
    try:
        if path.suffix.lower() in SOUNDFILE_EXTS:
            try:
                audio, rate = _soundfile_audio(path, spec)
            except Unusable:
                raise
            except errors as sf_exc:
                if not _container_magic(path):  # garbage: FFmpeg might "decode" it as noise
                    raise Unusable(f"unreadable: {_one_line(sf_exc)}", path) from None
                try:  # a real container whose codec libsndfile lacks: let FFmpeg try
                    audio, rate = _av_audio(path, spec)
                except errors:
                    raise Unusable(f"unreadable: {_one_line(sf_exc)}", path) from None
            audio, rate = _resample(audio, rate, spec.sample_rate)
        else:
            audio, rate = _av_audio(path, spec)
    except Unusable:
        raise
    except errors as exc:
        raise Unusable(f"unreadable: {_one_line(exc)}", path) from None
    if (reason := check_audio(audio, rate, spec)) is not None:
        raise Unusable(reason, path)
    return audio, rate


def _convert(frame, spec: DecodeSpec) -> np.ndarray:
    fmt = "gray" if spec.grey else "rgb24"
    if spec.frame_size is None:
        return frame.to_ndarray(format=fmt)
    w, h = frame.width, frame.height
    scale = spec.frame_size / min(w, h)
    sw, sh = max(spec.frame_size, round(w * scale)), max(spec.frame_size, round(h * scale))
    img = frame.reformat(width=sw, height=sh, format=fmt).to_ndarray()
    top, left = (sh - spec.frame_size) // 2, (sw - spec.frame_size) // 2
    return np.ascontiguousarray(img[top : top + spec.frame_size, left : left + spec.frame_size])


def frame_times(seconds: float, fps: float) -> np.ndarray:
    """Sampling instants of a clip of ``seconds`` at ``fps``: 0, 1/fps, ... (at least one)."""
    return np.arange(max(1, math.ceil(seconds * fps - 1e-9))) / fps


def read_frames(path: str | Path, spec: DecodeSpec) -> tuple[np.ndarray, float]:
    """Face frames of a video: one frame per ``1/fps`` seconds, then evenly thinned or repeated to
    ``num_frames`` (so that clips of any length batch together), scaled and centre-cropped to
    ``frame_size``. Returns uint8 frames (T, H, W[, 3]) and their mean rate over the clip.

    Raises :class:`Unusable` with the reason.
    """
    path = Path(path)
    precheck(path)
    av = _av()
    errors = _decode_errors()
    step = 1.0 / spec.fps
    picked: list[np.ndarray] = []
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise Unusable("no video stream", path)
            stream = container.streams.video[0]
            stream.thread_type = "AUTO" if torch_worker() is None else "NONE"  # workers: the parallelism
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            t0, next_t, last_t = None, 0.0, 0.0
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / rate
                t0 = t if t0 is None else t0
                last_t = t - t0
                if spec.max_seconds is not None and last_t > spec.max_seconds + 1.0:
                    raise Unusable(f"too long (> {spec.max_seconds:g} s = max_seconds)", path)
                while next_t <= last_t + 1e-6:  # each sampling instant takes the frame showing then
                    picked.append(frame)  # converted below, once it is known to be kept
                    next_t += step
            seconds = last_t + 1.0 / rate
    except Unusable:
        raise
    except errors as exc:
        raise Unusable(f"unreadable: {_one_line(exc)}", path) from None
    if not picked:
        raise Unusable("unreadable: no decodable video frames", path)
    idx = list(range(len(picked)))
    if spec.num_frames is not None and len(picked) != spec.num_frames:  # thinned or repeated evenly
        idx = np.linspace(0, len(picked) - 1, spec.num_frames).round().astype(int).tolist()
    try:
        converted = {i: _convert(picked[i], spec) for i in dict.fromkeys(idx)}
    except errors as exc:
        raise Unusable(f"unreadable: {_one_line(exc)}", path) from None
    frames = np.stack([converted[i] for i in idx])
    return frames, len(frames) / seconds


def load_clip(clip: Clip, source: Source, *, frames: bool = True) -> Clip:
    """A loaded copy of ``clip`` (audio, and frames when its source has a video and ``frames``),
    or :class:`BadClipError` naming the file and the reason."""
    try:
        if source.known_problem:
            raise Unusable(source.known_problem, source.video or source.audio)
        audio, rate = read_audio(source.audio, source.spec)
        images = fps = None
        if source.video is not None and frames:
            images, fps = read_frames(source.video, source.spec)
    except Unusable as exc:
        raise BadClipError(clip.clip_id, exc.path or source.audio, exc.reason) from None
    return dataclasses.replace(
        clip, audio=audio, sample_rate=rate, frames=images, fps=fps, seconds_hint=audio.size / rate
    )


@dataclass
class Probe:
    """What indexing learns about a media file without decoding it."""

    seconds: float | None  # container duration (None when unknown)
    audio: bool  # has an audio stream
    video: bool  # has a video stream
    sample_rate: int | None  # audio rate, when there is audio
    fps: float | None  # video frame rate, when there is video
    error: str = ""  # why the file cannot be opened ("" when it can)


def probe(path: str | Path) -> Probe:
    """Open a media file's container (no decoding) and report its streams and duration."""
    try:
        precheck(path)
    except Unusable as exc:
        return Probe(None, False, False, None, None, exc.reason)
    av = _av()
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            a = c.streams.audio[0] if c.streams.audio else None
            v = c.streams.video[0] if c.streams.video else None
            seconds = c.duration / 1e6 if c.duration else None
            if seconds is None:
                for s in (a, v):
                    if s is not None and s.duration and s.time_base:
                        seconds = float(s.duration * s.time_base)
                        break
            return Probe(
                seconds=seconds,
                audio=a is not None,
                video=v is not None,
                sample_rate=(a.codec_context.sample_rate or a.rate) if a is not None else None,
                fps=float(v.average_rate) if v is not None and v.average_rate else None,
            )
    except _decode_errors() as exc:
        return Probe(None, False, False, None, None, f"unreadable: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]

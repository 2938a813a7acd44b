"""Reading audio files: checks every reader shares (the corpora, ``liser predict``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def wav_truncation(path: Path) -> str | None:
    """Why a RIFF/WAVE file is cut short (its ``data`` chunk declares more bytes than the file
    holds), or None. libsndfile reads such files without complaint, returning what is there."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            cid, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"data":
                have = size - pos - 8
                if length not in (0, 0xFFFFFFFF) and length > have:  # 0/-1: streamed, size unknown
                    return f"truncated (the header declares {length} bytes of samples, the file holds {have})"
                return None
            pos += 8 + length + (length & 1)
    return None


#: Sample rates outside this range are refused before decoding: below it a file cannot hold
#: speech (and a 1 Hz header turns a few bytes into hours of "audio"), above it no audio
#: interface records (768 kHz is the highest rate in use).
MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 768_000


@dataclass(frozen=True)
class Declared:
    """What an audio file's header says, read without decoding a sample."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate > 0 else math.inf


def check_declared(declared: Declared) -> str | None:
    """Why a header is refused before decoding, or None: a sample rate outside
    [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE], no channels, no frames. Limits: :func:`too_long`."""
    rate = declared.sample_rate
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        return (f"sample rate {rate} Hz in the header is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz: "
                "not a usable recording (resample it, or fix its header)")
    if declared.channels < 1:
        return "the header declares no audio channels"
    if declared.frames <= 0:
        return "no audio samples (the header declares 0 frames)"
    return None


def too_long(frames: int, rate: int, *, max_seconds: float | None = None,
             max_samples: int | None = None) -> str | None:
    """Why ``frames`` samples at ``rate`` are over a limit, or None."""
    if max_seconds is not None and frames > max_seconds * rate:
        return f"{frames / rate:.1f} s of audio is over the limit of {max_seconds:g} s"
    if max_samples is not None and frames > max_samples:
        return (f"{frames:,} samples at {rate} Hz is over the limit of {max_samples:,} decoded samples "
                f"({max_samples / rate:.1f} s at this rate)")
    return None


def resample_rate(rate: int, target: int, budget: int = 2**22) -> int:
    """The rate to resample from: ``rate`` itself, unless the polyphase filter from it to
    ``target`` (``target/g x rate/g`` taps, g their gcd: 16,000 x 44,099 for 44,099 Hz) would
    exceed ``budget`` elements; then the nearest multiple of 100 Hz (a pitch change under 1.3%,
    and under 0.2% above 25 kHz), whose filter is small."""
    g = math.gcd(rate, target)
    if (rate // g) * (target // g) <= budget:
        return rate
    return max(100, int(round(rate / 100)) * 100)


#: below this RMS (-80 dBFS) a clip is silence: a corpus leaves it out ("silent"), and a
#: prediction on it says so
SILENT_RMS = 1e-4


def cut_short(declared_frames: int, decoded: int, rate: int) -> str | None:
    """Why a compressed file (MP3, Ogg, FLAC) is cut short, or None: it decodes to less than 90 %
    of the frames its header declares, and at least 0.25 s less (a header's estimate may be a
    little off; a file cut in half is not). libsndfile decodes what is there without a word."""
    if declared_frames <= 0 or rate <= 0:
        return None
    if decoded < 0.9 * declared_frames and declared_frames - decoded >= 0.25 * rate:
        return (f"truncated: its header declares {declared_frames / rate:.2f} s, only {decoded / rate:.2f} s decode "
                "(cut short while copying or downloading?)")
    return None


def av_resampler(av, rate: int):
    """A PyAV resampler to planar float32 at ``rate`` that keeps the stream's channels, for
    :func:`av_mono`. (FFmpeg's own mono downmix weights two channels by 1/sqrt(2) each: a stereo
    track came out 3 dB louder than the same samples read from a WAV, and clipped.)"""
    return av.AudioResampler(format="fltp", rate=int(rate))


def av_mono(frame) -> np.ndarray:
    """Mono float32 samples of a resampled PyAV frame: the mean of its channels, as every file
    soundfile reads is made mono (one rule for every container)."""
    arr = frame.to_ndarray()
    if arr.ndim == 2 and arr.shape[0] > 1:
        return arr.mean(axis=0, dtype=np.float32)
    return arr.reshape(-1).astype(np.float32, copy=False)

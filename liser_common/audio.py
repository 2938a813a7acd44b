"""Reading audio files: checks every reader shares (the corpora, ``liser predict``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


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

"""Streaming recognition: emotion probabilities every hop over a live stream of audio chunks.

A :class:`StreamRecognizer` keeps, between chunks, the samples of the current window (at most
``window`` seconds: the state), the position in the stream and the smoothed distribution. Each
time ``hop`` more seconds have arrived it scores the last ``window`` seconds and emits a
:class:`Hop`: the window's start and end in the stream (seconds), its probabilities, the
exponentially smoothed probabilities and the milliseconds the scoring took.

The windows are those of offline windowed prediction (:func:`liser_tools.deploy.windows` with
the same window and hop): windows start at 0, hop, 2 hop, ...; at the end of the stream
:meth:`StreamRecognizer.flush` scores the window aligned to the end when the last one did not
reach it (or the whole stream when it was shorter than a window). So a file streamed chunk by
chunk gives the offline probabilities, window for window, whatever the chunk sizes.

Smoothing: ``smoothed = smoothing * previous + (1 - smoothing) * probs`` (the first hop's
``smoothed`` is its ``probs``); ``smoothing=0`` turns it off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .errors import UsageError


@dataclass
class Hop:
    """One scored window of a stream."""

    start: float  # seconds from the stream's start
    end: float
    probs: np.ndarray  # (C,) the window's probabilities
    smoothed: np.ndarray  # (C,) exponentially smoothed over hops
    ms: float  # wall milliseconds to score this window

    def to_dict(self, classes: list[str] | None = None) -> dict:
        """JSON-ready: start, end, probabilities (by class name when ``classes`` is given)."""
        def named(p: np.ndarray):
            values = [round(float(v), 6) for v in p]
            return dict(zip(classes, values)) if classes else values

        out = {"start": round(self.start, 4), "end": round(self.end, 4), "probs": named(self.probs),
               "smoothed": named(self.smoothed), "ms": round(self.ms, 3)}
        if classes:
            out["label"] = classes[int(np.argmax(self.smoothed))]
        return out


#: The shortest audio a student scores (a window, a clip, a whole stream): shorter is refused.
MIN_SECONDS = 0.1


def check_stream(window: float, hop: float, smoothing: float, *, query: bool = False) -> None:
    """Usage errors for a window, hop and smoothing factor (one line each), named as command-line
    options (``--hop 2.0``) or, with ``query``, as a WebSocket's query parameters (``?hop=2.0``)."""
    def name(key: str, value: float) -> str:
        return f"?{key}={value}" if query else f"--{key} {value}"

    if not (math.isfinite(window) and window >= MIN_SECONDS):
        raise UsageError(f"{name('window', window)}: give a window length in seconds >= {MIN_SECONDS}")
    if not (math.isfinite(hop) and 0 < hop <= window):
        raise UsageError(f"{name('hop', hop)}: give a hop in seconds > 0 and at most the window ({window:g} s)")
    if not (math.isfinite(smoothing) and 0 <= smoothing < 1):
        raise UsageError(f"{name('smoothing', smoothing)}: give a factor in [0, 1) (0: no smoothing)")


def as_chunk(chunk) -> np.ndarray:
    """A chunk of a stream as mono float32 in [-1, 1], as files are read: float samples only
    (integer PCM is refused rather than guessed: divide int16 by 32768), one channel (a
    ``(n, 1)`` or ``(1, n)`` array is one), finite; values beyond full scale clipped."""
    a = np.asarray(chunk)
    if a.dtype.kind != "f":
        raise UsageError(f"an audio chunk of {a.dtype} samples: give float samples in [-1, 1] "
                         "(int16 PCM: divide by 32768)")
    if a.ndim > 1 and sorted(a.shape)[:-1] != [1] * (a.ndim - 1):
        raise UsageError(f"an audio chunk of shape {a.shape}: give mono samples (one dimension; average the "
                         "channels of a multichannel chunk)")
    a = a.astype(np.float32).reshape(-1)
    if not np.isfinite(a).all():
        raise UsageError("the audio chunk contains NaN or Inf samples")
    return np.clip(a, -1.0, 1.0)


class StreamRecognizer:
    """Feed chunks of mono float audio at ``sample_rate`` with :meth:`push`; get the hops.
    Chunks go through :func:`as_chunk` (float, mono, finite, clipped to [-1, 1], as files are
    read); a stream shorter than :data:`MIN_SECONDS` is refused at its end.

    ``score`` maps a ``(1, samples)`` float32 array to the window's ``(C,)`` probabilities.
    """

    def __init__(self, score: Callable[[np.ndarray], np.ndarray], sample_rate: int, *, window: float = 1.0,
                 hop: float = 0.25, smoothing: float = 0.5):
        check_stream(window, hop, smoothing)
        self.score, self.sample_rate, self.smoothing = score, int(sample_rate), float(smoothing)
        self.window = max(1, int(round(window * sample_rate)))
        self.hop = max(1, int(round(hop * sample_rate)))
        self._buffer = np.zeros(0, np.float32)  # the stream's samples from self._offset on
        self._offset = 0  # stream index of self._buffer[0]
        self._next_end = self.window  # stream index where the next window ends
        self._last_end = 0  # end of the last window scored
        self._smoothed: np.ndarray | None = None

    @property
    def samples(self) -> int:
        """Samples received so far."""
        return self._offset + len(self._buffer)

    def _emit(self, start: int, end: int) -> Hop:
        audio = self._buffer[start - self._offset: end - self._offset]
        t0 = time.perf_counter()
        probs = np.asarray(self.score(np.ascontiguousarray(audio[None])), dtype=np.float32).reshape(-1)
        ms = 1e3 * (time.perf_counter() - t0)
        a = self.smoothing
        self._smoothed = probs.copy() if self._smoothed is None else a * self._smoothed + (1 - a) * probs
        self._last_end = end
        return Hop(start / self.sample_rate, end / self.sample_rate, probs, self._smoothed.copy(), ms)

    def push(self, chunk: np.ndarray) -> list[Hop]:
        """Add samples; return the hops they complete (possibly none, possibly several)."""
        chunk = as_chunk(chunk)
        self._buffer = np.concatenate([self._buffer, chunk])
        hops = []
        while self.samples >= self._next_end:
            hops.append(self._emit(self._next_end - self.window, self._next_end))
            self._next_end += self.hop
        keep_from = self.samples - self.window  # the last window: the next one and flush() need no more
        if keep_from > self._offset:
            self._buffer = self._buffer[keep_from - self._offset:]
            self._offset = keep_from
        return hops

    def flush(self) -> list[Hop]:
        """The end of the stream: the window aligned to its end when the last window stopped
        short of it (the whole stream when it is shorter than a window); then nothing more."""
        n = self.samples
        if n == 0 or n == self._last_end:
            return []
        if n < MIN_SECONDS * self.sample_rate:
            raise UsageError(f"the stream ended after {n / self.sample_rate:.3g} s: too short to score "
                             f"(at least {MIN_SECONDS} s)")
        if n < self.window:
            return [self._emit(0, n)]
        start = n - self.window
        return [self._emit(start, n)]

    def run(self, chunks: Iterable[np.ndarray]) -> Iterator[Hop]:
        """Every hop of a whole stream of chunks, the end-aligned window last."""
        for chunk in chunks:
            yield from self.push(chunk)
        yield from self.flush()


def latency_summary(hops: list[Hop], seconds: float) -> dict:
    """p50/p95 milliseconds per hop and the real-time factor (compute time / audio time); None
    (JSON null) where there is nothing to measure: no hop, no audio."""
    ms = np.array([h.ms for h in hops])
    return {"hops": len(hops),
            "p50_ms": round(float(np.percentile(ms, 50)), 3) if hops else None,
            "p95_ms": round(float(np.percentile(ms, 95)), 3) if hops else None,
            "rtf": round(float(ms.sum() / 1e3 / seconds), 5) if seconds > 0 else None}


__all__ = ["MIN_SECONDS", "Hop", "StreamRecognizer", "as_chunk", "check_stream", "latency_summary"]

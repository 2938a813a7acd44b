"""Deploying a student: reading audio files, windowed prediction, ONNX/TorchScript export.

Prediction windows: a clip longer than ``window`` seconds (default: the longest labeled clip the
student was trained on, from its ``config.json``) is cut into windows of that length with a hop
of half a window (the last window is aligned to the clip's end); the clip's distribution is the
**mean of the windows' probabilities**. Shorter clips are scored whole.

Before exporting, every submodule with a ``prepare_export()`` method is asked to switch to
export-friendly operators (the first-party log-mel frontend computes its STFT as a two-stage
DFT of convolutions and matrix products then, which ONNX runtimes execute much faster than
their STFT operator).

Exports take a mono waveform at the student's sample rate and contain the audio frontend
(log-mel + normalisation): ``audio`` (batch, samples) float32 -> ``logits``, ``probs``
(batch, classes). A sidecar ``<file>.json`` states the label order, sample rate, that the
frontend is inside, and the window length to use.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from liser_core.checkpoint import read_component_config, resolve_source
from liser_core.components import Student
from liser_core.errors import UsageError
from liser_core.export import (  # moved to liser_core (Student.push_to_hub exports too)
    export,
    export_mismatch,
)
from liser_core.streaming import (
    MIN_SECONDS,  # the shortest clip, window or stream scored: shorter ones are refused
)

log = logging.getLogger("liser.deploy")

#: The longest file ``liser predict`` scores unless ``--max-seconds`` says otherwise (the ONNX
#: export's length limit too); longer ones are refused from their header, before decoding.
DEFAULT_MAX_SECONDS = 3600.0
#: The shortest input of an ONNX export (its dynamic length starts there: liser_core.export)
ONNX_MIN_SECONDS = 0.5
#: audio files a folder is expanded to (read with soundfile); VIDEO_SUFFIXES are read with PyAV
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf",
                  ".w64", ".rf64"}


def check_window(window: float | None) -> float | None:
    """A prediction window: None or 0 (the whole clip), or a finite length >= MIN_SECONDS."""
    if window is None or window == 0:
        return window
    if not math.isfinite(window) or window < MIN_SECONDS:
        raise UsageError(f"--window {window}: give 0 (the whole clip) or a length in seconds >= {MIN_SECONDS}")
    return float(window)
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".flv", ".mov", ".m4a"}


class TooLarge(UsageError):
    """An input past a size or duration limit (``liser serve`` answers 413)."""


#: What one file may decode to when the caller sets no ``max_samples`` (float32 mono: 1 GiB).
MAX_DECODED_SAMPLES = 2**28


def read_audio(path: str | Path, sample_rate: int, *, max_seconds: float | None = None,
               max_samples: int | None = MAX_DECODED_SAMPLES) -> np.ndarray:
    """Mono float32 waveform of an audio or video file, resampled to ``sample_rate``.

    Audio files are read with soundfile, the audio stream of video files with PyAV. Before a
    sample is decoded, the header's sample rate must lie in
    [``MIN_SAMPLE_RATE``, ``MAX_SAMPLE_RATE``] and its duration within ``max_seconds`` and
    ``max_samples`` (:class:`TooLarge`); decoding reads blocks and stops at the limits whatever
    the header said, so memory stays bounded. NaN or Inf samples are refused; finite samples
    outside [-1, 1] (a float file's full scale) are clipped to it. Any decoder failure is a
    :class:`UsageError` naming the file and the reason.
    """
    from liser_common.audio import resample_rate

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    suffix = path.suffix.lower()
    limits = {"max_seconds": max_seconds, "max_samples": max_samples}
    try:
        if suffix in VIDEO_SUFFIXES:
            audio, rate = _read_av(path, **limits)
        else:
            audio, rate = _read_sf(path, **limits)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoder errors become one clear message
        raise UsageError(f"{path}: cannot decode audio ({type(exc).__name__}: {exc})") from None
    if audio.size == 0:
        raise UsageError(f"{path}: no audio samples")
    if not np.isfinite(audio).all():
        raise UsageError(f"{path}: audio contains NaN or Inf samples")
    np.clip(audio, -1.0, 1.0, out=audio)
    if rate != sample_rate:
        import torchaudio.functional as AF

        source = resample_rate(rate, sample_rate)  # an odd rate: its filter would be huge
        audio = AF.resample(torch.from_numpy(np.ascontiguousarray(audio)), source, sample_rate).numpy()
    return np.ascontiguousarray(audio, dtype=np.float32)


def _refuse(path: Path, frames: int, rate: int, channels: int, max_seconds: float | None,
            max_samples: int | None) -> None:
    """Refuse a header (or what has been decoded so far) before reading further."""
    from liser_common.audio import Declared, check_declared, too_long

    if reason := check_declared(Declared(frames, rate, channels)):
        raise UsageError(f"{path}: {reason}")
    if reason := too_long(frames, rate, max_seconds=max_seconds, max_samples=max_samples):
        raise TooLarge(f"{path}: {reason}")


def _read_sf(path: Path, *, max_seconds: float | None, max_samples: int | None) -> tuple[np.ndarray, int]:
    """Mono samples and rate of a soundfile-readable file, its header checked first."""
    import soundfile as sf

    from liser_common.audio import cut_short, wav_truncation

    if path.suffix.lower() == ".wav" and (reason := wav_truncation(path)):
        raise UsageError(f"{path}: {reason}")
    with sf.SoundFile(str(path)) as f:
        rate, channels = int(f.samplerate), int(f.channels)
        _refuse(path, int(f.frames), rate, channels, max_seconds, max_samples)
        block = max(1024, 2**20 // channels)  # a few MiB per block, whatever the channel count
        chunks, total = [], 0
        while True:
            data = f.read(block, dtype="float32", always_2d=True)
            if not len(data):
                break
            chunks.append(data.mean(1) if channels > 1 else data[:, 0].copy())
            total += len(data)
            _refuse(path, total, rate, channels, max_seconds, max_samples)  # a header that lied
        if reason := cut_short(int(f.frames), total, rate):
            raise UsageError(f"{path}: {reason}")
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate


def _read_av(path: Path, *, max_seconds: float | None = None,
             max_samples: int | None = None) -> tuple[np.ndarray, int]:
    try:
        import av
    except ImportError:
        raise UsageError(f"{path}: reading video files needs PyAV: pip install 'liser[video]'") from None
    from liser_common.audio import av_mono, av_resampler, cut_short

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise UsageError(f"{path}: the file has no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.rate or 0)
        declared = 0
        if stream.duration is not None and stream.time_base is not None:
            declared = int(stream.duration * stream.time_base * rate)
        elif container.duration is not None:
            declared = int(container.duration / 1_000_000 * rate)
        _refuse(path, max(declared, 1), rate, 1, max_seconds, max_samples)
        resampler = av_resampler(av, rate)
        chunks, total = [], 0
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(av_mono(out))  # the mean of its channels, as soundfile-read files
                total += len(chunks[-1])
            _refuse(path, max(total, 1), rate, 1, max_seconds, max_samples)  # whatever it declared
        for out in resampler.resample(None):
            chunks.append(av_mono(out))
            total += len(chunks[-1])
        if reason := cut_short(declared, total, rate):
            raise UsageError(f"{path}: {reason}")
        return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given, folders expanded (recursively) to their audio and video files, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            out += [f for f in files if f.suffix.lower() in AUDIO_SUFFIXES | VIDEO_SUFFIXES]
            if left := [f for f in files if f.suffix.lower() not in AUDIO_SUFFIXES | VIDEO_SUFFIXES]:
                kinds = Counter(f.suffix.lower() or "(no suffix)" for f in left)
                log.warning("%s: %d file(s) not scored, by name not audio or video (%s), e.g. %s; name a file to score "
                            "it", p, len(left), ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())), left[0])
        elif p.exists():
            out.append(p)
        else:
            hint = " (the microphone is a stream: liser predict STUDENT mic --stream)" if str(p) == "mic" else ""
            raise UsageError(f"{p}: no such file or folder{hint}")
    return out


def windows(n: int, size: int, hop: int | None = None) -> list[tuple[int, int]]:
    """Start/end sample pairs covering ``n`` samples with windows of ``size`` and a hop of
    ``hop`` samples (default: half a window), the last window aligned to the end."""
    if n <= size:
        return [(0, n)]
    hop = max(1, size // 2) if hop is None else max(1, hop)
    starts = list(range(0, n - size + 1, hop))
    if starts[-1] + size < n:
        starts.append(n - size)  # align the last window to the end
    return [(s, s + size) for s in starts]


@dataclass
class Prediction:
    path: str
    probs: list[float]  # in the student's label order
    label: str  # most probable class
    seconds: float  # clip duration
    windows: int  # number of windows averaged


class Predictor:
    """Scores files with a saved student."""

    def __init__(self, checkpoint: str | Path, *, window: float | None = None, host=None, chunk: int = 16,
                 backend: str = "torch", max_seconds: float = DEFAULT_MAX_SECONDS, hop: float | None = None):
        """``hop``: seconds between windows (default: half a window). ``backend``: ``torch``, ``onnx`` (the folder's ``student.onnx`` through onnxruntime), ``int8`` (its ``student.int8.onnx``)
        or ``auto`` (onnx when the export is there and onnxruntime is installed).
        ``max_seconds``: longer files are refused from their header, before decoding."""
        if backend not in ("torch", "onnx", "int8", "auto"):
            raise UsageError(f"backend {backend!r}: choose torch, onnx, int8 or auto")
        if not (isinstance(max_seconds, (int, float)) and math.isfinite(max_seconds) and max_seconds > 0):
            raise UsageError(f"--max-seconds {max_seconds}: give a duration in seconds > 0")
        self.max_seconds = float(max_seconds)
        checkpoint = resolve_source(checkpoint)  # a folder, or a Hub id through the HF cache
        self.student = Student.from_pretrained(checkpoint, host=host)
        config = read_component_config(checkpoint, "student")
        window_given = window is not None
        if window is None:
            window = config.get("train_seconds")
            if window is not None and not (isinstance(window, (int, float)) and math.isfinite(window) and window >= MIN_SECONDS):
                raise UsageError(f"{checkpoint}/config.json: train_seconds {window!r} is not a window length in seconds")
        self.window = check_window(window)
        if hop is not None and not (math.isfinite(hop) and hop > 0):
            raise UsageError(f"--hop {hop}: give a hop in seconds > 0")
        if hop is not None and self.window and hop > self.window:
            raise UsageError(f"--hop {hop}: at most the window ({self.window:g} s), or audio between windows is skipped")
        self.hop = hop
        self.chunk = chunk  # windows scored per forward pass: memory stays flat on long inputs
        self.classes = list(self.student.label_space.classes)
        self.session = None
        onnx = Path(checkpoint) / ("student.int8.onnx" if backend == "int8" else "student.onnx")
        if backend in ("onnx", "int8", "auto"):
            try:
                import onnxruntime as ort
            except ImportError:
                if backend != "auto":
                    raise UsageError(f"backend {backend} needs onnxruntime: pip install 'liser[export]'") from None
                ort = None
            stale = export_mismatch(checkpoint, onnx) if ort is not None and onnx.is_file() else None
            if stale and backend != "auto":
                fix = f"liser export {checkpoint}" + (" --quantize int8" if backend == "int8" else "")
                raise UsageError(f"{onnx}: not the student in {checkpoint}: {stale}; export it again ({fix}) "
                                 "or use --backend torch")
            if stale:
                log.warning("%s not used: %s; scoring with PyTorch (liser export %s to use onnxruntime)",
                            onnx, stale, checkpoint)
            elif ort is not None and onnx.is_file():
                self.session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
                width = next((o.shape[-1] for o in self.session.get_outputs() if o.name == "probs"), None)
                if isinstance(width, int) and width != len(self.classes):
                    raise UsageError(f"{onnx}: scores {width} classes, the student {len(self.classes)}: export it again")
            elif backend == "onnx":
                raise UsageError(f"{onnx}: no ONNX export here (liser export {checkpoint})")
            elif backend == "int8":
                raise UsageError(f"{onnx}: no int8 export here (liser export {checkpoint} --quantize int8)")
        if self.session is not None and self.window and self.window < ONNX_MIN_SECONDS:
            said = "--window" if window_given else f"its train_seconds ({checkpoint}/config.json)"
            if backend != "auto":
                raise UsageError(f"window {self.window:g} s ({said}): the ONNX export ({onnx.name}) takes inputs of at "
                                 f"least {ONNX_MIN_SECONDS:g} s; give a longer --window or --backend torch")
            log.warning("%s not used: windows of %g s (%s) are shorter than the %g s it takes; scoring with PyTorch",
                        onnx, self.window, said, ONNX_MIN_SECONDS)
            self.session = None
        self.backend = ("int8" if backend == "int8" else "onnx") if self.session is not None else "torch"
        #: the shortest input scored: an ONNX export is made for inputs of at least ONNX_MIN_SECONDS
        self.min_seconds = ONNX_MIN_SECONDS if self.session is not None else MIN_SECONDS
        from liser_core.card import student_provenance
        from liser_core.export import weights_digest

        self.weights_sha256 = weights_digest(checkpoint)
        #: the run that made the student (recipe fingerprint, code, flags, test scores), or {}
        self.provenance = student_provenance(checkpoint)

    def _scores(self, batch: torch.Tensor) -> torch.Tensor:
        if self.session is not None:
            return torch.from_numpy(self.session.run(["probs"], {"audio": batch.numpy()})[0])
        return torch.softmax(self.student(batch, torch.full((len(batch),), batch.shape[1])).logits, -1)

    @torch.no_grad()
    def window_probs(self, audio: np.ndarray) -> tuple[list[tuple[int, int]], torch.Tensor]:
        """The windows (start, end samples) and each one's probabilities ``(W, C)``."""
        x = torch.from_numpy(audio)
        if not self.window:
            spans = [(0, len(x))]
        else:
            rate = self.student.sample_rate
            spans = windows(len(x), max(1, int(round(self.window * rate))),
                            None if self.hop is None else int(round(self.hop * rate)))
        out = []
        for i in range(0, len(spans), self.chunk):  # a few windows at a time
            part = spans[i : i + self.chunk]
            if len({b - a for a, b in part}) == 1:
                out.append(self._scores(torch.stack([x[a:b] for a, b in part])))
            else:
                out += [self._scores(x[a:b][None]) for a, b in part]
        return spans, torch.cat(out)

    def stream(self, chunks, *, hop: float = 0.25, smoothing: float = 0.5):
        """Streaming recognition with this predictor's student and backend over ``chunks`` (mono
        float32 at the student's rate): yields :class:`liser_core.streaming.Hop` per hop; windows
        of ``self.window`` seconds (1 s when unset), the end-aligned window last."""
        from liser_core.streaming import StreamRecognizer

        def score(audio: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return self._scores(torch.from_numpy(audio))[0].numpy()

        recognizer = StreamRecognizer(score, self.student.sample_rate, window=self.window or 1.0, hop=hop,
                                      smoothing=smoothing)
        return recognizer.run(chunks)

    def check_length(self, samples: int, what: str) -> None:
        """Refuse an input shorter than this backend scores (:attr:`min_seconds`): the same rule
        for ``liser predict`` and ``liser serve``."""
        if samples < self.min_seconds * self.student.sample_rate:
            via = f" with the {self.backend} backend" if self.session is not None else ""
            raise UsageError(f"{what}: too short ({samples / self.student.sample_rate:.3g} s < {self.min_seconds:g} s"
                             f"{via})")

    def probs(self, audio: np.ndarray) -> tuple[torch.Tensor, int]:
        spans, p = self.window_probs(audio)
        return p.mean(0), len(spans)

    def predict(self, path: str | Path) -> Prediction:
        audio = read_audio(path, self.student.sample_rate, max_seconds=self.max_seconds)
        self.check_length(len(audio), str(path))
        try:
            p, n = self.probs(audio)
        except Exception as exc:  # noqa: BLE001 - the student failed on this file: say which, go on
            raise UsageError(f"{path}: the student cannot score it ({type(exc).__name__}: {exc})") from None
        if not torch.isfinite(p).all():
            raise UsageError(f"{path}: the student's probabilities are not finite")
        from liser_common.audio import SILENT_RMS

        if (rms := float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))) < SILENT_RMS:
            log.warning("%s: silent (RMS %.1e, below %g): its label says nothing about an emotion", path, rms, SILENT_RMS)
        return Prediction(
            path=str(path),
            probs=[float(v) for v in p],
            label=self.classes[int(p.argmax())],
            seconds=len(audio) / self.student.sample_rate,
            windows=n,
        )


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    import time

    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    mid = len(times) // 2
    return times[mid] if len(times) % 2 else 0.5 * (times[mid - 1] + times[mid])


__all__ = ["Prediction", "Predictor", "TooLarge", "export", "expand_paths", "read_audio", "windows", "median_seconds"]

"""``liser serve STUDENT``: a saved student behind a small HTTP service (Starlette on uvicorn).

``POST /predict``  the request body is one audio or video file (wav, flac, ogg, mp3, webm, mp4,
                   ...; what a browser records works): JSON with the overall probabilities
                   (mean over windows), the label, and each window's start, end and
                   probabilities. 413 past ``max_mb`` or ``max_seconds``, 400 for what is not
                   decodable audio or is too short, each with ``{"error": "..."}``.
``GET /health``    model, labels, sample rate, backend, limits.
``GET /``          one page: upload or record a clip, see the probabilities over time.

ONNX runtime serves when the student's folder holds ``student.onnx`` (``liser export``),
PyTorch otherwise. Requests are scored on worker threads, at most ``concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from liser_core.errors import UsageError

from .deploy import MIN_SECONDS, Predictor, read_audio

_MAGIC = ((b"RIFF", ".wav"), (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"\x1a\x45\xdf\xa3", ".webm"), (b"ID3", ".mp3"),
          (b"\xff\xfb", ".mp3"), (b"\xff\xf3", ".mp3"))


def sniff_suffix(data: bytes) -> str:
    """The file type of ``data`` by its first bytes (the decoder is chosen by suffix)."""
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    if data[4:8] == b"ftyp":
        return ".mp4"
    return ".bin"


class Service:
    """The model side of the service, usable without HTTP (tests, notebooks)."""

    def __init__(self, source: str | Path, *, max_mb: float = 20.0, max_seconds: float = 300.0,
                 backend: str = "auto", window: float | None = None, host=None):
        if max_mb <= 0 or max_seconds <= 0:
            raise UsageError("--max-mb and --max-seconds must be > 0")
        self.predictor = Predictor(source, window=window, host=host, backend=backend)
        self.source, self.max_bytes, self.max_seconds = str(source), int(max_mb * 2**20), float(max_seconds)

    def health(self) -> dict:
        s = self.predictor.student
        return {"status": "ok", "model": self.source, "labels": self.predictor.classes, "sample_rate": s.sample_rate,
                "backend": self.predictor.backend, "window_seconds": self.predictor.window,
                "max_bytes": self.max_bytes, "max_seconds": self.max_seconds}

    def predict(self, data: bytes) -> dict:
        """Probabilities of one file's bytes; a :class:`UsageError` (HTTP 400/413) says why not."""
        if not data:
            raise UsageError("empty request body: send the audio file as the body")
        if len(data) > self.max_bytes:
            raise TooLarge(f"{len(data)} bytes is over the limit of {self.max_bytes}")
        rate = self.predictor.student.sample_rate
        with tempfile.NamedTemporaryFile(suffix=sniff_suffix(data)) as f:
            f.write(data)
            f.flush()
            try:
                audio = read_audio(f.name, rate)
            except UsageError as exc:
                raise UsageError(str(exc).replace(f.name, "the upload")) from None
        seconds = len(audio) / rate
        if seconds > self.max_seconds:
            raise TooLarge(f"{seconds:.1f} s of audio is over the limit of {self.max_seconds:g} s")
        if seconds < max(MIN_SECONDS, 0.5):
            raise UsageError(f"too short: {seconds:.3g} s (at least 0.5 s)")
        spans, p = self.predictor.window_probs(audio)
        overall = p.mean(0)
        classes = self.predictor.classes
        return {
            "label": classes[int(overall.argmax())],
            "probs": dict(zip(classes, [round(float(v), 6) for v in overall])),
            "seconds": round(seconds, 3),
            "windows": [{"start": round(a / rate, 3), "end": round(b / rate, 3),
                         "probs": [round(float(v), 6) for v in row]} for (a, b), row in zip(spans, p)],
            "labels": classes,
            "backend": self.predictor.backend,
        }


class TooLarge(UsageError):
    """An upload past a limit (HTTP 413)."""


def make_app(service: Service, *, concurrency: int = 2):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    gate = asyncio.Semaphore(max(1, concurrency))
    page = (Path(__file__).parent / "serve_page.html").read_text()

    async def health(request: Request):
        return JSONResponse(service.health())

    async def index(request: Request):
        return HTMLResponse(page)

    async def predict(request: Request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > service.max_bytes:
            return JSONResponse({"error": f"{declared} bytes is over the limit of {service.max_bytes}"}, status_code=413)
        body = bytearray()
        async for chunk in request.stream():  # never more than the limit in memory
            body += chunk
            if len(body) > service.max_bytes:
                return JSONResponse({"error": f"over the limit of {service.max_bytes} bytes"}, status_code=413)
        t0 = time.perf_counter()
        try:
            async with gate:
                result = await run_in_threadpool(service.predict, bytes(body))
        except TooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        except UsageError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        result["ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return JSONResponse(result)

    return Starlette(routes=[Route("/", index), Route("/health", health), Route("/predict", predict, methods=["POST"])])


def serve(source: str | Path, *, host: str = "127.0.0.1", port: int = 8000, concurrency: int = 2, host_plugins=None,
          **options) -> None:
    try:
        import uvicorn
    except ImportError:
        raise UsageError("liser serve needs Starlette and uvicorn: pip install 'liser[serve]'") from None
    service = Service(source, host=host_plugins, **options)
    print(f"serving {source} ({service.predictor.backend}) on http://{host}:{port}  (GET / for the page)", flush=True)
    uvicorn.run(make_app(service, concurrency=concurrency), host=host, port=port, log_level="warning")

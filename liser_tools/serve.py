"""``liser serve STUDENT``: a saved student behind a small HTTP service (Starlette on uvicorn).

``POST /predict``  the request body is one audio or video file (wav, flac, ogg, mp3, webm, mp4,
                   ...; what a browser records works): JSON with the overall probabilities
                   (mean over windows), the label, and each window's start, end and
                   probabilities.
``GET /health``    model, labels, sample rate, backend, limits, weights digest, run provenance (flags).
``GET /``          one page: upload or record a clip, see the probabilities over time; or a live
                   microphone mode over ``/stream``.
``WS /stream``     streaming recognition: the client sends binary messages of raw mono PCM at the
                   student's sample rate (``?format=f32``, little-endian float32, default; or
                   ``s16``), any sizes; the service answers a JSON text message per hop
                   (``start``, ``end``, ``label``, ``probs``, ``smoothed``, ``ms``; windows of
                   ``?window=`` seconds (default 1) every ``?hop=`` seconds (0.25), smoothing
                   ``?smoothing=`` (0.5)); the text message ``end`` scores the window aligned to the
                   stream's end and answers ``{"done": true, "hops", "seconds", "p50_ms",
                   "p95_ms", "rtf"}`` (null where nothing was measured). Errors are ``{"error",
                   "status"}`` then a close (code 1003 unsupported data, a whole audio file
                   included; 1008 policy: a parameter or the stream's length; 1011 the service's
                   fault); a message over ``max_mb`` is closed by the WebSocket layer with 1009.

Every error is JSON, ``{"error": "<one line: what and what to do>", "status": <code>}``: 400 a
file that is broken, empty, too short or has an absurd sample rate; 404 / 405 an unknown path or
method; 413 a body over ``max_mb`` or audio over ``max_seconds`` (or ``max_samples`` decoded
samples), judged from the file's header before decoding; 415 a body that is not an audio or
video file, or a Content-Type that is not audio, video or octet-stream; 500 a failure of the
service itself (logged with its traceback). Memory for one request is bounded: the body by
``max_mb``, the decoded samples by ``max_samples`` (read in blocks, whatever the header says),
the model's windows scored a few at a time.

ONNX runtime serves when the student's folder holds ``student.onnx`` (``liser export``),
PyTorch otherwise. Requests are scored on worker threads, at most ``concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import tempfile
import time
from pathlib import Path

from liser_core.errors import UsageError

from .deploy import Predictor, read_audio
from .deploy import TooLarge as DeployTooLarge

log = logging.getLogger(__name__)

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


#: Decoded samples one request may hold (float32 mono, at the file's own rate: 256 MiB).
MAX_SAMPLES = 2**26

#: Content-Types ``/predict`` takes: a file's own type, none, or what ``curl --data-binary`` sends.
_ACCEPTED_TYPES = ("audio/", "video/", "application/octet-stream", "application/ogg",
                   "application/x-www-form-urlencoded")


class TooLarge(UsageError):
    """An upload past a limit (HTTP 413)."""


class NotAudio(UsageError):
    """A body that is not an audio or video file (HTTP 415)."""


class ServiceError(Exception):
    """The service failed on an acceptable input (HTTP 500)."""


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UsageError(f"{name} {value}: give a finite number > 0")
    return float(value)


class Service:
    """The model side of the service, usable without HTTP (tests, notebooks)."""

    def __init__(self, source: str | Path, *, max_mb: float = 20.0, max_seconds: float = 300.0,
                 backend: str = "auto", window: float | None = None, host=None, max_samples: int = MAX_SAMPLES):
        max_mb, max_seconds = _positive("--max-mb", max_mb), _positive("--max-seconds", max_seconds)
        self.predictor = Predictor(source, window=window, host=host, backend=backend, max_seconds=max_seconds)
        self.source, self.max_bytes, self.max_seconds = str(source), int(max_mb * 2**20), max_seconds
        self.max_samples = int(_positive("max_samples", max_samples))

    def health(self) -> dict:
        s = self.predictor.student
        return {"status": "ok", "model": self.source, "labels": self.predictor.classes, "sample_rate": s.sample_rate,
                "backend": self.predictor.backend, "window_seconds": self.predictor.window,
                "max_bytes": self.max_bytes, "max_seconds": self.max_seconds, "max_samples": self.max_samples,
                "weights_sha256": self.predictor.weights_sha256,
                # the run that made it, flags included; None when no record describes these weights
                "provenance": self.predictor.provenance or None}

    def predict(self, data: bytes) -> dict:
        """Probabilities of one file's bytes. :class:`TooLarge` (413), :class:`NotAudio` (415),
        :class:`UsageError` (400) say why not; :class:`ServiceError` (500) is the service's fault."""
        if not data:
            raise UsageError("empty request body: send the audio file as the body")
        if len(data) > self.max_bytes:
            raise TooLarge(f"{len(data)} bytes is over the limit of {self.max_bytes}")
        rate = self.predictor.student.sample_rate
        suffix = sniff_suffix(data)
        with tempfile.NamedTemporaryFile(suffix=suffix) as f:
            f.write(data)
            f.flush()
            try:
                audio = read_audio(f.name, rate, max_seconds=self.max_seconds, max_samples=self.max_samples)
            except UsageError as exc:
                message = str(exc).replace(f.name, "the upload")
                if isinstance(exc, DeployTooLarge):
                    raise TooLarge(message) from None
                if suffix == ".bin" and "cannot decode" in message:
                    raise NotAudio("the body is not an audio or video file that can be read (wav, flac, ogg, "
                                   "mp3, webm, mp4): " + message.removeprefix("the upload: ")) from None
                raise UsageError(message) from None
        seconds = len(audio) / rate
        if seconds > self.max_seconds:
            raise TooLarge(f"{seconds:.1f} s of audio is over the limit of {self.max_seconds:g} s")
        self.predictor.check_length(len(audio), "the upload")  # predict's rule: the backend's shortest input
        spans, p = self.predictor.window_probs(audio)
        if not bool(p.isfinite().all()):
            raise ServiceError("the student's probabilities are not finite for this input")
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


def error_response(status: int, message: str):
    """Every error of the service: ``{"error": message, "status": status}`` with that status."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message, "status": status}, status_code=status)


def content_type_error(content_type: str | None) -> str | None:
    """Why ``/predict`` refuses a Content-Type (415), or None."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if not kind or kind.startswith(_ACCEPTED_TYPES):
        return None
    hint = " (not a form: send the raw file, curl --data-binary @clip.wav)" if kind.startswith("multipart/") else ""
    return (f"Content-Type {kind} is not audio: send the file itself as the body, with its audio/* or video/* "
            f"type or application/octet-stream{hint}")


STREAM_FORMATS = {"f32": "<f4", "s16": "<i2"}


#: The query parameters ``/stream`` takes.
STREAM_PARAMS = ("window", "hop", "smoothing", "format")


def stream_options(query, max_seconds: float | None = None) -> dict:
    """Window, hop, smoothing and sample format of a ``/stream`` connection from its query
    string; a :class:`UsageError` naming the parameter otherwise."""
    from liser_core.streaming import check_stream

    items = list(query.multi_items()) if hasattr(query, "multi_items") else list(dict(query).items())
    keys = [k for k, _ in items]
    for key in keys:  # a typo or a second value is never silently replaced by a default
        if key not in STREAM_PARAMS:
            raise UsageError(f"?{key}: not a /stream parameter (give {', '.join(STREAM_PARAMS)})")
        if keys.count(key) > 1:
            raise UsageError(f"?{key} is given {keys.count(key)} times: give it once")

    def number(key: str, default: float) -> float:
        try:
            return float(query.get(key, default))
        except ValueError:
            raise UsageError(f"?{key}={query.get(key)!r}: give a number") from None

    fmt = query.get("format", "f32")
    if fmt not in STREAM_FORMATS:
        raise UsageError(f"?format={fmt!r}: choose f32 (little-endian float32) or s16 (little-endian int16)")
    opts = {"window": number("window", 1.0), "hop": number("hop", 0.25), "smoothing": number("smoothing", 0.5)}
    check_stream(opts["window"], opts["hop"], opts["smoothing"], query=True)
    if max_seconds is not None and opts["window"] > max_seconds:
        raise UsageError(f"?window={opts['window']:g}: longer than a stream may last here ({max_seconds:g} s, "
                         "liser serve --max-seconds): no window could be scored")
    return {**opts, "format": fmt}


def make_app(service: Service, *, concurrency: int = 2):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    gate = asyncio.Semaphore(max(1, concurrency))
    page = (Path(__file__).parent / "serve_page.html").read_text()

    async def health(request: Request):
        return JSONResponse(service.health())

    async def index(request: Request):
        return HTMLResponse(page)

    async def predict(request: Request):
        if request.query_params:  # a parameter it does not take is never silently ignored
            return error_response(400, f"POST /predict takes no query parameters (got "
                                       f"{', '.join('?' + k for k in request.query_params)}): the window is the "
                                       "service's (liser serve --window)")
        if reason := content_type_error(request.headers.get("content-type")):
            return error_response(415, reason)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > service.max_bytes:
            return error_response(413, f"{declared} bytes is over the limit of {service.max_bytes}")
        body = bytearray()
        async for chunk in request.stream():  # never more than the limit in memory
            body += chunk
            if len(body) > service.max_bytes:
                return error_response(413, f"over the limit of {service.max_bytes} bytes")
        t0 = time.perf_counter()
        try:
            async with gate:
                result = await run_in_threadpool(service.predict, bytes(body))
        except TooLarge as exc:
            return error_response(413, str(exc))
        except NotAudio as exc:
            return error_response(415, str(exc))
        except UsageError as exc:
            return error_response(400, str(exc))
        except ServiceError as exc:
            return error_response(500, str(exc))
        except Exception as exc:  # noqa: BLE001 - the service's own failure: logged, answered in JSON
            log.exception("POST /predict failed")
            return error_response(500, f"the service failed on this request ({type(exc).__name__}); "
                                       "its log has the details")
        result["ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return JSONResponse(result)

    async def stream(ws: WebSocket):
        """``/stream``: raw PCM chunks in, one JSON message per hop out (see the module doc)."""
        import numpy as np

        from liser_core.streaming import StreamRecognizer, latency_summary

        await ws.accept()

        async def fail(status: int, message: str, code: int) -> None:
            await ws.send_json({"error": message, "status": status})
            await ws.close(code)

        try:
            opts = stream_options(ws.query_params, service.max_seconds)
        except UsageError as exc:
            return await fail(400, str(exc), 1008)
        predictor, classes = service.predictor, service.predictor.classes
        rate = predictor.student.sample_rate

        def score(audio):
            import torch

            with torch.no_grad():
                return predictor._scores(torch.from_numpy(audio))[0].numpy()

        recognizer = StreamRecognizer(score, rate, window=opts["window"], hop=opts["hop"],
                                      smoothing=opts["smoothing"])
        dtype, hops = STREAM_FORMATS[opts["format"]], []

        async def answer(new) -> None:
            for h in new:
                hops.append(h)
                await ws.send_json(h.to_dict(classes))

        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    if message["text"].strip() != "end":
                        return await fail(400, "text messages: only 'end' (send audio as binary messages)", 1003)
                    async with gate:
                        await answer(await run_in_threadpool(recognizer.flush))
                    seconds = recognizer.samples / rate
                    await ws.send_json({"done": True, "seconds": round(seconds, 4), **latency_summary(hops, seconds)})
                    return await ws.close(1000)
                data = message.get("bytes") or b""
                if len(data) % np.dtype(dtype).itemsize:
                    return await fail(400, f"a binary message of {len(data)} bytes is not whole {opts['format']} "
                                           "samples", 1003)
                if len(data) > service.max_bytes:
                    return await fail(413, f"{len(data)} bytes in one message is over the limit of "
                                           f"{service.max_bytes}", 1008)
                if recognizer.samples == 0 and data[:4] in CONTAINER_MAGIC:
                    return await fail(400, f"this message starts like a {CONTAINER_MAGIC[data[:4]]} file: send raw "
                                           f"{opts['format']} PCM samples (POST /predict takes whole files)", 1003)
                chunk = np.frombuffer(data, dtype=dtype).astype(np.float32)
                if opts["format"] == "s16":
                    chunk /= 32768.0
                if not np.isfinite(chunk).all():
                    return await fail(400, "the audio contains NaN or Inf samples", 1003)
                if (recognizer.samples + len(chunk)) / rate > service.max_seconds:
                    return await fail(413, f"the stream is over the limit of {service.max_seconds:g} s "
                                           "(liser serve --max-seconds)", 1008)
                np.clip(chunk, -1.0, 1.0, out=chunk)
                async with gate:
                    await answer(await run_in_threadpool(recognizer.push, chunk))
        except WebSocketDisconnect:
            return
        except UsageError as exc:  # the stream's own fault (too short to score): said, not a 500
            return await fail(400, str(exc), 1008)
        except Exception as exc:  # noqa: BLE001 - the service's own failure: logged, answered
            log.exception("WS /stream failed")
            return await fail(500, f"the service failed on this stream ({type(exc).__name__}); its log has the "
                                   "details", 1011)

    async def http_error(request: Request, exc: HTTPException):
        message = {404: f"no such path: {request.url.path} (POST /predict, GET /health, GET /)",
                   405: f"{request.method} is not allowed on {request.url.path} (POST /predict, GET /health, GET /)",
                   }.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message)

    async def server_error(request: Request, exc: Exception):
        return error_response(500, f"the service failed on this request ({type(exc).__name__}); its log has the details")

    return Starlette(routes=[Route("/", index), Route("/health", health), Route("/predict", predict, methods=["POST"]),
                             WebSocketRoute("/stream", stream)],
                     exception_handlers={HTTPException: http_error, Exception: server_error})


#: the first bytes of audio files that a client may send to /stream instead of raw samples
CONTAINER_MAGIC = {b"RIFF": "WAV", b"fLaC": "FLAC", b"OggS": "Ogg", b"ID3\x03": "MP3", b"ID3\x04": "MP3"}


def serve(source: str | Path, *, host: str = "127.0.0.1", port: int = 8000, concurrency: int = 2, host_plugins=None,
          **options) -> None:
    try:
        import uvicorn  # noqa: F401 - checked here, before the student is loaded; used by make_server
    except ImportError:
        raise UsageError("liser serve needs Starlette and uvicorn: pip install 'liser[serve]'") from None
    service = Service(source, host=host_plugins, **options)
    server, sock = make_server(service, host=host, port=port, concurrency=concurrency)
    print(f"serving {source} ({service.predictor.backend}) on http://{host}:{port}  (GET / for the page)", flush=True)
    server.run(sockets=[sock])


def make_server(service: Service, *, host: str = "127.0.0.1", port: int = 8000, concurrency: int = 2):
    """The uvicorn server of :func:`serve` and its listening socket (``port`` 0: any free one).
    The port is taken here, before anything says it serves: a busy port is a usage error."""
    import uvicorn

    sock = listen(host, port)
    # the WebSocket layer refuses a message over --max-mb itself (close 1009), before it is buffered whole
    config = uvicorn.Config(make_app(service, concurrency=concurrency), log_level="warning",
                            ws_max_size=service.max_bytes)
    return uvicorn.Server(config), sock


def listen(host: str, port: int):
    """A listening TCP socket on ``host:port``, or a usage error naming the address and why."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds (localhost: IPv4)
    try:
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:  # an address in use, or a host name that does not resolve (gaierror)
        why = os.strerror(exc.errno) if isinstance(exc.errno, int) and exc.errno > 0 else (exc.strerror or str(exc))
        why = why.split(" (while attempting", 1)[0]
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({why}); "
                         "choose another --port (or --host)") from None
    sock.set_inheritable(True)
    return sock

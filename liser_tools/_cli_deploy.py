"""``liser predict``, ``liser export``, ``liser push`` and ``liser serve`` (see docs/deploy.md)."""

from __future__ import annotations

import json
import math
import sys


def add_parsers(sub, plugin_args) -> None:
    p = sub.add_parser(
        "predict",
        help="emotion probabilities of audio/video files with a saved student",
        description="Score wav/flac/mp4/... files or folders with a saved student (any sample rate).",
        epilog="example: liser predict runs/synth_kd/student clip.wav folder/ --jsonl",
    )
    p.add_argument("checkpoint", help="student directory (RUN_DIR/student) or Hugging Face Hub id (org/name)")
    p.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--jsonl", action="store_true", help="one JSON object per file instead of a table")
    p.add_argument(
        "--window",
        type=float,
        default=None,
        metavar="S",
        help="window length in seconds for long clips (default: the training clip length; 0: whole clip)",
    )
    p.add_argument("--max-seconds", type=float, default=3600.0, metavar="S",
                   help="refuse longer files, from their header before decoding (default: 3600)")
    p.add_argument("--backend", choices=["torch", "onnx", "int8"], default="torch",
                   help="torch (default); onnx: CHECKPOINT/student.onnx; int8: CHECKPOINT/student.int8.onnx "
                        "(liser export [--quantize int8]), through onnxruntime")
    p.add_argument("--stream", action="store_true",
                   help="streaming recognition: probabilities every --hop over windows of --window "
                        "(default 1 s) with timestamps; the path 'mic' records from the microphone "
                        "(needs sounddevice)")
    p.add_argument("--hop", type=float, default=None, metavar="S",
                   help="seconds between windows, at most --window (--stream: 0.25; else half a window)")
    p.add_argument("--smoothing", type=float, default=None, metavar="A",
                   help="--stream: exponential smoothing of the probabilities over hops, in [0, 1) (0.5)")
    p.add_argument("--mic-seconds", type=float, default=None, metavar="S",
                   help="--stream mic: stop after S seconds (default: Ctrl-C)")
    plugin_args(p)

    p = sub.add_parser(
        "export",
        help="export a saved student to ONNX, TorchScript or ExecuTorch (.pte); --quantize int8",
        description="Export a saved student (frontend included: waveform in, logits/probs out).",
        epilog="example: liser export runs/synth_kd/student --format onnx -o student.onnx",
    )
    p.add_argument("checkpoint", help="student directory (RUN_DIR/student) or Hub id")
    p.add_argument("--format", dest="fmt", choices=["onnx", "torchscript", "executorch"], default=None,
                   help="default: the one -o's name says (.onnx, .pt, .pte), else onnx")
    p.add_argument("--window", type=float, default=None, metavar="S",
                   help="--format executorch: the fixed input length in seconds (default 1)")
    p.add_argument("-o", "--output", default=None, help="output file (default: CHECKPOINT/student.onnx|.pt|.pte)")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="also write an int8 copy (OUTPUT.int8.onnx) and compare it with float32: size, "
                        "speed, test UAR/WA (stored in quantization.json and the model card)")
    p.add_argument("--quantize-mode", choices=["static", "dynamic"], default=None,
                   help="static: activation ranges calibrated on the run's labeled/unlabeled clips "
                        "(default); dynamic: computed per call")
    p.add_argument("--quantize-frontend", action="store_true",
                   help="quantize the audio frontend too (default: the frontend stays float32, weights included)")
    p.add_argument("--calibrate", default=None, metavar="FOLDER",
                   help="calibration audio files (default: the run's labeled and unlabeled clips)")
    plugin_args(p)

    p = sub.add_parser(
        "push",
        help="upload a saved student to the Hugging Face Hub (weights, config, model card, ONNX)",
        description="Upload a saved student to the Hub with huggingface_hub (log in first: hf auth login, or HF_TOKEN).",
        epilog="example: liser push runs/synth_kd/student my-org/liser-synth-student",
    )
    p.add_argument("checkpoint", help="student directory (RUN_DIR/student)")
    p.add_argument("repo_id", help="Hub repository id, org/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="do not add the ONNX export")
    p.add_argument("--edited-card", action="store_true",
                   help="push a model card changed since LiSER wrote it (refused by default: its scores may not "
                        "be the run's)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for the Hub to connect, answer or take data (default: "
                        "LISER_HUB_TIMEOUT or 60)")
    plugin_args(p)

    p = sub.add_parser(
        "serve",
        help="serve a student over HTTP: POST /predict, GET /health, a page to upload or record",
        description="A small HTTP service for a saved student (Starlette on uvicorn; ONNX runtime when exported).",
        epilog="example: liser serve runs/synth_kd/student --port 8000",
    )
    p.add_argument("checkpoint", help="student directory (RUN_DIR/student) or Hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-mb", type=float, default=20.0, help="largest upload in MiB (413 past it)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="longest audio in seconds (413 past it)")
    p.add_argument("--backend", choices=["auto", "onnx", "int8", "torch"], default="auto",
                   help="auto: ONNX runtime when CHECKPOINT/student.onnx exists; int8: its student.int8.onnx "
                        "(liser export --quantize int8)")
    p.add_argument("--concurrency", type=int, default=2, help="requests scored at the same time")
    p.add_argument("--window", type=float, default=None, metavar="S", help="window length (default: the training clip length)")
    plugin_args(p)


def cmd_predict(args, host) -> int:
    from liser_core.errors import UsageError

    from .deploy import Predictor, check_window, expand_paths

    check_window(args.window)  # a usage error before the model is even read
    if not (math.isfinite(args.max_seconds) and args.max_seconds > 0):
        raise UsageError(f"--max-seconds {args.max_seconds}: give a duration in seconds > 0")
    if getattr(args, "stream", False):
        return _stream(args, host)
    stream_only = [o for o, v in (("--smoothing", args.smoothing), ("--mic-seconds", args.mic_seconds)) if v is not None]
    if stream_only:
        raise UsageError(f"{', '.join(stream_only)}: only with --stream")
    if args.hop is not None and args.window == 0:
        raise UsageError(f"--hop {args.hop}: --window 0 scores each clip whole, in one window: no hop")
    predictor = Predictor(args.checkpoint, window=args.window, host=host, max_seconds=args.max_seconds, hop=args.hop,
                          backend=args.backend)
    files = expand_paths(args.paths)
    if not files:
        raise UsageError("no audio or video files found in " + ", ".join(args.paths))
    classes = predictor.classes
    failed = 0
    names = [str(f) for f in files]
    shown = [n if len(n) <= 40 else "…" + n[-39:] for n in names]
    if len(set(shown)) < len(set(names)):  # two files would print alike: their whole paths
        shown = names
    width = max(40, *map(len, shown))
    if not args.jsonl:
        print(f"{'file':<{width}} {'label':<10} " + " ".join(f"{c[:8]:>8}" for c in classes))
    for f, name in zip(files, shown):
        try:
            pred = predictor.predict(f)
        except UsageError as exc:
            failed += 1
            print(f"liser: error: {exc}", file=sys.stderr)
            continue
        if args.jsonl:
            row = {"path": pred.path, "label": pred.label, "seconds": round(pred.seconds, 3), "windows": pred.windows,
                   "probs": dict(zip(classes, pred.probs)), **_scored_by(predictor)}
            print(json.dumps(row))
        else:
            print(f"{name:<{width}} {pred.label:<10} " + " ".join(f"{v:>8.3f}" for v in pred.probs))
    if not args.jsonl and predictor.window:
        hop = f"hop {args.hop:g} s" if args.hop is not None else "half-window hop"
        print(f"(clips longer than {predictor.window:g} s: mean of window probabilities, {hop})")
    if not args.jsonl:
        print(_scored_by_line(predictor))
    return 1 if failed else 0


def _scored_by(predictor) -> dict:
    """What scored a prediction (``--jsonl`` fields): the backend, the weights' SHA-256 and the
    run's flags (None when no record of the run describes these weights)."""
    prov = predictor.provenance
    return {"backend": predictor.backend, "weights_sha256": predictor.weights_sha256,
            "flags": list(prov["flags"]) if "flags" in prov else None}


def _scored_by_line(predictor) -> str:
    by = _scored_by(predictor)
    digest = (by["weights_sha256"] or "?")[:12]
    flags = by["flags"]
    said = ("; its run is flagged " + ", ".join(flags) + " (its test scores are incomplete or not a fair estimate)"
            if flags else "; no run record describes these weights" if flags is None else "")
    return f"(scored by {by['backend']}, weights {digest}{said})"


def _stream(args, host) -> int:
    """``liser predict --stream``: per hop, the window's time span, label and smoothed
    probabilities (or JSON lines); then latency per hop (p50/p95) and the real-time factor."""
    from liser_core.errors import UsageError
    from liser_core.streaming import check_stream, latency_summary

    from .deploy import Predictor, expand_paths, read_audio

    if args.window == 0:
        raise UsageError("--window 0 (the whole clip) does not apply to --stream: give a window in seconds (default 1)")
    if args.mic_seconds is not None:
        if "mic" not in args.paths:
            raise UsageError(f"--mic-seconds {args.mic_seconds:g}: only with the source `mic` (a file streams whole)")
        if not (math.isfinite(args.mic_seconds) and args.mic_seconds > 0):
            raise UsageError(f"--mic-seconds {args.mic_seconds:g}: give a duration in seconds > 0")
    window = args.window or 1.0
    args.hop = 0.25 if args.hop is None else args.hop
    args.smoothing = 0.5 if args.smoothing is None else args.smoothing
    check_stream(window, args.hop, args.smoothing)
    mic = [p for p in args.paths if p == "mic"]
    files = expand_paths([p for p in args.paths if p != "mic"]) if len(mic) < len(args.paths) else []
    predictor = Predictor(args.checkpoint, window=window, host=host, max_seconds=args.max_seconds, backend=args.backend)
    rate, classes = predictor.student.sample_rate, predictor.classes
    hop_samples = max(1, int(round(args.hop * rate)))
    if not args.jsonl:
        print(f"{'source':<24} {'start':>7} {'end':>7} {'label':<10} " + " ".join(f"{c[:8]:>8}" for c in classes))
    failed = 0
    sources = [("mic", None)] * len(mic) + [(str(f), f) for f in files]
    for name, path in sources:
        if path is None:
            chunks, seconds = _microphone(rate, hop_samples, args.mic_seconds), None
        else:
            try:
                audio = read_audio(path, rate, max_seconds=args.max_seconds)
            except UsageError as exc:
                failed += 1
                print(f"liser: error: {exc}", file=sys.stderr)
                continue
            seconds = len(audio) / rate
            chunks = (audio[i: i + hop_samples] for i in range(0, len(audio), hop_samples))
        hops = []
        try:
            for h in predictor.stream(chunks, hop=args.hop, smoothing=args.smoothing):
                hops.append(h)
                if args.jsonl:
                    print(json.dumps({"source": name, **h.to_dict(classes), **_scored_by(predictor)}), flush=True)
                else:
                    label = classes[int(h.smoothed.argmax())]
                    short = name if len(name) <= 24 else "…" + name[-23:]
                    print(f"{short:<24} {h.start:>7.2f} {h.end:>7.2f} {label:<10} "
                          + " ".join(f"{v:>8.3f}" for v in h.smoothed), flush=True)
        except KeyboardInterrupt:
            pass
        except UsageError as exc:  # this stream (e.g. too short to score): named, and the next one goes on
            failed += 1
            print(f"liser: error: {name}: {exc}", file=sys.stderr)
            continue
        seconds = seconds if seconds is not None else (hops[-1].end if hops else 0.0)
        s = latency_summary(hops, seconds)
        latency = (f"latency per hop p50 {s['p50_ms']:.2f} ms, p95 {s['p95_ms']:.2f} ms" if s["hops"]
                   else "no hop scored")
        rtf = f"real-time factor {s['rtf']:.4f}" if s["rtf"] is not None else "no audio"
        print(f"{name}: {s['hops']} hops (window {window:g} s, hop {args.hop:g} s, smoothing {args.smoothing:g}); "
              f"{latency}; {rtf} ({predictor.backend}, {torch_threads()} thread(s))", file=sys.stderr)
    return 1 if failed else 0


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _microphone(rate: int, block: int, seconds: float | None):
    """Blocks of mono float32 samples from the default input device (sounddevice)."""
    from liser_core.errors import UsageError

    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        raise UsageError(f"--stream mic needs sounddevice and PortAudio: pip install sounddevice ({exc})") from None
    total = 0
    with sd.InputStream(samplerate=rate, channels=1, dtype="float32", blocksize=block) as stream:
        while seconds is None or total < seconds * rate:
            data, _ = stream.read(block)
            total += len(data)
            yield data[:, 0].copy()


def cmd_push(args, host) -> int:
    from .hub import push

    url = push(args.checkpoint, args.repo_id, private=args.private, onnx=args.onnx, timeout=args.timeout,
               edited_card=args.edited_card)
    print(f"pushed {args.checkpoint} to {args.repo_id}: {url}")
    return 0


def cmd_serve(args, host) -> int:
    from liser_core.errors import UsageError

    from .deploy import check_window
    from .serve import serve

    if args.concurrency < 1:
        raise UsageError(f"--concurrency {args.concurrency}: give 1 or more requests scored at the same time")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: give a port in 1..65535")
    serve(args.checkpoint, host=args.host, port=args.port, concurrency=args.concurrency, max_mb=args.max_mb,
          max_seconds=args.max_seconds, backend=args.backend, window=check_window(args.window), host_plugins=host)
    return 0


def cmd_export(args, host) -> int:
    from pathlib import Path

    from liser_core.errors import UsageError
    from liser_core.export import check_replaceable

    from .deploy import export

    suffixes = {"onnx": ".onnx", "torchscript": ".pt", "executorch": ".pte"}
    named = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript",
             ".torchscript": "torchscript", ".pte": "executorch"}  # the format a file name says
    says = named.get(Path(args.output).suffix.lower()) if args.output else None
    if args.fmt is None:  # the format named by -o's suffix, else ONNX
        args.fmt = says or "onnx"
    elif says is not None and says != args.fmt:
        raise UsageError(f"-o {args.output}: the suffix {Path(args.output).suffix} names the {says} format, not "
                         f"--format {args.fmt} (use {suffixes[args.fmt]}, or --format {says})")
    suffix = suffixes[args.fmt]
    if args.window is not None and (args.fmt != "executorch" or not (math.isfinite(args.window) and args.window >= 0.5)):
        raise UsageError(f"--window {args.window}: only with --format executorch, a length in seconds >= 0.5")
    if not args.quantize:
        given = [o for o, on in (("--quantize-mode", args.quantize_mode is not None),
                                 ("--quantize-frontend", args.quantize_frontend),
                                 ("--calibrate", args.calibrate is not None)) if on]
        if given:
            raise UsageError(f"{', '.join(given)}: only with --quantize int8")
    args.quantize_mode = args.quantize_mode or "static"
    local = Path(args.checkpoint).is_dir()  # a Hub id: the export lands in the working folder
    output = Path(args.output) if args.output else (
        Path(args.checkpoint) / f"student{suffix}" if local else Path(args.checkpoint.replace("/", "--") + suffix))
    if args.quantize and args.fmt != "onnx":
        raise UsageError(f"--quantize {args.quantize} needs --format onnx (not {args.fmt})")
    if not args.quantize and output.name.endswith(".int8.onnx"):  # --backend int8 would run a float model
        raise UsageError(f"-o {output}: a name ending in .int8.onnx is an int8 export's (--backend int8 runs it): add "
                         "--quantize int8, or choose another name")
    if args.quantize:  # what the int8 step needs, checked before the float export is written
        from .quantize import (
            calibration_files,
            check_calibration,
            check_quantization_record,
            run_dir_of,
        )

        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UsageError("--quantize int8 needs onnxruntime: pip install 'liser[export]'") from None
        files = calibration_files(args.checkpoint, args.quantize_mode, args.calibrate)
        check_calibration(args.checkpoint, files)  # every file decodes: the float export is not written for nothing
        check_replaceable(output, int8_path(output))
        if _own(args, output):
            check_quantization_record(Path(args.checkpoint), int8_path(output))
        if (run_dir := run_dir_of(args.checkpoint)) is not None:  # its test split and card come from its recipe
            from liser_common.rundir import run_recipe

            run_recipe(run_dir)
    meta = export(args.checkpoint, output, args.fmt, host=host, window_seconds=args.window)
    if meta.get("not_delegated"):
        print(f"run outside the XNNPACK delegate (ExecuTorch's portable kernels): {', '.join(meta['not_delegated'])}")
    print(f"wrote {output} ({meta['format']}, {meta['num_parameters']:,} parameters, {meta['sample_rate']} Hz)")
    print(f"frontend: {meta['frontend']}")
    print(f"metadata: {output.name}.json")
    if args.quantize:
        _quantize(args, output, meta, host)
    return 0


def _own(args, output) -> bool:
    """Whether ``output`` is the student folder's own ``student.onnx`` (its record and card name it)."""
    from pathlib import Path

    return (Path(args.checkpoint).is_dir() and output.name == "student.onnx"
            and output.resolve().parent == Path(args.checkpoint).resolve())


def int8_path(output):
    """``student.onnx`` -> ``student.int8.onnx``."""
    return output.with_name(output.name.removesuffix(".onnx") + ".int8.onnx")


def _quantize(args, output, meta: dict, host) -> None:
    """``--quantize int8``: the int8 copy, its comparison with float32; the student's record and
    card updated when the files are the student folder's own."""
    from pathlib import Path

    from liser_core.checkpoint import atomic_write_json
    from liser_core.export import file_sha256, sidecar, weights_digest

    from .quantize import quantize_student, run_dir_of, summary_lines

    int8 = int8_path(output)
    own = _own(args, output)
    record = quantize_student(args.checkpoint, output, int8, mode=args.quantize_mode, frontend=args.quantize_frontend,
                              calibrate=args.calibrate, host=host, record=own)
    written = Path(args.checkpoint) / "quantization.json"
    atomic_write_json(sidecar(int8), {**meta, "sha256": file_sha256(int8), "quantization": record,
                                      "weights_sha256": weights_digest(args.checkpoint),
                                      # the student's record as LiSER wrote it: the next export may replace it
                                      **({"quantization_sha256": file_sha256(written)} if own else {})})
    print(f"wrote {int8} (int8 {args.quantize_mode}; calibration: {record['calibration']})")
    print("\n".join(summary_lines(record)))
    if not own:
        print(f"recorded in {sidecar(int8)} (not in {args.checkpoint}'s quantization.json and model card: "
              "the files are not the student folder's own)")
        return
    run_dir = run_dir_of(args.checkpoint)
    if run_dir is not None:
        from .card import write_model_card

        print(f"recorded in {Path(args.checkpoint) / 'quantization.json'} and {write_model_card(run_dir)}")

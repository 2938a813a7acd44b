"""``liser predict`` and ``liser export`` (see docs/deploy.md)."""

from __future__ import annotations

import json
import sys


def add_parsers(sub, plugin_args) -> None:
    p = sub.add_parser(
        "predict",
        help="emotion probabilities of audio/video files with a saved student",
        description="Score wav/flac/mp4/... files or folders with a saved student (any sample rate).",
        epilog="example: liser predict runs/synth_kd/student clip.wav folder/ --jsonl",
    )
    p.add_argument("checkpoint", help="student directory (RUN_DIR/student)")
    p.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--jsonl", action="store_true", help="one JSON object per file instead of a table")
    p.add_argument(
        "--window",
        type=float,
        default=None,
        metavar="S",
        help="window length in seconds for long clips (default: the training clip length; 0: whole clip)",
    )
    plugin_args(p)

    p = sub.add_parser(
        "export",
        help="export a saved student to ONNX or TorchScript",
        description="Export a saved student (frontend included: waveform in, logits/probs out).",
        epilog="example: liser export runs/synth_kd/student --format onnx -o student.onnx",
    )
    p.add_argument("checkpoint", help="student directory (RUN_DIR/student)")
    p.add_argument("--format", dest="fmt", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("-o", "--output", default=None, help="output file (default: CHECKPOINT/student.onnx|.pt)")
    plugin_args(p)


def cmd_predict(args, host) -> int:
    from liser_core.errors import UsageError

    from .deploy import Predictor, check_window, expand_paths

    check_window(args.window)  # a usage error before the model is even read
    predictor = Predictor(args.checkpoint, window=args.window, host=host)
    files = expand_paths(args.paths)
    if not files:
        raise UsageError("no audio or video files found in " + ", ".join(args.paths))
    classes = predictor.classes
    failed = 0
    if not args.jsonl:
        print(f"{'file':<40} {'label':<10} " + " ".join(f"{c[:8]:>8}" for c in classes))
    for f in files:
        try:
            pred = predictor.predict(f)
        except UsageError as exc:
            failed += 1
            print(f"liser: error: {exc}", file=sys.stderr)
            continue
        if args.jsonl:
            row = {"path": pred.path, "label": pred.label, "seconds": round(pred.seconds, 3), "windows": pred.windows,
                   "probs": dict(zip(classes, pred.probs))}
            print(json.dumps(row))
        else:
            name = pred.path if len(pred.path) <= 40 else "…" + pred.path[-39:]
            print(f"{name:<40} {pred.label:<10} " + " ".join(f"{v:>8.3f}" for v in pred.probs))
    if not args.jsonl and predictor.window:
        print(f"(clips longer than {predictor.window:g} s: mean of window probabilities, half-window hop)")
    return 1 if failed else 0


def cmd_export(args, host) -> int:
    from pathlib import Path

    from .deploy import export

    suffix = ".onnx" if args.fmt == "onnx" else ".pt"
    output = Path(args.output) if args.output else Path(args.checkpoint) / f"student{suffix}"
    meta = export(args.checkpoint, output, args.fmt, host=host)
    print(f"wrote {output} ({meta['format']}, {meta['num_parameters']:,} parameters, {meta['sample_rate']} Hz)")
    print(f"frontend: {meta['frontend']}")
    print(f"metadata: {output.name}.json")
    return 0

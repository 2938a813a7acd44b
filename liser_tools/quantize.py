"""int8 students: onnxruntime quantization of an exported student, and what it costs.

``liser export STUDENT --format onnx --quantize int8`` writes the float32 export, then an int8
copy beside it (``student.int8.onnx``):

The float graph first goes through onnxruntime's ``quant_pre_process`` (shape inference and
graph fusions; a failure is logged and the export is quantized as it is). Then:

* **static** (default): onnxruntime's ``quantize_static`` in QDQ format, per-channel int8
  weights, uint8 activations whose ranges are calibrated (min/max) on clips of the run's
  ``labeled`` and ``unlabeled`` splits (rebuilt from the run's ``config.yaml`` and the clip ids
  in ``splits.json``; never the test split);
* **dynamic** (``--quantize-mode dynamic``): ``quantize_dynamic``, int8 weights, activation
  ranges computed per call (no calibration clips needed).

By default the audio frontend (the two-stage DFT and the mel matrix product, before the
log) stays in float32, weights included: its int8 weights alone (per channel, computed in float)
raise the spectral floor that the log amplifies and cost 21 UAR points on the synth_kd run
(``--quantize-frontend`` quantizes it like the rest). Every matrix product or convolution left in float
is listed by name with the reason, never silently.

Then both models are measured on the same inputs: file size, median time of one 3 s clip on
one thread, and WA/UAR on the run's test split (each clip scored whole, like the run's own
evaluation). The result goes to ``student/quantization.json`` and into the model card
(:func:`liser_tools.card.quantization_section`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liser_core.card import FLOAT_NAMES, quantization_change
from liser_core.errors import UsageError
from liser_core.export import (
    compact_names,
    restore_constants,
    sparsify_initializers,
    strip_debug_metadata,
)

log = logging.getLogger(__name__)

#: Operators that carry weights onnxruntime can quantize: they are the ones accounted for.
WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: Operators quantized: the weight-carrying ones, and ReLU, which onnxruntime's QDQ quantizer
#: folds into the range of the int8 output before it (a ReLU left in float costs a dequantize,
#: the ReLU and a quantize after every int8 convolution: 1.44x -> 1.52x for ecapa_tdnn)
QUANTIZED_OPS = (*WEIGHT_OPS, "Relu")
#: Operators that are integer versions of those (QOperator format or dynamic quantization).
INT_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul",
           "MatMulIntegerToFloat", "QGemm")
#: Calibration clips used at most (enough for min/max ranges; more only costs time).
CALIBRATION_CLIPS = 64


@dataclass
class OpReport:
    """Which weight-carrying operators of a quantized graph run in int8 and which in float."""

    int8: dict[str, int] = field(default_factory=dict)  # op type -> count
    float: list[dict[str, str]] = field(default_factory=list)  # {"op", "name", "scope", "why"}

    def lines(self) -> list[str]:
        """Human-readable: what is int8, and each operator left in float with its reason."""
        done = ", ".join(f"{op} x{n}" for op, n in sorted(self.int8.items())) or "nothing"
        out = [f"int8: {done}"]
        for f in self.float:
            out.append(f"left in float: {f['op']} {f['name']} ({f['scope'] or 'top level'}): {f['why']}")
        if self.float:
            out.append(f"({FLOAT_NAMES})")
        return out


def _scope(node) -> str:
    """The module path a node came from (torch's ONNX exporter records it), or ''."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = json.loads(prop.value.replace("'", '"'))
            except ValueError:
                return ""
            mods = [s for s in scopes if s.startswith("student")]
            return mods[-1] if mods else ""
    return ""


def op_report(model, *, frontend_float: bool, scopes: dict[str, str] | None = None) -> OpReport:
    """Account for every weight-carrying operator of a quantized ONNX ``model`` (an
    ``onnx.ModelProto``): int8 when it is an integer operator or its weight comes through a
    ``DequantizeLinear`` (QDQ format); float otherwise, with the reason."""
    producers = {out: n for n in model.graph.node for out in n.output}
    initializers = {i.name for i in model.graph.initializer}
    report = OpReport()
    scopes = scopes if scopes is not None else {n.name: _scope(n) for n in model.graph.node}

    def frontend(node) -> bool:
        return ".frontend" in scopes.get(node.name, "")
    int8: Counter = Counter()
    for node in model.graph.node:
        if node.op_type in INT_OPS:
            int8[node.op_type] += 1
            continue
        if node.op_type not in WEIGHT_OPS:
            continue
        act, weight = (producers.get(i) for i in node.input[:2])
        act_q = act is not None and act.op_type == "DequantizeLinear"
        if act_q or (weight is not None and weight.op_type == "DequantizeLinear" and not frontend(node)):
            int8[node.op_type] += 1
            continue
        if weight is not None and weight.op_type == "DequantizeLinear":
            why = "the audio frontend: weights stored in int8, computed in float (--quantize-frontend for int8)"
        elif frontend(node) and frontend_float:
            why = "the audio frontend is kept in float (--quantize-frontend to quantize it)"
        elif not any(i in initializers or (producers.get(i) is not None and producers[i].op_type == "Constant")
                     for i in node.input[:2]):
            why = "no constant weight (a product of two activations); onnxruntime left it in float"
        else:
            why = "onnxruntime did not quantize it (operator or shape not supported in this mode)"
        report.float.append({"op": node.op_type, "name": node.name, "scope": scopes.get(node.name, ""), "why": why})
    report.int8 = dict(int8)
    return report


class _Calibration:
    """onnxruntime's CalibrationDataReader over waveforms, one clip per batch."""

    def __init__(self, clips: Sequence[np.ndarray]):
        self._it: Iterator[np.ndarray] = iter(clips)

    def get_next(self) -> dict[str, np.ndarray] | None:
        clip = next(self._it, None)
        return None if clip is None else {"audio": clip[None].astype(np.float32)}


def quantize_onnx(float_path: str | Path, output: str | Path, *, mode: str = "static",
                  calibration: Sequence[np.ndarray] = (), per_channel: bool = True,
                  frontend: bool = False) -> OpReport:
    """Write an int8 copy of the float ONNX export ``float_path`` to ``output``; returns which
    operators became int8 and which stayed float (and why). ``mode``: ``static`` (needs
    ``calibration`` waveforms at the student's rate) or ``dynamic``; ``frontend``: quantize the
    audio frontend too."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if mode not in ("static", "dynamic"):
        raise UsageError(f"--quantize-mode {mode!r}: choose static or dynamic")
    float_path, output = Path(float_path), Path(output)
    # module scopes by node name from the export (the pre-processing below may drop the metadata)
    source = onnx.load(str(float_path))
    scopes = {n.name: _scope(n) for n in source.graph.node}
    tmp = output.with_name(f".{output.name}.tmp")
    pre = output.with_name(f".{output.name}.pre.onnx")
    try:  # onnxruntime's recommended step: shape inference and graph optimisation (fusions) first
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
        float_path = pre
    except Exception as exc:  # noqa: BLE001 - said, then the export is quantized as it is
        log.warning("%s: onnxruntime's quantization pre-processing failed (%s: %s); quantizing the graph "
                    "as exported", float_path, type(exc).__name__, exc)
    model = onnx.load(str(float_path))
    excluded = [] if frontend else [n.name for n in model.graph.node if ".frontend" in scopes.get(n.name, "")]
    if mode == "static":
        if not calibration:
            raise UsageError(f"{float_path}: static int8 needs calibration clips (the run's labeled/unlabeled "
                             "split, or --calibrate FOLDER); or use --quantize-mode dynamic")
        quantize_static(str(float_path), str(tmp), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(QUANTIZED_OPS),
                        nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    else:
        quantize_dynamic(str(float_path), str(tmp), per_channel=per_channel, weight_type=QuantType.QInt8,
                         op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=excluded)
    quantized = onnx.load(str(tmp))
    report = op_report(quantized, frontend_float=not frontend, scopes=scopes)
    # the frontend's computed constants that pre-processing folded go back, mostly-zero ones sparse;
    # no debug metadata (scopes: read from the float export above), short names
    restore_constants(quantized, source)
    sparsify_initializers(quantized)
    onnx.save(compact_names(strip_debug_metadata(quantized, keep=())), str(tmp))
    tmp.replace(output)
    pre.unlink(missing_ok=True)
    return report


# ---------------------------------------------------------------------------------------------
# the run's clips
# ---------------------------------------------------------------------------------------------


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The run a student folder belongs to (``RUN_DIR/student`` with the run's ``config.yaml``
    and ``splits.json`` one level up), or None."""
    parent = Path(checkpoint).resolve().parent
    return parent if (parent / "config.yaml").is_file() and (parent / "splits.json").is_file() else None


def run_clips(run_dir: str | Path, splits: Sequence[str], sample_rate: int, *, host=None,
              limit: int | None = None) -> list[tuple[np.ndarray, str | None]]:
    """Waveforms (at ``sample_rate``) and labels of the clips the run's ``splits.json`` lists in
    ``splits``, from the corpus its ``config.yaml`` rebuilds. ``limit``: at most that many, spread
    evenly over the list. Clips the corpus no longer has are an error naming them."""
    import torch
    import torchaudio.functional as AF

    from liser_common.rundir import run_recipe
    from liser_core._plugins import load_plugins
    from liser_core.config import load_recipe, plain
    from liser_core.engine import build_component

    run_dir = Path(run_dir)
    record = json.loads((run_dir / "splits.json").read_text()).get("splits", {})
    wanted = [(s, c["id"]) for s in splits for c in (record.get(s) or {}).get("clips", [])]
    if not wanted:
        raise UsageError(f"{run_dir}/splits.json: no clips in the {' or '.join(splits)} split")
    if limit is not None and len(wanted) > limit:
        step = len(wanted) / limit
        wanted = [wanted[int(i * step)] for i in range(limit)]
    run_recipe(run_dir)  # refused when edited since the run: the corpus would not be the run's
    host = host or load_plugins()
    cfg = load_recipe(run_dir / "config.yaml", [])
    corpus = build_component(host.registries.dataset, cfg.data.name, plain(cfg.data.options), "data.options",
                             seed=int(cfg.seed))
    by_split = {s: {c.clip_id: c for c in corpus.split(s)} for s in {s for s, _ in wanted}}
    missing = [cid for s, cid in wanted if cid not in by_split[s]]
    if missing:
        raise UsageError(f"{run_dir}/config.yaml rebuilds a corpus without {len(missing)} of the run's clips "
                         f"(e.g. {missing[0]}): the data changed since the run")
    out = []
    for s, cid in wanted:
        clip = by_split[s][cid]
        if clip.audio is None:
            clip = corpus.load(clip)
        audio = torch.from_numpy(np.ascontiguousarray(clip.audio, dtype=np.float32))
        if clip.sample_rate != sample_rate:
            audio = AF.resample(audio, clip.sample_rate, sample_rate)
        out.append((audio.numpy(), clip.label))
    return out


# ---------------------------------------------------------------------------------------------
# float vs int8
# ---------------------------------------------------------------------------------------------


def session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def score(sess, clips: Sequence[tuple[np.ndarray, str | None]], classes: Sequence[str]) -> dict[str, float]:
    """WA, UAR and macro-F1 of an ONNX student session on labeled clips, each scored whole."""
    import torch

    from liser_common.metrics import classification_metrics

    preds, target = [], []
    for audio, label in clips:
        if label not in classes:
            continue
        probs = sess.run(["probs"], {"audio": audio[None]})[0][0]
        preds.append(int(np.argmax(probs)))
        target.append(list(classes).index(label))
    if not target:
        raise UsageError("the test split has no clip with a label of the student's label space")
    metrics, _ = classification_metrics(torch.tensor(preds), torch.tensor(target), len(classes))
    return {**{k: round(v, 4) for k, v in metrics.items()}, "clips": len(target)}


def speed_ms(sessions: Sequence[Any], sample_rate: int, *, seconds: float = 3.0, repeats: int = 30) -> list[float]:
    """Median CPU milliseconds of one ``seconds`` clip through each session, the sessions taking
    turns (after a warm-up). CPU time of the calling thread: a one-thread onnxruntime session
    runs there, and CPU time is far less disturbed than wall time by other work on the machine."""
    import time

    x = {"audio": (0.1 * np.random.default_rng(0).standard_normal((1, int(seconds * sample_rate)))).astype(np.float32)}
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(3):
        for s in sessions:
            s.run(None, x)
    for _ in range(repeats):
        for i, s in enumerate(sessions):
            t0 = time.thread_time()
            s.run(None, x)
            times[i].append(time.thread_time() - t0)
    return [1e3 * float(np.median(t)) for t in times]


def compare(float_path: str | Path, int8_path: str | Path, *, classes: Sequence[str], sample_rate: int,
            test: Sequence[tuple[np.ndarray, str | None]] = (), repeats: int = 30) -> dict[str, Any]:
    """Size, one-thread speed and (with ``test`` clips) WA/UAR of the float and int8 models."""
    rows: dict[str, Any] = {}
    paths = {"float32": Path(float_path), "int8": Path(int8_path)}
    ms = speed_ms([session(p, threads=1) for p in paths.values()], sample_rate, repeats=repeats)
    for (key, path), t in zip(paths.items(), ms):
        rows[key] = {"file": path.name, "bytes": path.stat().st_size, "ms_3s_1thread": round(t, 3)}
        if test:
            rows[key].update(score(session(path, threads=2), test, classes))
    f, q = rows["float32"], rows["int8"]
    rows["size_ratio"] = round(q["bytes"] / f["bytes"], 3)
    rows["speedup"] = round(f["ms_3s_1thread"] / q["ms_3s_1thread"], 3)
    if test:
        rows["uar_drop_points"] = round(100 * (f["uar"] - q["uar"]), 2)
        rows["wa_drop_points"] = round(100 * (f["accuracy"] - q["accuracy"]), 2)
    return rows


def calibration_files(checkpoint: str | Path, mode: str, calibrate: str | Path | None) -> list[Path]:
    """Where static quantization's calibration clips come from, checked before anything is
    written: the files of ``calibrate`` (at most :data:`CALIBRATION_CLIPS`), or ``[]`` for the
    run's labeled/unlabeled clips (``checkpoint`` is the student of a run folder) or for dynamic
    mode. A usage error when neither is there."""
    from .deploy import expand_paths

    if mode not in ("static", "dynamic"):
        raise UsageError(f"--quantize-mode {mode!r}: choose static or dynamic")
    if calibrate is not None:
        if mode != "static":
            raise UsageError("--calibrate: only for static quantization (--quantize-mode static)")
        if not Path(calibrate).exists():
            raise UsageError(f"--calibrate {calibrate}: no such file or folder")
        files = expand_paths([str(calibrate)])[:CALIBRATION_CLIPS]
        if not files:
            raise UsageError(f"--calibrate {calibrate}: no audio files there")
        return files
    if mode == "static" and (not Path(checkpoint).is_dir() or run_dir_of(checkpoint) is None):
        raise UsageError(f"{checkpoint}: static int8 needs calibration clips: the student of a run folder "
                         "(RUN_DIR/student with the run's config.yaml and splits.json), or --calibrate "
                         "FOLDER of audio files; or --quantize-mode dynamic")
    return []


def check_calibration(checkpoint: str | Path, files: list[Path]) -> None:
    """Every calibration file decodes, and some are long enough for the export (0.5 s): checked
    before the float export is written (a usage error naming the first bad file)."""
    from liser_core.checkpoint import read_component_config

    from .deploy import read_audio

    if not files:
        return
    rate = int(read_component_config(checkpoint, "student")["sample_rate"])
    lengths = [len(read_audio(f, rate)) for f in files]  # read_audio names a bad file
    if not any(n >= rate // 2 for n in lengths):
        raise UsageError(f"--calibrate: none of its {len(files)} files lasts 0.5 s (the export's shortest input)")


def check_quantization_record(student_dir: Path, int8: Path) -> None:
    """Refuse to replace a ``quantization.json`` that LiSER did not write (or that was changed
    since): its digest is in the int8 export's sidecar (records of older versions: a LiSER record
    with no digest kept there)."""
    from liser_core.export import file_sha256, sidecar

    path = student_dir / "quantization.json"
    if not path.exists():
        return
    try:
        meta = json.loads(sidecar(int8).read_text())
    except (OSError, ValueError):
        meta = {}
    recorded = meta.get("quantization_sha256") if isinstance(meta, dict) else None
    if recorded is not None:
        ours = path.is_file() and recorded == file_sha256(path)
    else:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = None
        ours = isinstance(record, dict) and {"int8", "float32", "mode"} <= record.keys()
    if not ours:
        raise UsageError(f"{path}: not written by liser export (or changed since); LiSER replaces only its own "
                         "record: move it away, or export with -o elsewhere")


def quantize_student(checkpoint: str | Path, float_path: str | Path, output: str | Path, *, mode: str = "static",
                     frontend: bool = False, calibrate: str | Path | None = None, host=None,
                     repeats: int = 30, record: bool = True) -> dict[str, Any]:
    """The whole ``--quantize int8`` step for a saved student whose float ONNX export is
    ``float_path``: calibration clips (``calibrate`` folder, else the run's labeled/unlabeled
    clips), the int8 file, the comparison on the run's test split; written to
    ``CHECKPOINT/quantization.json`` when the checkpoint is a folder (and ``record``). Returns
    the record."""
    from liser_core.checkpoint import atomic_write_json, read_component_config
    from liser_core.export import weights_digest

    from .deploy import read_audio

    config = read_component_config(checkpoint, "student")
    rate, classes = int(config["sample_rate"]), list(config["label_space"]["classes"])
    run_dir = run_dir_of(checkpoint) if Path(checkpoint).is_dir() else None
    calibration: list[np.ndarray] = []
    source = "none (dynamic: ranges computed per call)"
    files = calibration_files(checkpoint, mode, calibrate)
    if files:
        calibration = [read_audio(f, rate) for f in files]
        source = f"{len(calibration)} files of {calibrate}"
    elif mode == "static":
        clips = run_clips(run_dir, ["labeled", "unlabeled"], rate, host=host, limit=CALIBRATION_CLIPS)
        calibration = [a for a, _ in clips]
        source = f"{len(calibration)} clips of the run's labeled and unlabeled splits"
    if mode == "static":
        calibration = [a for a in calibration if len(a) >= rate // 2]  # the export's shortest input
    ops = quantize_onnx(float_path, output, mode=mode, calibration=calibration, frontend=frontend)
    _carry_metadata(float_path, output, mode)
    test = run_clips(run_dir, ["test"], rate, host=host) if run_dir is not None else []
    from liser_core.card import student_provenance

    provenance = student_provenance(checkpoint) if Path(checkpoint).is_dir() else {}
    record_to, result = record, {
        "format": "onnx", "mode": mode, "weights": "int8, per channel, symmetric",
        "activations": "uint8, per tensor, min/max calibrated" if mode == "static" else "uint8, dynamic per call",
        "calibration": source, "frontend": "int8" if frontend else "float (kept)",
        "ops": {"int8": ops.int8, "float": ops.float},
        "test": f"the run's test split ({len(test)} clips, each scored whole)" if test else
                "not measured (no run records: pass the student folder of a run)",
        "speed": "median CPU ms of one 3 s clip on 1 thread, onnxruntime, the two models taking turns",
        "weights_sha256": weights_digest(checkpoint),  # the student measured: a record of other weights is stale
        # the run's flags travel with its test scores: None when nothing records the run (unknown, not "none")
        "flags": list(provenance["flags"]) if "flags" in provenance else None,
        "provenance": provenance or None,
        **compare(float_path, output, classes=classes, sample_rate=rate, test=test, repeats=repeats),
    }
    if record_to and Path(checkpoint).is_dir():
        atomic_write_json(Path(checkpoint) / "quantization.json", result)
    return result


def _carry_metadata(float_path: str | Path, int8_path: str | Path, mode: str) -> None:
    """The float export's ``liser.*`` metadata (labels, rate, weights, run provenance) into the
    int8 file, with how it was quantized: the int8 file says what it is without its sidecar."""
    import onnx

    from liser_core.export import set_metadata

    src = onnx.load(str(float_path), load_external_data=False)
    props = {p.key: p.value for p in src.metadata_props if p.key.startswith("liser.")}
    model = onnx.load(str(int8_path))
    set_metadata(model, {**props, "liser.quantization": f"int8 {mode}"})
    onnx.save(model, str(int8_path))


def summary_lines(record: dict[str, Any]) -> list[str]:
    """What ``liser export --quantize`` prints: the side-by-side table and the operator report."""
    f, q = record["float32"], record["int8"]
    has_test = "uar" in f
    head = f"{'':<8} {'size KB':>9} {'ms (3 s, 1 thread)':>19}" + (f" {'UAR':>7} {'WA':>7}" if has_test else "")
    lines = [head]
    for key, row in (("float32", f), ("int8", q)):
        line = f"{key:<8} {row['bytes'] / 1024:>9.1f} {row['ms_3s_1thread']:>19.2f}"
        if has_test:
            line += f" {row['uar']:>7.3f} {row['accuracy']:>7.3f}"
        lines.append(line)
    lines.append(f"int8/float32: size {record['size_ratio']:.2f}x, speed {record['speedup']:.2f}x"
                 + (quantization_change(record) if has_test else "") + f"  (test: {record['test']})")
    if has_test and record.get("flags"):  # the run's flags beside its scores, as every table shows them
        from liser_core.guards import describe_flags

        lines.append(f"flagged: {', '.join(record['flags'])} -- these test scores are incomplete or NOT a fair "
                     "estimate: " + "; ".join(describe_flags(record["flags"])))
    elif has_test and record.get("flags") is None and "flags" in record:
        lines.append("flags: unknown (no run record describes these weights)")
    ops = OpReport(int8=record["ops"]["int8"], float=record["ops"]["float"])
    return lines + ops.lines()


__all__ = ["OpReport", "calibration_files", "compare", "op_report", "quantize_onnx", "quantize_student", "run_clips", "run_dir_of",
           "summary_lines"]


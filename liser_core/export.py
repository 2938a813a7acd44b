"""Exporting a saved student to ONNX or TorchScript, frontend included.

Before exporting, every submodule with a ``prepare_export()`` method is asked to switch to
export-friendly operators (with ``target=`` the format, ``onnx``, ``torchscript`` or
``executorch``, where its signature takes one) (the first-party log-mel frontend computes its STFT as a two-stage
DFT of convolutions and matrix products then, which ONNX runtimes execute much faster than
their STFT operator). The exporter's per-node debug metadata is stripped from ONNX files
(:func:`strip_debug_metadata`).

Exports take a mono waveform at the student's sample rate and contain the audio frontend
(log-mel + normalisation): ``audio`` (batch, samples) float32 -> ``logits``, ``probs``
(batch, classes). A sidecar ``<file>.json`` states the label order, sample rate, that the
frontend is inside, the window length to use, the export's SHA-256 and that of the weights it
was made from: :func:`export_mismatch` tells whether an export still belongs to the student
folder it sits in (``liser predict``/``serve`` never score with a stale one).

In ``liser_core`` (with :mod:`liser_core.card` and :mod:`liser_core.hub`) so that
``Student.push_to_hub`` exports without importing ``liser_tools``; ``liser_tools.deploy``
re-exports :func:`export` (docs/architecture.md).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from .checkpoint import atomic_write_json, read_component_config, resolve_source
from .components import Student
from .errors import UsageError

__all__ = ["check_replaceable", "compact_constants", "compact_names", "export", "export_mismatch", "file_sha256", "restore_constants",
           "sidecar", "sparsify_initializers", "strip_debug_metadata", "weights_digest"]

#: float32 initializers from this many bytes with at least this share of zeros are stored as
#: their non-zero values and indices (:func:`sparsify_initializers`)
SPARSE_MIN_BYTES = 4096
SPARSE_MIN_ZEROS = 0.75

class _Exported(torch.nn.Module):
    """Waveform in, logits and probabilities out: the whole student including its frontend."""

    def __init__(self, student: Student, target: str = "onnx"):
        super().__init__()
        self.student = student
        for module in student.modules():  # let components swap in export-friendly ops
            if hasattr(module, "prepare_export"):
                params = inspect.signature(module.prepare_export).parameters.values()
                if any(p.name == "target" or p.kind is p.VAR_KEYWORD for p in params):
                    module.prepare_export(target=target)
                else:
                    module.prepare_export()

    def forward(self, audio: torch.Tensor):
        logits = self.student(audio).logits
        return logits, torch.softmax(logits, -1)


def export(
    checkpoint: str | Path,
    output: str | Path,
    fmt: str = "onnx",
    *,
    example_seconds: float = 3.0,
    window_seconds: float | None = None,
    host=None,
    provenance: dict | None = None,
) -> dict:
    """Export a saved student to ONNX, TorchScript or ExecuTorch (``.pte``, the XNNPACK backend;
    fixed input of one ``window_seconds`` window, default 1 s); returns (and writes) the sidecar
    metadata. ``provenance``: the run's record to carry (default: :func:`_provenance` of
    ``checkpoint``; a copy staged elsewhere passes its source folder's)."""
    if fmt not in ("onnx", "torchscript", "executorch"):
        raise UsageError(f"--format {fmt!r}: choose onnx, torchscript or executorch")
    output = Path(output)
    check_replaceable(output)  # before anything is read or written
    checkpoint = resolve_source(checkpoint)
    student = Student.from_pretrained(checkpoint, host=host)
    config = read_component_config(checkpoint, "student")
    # the run that made it: from the folder, unless the caller read it where the folder came from
    provenance = provenance if provenance is not None else _provenance(checkpoint)
    wrapper = _Exported(student, fmt).eval()
    example = 0.01 * torch.randn(2, int(example_seconds * student.sample_rate))  # batch 2: no 0/1 specialisation
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    if fmt == "onnx":
        batch = torch.export.Dim("batch", min=1, max=4096)
        samples = torch.export.Dim("samples", min=int(0.5 * student.sample_rate), max=student.sample_rate * 3600)
        program = torch.onnx.export(
            wrapper,
            (example,),
            input_names=["audio"],
            output_names=["logits", "probs"],
            dynamic_shapes={"audio": {0: batch, 1: samples}},
            dynamo=True,
            verbose=False,
        )
        program.save(str(tmp))
        import onnx

        model = onnx.load(str(tmp))
        _check_dynamic(model, tmp, output)
        constants = [(name, m) for name, m in wrapper.named_modules() if hasattr(m, "onnx_constants")]
        model = compact_constants(strip_debug_metadata(model), constants)
        set_metadata(model, onnx_metadata(checkpoint, config, student, provenance))
        onnx.save(model, str(tmp))
    elif fmt == "executorch":
        window = int(round((window_seconds or 1.0) * student.sample_rate))
        not_delegated = _executorch(wrapper, torch.zeros(1, window), tmp)
    else:
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        traced.save(str(tmp))
    digest = file_sha256(tmp)
    tmp.replace(output)
    meta = {
        "format": fmt,
        "sha256": digest,  # the file LiSER wrote: another export may replace it (check_replaceable)
        "weights_sha256": weights_digest(checkpoint),  # what it was made from (export_mismatch)
        "model": config["name"],
        "options": config["options"],
        "labels": list(student.label_space.classes),
        "sample_rate": student.sample_rate,
        "frontend": "included: input is the mono waveform at sample_rate (log-mel and normalisation inside)",
        "inputs": {"audio": "float32 (batch, samples), samples >= 0.5 s"},
        "outputs": {"logits": "float32 (batch, classes)", "probs": "float32 (batch, classes), softmax of logits"},
        "window_seconds": config.get("train_seconds"),
        "aggregation": "mean of window probabilities, windows of window_seconds with half-window hop",
        "num_parameters": student.num_parameters(),
        # the run that made the student (recipe, code, flags, test scores): travels with the file
        "provenance": provenance,
    }
    if fmt == "executorch":
        meta.update({
            "runtime": "ExecuTorch (executorch.runtime / the C++ Module API), XNNPACK delegate",
            "inputs": {"audio": f"float32 (1, {window}): exactly one window of {window / student.sample_rate:g} s"},
            "window_seconds": window / student.sample_rate,
            "aggregation": "one window per call: stream with a hop (liser predict --stream) or average windows",
            "not_delegated": not_delegated,
        })
    atomic_write_json(sidecar(output), meta)
    return meta


def _provenance(checkpoint: str | Path) -> dict:
    """:func:`liser_core.card.student_provenance`, or what says there is none."""
    from .card import student_provenance

    found = student_provenance(checkpoint) if Path(checkpoint).is_dir() else {}
    return found or {"source": None, "note": "no record of the run that made these weights (no run metrics.json or "
                                             "card describes them): its scores and flags are unknown"}


def onnx_metadata(checkpoint: str | Path, config: dict, student, provenance: dict) -> dict[str, str]:
    """What an ONNX file carries in its own ``metadata_props`` (read by any runtime, and kept when
    the file travels without its sidecar): labels, rate, model, the weights it was made from and
    the run's recipe fingerprint, code and flags."""
    return {
        "liser.labels": json.dumps(list(student.label_space.classes)),
        "liser.sample_rate": str(student.sample_rate),
        "liser.model": str(config.get("name")),
        "liser.window_seconds": json.dumps(config.get("train_seconds")),
        "liser.weights_sha256": str(weights_digest(checkpoint)),
        "liser.recipe_fingerprint": str(provenance.get("recipe_fingerprint")),
        "liser.code": str(provenance.get("code")),
        "liser.flags": json.dumps(provenance.get("flags")) if "flags" in provenance else "unknown",
    }


def set_metadata(model, props: dict[str, str]) -> None:
    """Replace ``liser.*`` entries of an ONNX model's ``metadata_props`` with ``props``."""
    keep = [p for p in model.metadata_props if not p.key.startswith("liser.")]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)


def sidecar(path: str | Path) -> Path:
    """The metadata file written beside an export: ``<file>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def file_sha256(path: str | Path) -> str:
    from .checkpoint import _sha256_file

    return _sha256_file(Path(path))


def weights_digest(checkpoint: str | Path) -> str | None:
    """SHA-256 of a student folder's ``model.safetensors`` (None for a Hub id): what an export
    was made from."""
    from .checkpoint import WEIGHTS_NAME

    path = Path(checkpoint) / WEIGHTS_NAME
    return file_sha256(path) if path.is_file() else None


def export_mismatch(checkpoint: str | Path, path: str | Path) -> str | None:
    """Why the export ``path`` is not the student in ``checkpoint`` (a folder) as it is now, or
    None when it is: its sidecar must record the file's SHA-256 and that of the folder's
    ``model.safetensors`` (an export made before the student was trained again, or beside other
    weights, is stale), and the student's labels and sample rate."""
    import json

    from .checkpoint import CONFIG_NAME

    path, checkpoint = Path(path), Path(checkpoint)
    try:
        meta = json.loads(sidecar(path).read_text())
        config = json.loads((checkpoint / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return f"it has no readable {sidecar(path).name} (what it was exported from)"
    if not isinstance(meta, dict) or not meta.get("weights_sha256"):
        return f"{sidecar(path).name} does not record the weights it was exported from (an export of an older LiSER)"
    if meta.get("sha256") != file_sha256(path):
        return f"it changed since liser export wrote it ({sidecar(path).name} records another SHA-256)"
    if path.name.endswith(".int8.onnx") and not isinstance(meta.get("quantization"), dict):
        return ("it is no int8 export (its sidecar records no quantization): a float model written under the int8 "
                "name")
    if meta["weights_sha256"] != weights_digest(checkpoint):
        return "it was exported from other weights than the folder's model.safetensors (trained again or replaced since)"
    classes = list(((config.get("label_space") or {}).get("classes")) or [])
    if list(meta.get("labels") or []) != classes:
        return f"its labels {meta.get('labels')} are not the student's {classes}"
    if meta.get("sample_rate") != config.get("sample_rate"):
        return f"its sample rate {meta.get('sample_rate')} is not the student's {config.get('sample_rate')}"
    return None


def check_replaceable(*paths: str | Path) -> None:
    """Refuse (a usage error naming the file) to replace an export file, or its ``.json``
    sidecar, that LiSER did not write: an existing file is replaced only when its sidecar is a
    LiSER export record whose ``sha256`` is the file's (records of older versions, without a
    digest, are taken as LiSER's). Called before anything is written."""
    import json

    for path in map(Path, paths):
        for target in (path, sidecar(path)):
            if not (target.exists() or target.is_symlink()):
                continue
            if not target.is_file() or target.is_symlink():
                raise UsageError(f"{target}: exists and is not a file LiSER wrote; choose another -o")
        if not (path.exists() or sidecar(path).exists()):
            continue
        try:
            meta = json.loads(sidecar(path).read_text())
        except (OSError, ValueError):
            meta = None
        ours = isinstance(meta, dict) and {"format", "labels", "sample_rate"} <= meta.keys()
        if ours and path.exists() and "sha256" in meta:
            ours = meta["sha256"] == file_sha256(path)
        if not ours:
            which = path if path.exists() else sidecar(path)
            raise UsageError(f"{which}: exists and was not written by liser export (or was changed since: "
                             f"{sidecar(path).name} does not record it); LiSER replaces only its own exports: "
                             "move it away or choose another -o")


def _executorch(wrapper: torch.nn.Module, example: torch.Tensor, path: Path) -> list[str]:
    """Lower ``wrapper`` for ExecuTorch with the XNNPACK partitioner and write the ``.pte``;
    returns the operators left outside the delegate (run by ExecuTorch's portable kernels)."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise UsageError("--format executorch needs ExecuTorch: pip install 'liser[mobile]'") from None
    for module in wrapper.modules():  # XNNPACK's passes refuse non-persistent buffers (the DFT kernels)
        module._non_persistent_buffers_set.clear()
    with torch.no_grad():
        program = torch.export.export(wrapper, (example,))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    left = sorted({_op_name(n.target) for n in edge.exported_program().graph.nodes
                   if n.op == "call_function" and _op_name(n.target) not in ("executorch_call_delegate", "getitem")})
    path.write_bytes(edge.to_executorch().buffer)
    return left


def _op_name(target) -> str:
    """``aten.where.self``, ``dim_order_ops._to_dim_order_copy``: an operator's qualified name
    with its overload (``.default`` left out)."""
    if isinstance(target, torch._ops.OpOverload):  # str(): "aten.scalar_tensor.default"
        name = str(target)
    else:  # ExecuTorch's EdgeOpOverload: __name__ "aten.where.self" (its str() is a repr with the schema)
        name = getattr(target, "__name__", None) or str(target)
    return name.removesuffix(".default")


def strip_debug_metadata(model, keep: tuple[str, ...] = ("pkg.torch.onnx.name_scopes",)):
    """``model`` (an ``onnx.ModelProto``, changed in place and returned) without the per-node
    metadata torch's ONNX exporter writes for debugging (every key but ``keep``): Python stack
    traces with this machine's file paths, FX node text, class hierarchies. A shipped model
    needs none of it, and it was 15-20 % of a small student's file. ``name_scopes`` (the module
    each node came from) stays by default: ``liser export --quantize`` uses it to find the
    frontend."""
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key in keep]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model


def _check_dynamic(model, path: Path, output: Path) -> None:
    """The exporter can silently fix a dimension a model's code makes static; refuse that (and
    remove ``path``, the exported ``model``'s file)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    fixed = [name for name, d in zip(("batch", "samples"), dims) if not d.dim_param]
    if fixed:
        path.unlink(missing_ok=True)
        raise UsageError(
            f"{output}: the exported graph fixed its {' and '.join(fixed)} dimension(s); "
            "the model's forward makes them static (e.g. len(tensor) or Python ints from shapes)"
        )


def compact_constants(model, modules=()):
    """``model`` (changed in place and returned) with its large constants stored small, the
    numbers the same to float32 rounding (the DFT kernels: within 2e-6; the rest exactly):

    * each ``(name, module)`` of ``modules`` whose ``module.onnx_constants(name)`` returns
      ``(nodes, initializers)`` that compute initializers of the model (e.g. the log-mel
      frontend's DFT kernels, from the window and a sine) has those initializers replaced by
      the nodes, where they compute them (:func:`_replace_initializers`); onnxruntime folds
      them back into constants once, when a session loads;
    * float32 initializers that are mostly zeros (the mel filterbank) are stored as their
      non-zero values and indices (:func:`sparsify_initializers`)."""
    for name, module in modules:
        nodes, initializers = module.onnx_constants(name)
        _replace_initializers(model.graph, nodes, initializers)
    return sparsify_initializers(model)


def _replace_initializers(graph, nodes, initializers) -> bool:
    """Replace the initializers that ``nodes`` compute (their outputs no other of them reads) by
    ``nodes`` and their small ``initializers``. Nothing when one of those is not an initializer of
    ``graph`` (or is a graph input), when a name the nodes add is already used there, or when the
    nodes do not compute the initializer's values (to float32 rounding, ONNX's reference
    evaluator): a tensor is only ever replaced by what computes it."""
    produced = [o for node in nodes for o in node.output]
    read = {i for node in nodes for i in node.input}
    results = [o for o in produced if o not in read]
    existing = {init.name: init for init in graph.initializer}
    ends = {v.name for v in (*graph.input, *graph.output)}
    if not nodes or any(r not in existing or r in ends for r in results):
        return False
    added = {o for o in produced if o not in results} | {i.name for i in initializers}
    used = set(existing) | ends | {o for node in graph.node for o in node.output}
    if added & used:
        return False
    available = [*initializers, *(existing[i] for i in read if i in existing)]
    if not all(_computes(nodes, available, existing[r]) for r in results):
        return False
    kept = [init for init in graph.initializer if init.name not in results]
    del graph.initializer[:]
    graph.initializer.extend([*kept, *initializers])
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *rest])  # ahead of every reader: the graph stays sorted
    return True


def sparsify_initializers(model, min_bytes: int = SPARSE_MIN_BYTES, min_zeros: float = SPARSE_MIN_ZEROS):
    """``model`` (changed in place and returned) with each float32 initializer of at least
    ``min_bytes`` of which at least ``min_zeros`` are zeros stored as its non-zero values and
    their flat int32 indices (8 bytes each against 4 per element), scattered into zeros by three
    nodes (ConstantOfShape, ScatterElements, Reshape) that onnxruntime folds once when a session
    loads (:func:`_replace_initializers`, which checks the names and the numbers). The same
    numbers. (Not ONNX's ``sparse_initializer``: ONNX's type inference then
    refuses the dense operators that read it.)"""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    for init in list(model.graph.initializer):
        size = int(np.prod(init.dims)) if len(init.dims) else 1
        if init.data_type != TensorProto.FLOAT or 4 * size < min_bytes:
            continue
        array = numpy_helper.to_array(init)
        nonzero = np.flatnonzero(array)
        if len(nonzero) > (1 - min_zeros) * size:
            continue
        t = f"{init.name}/"
        index = np.int32 if size < 2**31 else np.int64
        inits = [numpy_helper.from_array(np.array([size], np.int64), t + "size"),
                 numpy_helper.from_array(nonzero.astype(index), t + "indices"),
                 numpy_helper.from_array(array.reshape(-1)[nonzero], t + "values"),
                 numpy_helper.from_array(np.array(array.shape, np.int64), t + "shape")]
        nodes = [helper.make_node("ConstantOfShape", [t + "size"], [t + "zeros"], name=t + "zeros",
                                  value=numpy_helper.from_array(np.zeros(1, np.float32))),
                 helper.make_node("ScatterElements", [t + "zeros", t + "indices", t + "values"],
                                  [t + "flat"], name=t + "flat", axis=0),
                 helper.make_node("Reshape", [t + "flat", t + "shape"], [init.name], name=init.name)]
        _replace_initializers(model.graph, nodes, inits)
    return model


def restore_constants(model, source):
    """Where an initializer of ``model`` is what a subgraph of constant nodes of ``source`` (the
    model it was made from) computes, and that subgraph is smaller, put the subgraph back:
    onnxruntime's graph optimisation (e.g. before quantization) folds such subgraphs (see
    :func:`compact_constants`) into the large tensors they stand for. Only where the subgraph
    still computes that tensor (an optimisation may have changed a tensor and kept its name) and
    adds no name the model already uses (:func:`_replace_initializers`). ``model`` is changed in
    place and returned."""
    graph = source.graph
    constant = {i.name for i in graph.initializer} | {""}
    producer = {}
    for node in graph.node:
        if all(i in constant for i in node.input) and not any(a.g.node or a.graphs for a in node.attribute):
            constant.update(node.output)
            producer.update({o: node for o in node.output})
    source_inits = {i.name: i for i in graph.initializer}
    order = {id(n): k for k, n in enumerate(graph.node)}
    present = {i.name: i for i in model.graph.initializer}
    for name in [n for n in present if n in producer]:
        nodes, inits, todo, seen = [], {}, [producer[name]], set()
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            nodes.append(node)
            for i in node.input:
                if i in producer:
                    todo.append(producer[i])
                elif i in source_inits and i not in present:
                    inits[i] = source_inits[i]
        if sum(i.ByteSize() for i in inits.values()) + sum(n.ByteSize() for n in nodes) >= present[name].ByteSize():
            continue
        nodes.sort(key=lambda n: order[id(n)])
        if _replace_initializers(model.graph, [_copy(n) for n in nodes], [_copy(i) for i in inits.values()]):
            present.update(inits)
    return model


def _computes(nodes, initializers, expected) -> bool:
    """Whether ``nodes`` (with ``initializers``) compute the tensor ``expected`` (to float32
    rounding), run by ONNX's reference evaluator."""
    import numpy as np
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    out = helper.make_tensor_value_info(expected.name, expected.data_type, None)
    graph = helper.make_graph([_copy(n) for n in nodes], "constant", [], [out], [_copy(i) for i in initializers])
    try:
        (got,) = ReferenceEvaluator(helper.make_model(graph)).run(None, {})
    except Exception:  # noqa: BLE001 - an operator the evaluator lacks: not restored
        return False
    want = numpy_helper.to_array(expected)
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    scale = float(np.abs(want).max()) if want.size else 0.0
    return bool(np.allclose(got, want, rtol=1e-5, atol=1e-6 * max(scale, 1.0)))


def _copy(proto):
    new = type(proto)()
    new.CopyFrom(proto)
    return new


def compact_names(model):
    """``model`` (changed in place and returned) with short tensor names (``t1f``) and no node
    names or intermediate shape annotations (``value_info``; runtimes infer them): a third of an
    int8 file's graph was such names. The inputs' and outputs' names stay. Graphs with subgraphs
    (If, Loop) are left as they are."""
    graph = model.graph
    if any(a.g.node or a.graphs for node in graph.node for a in node.attribute):
        return model
    keep = {v.name for v in (*graph.input, *graph.output)}
    names: dict[str, str] = {}
    counter = iter(range(1 << 62))

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            names[name] = next(n for n in (f"t{k:x}" for k in counter) if n not in keep)
        return names[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(i) for i in node.input]
        node.output[:] = [short(o) for o in node.output]
    del graph.value_info[:]
    return model

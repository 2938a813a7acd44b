"""On the device (issue 28): int8 students, streaming recognition, the WebSocket endpoint and a
mobile runtime, each against PyTorch or onnxruntime float32 outputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from liser_core import Student, load_plugins
from liser_core.labels import RAVDESS8

HOST = load_plugins()
NEEDS = {"ecapa_tdnn": "speechbrain", "timm_mobile": "timm"}
SMALL = {  # small but of the same kinds of layers as the defaults
    "logmel_cnn": {"channels": [4, 8]},
    "ecapa_tdnn": {"channels": [16, 16, 48], "kernel_sizes": [5, 3, 1], "dilations": [1, 2, 1], "res2net_scale": 2,
                   "attention_channels": 8, "se_channels": 8, "lin_neurons": 16},
    "timm_mobile": {"n_mels": 32},  # mobilenetv3_small_050, the default network
}


def saved_student(name: str, folder, seed: int = 0):
    """A first-party student after a few training steps (BatchNorm statistics not the
    identity), saved like a run saves it."""
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    torch.manual_seed(seed)
    student = HOST.registries.student.build(name, label_space=RAVDESS8, **SMALL[name])
    student.liser_spec = {"name": name, "options": SMALL[name]}
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        x = 0.1 * torch.randn(8, 16000, generator=g)
        loss = torch.nn.functional.cross_entropy(student(x).logits, torch.arange(8) % 8)
        opt.zero_grad()
        loss.backward()
        opt.step()
    student.eval().save_pretrained(folder)
    return Student.from_pretrained(folder, host=HOST)


def clips(n: int, seconds: float = 1.0, seed: int = 1) -> list[np.ndarray]:
    """Tones in noise: speech-like levels, different lengths."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = np.arange(int((seconds + 0.1 * i) * 16000)) / 16000
        out.append((0.2 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32))
    return out


# ---------------------------------------------------------------------------------------------
# item 1: int8
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["logmel_cnn", "ecapa_tdnn", "timm_mobile"])
def test_int8_export_of_every_first_party_student(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from liser_tools.deploy import export
    from liser_tools.quantize import WEIGHT_OPS, _scope, quantize_onnx, session

    saved_student(name, tmp_path / "student")
    export(tmp_path / "student", tmp_path / "s.onnx")
    ops = quantize_onnx(tmp_path / "s.onnx", tmp_path / "s.int8.onnx", calibration=clips(8))
    import onnx

    graph = onnx.load(str(tmp_path / "s.onnx")).graph
    weight_ops = [n for n in graph.node if n.op_type in WEIGHT_OPS]
    # every weight-carrying operator is accounted for: int8, or float with its reason
    assert sum(ops.int8.values()) + len(ops.float) == len(weight_ops)
    frontend = sorted(n.op_type for n in weight_ops if _scope(n) == "student.frontend")
    assert frontend == ["Conv", "MatMul", "MatMul"]  # the two-stage DFT and the mel product
    assert sum(ops.int8.values()) == len(weight_ops) - len(frontend)  # all but the frontend
    assert sorted(f["op"] for f in ops.float) == frontend and {f["scope"] for f in ops.float} == {"student.frontend"}
    assert all("the audio frontend is kept in float" in f["why"] for f in ops.float)
    q = onnx.load(str(tmp_path / "s.int8.onnx")).graph
    assert sum(i.data_type == onnx.TensorProto.INT8 for i in q.initializer) >= sum(ops.int8.values())  # int8 weights
    # both files store the frontend's kernels as the nodes that compute them (the int8 step's
    # pre-processing folds them; they are put back), the mel filterbank as its non-zero values
    frontend = [i for i in graph.initializer if i.name.startswith("student.frontend")]
    floats = [i for i in q.initializer if i.data_type == onnx.TensorProto.FLOAT]  # (weights are int8 there)
    for g, inits in ((graph, frontend), (q, floats)):
        assert {"Cos", "Sin", "ScatterElements"} <= {n.op_type for n in g.node}
        assert max(int(np.prod(i.dims)) for i in inits) < 4096  # not the 16,000 of the DFT kernels
    assert "student.frontend.dft_stage1" not in {i.name for i in graph.initializer}
    onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "s.onnx")), strict_mode=True)
    # the int8 file: short tensor names, no node names or value_info; the inputs and outputs named
    assert not q.value_info and not any(n.name for n in q.node)
    assert max(len(i.name) for i in q.initializer) <= 5 and [o.name for o in q.output] == ["logits", "probs"]
    f32, i8 = session(tmp_path / "s.onnx"), session(tmp_path / "s.int8.onnx")
    for audio in clips(4, seconds=1.5, seed=7):
        p32 = f32.run(["probs"], {"audio": audio[None]})[0]
        p8 = i8.run(["probs"], {"audio": audio[None]})[0]
        assert np.isclose(p8.sum(), 1, atol=1e-4)
        assert np.abs(p8 - p32).max() < 0.1  # int8 rounding of a briefly trained student


def test_dynamic_int8_and_quantized_frontend(tmp_path):
    pytest.importorskip("onnxruntime")
    from liser_tools.deploy import export
    from liser_tools.quantize import quantize_onnx, session

    saved_student("logmel_cnn", tmp_path / "student")
    export(tmp_path / "student", tmp_path / "s.onnx")
    dyn = quantize_onnx(tmp_path / "s.onnx", tmp_path / "d.onnx", mode="dynamic")
    assert dyn.int8 == {"ConvInteger": 2, "MatMulInteger": 1}  # two conv blocks and the head
    whole = quantize_onnx(tmp_path / "s.onnx", tmp_path / "w.onnx", calibration=clips(8), frontend=True)
    assert not whole.float and whole.int8 == {"Conv": 3, "Gemm": 1, "MatMul": 2}
    audio = clips(1, seconds=2.0, seed=3)[0][None]
    ref = session(tmp_path / "s.onnx").run(["probs"], {"audio": audio})[0]
    dyn_probs = session(tmp_path / "d.onnx").run(["probs"], {"audio": audio})[0]
    # dynamic ranges (per call, per tensor) cost more than calibrated ones: 0.33 seen here
    assert np.isclose(dyn_probs.sum(), 1, atol=1e-4) and np.abs(dyn_probs - ref).max() < 0.5
    assert np.abs(session(tmp_path / "w.onnx").run(["probs"], {"audio": audio})[0] - ref).max() < 0.2


def test_operators_left_in_float_are_named_with_the_reason():
    """A hand-made graph: a Conv whose weight is dequantized (int8), a MatMul of two
    activations and a Gemm with a float weight (both float, each with its reason)."""
    from onnx import TensorProto, helper, numpy_helper

    from liser_tools.quantize import op_report

    w = numpy_helper.from_array(np.ones((2, 1, 3), np.int8), "w_q")
    s = numpy_helper.from_array(np.ones(2, np.float32), "w_s")
    g = numpy_helper.from_array(np.ones((2, 2), np.float32), "g")
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], name="dq", axis=0),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("MatMul", ["y", "y2"], ["z"], name="attention"),
        helper.make_node("Gemm", ["z", "g"], ["out"], name="head"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [w, s, g])
    report = op_report(helper.make_model(graph), frontend_float=True)
    assert report.int8 == {"Conv": 1}
    assert [(f["name"], f["why"].split(";")[0]) for f in report.float] == [
        ("attention", "no constant weight (a product of two activations)"), ("head", "onnxruntime did not "
                                                                              "quantize it (operator or shape not supported in this mode)")]
    assert any(line.startswith("left in float: MatMul attention") for line in report.lines())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny distilled run (module-scoped: trained once)."""
    from liser_core import run
    from liser_core.testing import TINY_OVERRIDES, TINY_RECIPE

    tmp = tmp_path_factory.mktemp("ondevice")
    recipe = tmp / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    return run(recipe, [*TINY_OVERRIDES, f"run_dir={tmp / 'run'}"], host=HOST)


def test_cli_export_int8_measures_the_runs_test_split(tiny_run, capsys):
    pytest.importorskip("onnxruntime")
    from liser_tools.cli import main

    ckpt = tiny_run.run_dir / "student"
    assert main(["export", str(ckpt), "--format", "onnx", "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "int8/float32: size" in out and "left in float: Conv" in out
    record = json.loads((ckpt / "quantization.json").read_text())
    metrics = json.loads((tiny_run.run_dir / "metrics.json").read_text())["student"]
    # the float32 export scored on the rebuilt test split reproduces the run's own evaluation
    assert record["float32"]["clips"] == metrics["num_clips"]
    assert record["float32"]["uar"] == pytest.approx(metrics["uar"], abs=1e-4)
    assert record["float32"]["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert 0 <= record["int8"]["uar"] <= 1
    assert record["int8"]["bytes"] == (ckpt / "student.int8.onnx").stat().st_size
    assert record["size_ratio"] == pytest.approx(record["int8"]["bytes"] / record["float32"]["bytes"], abs=1e-3)
    assert record["uar_drop_points"] == pytest.approx(100 * (record["float32"]["uar"] - record["int8"]["uar"]), abs=0.01)
    assert "labeled and unlabeled" in record["calibration"]
    assert (ckpt / "student.int8.onnx").is_file() and (ckpt / "student.int8.onnx.json").is_file()
    card = (ckpt / "README.md").read_text()
    assert "## Quantization" in card and f"{record['int8']['uar']:.3f}" in card and "left in float" in card
    assert "names are those of the float32 file" in card
    assert main(["export", str(ckpt), "--format", "torchscript", "--quantize", "int8"]) == 2
    assert "--quantize int8 needs --format onnx" in capsys.readouterr().err


def test_export_replaces_only_its_own_files_and_checks_everything_before_writing(tiny_run, tmp_path, capsys):
    """A file LiSER did not write (or one changed since) is never replaced; options that need
    --quantize, a -o name of another format, or a static int8 without calibration clips are
    refused before anything is written; an int8 export elsewhere leaves the student's record
    and card alone; the int8 file is usable (--backend int8) and pushed with its records."""
    pytest.importorskip("onnxruntime")
    from pathlib import Path

    import soundfile as sf

    from liser_tools.cli import main

    ckpt = tiny_run.run_dir / "student"
    mine = tmp_path / "mine.onnx"
    mine.write_text("precious")
    assert main(["export", str(ckpt), "-o", str(mine)]) == 2
    assert mine.read_text() == "precious" and not (tmp_path / "mine.onnx.json").exists()
    assert "was not written by liser export" in capsys.readouterr().err
    ours = tmp_path / "ours.onnx"
    assert main(["export", str(ckpt), "-o", str(ours)]) == 0 and main(["export", str(ckpt), "-o", str(ours)]) == 0
    meta = json.loads((tmp_path / "ours.onnx.json").read_text())
    assert meta.pop("sha256")
    (tmp_path / "ours.onnx.json").write_text(json.dumps(meta))  # a sidecar of an older LiSER: no digest
    assert main(["export", str(ckpt), "-o", str(ours)]) == 0  # still LiSER's own
    with open(ours, "ab") as f:
        f.write(b"\0")  # changed since LiSER wrote it: a user's now
    assert main(["export", str(ckpt), "-o", str(ours)]) == 2
    capsys.readouterr()
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, says in ((["--quantize-mode", "dynamic"], "--quantize-mode: only with --quantize int8"),
                       (["--calibrate", str(tmp_path)], "--calibrate: only with --quantize int8"),
                       (["-o", str(tmp_path / "x.pte"), "--format", "onnx"], "the suffix .pte names the executorch format, not --format onnx"),
                       (["-o", str(tmp_path / "x.onnx"), "--quantize", "int8", "--calibrate", str(tmp_path / "none")],
                        "no such file or folder")):
        assert main(["export", str(ckpt), *args]) == 2, args
        assert says in capsys.readouterr().err
    lone = tmp_path / "lone"  # a student without its run: no calibration clips
    lone.mkdir()
    for name in ("config.json", "model.safetensors"):
        (lone / name).write_bytes((ckpt / name).read_bytes())
    assert main(["export", str(lone), "--quantize", "int8"]) == 2
    assert "static int8 needs calibration clips" in capsys.readouterr().err
    assert sorted(p.name for p in lone.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "lone"])  # nothing else written
    assert main(["export", str(ckpt), "-o", str(tmp_path / "t.pt")]) == 0  # the format the name says
    assert json.loads((tmp_path / "t.pt.json").read_text())["format"] == "torchscript"

    assert main(["export", str(ckpt), "--quantize", "int8"]) == 0  # the student's own files: replaced, recorded
    kept = {n: (ckpt / n).read_bytes() for n in ("quantization.json", "README.md")}
    assert main(["export", str(ckpt), "--quantize", "int8", "--quantize-mode", "dynamic",
                 "-o", str(tmp_path / "else" / "m.onnx")]) == 0
    assert "not in" in capsys.readouterr().out
    assert {n: (ckpt / n).read_bytes() for n in kept} == kept  # elsewhere: the student's record and card untouched
    # a float export under the int8 name: --backend int8 ran float32 while the card described int8
    assert main(["export", str(ckpt), "-o", str(ckpt / "student.int8.onnx")]) == 2
    assert "a name ending in .int8.onnx is an int8 export's" in capsys.readouterr().err
    import shutil

    from liser_core.export import export_mismatch

    shutil.copy(ckpt / "student.onnx", tmp_path / "float.int8.onnx")
    shutil.copy(ckpt / "student.onnx.json", tmp_path / "float.int8.onnx.json")
    assert "no int8 export" in export_mismatch(ckpt, tmp_path / "float.int8.onnx")
    assert export_mismatch(ckpt, ckpt / "student.int8.onnx") is None  # the real one
    assert json.loads((tmp_path / "else" / "m.int8.onnx.json").read_text())["quantization"]["mode"] == "dynamic"

    wav = tmp_path / "a.wav"
    sf.write(wav, clips(1, seconds=2.0)[0], 16000)
    probs = {}
    for backend in ("int8", "torch"):
        assert main(["predict", str(ckpt), str(wav), "--backend", backend, "--jsonl"]) == 0
        probs[backend] = np.array(list(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["probs"].values()))
    assert abs(probs["int8"].sum() - 1) < 1e-4
    assert 0 < np.abs(probs["int8"] - probs["torch"]).max() < 0.2  # the int8 model ran: close, not the same

    from liser_core.hub import push

    class Api:  # a stand-in that records what would be uploaded
        endpoint = "stand-in"

        def create_repo(self, *a, **k):
            return None

        def upload_folder(self, *, folder_path, allow_patterns, **k):
            self.files = sorted(p.name for p in Path(folder_path).iterdir() if p.name in allow_patterns)
            self.onnx = (Path(folder_path) / "student.onnx").read_bytes()
            return "ok"

    api = Api()
    push(ckpt, "org/name", api=api)
    assert {"student.int8.onnx", "student.int8.onnx.json", "quantization.json", "student.onnx"} <= set(api.files)
    assert api.onnx == (ckpt / "student.onnx").read_bytes()  # liser export's file of these weights: not exported again
    record = json.loads((ckpt / "student.int8.onnx.json").read_text())
    (ckpt / "student.int8.onnx.json").write_text(json.dumps({**record, "weights_sha256": "0" * 64}))  # other weights
    push(ckpt, "org/name", api=api)
    assert "student.onnx" in api.files and not {"student.int8.onnx", "quantization.json"} & set(api.files)
    (ckpt / "student.int8.onnx.json").write_text(json.dumps(record))


def test_exports_and_records_of_other_weights_are_never_used(tiny_run, tmp_path, capsys, caplog):
    """The student trained again in its folder: its ONNX and int8 exports and its quantization
    record describe the weights before. predict/serve refuse them when asked for by name and
    fall back to PyTorch (saying so) when choosing; the card drops the stale section. Weights
    swapped in by hand: loading warns, push refuses. A user's quantization.json and a bad
    calibration file are refused before anything is written."""
    pytest.importorskip("onnxruntime")
    import logging
    import shutil

    import soundfile as sf

    from liser_core.card import model_card, quantization_record
    from liser_core.errors import UsageError
    from liser_core.hub import push
    from liser_tools.cli import main
    from liser_tools.deploy import Predictor

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("student.*onnx*", "quantization.json"))
    ckpt = run / "student"
    (ckpt / "quantization.json").write_text('{"my": "own notes"}')  # the user's file
    assert main(["export", str(ckpt), "--quantize", "int8"]) == 2
    assert "quantization.json: not written by liser export" in capsys.readouterr().err
    assert (ckpt / "quantization.json").read_text() == '{"my": "own notes"}' and not (ckpt / "student.onnx").exists()
    (ckpt / "quantization.json").unlink()
    cal = tmp_path / "cal"
    cal.mkdir()
    sf.write(cal / "a.wav", clips(1)[0], 16000)
    (cal / "b.wav").write_bytes(b"")  # a bad file among good ones: named before the float export is written
    assert main(["export", str(ckpt), "-o", str(tmp_path / "c.onnx"), "--quantize", "int8", "--calibrate", str(cal)]) == 2
    assert "b.wav" in capsys.readouterr().err and not (tmp_path / "c.onnx").exists()

    assert main(["export", str(ckpt), "--quantize", "int8"]) == 0
    assert main(["export", str(ckpt), "--quantize", "int8"]) == 0  # its own record: replaced
    assert quantization_record(ckpt) is not None and "## Quantization" in model_card(run)
    assert Predictor(ckpt, backend="onnx").backend == "onnx"
    student = Student.from_pretrained(ckpt, host=HOST)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01)
    student.save_pretrained(ckpt)  # trained again, saved as a run saves it
    for backend, fix in (("onnx", f"liser export {ckpt})"), ("int8", "--quantize int8)")):
        with pytest.raises(UsageError, match=f"exported from other weights .* export it again .*{re.escape(fix)}"):
            Predictor(ckpt, backend=backend)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert Predictor(ckpt, backend="auto").backend == "torch"  # liser serve's choice: PyTorch, said
    assert "student.onnx not used" in caplog.text
    assert quantization_record(ckpt) is None and "## Quantization" not in model_card(run)
    capsys.readouterr()
    assert main(["export", str(ckpt)]) == 0 and Predictor(ckpt, backend="onnx").backend == "onnx"  # exported again
    meta = json.loads((ckpt / "student.onnx.json").read_text())
    (ckpt / "student.onnx.json").write_text(json.dumps({**meta, "labels": meta["labels"][::-1]}))
    with pytest.raises(UsageError, match="its labels .* are not the student's"):
        Predictor(ckpt, backend="onnx")

    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01)
    student.save_pretrained(other)
    shutil.copy2(other / "model.safetensors", ckpt / "model.safetensors")  # swapped by hand: config.json not
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Student.from_pretrained(ckpt, host=HOST)
    assert "model.safetensors is not the file LiSER saved there" in caplog.text
    with pytest.raises(UsageError, match="is not the file LiSER saved there .* push the folder LiSER wrote"):
        push(ckpt, "org/name", api=object())


def test_int8_export_of_a_run_whose_recipe_was_edited_is_refused_before_writing(tiny_run, tmp_path, capsys):
    """The int8 step scores the run's test split rebuilt from config.yaml and rewrites the card
    from it: edited since the run, both would describe another recipe. Refused, naming the key."""
    pytest.importorskip("onnxruntime")
    import shutil

    import yaml

    from liser_tools.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("student.*onnx*", "quantization.json"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["seed"] = int(cfg["seed"]) + 1
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    before = {p: p.read_bytes() for p in (run / "student").iterdir()}
    assert main(["export", str(run / "student"), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert "config.yaml differs from the recipe the run recorded (state/run.json) at seed" in err
    assert {p: p.read_bytes() for p in (run / "student").iterdir()} == before  # nothing written


# ---------------------------------------------------------------------------------------------
# item 2: streaming
# ---------------------------------------------------------------------------------------------


def test_stream_state_by_hand():
    """A scorer that returns the window's (first sample, length): which samples each hop saw."""
    from liser_core.streaming import StreamRecognizer

    seen = []

    def score(x):
        seen.append((round(100 * float(x[0, 0])), x.shape[1]))  # samples are 0.00, 0.01, ...: each its own index
        return np.array([0.0, 1.0]) if len(seen) % 2 else np.array([1.0, 0.0])

    rec = StreamRecognizer(score, 10, window=1.0, hop=0.3, smoothing=0.5)  # 10 samples, hop 3
    audio = np.arange(17, dtype=np.float32) / 100  # within full scale (samples beyond it are clipped)
    hops = [h for part in np.split(audio, [4, 5, 13]) for h in rec.push(part)] + rec.flush()
    assert [(h.start, h.end) for h in hops] == [(0, 1), (0.3, 1.3), (0.6, 1.6), (0.7, 1.7)]
    assert seen == [(0, 10), (3, 10), (6, 10), (7, 10)]  # the end-aligned window last
    assert len(rec._buffer) <= 10  # the state: one window of samples at most
    assert np.allclose([h.smoothed[1] for h in hops], [1, 0.5, 0.75, 0.375])  # 0.5 prev + 0.5 new
    assert rec.flush() == []


@pytest.mark.parametrize("chunk", [160, 4000, 7919])
def test_stream_equals_offline_windowed_prediction(chunk, tmp_path):
    from liser_tools.deploy import Predictor

    saved_student("logmel_cnn", tmp_path / "student")
    audio = np.concatenate(clips(3, seconds=1.0, seed=5))  # 3.3 s
    predictor = Predictor(tmp_path / "student", window=1.0, hop=0.25)
    spans, offline = predictor.window_probs(audio)
    student = predictor.student
    hops = list(student.stream((audio[i: i + chunk] for i in range(0, len(audio), chunk)), window=1.0, hop=0.25,
                               smoothing=0.0))
    assert [(round(h.start * 16000), round(h.end * 16000)) for h in hops] == spans
    assert np.abs(np.stack([h.probs for h in hops]) - offline.numpy()).max() < 1e-6
    assert all(np.array_equal(h.probs, h.smoothed) for h in hops)  # smoothing 0: none
    again = list(predictor.stream([audio], hop=0.25, smoothing=0.0))  # one chunk, the Predictor's path
    assert np.array_equal(np.stack([h.probs for h in again]), np.stack([h.probs for h in hops]))


def test_stream_chunks_are_read_as_files_are(tmp_path):
    """Student.stream and every stream take float mono chunks: integer PCM and multichannel
    chunks are refused naming what to do, a (n, 1) chunk is mono, samples beyond full scale are
    clipped as a file's are, and a stream too short to score is refused at its end (a torch
    student crashed on 20 ms, an ONNX one scored it)."""
    from liser_core.errors import UsageError

    student = saved_student("logmel_cnn", tmp_path / "student")
    audio = np.concatenate(clips(2, seconds=1.0, seed=5))
    with pytest.raises(UsageError, match="int16 samples: give float samples in .-1, 1. .int16 PCM: divide by 32768"):
        list(student.stream([(audio * 32767).astype(np.int16)]))
    with pytest.raises(UsageError, match=r"shape \(33600, 2\): give mono samples"):
        list(student.stream([np.stack([audio, audio], 1)]))
    mono = [h.probs for h in student.stream([audio])]
    assert np.array_equal(np.stack([h.probs for h in student.stream([audio[:, None]])]), np.stack(mono))
    loud = [h.probs for h in student.stream([audio * 50])]
    clipped = [h.probs for h in student.stream([np.clip(audio * 50, -1, 1)])]
    assert np.array_equal(np.stack(loud), np.stack(clipped))
    with pytest.raises(UsageError, match="the stream ended after 0.02 s: too short to score .at least 0.1 s."):
        list(student.stream([audio[:320]]))


def test_cli_predict_stream(tmp_path, capsys):
    import soundfile as sf

    from liser_tools.cli import main

    saved_student("logmel_cnn", tmp_path / "student")
    audio = np.concatenate(clips(2, seconds=1.0, seed=5))  # 2.1 s: hops end at 1, 1.25, ..., 2, then 2.1
    sf.write(tmp_path / "long.wav", audio, 16000, subtype="FLOAT")
    ckpt = str(tmp_path / "student")
    assert main(["predict", ckpt, str(tmp_path / "long.wav"), "--stream", "--jsonl", "--smoothing", "0"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [(r["start"], r["end"]) for r in rows] == [(0, 1), (0.25, 1.25), (0.5, 1.5), (0.75, 1.75), (1.0, 2.0),
                                                       (1.1, 2.1)]
    student = Student.from_pretrained(ckpt)
    with torch.no_grad():
        ref = torch.softmax(student(torch.from_numpy(audio[4000:20000])[None]).logits, -1)[0]
    assert np.allclose(list(rows[1]["probs"].values()), ref.numpy(), atol=1e-5)
    assert "latency per hop p50" in captured.err and "real-time factor" in captured.err
    assert main(["predict", ckpt, str(tmp_path / "long.wav"), "--stream", "--hop", "2"]) == 2
    assert "--hop 2.0: give a hop in seconds > 0 and at most the window (1 s)" in capsys.readouterr().err
    sf.write(tmp_path / "short.wav", audio[:320], 16000, subtype="FLOAT")  # 20 ms: one line naming it (was a traceback)
    assert main(["predict", ckpt, str(tmp_path / "short.wav"), "--stream"]) == 1  # a file that fails, as offline
    err = capsys.readouterr().err
    assert f"{tmp_path / 'short.wav'}: " in err and "too short to score (at least 0.1 s)" in err and "Traceback" not in err
    for sources, extra, words in (([str(tmp_path / "long.wav")], ["--mic-seconds", "5"], "only with the source `mic`"),
                                  (["mic"], ["--mic-seconds=-3"], "give a duration in seconds > 0")):
        # --mic-seconds on a file was accepted without a word; a negative duration too
        assert main(["predict", ckpt, *sources, "--stream", *extra]) == 2
        assert words in capsys.readouterr().err


def test_websocket_stream_on_a_real_socket(tmp_path):
    """uvicorn on a loopback port, the websockets client: hops as offline, then the summary;
    s16 samples; a bad parameter and a bad message answered with the error and a close code."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    pytest.importorskip("websockets")
    import threading
    import time

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from liser_core.errors import UsageError
    from liser_tools.serve import Service, make_server

    saved_student("logmel_cnn", tmp_path / "student")
    service = Service(tmp_path / "student", backend="torch", max_mb=1.0)
    srv, sock = make_server(service, host="127.0.0.1", port=0)  # as liser serve starts it
    port = sock.getsockname()[1]
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    audio = np.concatenate(clips(2, seconds=1.0, seed=5))  # 2.1 s
    _, offline = service.predictor.__class__(tmp_path / "student", window=1.0, hop=0.25).window_probs(audio)
    try:
        url = f"ws://127.0.0.1:{port}/stream?hop=0.25&window=1&smoothing=0"
        with connect(url, open_timeout=20) as ws:
            for i in range(0, len(audio), 3000):
                ws.send(audio[i: i + 3000].astype("<f4").tobytes())
            ws.send("end")
            messages = []
            while True:
                m = json.loads(ws.recv(timeout=30))
                messages.append(m)
                if m.get("done"):
                    break
        hops, done = messages[:-1], messages[-1]
        assert [(h["start"], h["end"]) for h in hops] == [(0, 1), (0.25, 1.25), (0.5, 1.5), (0.75, 1.75),
                                                          (1.0, 2.0), (1.1, 2.1)]
        got = np.array([[h["probs"][c] for c in service.predictor.classes] for h in hops])
        assert np.abs(got - offline.numpy()).max() < 1e-5
        assert done["hops"] == 6 and done["seconds"] == pytest.approx(2.1) and done["p95_ms"] >= done["p50_ms"] > 0
        with connect(url.replace("f32", "s16") + "&format=s16", open_timeout=20) as ws:
            ws.send((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
            first = json.loads(ws.recv(timeout=30))
        assert np.abs(np.array([first["probs"][c] for c in service.predictor.classes]) - offline[0].numpy()).max() < 0.02
        with connect(f"ws://127.0.0.1:{port}/stream?hop=5", open_timeout=20) as ws:
            assert json.loads(ws.recv(timeout=30)) == {
                "error": "?hop=5.0: give a hop in seconds > 0 and at most the window (1 s)", "status": 400}
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1008
        # a typo, a repeated parameter, a window no stream here can fill, a stream too short to score:
        # each refused naming it (none silently replaced by a default, none a 500)
        for query, says, send in (("?hops=0.5", "?hops: not a /stream parameter", None),
                                  ("?window=1&window=2", "?window is given 2 times", None),
                                  ("?window=1000", "?window=1000: longer than a stream may last here", None),
                                  ("", "the stream ended after 0.000625 s: too short to score", bytes(40))):
            with connect(f"ws://127.0.0.1:{port}/stream{query}", open_timeout=20) as ws:
                if send is not None:
                    ws.send(send)
                    ws.send("end")
                error = json.loads(ws.recv(timeout=30))
                assert error["status"] == 400 and says in error["error"], (query, error)
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=30)
                assert closed.value.rcvd.code == 1008
        import urllib.error
        import urllib.request

        wav = tmp_path / "q.wav"
        import soundfile as sf

        sf.write(wav, audio, 16000)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict?window=0.5", data=wav.read_bytes(),
                                         headers={"Content-Type": "audio/wav"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 400 and "takes no query parameters (got ?window)" in refused.value.read().decode()
        with connect(f"ws://127.0.0.1:{port}/stream", open_timeout=20) as ws:
            ws.send(b"abc")  # 3 bytes: not whole float32 samples
            assert json.loads(ws.recv(timeout=30))["status"] == 400
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1003
        with connect(f"ws://127.0.0.1:{port}/stream", open_timeout=20) as ws:
            ws.send("end")  # no audio at all: nothing measured is null, never NaN (not JSON)
            done = json.loads(ws.recv(timeout=30))
            assert done == {"done": True, "seconds": 0.0, "hops": 0, "p50_ms": None, "p95_ms": None, "rtf": None}
        with connect(f"ws://127.0.0.1:{port}/stream", open_timeout=20) as ws:
            ws.send(b"RIFF\x24\x08\x00\x00WAVEfmt " + bytes(16))  # a whole WAV file instead of raw samples
            error = json.loads(ws.recv(timeout=30))
            assert error["status"] == 400 and "starts like a WAV file" in error["error"]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1003
        with connect(f"ws://127.0.0.1:{port}/stream", open_timeout=20, max_size=None) as ws:
            ws.send(bytes(2**20 + 4))  # over --max-mb 1: refused by the WebSocket layer before it is read whole
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1009
        with pytest.raises(UsageError, match=f"--port {port}: cannot listen there"):
            make_server(service, host="127.0.0.1", port=port)  # taken: one line, before anything is said
    finally:
        srv.should_exit = True
        thread.join(10)


# ---------------------------------------------------------------------------------------------
# item 3: a mobile runtime (ExecuTorch)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["logmel_cnn"])  # ecapa_tdnn and timm_mobile: benchmarks/student_speed.py
def test_executorch_export_runs_in_the_executorch_runtime(name, tmp_path, capsys):
    pytest.importorskip("executorch")
    from executorch.runtime import Runtime

    from liser_tools.cli import main

    student = saved_student(name, tmp_path / "student")
    out = tmp_path / "s.pte"
    assert main(["export", str(tmp_path / "student"), "--format", "executorch", "--window", "1", "-o", str(out)]) == 0
    meta = json.loads((tmp_path / "s.pte.json").read_text())
    assert meta["format"] == "executorch" and meta["window_seconds"] == 1.0 and "XNNPACK" in meta["runtime"]
    # operators outside the delegate, by qualified name ("aten.where.self"), not repr fragments
    assert isinstance(meta["not_delegated"], list)
    assert all(re.fullmatch(r"[a-z_]+\.[A-Za-z0-9_.]+", op) for op in meta["not_delegated"]), meta["not_delegated"]
    assert "aten.where.self" in meta["not_delegated"]  # the length mask runs in the portable kernels
    method = Runtime.get().load_program(str(out)).load_method("forward")
    for audio in clips(2, seconds=1.0, seed=9):
        x = torch.from_numpy(audio[:16000])[None]
        logits, probs = method.execute([x])
        with torch.no_grad():
            ref = student(x).logits
        assert (logits - ref).abs().max() < 1e-4
        assert (probs - torch.softmax(ref, -1)).abs().max() < 1e-5
    assert main(["export", str(tmp_path / "student"), "--format", "onnx", "--window", "1"]) == 2
    assert "--window 1.0: only with --format executorch" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# item 4: float vs int8 in the bench report
# ---------------------------------------------------------------------------------------------


def test_bench_report_shows_float_and_int8_per_student(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from liser_tools.report import _quantized, quantized_markdown

    student_dir = tiny_run.run_dir / "student"
    (student_dir / "quantization.json").unlink(missing_ok=True)  # measured by the report itself
    rows = [{"model": "student", "combination": "student=logmel_cnn,teachers=both", "run_dir": str(tiny_run.run_dir)},
            {"model": "face_cnn", "combination": "student=logmel_cnn,teachers=both", "run_dir": str(tiny_run.run_dir)}]
    got = _quantized(tmp_path, rows, {"student": "student"})
    assert list(got) == ["logmel_cnn"] and not (student_dir / "quantization.json").exists()
    record = got["logmel_cnn"]
    metrics = json.loads((tiny_run.run_dir / "metrics.json").read_text())["student"]
    assert record["float32"]["uar"] == pytest.approx(metrics["uar"], abs=1e-4)
    table = quantized_markdown(got)
    row = next(line for line in table.splitlines() if line.startswith("| logmel_cnn"))
    assert f"| {record['float32']['uar']:.3f} | {record['int8']['uar']:.3f} |" in row
    assert f"{record['size_ratio']:.2f}x" in row
    cached = json.loads((tmp_path / "quantized.json").read_text())[str(student_dir)]
    assert cached == {k: v for k, v in record.items() if k != "row_flags"} and record["row_flags"] == []  # cached


def test_a_quantization_change_is_signed_and_never_minus_zero():
    from liser_core.card import quantization_change

    record = {"uar_drop_points": 0.0, "wa_drop_points": 0.04}
    assert quantization_change(record) == ", UAR +0.0 points, WA +0.0 points"  # not "-0.0"
    record = {"uar_drop_points": -0.8, "wa_drop_points": 1.25}
    assert quantization_change(record) == ", UAR +0.8 points, WA -1.2 points"


def test_predict_and_serve_refuse_the_same_short_inputs_per_backend(tiny_run, tmp_path):
    """A 0.25 s clip: `liser predict` scored it (>= 0.1 s), `liser serve` refused it (>= 0.5 s),
    and --backend onnx scored it though the export's sidecar says inputs of >= 0.5 s. One rule,
    the backend's: 0.1 s for PyTorch, 0.5 s for an ONNX export, in both."""
    pytest.importorskip("onnxruntime")
    import io

    import soundfile as sf

    from liser_core.errors import UsageError
    from liser_tools.deploy import Predictor
    from liser_tools.serve import Service

    ckpt = tiny_run.run_dir / "student"
    if not (ckpt / "student.onnx").is_file() or Predictor(ckpt, backend="auto").backend != "onnx":
        from liser_core.export import export

        export(ckpt, ckpt / "student.onnx")
    rate = 16000
    short = io.BytesIO()
    sf.write(short, (0.1 * np.sin(np.arange(int(0.25 * rate)) / 7)).astype("float32"), rate, format="WAV")
    wav = tmp_path / "short.wav"
    wav.write_bytes(short.getvalue())
    assert Predictor(ckpt, backend="torch").predict(wav).windows >= 1
    assert Service(ckpt, backend="torch").predict(short.getvalue())["label"]
    with pytest.raises(UsageError, match=r"too short \(0.25 s < 0.5 s with the onnx backend\)"):
        Predictor(ckpt, backend="onnx").predict(wav)
    with pytest.raises(UsageError, match=r"the upload: too short \(0.25 s < 0.5 s with the onnx backend\)"):
        Service(ckpt, backend="onnx").predict(short.getvalue())
    with pytest.raises(UsageError, match=r"window 0.25 s \(--window\): the ONNX export .* takes inputs of at least 0.5 s"):
        Predictor(ckpt, backend="onnx", window=0.25)
    assert Predictor(ckpt, backend="auto", window=0.25).backend == "torch"  # the default choice falls back, said

"""Deployment: Student.from_pretrained, windowed prediction, ONNX / TorchScript export."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from liser_core import Student, load_plugins
from liser_core.errors import UsageError
from liser_tools.deploy import Predictor, expand_paths, export, read_audio, windows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny distilled student and its run (module-scoped: trained once)."""
    from liser_core import run
    from liser_core.testing import TINY_OVERRIDES, TINY_RECIPE

    tmp = tmp_path_factory.mktemp("deploy")
    recipe = tmp / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    ctx = run(recipe, [*TINY_OVERRIDES, f"run_dir={tmp / 'run'}"], host=load_plugins())
    return ctx


def test_windows_by_hand():
    assert windows(3, 4) == [(0, 3)]
    assert windows(10, 4) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert windows(11, 4) == [(0, 4), (2, 6), (4, 8), (6, 10), (7, 11)]


def test_from_pretrained_and_config(trained):
    student = Student.from_pretrained(trained.run_dir / "student")
    assert not student.training and student.label_space == trained.label_space
    cfg = json.loads((trained.run_dir / "student" / "config.json").read_text())
    assert cfg["train_seconds"] == pytest.approx(0.5) and cfg["sample_rate"] == 16000


def test_predict_gives_the_evaluation_probabilities(trained, tmp_path):
    clips = trained.corpus.split("test")
    for c in clips:
        sf.write(tmp_path / f"{c.clip_id}.wav", c.audio, c.sample_rate, subtype="FLOAT")
    predictor = Predictor(trained.run_dir / "student")
    files = expand_paths([tmp_path])
    assert [f.stem for f in files] == sorted(c.clip_id for c in clips)
    evaluated = next(e for e in trained.evaluations if e.model == "student")
    expected = dict(zip(evaluated.clip_ids, evaluated.probs))
    for f in files:
        pred = predictor.predict(f)
        assert pred.windows == 1
        assert np.allclose(pred.probs, expected[f.stem].numpy(), atol=1e-5)
        assert pred.label == trained.label_space.classes[int(np.argmax(pred.probs))]


def test_48k_and_16k_inputs_are_both_accepted(trained, tmp_path):
    import torchaudio.functional as AF

    clip = trained.corpus.split("test")[0]
    sf.write(tmp_path / "a16.wav", clip.audio, 16000, subtype="FLOAT")
    up = AF.resample(torch.from_numpy(clip.audio), 16000, 48000).numpy()
    sf.write(tmp_path / "a48.wav", up, 48000, subtype="FLOAT")
    predictor = Predictor(trained.run_dir / "student")
    p16 = np.array(predictor.predict(tmp_path / "a16.wav").probs)
    p48 = np.array(predictor.predict(tmp_path / "a48.wav").probs)
    assert len(read_audio(tmp_path / "a48.wav", 16000)) == len(clip.audio)
    assert np.isclose(p48.sum(), 1, atol=1e-5)
    assert np.abs(p16 - p48).max() < 0.05  # resampling round trip, not bit-exact


def test_long_clips_are_windowed_and_averaged(trained, tmp_path):
    clips = trained.corpus.split("test")[:3]
    long = np.concatenate([c.audio for c in clips])  # 1.5 s, windows of 0.5 s, hop 0.25 s
    sf.write(tmp_path / "long.wav", long, 16000, subtype="FLOAT")
    predictor = Predictor(trained.run_dir / "student")
    pred = predictor.predict(tmp_path / "long.wav")
    assert pred.windows == 5 and pred.seconds == pytest.approx(1.5)
    with torch.no_grad():
        parts = [torch.softmax(predictor.student(torch.from_numpy(long[a:b])[None]).logits, -1)[0]
                 for a, b in windows(len(long), 8000)]
    assert np.allclose(pred.probs, torch.stack(parts).mean(0).numpy(), atol=1e-5)
    whole = Predictor(trained.run_dir / "student", window=0).predict(tmp_path / "long.wav")
    assert whole.windows == 1


def test_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "pointer.wav").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    with pytest.raises(UsageError, match="pointer.wav: cannot decode audio"):
        read_audio(tmp_path / "pointer.wav", 16000)
    with pytest.raises(UsageError, match="no such file"):
        read_audio(tmp_path / "missing.wav", 16000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(UsageError, match="no audio samples"):
        read_audio(tmp_path / "empty.wav", 16000)


def test_video_file_audio_track_is_read(tmp_path):
    av = pytest.importorskip("av")
    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    with av.open(str(tmp_path / "clip.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="fltp", layout="mono")
        frame.rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    audio = read_audio(tmp_path / "clip.mp4", 16000)
    assert abs(len(audio) - 16000) < 2048  # codec priming/padding
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 5


def test_a_stereo_track_in_a_container_is_made_mono_as_a_wav_is(tmp_path):
    """FFmpeg's mono downmix weights each of two channels by 1/sqrt(2): the same stereo samples
    from a .mkv came out 3 dB louder (and clipped) than from a .wav, and the label changed. Both
    paths -- liser predict / serve, and the corpora's decoding -- take the mean of the channels."""
    av = pytest.importorskip("av")
    from liser_plugins.corpora.decode import DecodeSpec
    from liser_plugins.corpora.decode import read_audio as corpus_audio

    rate = 16000
    tone = (0.6 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)).astype(np.float32)
    stereo = np.stack([tone, 0.2 * tone])  # (channels, samples)
    sf.write(tmp_path / "s.wav", stereo.T, rate, subtype="FLOAT")
    with av.open(str(tmp_path / "s.mkv"), "w") as container:
        stream = container.add_stream("pcm_f32le", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(stereo.copy(), format="fltp", layout="stereo")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    expected = stereo.mean(0)
    for path in ("s.wav", "s.mkv"):
        np.testing.assert_allclose(read_audio(tmp_path / path, rate), expected, atol=1e-6, err_msg=path)
        np.testing.assert_allclose(corpus_audio(tmp_path / path, DecodeSpec(sample_rate=rate))[0], expected, atol=1e-6,
                                   err_msg=path)


def test_a_compressed_file_cut_short_is_refused(tmp_path):
    """An MP3 cut in half decoded to half its length without a word (scored, exit 0): refused,
    naming the file, as a truncated WAV is."""
    from liser_plugins.corpora.decode import DecodeSpec, Unusable
    from liser_plugins.corpora.decode import read_audio as corpus_audio

    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000 * 5) / 16000)).astype(np.float32)
    try:
        sf.write(tmp_path / "whole.mp3", tone, 16000, format="MP3")
    except (sf.LibsndfileError, TypeError, ValueError):
        pytest.skip("this libsndfile writes no MP3")
    data = (tmp_path / "whole.mp3").read_bytes()
    (tmp_path / "half.mp3").write_bytes(data[: len(data) // 2])
    assert len(read_audio(tmp_path / "whole.mp3", 16000)) >= 0.9 * len(tone)  # a whole file is read as it is
    with pytest.raises(UsageError, match=r"half.mp3: truncated: its header declares 5.00 s, only"):
        read_audio(tmp_path / "half.mp3", 16000)
    with pytest.raises(Unusable, match="truncated"):
        corpus_audio(tmp_path / "half.mp3", DecodeSpec(sample_rate=16000))


def test_onnx_export_matches_pytorch(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    meta = export(trained.run_dir / "student", tmp_path / "student.onnx", "onnx")
    assert meta["labels"] == list(trained.label_space.classes) and "included" in meta["frontend"]
    assert json.loads((tmp_path / "student.onnx.json").read_text()) == meta
    session = ort.InferenceSession(str(tmp_path / "student.onnx"))
    student = Student.from_pretrained(trained.run_dir / "student")
    g = torch.Generator().manual_seed(1)
    real = torch.from_numpy(np.stack([c.audio for c in trained.corpus.split("test")[:4]]))
    for x in (0.1 * torch.randn(3, 48000, generator=g), 0.1 * torch.randn(1, 12345, generator=g), real):
        logits, probs = session.run(None, {"audio": x.numpy()})
        with torch.no_grad():
            ref = student(x).logits
        assert np.abs(logits - ref.numpy()).max() < 1e-4
        assert np.abs(probs - torch.softmax(ref, -1).numpy()).max() < 1e-4
    import onnx

    nodes = onnx.load(str(tmp_path / "student.onnx")).graph.node
    keys = {p.key for n in nodes for p in n.metadata_props}
    assert keys == {"pkg.torch.onnx.name_scopes"}  # no stack traces, FX text or class hierarchies
    raw = (tmp_path / "student.onnx").read_bytes()
    assert str(Path(torch.__file__).parent).encode() not in raw  # none of this machine's paths


def test_torchscript_export_matches_pytorch(trained, tmp_path):
    export(trained.run_dir / "student", tmp_path / "student.pt", "torchscript")
    scripted = torch.jit.load(str(tmp_path / "student.pt"))
    student = Student.from_pretrained(trained.run_dir / "student")
    for n in (48000, 20000):
        x = 0.1 * torch.randn(2, n)
        with torch.no_grad():
            assert torch.allclose(scripted(x)[0], student(x).logits, atol=1e-4)
    with pytest.raises(UsageError, match="choose onnx, torchscript or executorch"):
        export(trained.run_dir / "student", tmp_path / "x", "tflite")


@pytest.mark.parametrize(("rate", "path"), [(16000, "factored"), (48000, "factored"), (8000, "factored"),
                                            (22050, "dft")])
def test_export_frontend_equals_torchaudio_melspectrogram(rate, path):
    from liser_plugins.frontend import LogMel

    fe = LogMel(rate, 40).eval()
    x = 0.1 * torch.randn(2, int(0.7 * rate) + 3)
    lengths = torch.tensor([x.shape[1], x.shape[1] // 2])
    with torch.no_grad():
        reference, valid = fe(x, lengths)
        whole = torch.log(fe.mel(x) + 1e-6)  # torchaudio's MelSpectrogram on whole clips
        fe.prepare_export()
        assert fe.export_path == path
        exported, valid2 = fe(x, lengths)
        exported_whole = fe.log_mel(x)
    assert exported.shape == reference.shape and torch.equal(valid, valid2)
    assert (exported - reference).abs().max() < 1e-3  # log-mel domain, float32 rounding only
    assert exported_whole.shape == whole.shape and (exported_whole - whole).abs().max() < 1e-3
    if path == "factored":  # two-stage DFT: a few kilobytes of kernels, not n_fft x (n_fft + 2)
        P, Q = fe.dft_factors
        assert P * Q == fe.n_fft and fe.hop % Q == 0
        kernel_bytes = sum(b.numel() * 4 for n, b in fe.named_buffers() if n.startswith("dft_"))
        assert kernel_bytes < fe.n_fft * (fe.n_fft + 2) * 4 / 2  # (mel filterbank included)


@pytest.mark.parametrize(("rate", "path", "buffer"), [(16000, "factored", "dft_stage1"), (22050, "dft", "dft_kernels")])
def test_onnx_constants_compute_the_frontend_kernels(rate, path, buffer):
    """The few ONNX nodes that stand for the DFT kernels in an export give the kernels."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from liser_plugins.frontend import LogMel

    fe = LogMel(rate, 40).eval()
    assert fe.onnx_constants("fe") == ([], [])  # nothing to compute before prepare_export()
    fe.prepare_export()
    assert fe.export_path == path
    nodes, inits = fe.onnx_constants("fe")
    kernel = getattr(fe, buffer)
    out = helper.make_tensor_value_info(f"fe.{buffer}", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", [], [out], inits))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the nodes run, not folded
    computed = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {})[0]
    assert computed.shape == tuple(kernel.shape)
    assert np.abs(computed - kernel.numpy()).max() < 2e-6  # float32 rounding of the sine and cosine
    stored = sum(i.ByteSize() for i in inits) + sum(n.ByteSize() for n in nodes)
    assert stored < kernel.numel() * 4 / 10


def test_mostly_zero_initializers_are_stored_as_values_and_indices():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from liser_core.export import sparsify_initializers

    rng = np.random.default_rng(0)
    sparse = np.where(rng.random((64, 100)) < 0.1, rng.standard_normal((64, 100)), 0).astype(np.float32)
    half = np.where(rng.random((64, 100)) < 0.5, rng.standard_normal((64, 100)), 0).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [100, "n"])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")]
    nodes = [helper.make_node("MatMul", ["w", "x"], ["y"]), helper.make_node("MatMul", ["h", "x"], ["z"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs, [numpy_helper.from_array(sparse, "w"),
                                                                       numpy_helper.from_array(half, "h")]))
    before = len(model.SerializeToString())
    sparsify_initializers(model)
    assert {i.name for i in model.graph.initializer} >= {"h", "w/values", "w/indices"}  # half zeros: stays dense
    assert "w" not in {i.name for i in model.graph.initializer}
    assert len(model.SerializeToString()) < before - 0.6 * sparse.nbytes  # 12 bytes for each of ~10 % of w
    onnx.shape_inference.infer_shapes(model, strict_mode=True)  # plain dense tensors for every tool
    # an initializer that is also a graph input (older IR versions) stays as it is
    listed = helper.make_model(helper.make_graph(nodes, "g", [x, helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 100])],
                                                 outs, [numpy_helper.from_array(sparse, "w"), numpy_helper.from_array(half, "h")]))
    assert "w" in {i.name for i in sparsify_initializers(listed).graph.initializer}
    feed = {"x": rng.standard_normal((100, 3)).astype(np.float32)}
    y, z = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    assert np.array_equal(y, sparse @ feed["x"]) or np.abs(y - sparse @ feed["x"]).max() < 1e-5
    assert np.abs(z - half @ feed["x"]).max() < 1e-5


def test_a_folded_constant_is_restored_only_where_its_subgraph_still_computes_it():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from liser_core.export import restore_constants

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4096, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    ints = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("zero", 0), ("n", 4096), ("one", 1))]
    nodes = [helper.make_node("Range", ["zero", "n", "one"], ["r"]),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("Cos", ["rf"], ["k"])]
    source = helper.make_model(helper.make_graph([*nodes, helper.make_node("Mul", ["k", "x"], ["y"])], "g", [x], [y], ints))
    kernel = np.cos(np.arange(4096, dtype=np.float32))

    def folded(values):  # what onnxruntime's pre-processing leaves: the subgraph as one tensor
        return helper.make_model(helper.make_graph([helper.make_node("Mul", ["k", "x"], ["y"])], "g", [x], [y],
                                                   [numpy_helper.from_array(values, "k")]))

    same = restore_constants(folded(kernel), source)
    assert [n.op_type for n in same.graph.node] == ["Range", "Cast", "Cos", "Mul"]
    assert "k" not in {i.name for i in same.graph.initializer}
    changed = restore_constants(folded(2 * kernel), source)  # e.g. a fusion scaled it, name kept
    assert [n.op_type for n in changed.graph.node] == ["Mul"] and "k" in {i.name for i in changed.graph.initializer}

    # the export's own pass: a module's nodes replace its buffer only where they compute it
    from liser_core.export import compact_constants

    class Module:  # e.g. a subclass whose buffer no longer matches the nodes it inherits
        def onnx_constants(self, name):
            return [helper.make_node(n.op_type, list(n.input), list(n.output), **{
                a.name: helper.get_attribute_value(a) for a in n.attribute}) for n in nodes], ints

    assert [n.op_type for n in compact_constants(folded(2 * kernel), [("m", Module())]).graph.node] == ["Mul"]
    assert [n.op_type for n in compact_constants(folded(kernel), [("m", Module())]).graph.node] == [
        "Range", "Cast", "Cos", "Mul"]


def test_short_names_never_take_a_kept_name():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from liser_core.export import compact_names

    x = helper.make_tensor_value_info("t0", TensorProto.FLOAT, [3])  # an input named like a short name
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    nodes = [helper.make_node("Relu", ["t0"], ["a_long_name"], name="relu"),
             helper.make_node("Neg", ["a_long_name"], ["y"], name="neg")]
    model = compact_names(helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                                            opset_imports=[helper.make_opsetid("", 17)]))
    assert [list(n.output) for n in model.graph.node] == [["t1"], ["y"]] and not any(n.name for n in model.graph.node)
    feed = {"t0": np.array([-1.0, 0.5, 2.0], np.float32)}
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert np.array_equal(out, -np.maximum(feed["t0"], 0))


def test_prepare_export_is_told_the_format_where_its_signature_takes_it():
    from liser_core.export import _Exported

    class Named(torch.nn.Module):
        def prepare_export(self, target="onnx"):
            self.got = target

    class Keywords(torch.nn.Module):
        def prepare_export(self, **options):
            self.got = options

    class Plain(torch.nn.Module):
        def prepare_export(self):
            self.got = "called"

    model = torch.nn.Module()
    model.a, model.b, model.c = Named(), Keywords(), Plain()
    _Exported(model, "executorch")
    assert (model.a.got, model.b.got, model.c.got) == ("executorch", {"target": "executorch"}, "called")


def test_cli_predict_and_export(trained, tmp_path, capsys):
    from liser_tools.cli import main

    clip = trained.corpus.split("test")[0]
    sf.write(tmp_path / "one.wav", clip.audio, 16000, subtype="FLOAT")
    (tmp_path / "broken.wav").write_text("not audio")
    ckpt = str(trained.run_dir / "student")
    assert main(["predict", ckpt, str(tmp_path / "one.wav"), "--jsonl"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    evaluated = next(e for e in trained.evaluations if e.model == "student")
    expected = evaluated.probs[evaluated.clip_ids.index(clip.clip_id)]
    assert np.allclose([row["probs"][c] for c in trained.label_space.classes], expected.numpy(), atol=1e-5)
    assert main(["predict", ckpt, str(tmp_path)]) == 1  # one file could not be decoded
    captured = capsys.readouterr()
    assert "one.wav" in captured.out and "broken.wav: cannot decode audio" in captured.err
    assert main(["predict", ckpt, str(tmp_path / "nothing_here.wav")]) == 2
    # a folder: files that are not audio by name are said, not skipped in silence; readable formats are scored
    mixed = tmp_path / "mixed"
    deep = "_" + "x" * 40  # the last 39 characters of the two clip.wav paths are the same
    for name in (f"a{deep}/clip.wav", f"b{deep}/clip.wav", "c.aiff", "notes.txt"):
        (mixed / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".txt"):
            (mixed / name).write_text("x")
        else:
            sf.write(mixed / name, clip.audio, 16000, format="AIFF" if name.endswith(".aiff") else "WAV")
    assert main(["predict", ckpt, str(mixed)]) == 0
    captured = capsys.readouterr()
    assert "1 file(s) not scored, by name not audio or video (.txt 1)" in captured.err
    rows = [ln.split()[0] for ln in captured.out.splitlines()[1:] if ln.strip() and not ln.startswith("(")]
    assert len(rows) == 3 and len(set(rows)) == 3  # two clip.wav: their whole paths, so that they differ
    assert str(mixed / f"a{deep}" / "clip.wav") in rows
    # digital silence is scored (a label is asked for), and said: its label means nothing
    sf.write(tmp_path / "quiet.wav", np.zeros(16000, np.float32), 16000)
    assert main(["predict", ckpt, str(tmp_path / "quiet.wav")]) == 0
    assert f"{tmp_path / 'quiet.wav'}: silent (RMS 0.0e+00, below 0.0001)" in capsys.readouterr().err
    # --stream: a stream too short to score is named, and the next file is still scored
    sf.write(tmp_path / "tiny.wav", clip.audio[:800], 16000, subtype="FLOAT")
    assert main(["predict", ckpt, str(tmp_path / "tiny.wav"), str(tmp_path / "one.wav"), "--stream", "--jsonl"]) == 1
    captured = capsys.readouterr()
    assert f"liser: error: {tmp_path / 'tiny.wav'}: the stream ended after" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["source"] == str(tmp_path / "one.wav")
    assert main(["export", ckpt, "--format", "torchscript", "-o", str(tmp_path / "s.pt")]) == 0
    out = capsys.readouterr().out
    assert "frontend: included" in out and (tmp_path / "s.pt.json").is_file()


def test_an_export_with_a_fixed_dimension_is_refused_and_its_file_removed(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from liser_core.export import _check_dynamic

    def model(dims):
        x = helper.make_tensor_value_info("audio", TensorProto.FLOAT, dims)
        y = helper.make_tensor_value_info("out", TensorProto.FLOAT, dims)
        return helper.make_model(helper.make_graph([helper.make_node("Identity", ["audio"], ["out"])], "g", [x], [y]))

    path = tmp_path / ".s.onnx.tmp"
    onnx.save(model(["batch", "samples"]), str(path))
    _check_dynamic(onnx.load(str(path)), path, tmp_path / "s.onnx")  # both dynamic: accepted
    assert path.is_file()
    onnx.save(model([2, "samples"]), str(path))
    with pytest.raises(UsageError, match="fixed its batch dimension"):
        _check_dynamic(onnx.load(str(path)), path, tmp_path / "s.onnx")
    assert not path.exists()


def test_exports_of_earlier_weights_left_in_a_student_folder_are_named_when_it_is_saved_again(trained, tmp_path):
    """After `liser run --restart`, student.pt and student.pte of the earlier weights stayed in
    student/ without a word (predict refuses a stale ONNX file, but a TorchScript or ExecuTorch
    file is shipped as it is): the run's warnings name each."""
    import shutil
    import types

    import torch

    from liser_core import Student
    from liser_core.engine import Engine
    from liser_core.export import export

    folder = tmp_path / "student"
    shutil.copytree(trained.run_dir / "student", folder)
    export(folder, folder / "student.pt", "torchscript")
    said: list[str] = []
    fake = types.SimpleNamespace(run=types.SimpleNamespace(warn=said.append))
    Engine._say_stale_exports(fake, folder)
    assert said == []  # made from these weights
    student = Student.from_pretrained(folder)
    with torch.no_grad():
        next(student.parameters()).add_(0.01)
    student.save_pretrained(folder)  # retrained in place
    Engine._say_stale_exports(fake, folder)
    assert len(said) == 1 and f"{folder / 'student.pt'} is an export of earlier weights" in said[0]
    assert "--format torchscript" in said[0]

"""The extra students (``ecapa_tdnn``: SpeechBrain ECAPA-TDNN, ``timm_mobile``: a timm mobile CNN)
and :mod:`liser_common.profile`. Generic student behaviour (shapes, exact checkpoint round trip,
learning) is also covered for them by tests/test_components.py through its TINY options."""

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_components import TINY, make_batch

from liser_common.profile import count_parameters, macs_by_module, macs_per_second
from liser_core import Clip, ClipDataset, Student, UsageError, load_plugins
from liser_core.checkpoint import load_component, save_component
from liser_core.labels import RAVDESS8

HOST = load_plugins()
NEEDS = {"ecapa_tdnn": "speechbrain", "timm_mobile": "timm"}
EXTRA = sorted(NEEDS)


def build(name, **options):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    return HOST.registries.student.build(name, label_space=RAVDESS8, **options)


def tone(seconds, sr, freq=440.0, batch=1):
    t = torch.arange(int(seconds * sr)) / sr
    g = torch.Generator().manual_seed(1)
    return 0.1 * torch.sin(2 * torch.pi * freq * t).expand(batch, -1) + 0.01 * torch.randn(batch, len(t), generator=g)


def trained(name, **options):
    """A student after one training step, so BatchNorm statistics are not the identity."""
    model = build(name, **options)
    batch = make_batch(n=4, seconds=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(batch.audio, batch.lengths).logits, batch.labels % 8).backward()
    opt.step()
    return model.eval()


# --- size and compute -------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXTRA)
def test_default_config_shapes_and_edge_size(name):
    model = build(name).eval()
    with torch.no_grad():
        out = model(tone(1.0, 16000, batch=3), torch.tensor([16000, 12000, 8000]))
        alone = model(tone(1.0, 16000, batch=2))  # lengths omitted: every sample valid
    assert out.logits.shape == (3, 8) and out.embedding.shape == (3, model.embedding_dim)
    assert alone.logits.shape == (2, 8)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.embedding).all()
    # edge-sized: well under a million parameters (ecapa_tdnn ~517k, timm_mobile ~576k)
    assert 100_000 < count_parameters(model) == model.num_parameters() < 1_000_000


@pytest.mark.parametrize("name", [*EXTRA, "logmel_cnn"])
def test_macs_per_second_are_counted_and_scale_with_duration(name):
    model = build(name)
    model.train()
    macs = macs_per_second(model)
    parts = macs_by_module(model)
    assert model.training  # restored
    # the network itself is counted, not only the mel projection of the frontend
    assert macs > 0 and parts["total"] == macs and parts["total"] > 2 * parts["frontend"]
    # a per-second figure: about the same for a 3 s clip (stride-32 CNNs round 101 frames up
    # to 4 steps, 301 to 10: 12 % more per second for 1 s clips)
    assert macs_per_second(model, seconds=3.0) == pytest.approx(macs, rel=0.15)


def test_logmel_cnn_macs_match_a_hand_count():
    """channels [4, 8], 1 s at 16 kHz: 101 frames x 40 mel bands (hop 160, centred STFT)."""
    model = build("logmel_cnn", channels=[4, 8])
    frames, mels, freqs = 16000 // 160 + 1, 40, 400 // 2 + 1
    conv1 = mels * frames * 4 * 1 * 9  # 3x3, 1 -> 4 channels on 40 x 101: 145,440
    conv2 = (mels // 2) * (frames // 2) * 8 * 4 * 9  # after 2x2 pooling, 20 x 50: 288,000
    head = 2 * 8 * len(RAVDESS8)  # Linear(16, 8)
    mel_projection = frames * freqs * mels  # power spectrogram (101 x 201) @ filterbank (201 x 40)
    parts = macs_by_module(model, depth=3)
    # FlopCounterMode counts convolutions and matmuls exactly: tolerance 0.1 %
    assert parts["body.blocks.0"] == pytest.approx(conv1, rel=1e-3)
    assert parts["body.blocks.1"] == pytest.approx(conv2, rel=1e-3)
    assert parts["body"] + parts["head"] == pytest.approx(conv1 + conv2 + head, rel=1e-3)
    assert parts["frontend"] == pytest.approx(mel_projection, rel=1e-3)
    # nothing else: the STFT's FFT and element-wise work are not counted
    assert macs_per_second(model) == pytest.approx(conv1 + conv2 + head + mel_projection, rel=1e-3)


def test_count_parameters_trainable_only():
    model = build("logmel_cnn", channels=[4, 8])
    model.head.requires_grad_(False)
    head = sum(p.numel() for p in model.head.parameters())
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - head


def test_macs_need_a_sample_rate():
    with pytest.raises(ValueError, match="sample_rate"):
        macs_per_second(torch.nn.Linear(4, 4))


# --- behaviour --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXTRA)
def test_padding_barely_changes_a_clip(name):
    model = trained(name)
    audio = tone(1.0, 16000)
    padded = torch.cat([audio, torch.zeros(1, 32000)], 1)
    with torch.no_grad():
        a = model(audio, torch.tensor([16000])).logits
        b = model(padded, torch.tensor([16000])).logits
        c = model(padded, torch.tensor([48000])).logits
    assert (a - b).abs().max() < 0.05 * (a - c).abs().max()


def test_ecapa_forward_matches_speechbrain():
    """ecapa_forward (mask-based, exportable) computes what SpeechBrain's own forward does."""
    from liser_plugins.frontend import time_mask

    model = trained("ecapa_tdnn")
    audio, lengths = tone(1.0, 16000, batch=3), torch.tensor([16000, 11000, 5000])
    with torch.no_grad():
        feats, valid = model.frontend(audio, lengths)
        feats = feats.squeeze(1) * time_mask(feats.squeeze(1), valid)
        # SpeechBrain keeps frame t when t < rel * T: half a frame below `valid` selects `valid` frames
        ref = model.ecapa(feats.transpose(1, 2), (valid - 0.5) / feats.shape[-1]).squeeze(1)
        out = model(audio, lengths).embedding
    assert torch.allclose(out, ref, atol=1e-5)
    assert any(k.startswith("ecapa.blocks.1.se_block.conv1.conv.") for k in model.state_dict())


def test_ecapa_trains_on_a_lone_clip():
    model = build("ecapa_tdnn", **TINY["ecapa_tdnn"]).train()
    before = model.ecapa.asp_bn.norm.running_mean.clone()
    model(tone(0.5, 16000), torch.tensor([8000])).logits.sum().backward()
    assert model.ecapa.asp_bn.training  # put back in training mode
    assert torch.equal(model.ecapa.asp_bn.norm.running_mean, before)  # lone clip: running stats used
    assert model.ecapa.blocks[0].conv.conv.weight.grad is not None


def test_timm_mobile_errors():
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match="did you mean 'mobilenetv3_small_050'"):
        build("timm_mobile", model="mobilenetv3_smal_050")
    with pytest.raises(ValueError, match="may not set"):
        build("timm_mobile", model_kwargs={"in_chans": 3})
    model = build("timm_mobile", model="test_efficientnet", model_kwargs={"drop_rate": 0.5})
    assert model.net.drop_rate == 0.5  # model_kwargs reach timm.create_model


@pytest.mark.parametrize("name, module", [("ecapa_tdnn", "speechbrain.lobes.models.ECAPA_TDNN"), ("timm_mobile", "timm")])
def test_missing_dependency_names_the_extra(name, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(UsageError, match=r"pip install 'liser\[students\]'"):
        HOST.registries.student.build(name, label_space=RAVDESS8)


@pytest.mark.parametrize("name", EXTRA)
def test_default_config_save_load_round_trip_is_exact(name, tmp_path):
    model = trained(name)
    save_component(model, tmp_path / name, kind="student", name=name, options={}, label_space=RAVDESS8)
    loaded = load_component(tmp_path / name, HOST.registries.student, kind="student").eval()
    audio, lengths = tone(0.7, 16000, batch=2), torch.tensor([11200, 9000])
    with torch.no_grad():
        assert torch.equal(model(audio, lengths).logits, loaded(audio, lengths).logits)
        assert torch.equal(model(audio, lengths).embedding, loaded(audio, lengths).embedding)


@pytest.mark.parametrize("name", EXTRA)
def test_48k_audio_through_clip_dataset_and_at_the_students_own_rate(name):
    clip = Clip("c0", tone(1.0, 48000)[0].numpy().astype(np.float32), 48000, "s0", label="happy")
    ds = ClipDataset([clip], RAVDESS8, 16000)
    batch = ds.collate([ds[0]])
    assert batch.audio.shape == (1, 16000) and batch.lengths.tolist() == [16000]
    model = build(name, **TINY[name]).eval()
    with torch.no_grad():
        out16 = model(batch.audio, batch.lengths)
    assert out16.logits.shape == (1, 8) and torch.isfinite(out16.logits).all()

    model48 = build(name, **TINY[name], sample_rate=48000).eval()
    assert model48.sample_rate == 48000
    feats, valid = model48.frontend(tone(1.0, 48000), torch.tensor([48000]))
    assert feats.shape[-1] == 101 and valid.tolist() == [101]  # 10 ms hop at 48 kHz too
    with torch.no_grad():
        out48 = model48(tone(1.0, 48000, batch=2), torch.tensor([48000, 30000]))
    assert out48.logits.shape == (2, 8) and torch.isfinite(out48.logits).all()


# --- ONNX -------------------------------------------------------------------------------------


class _WithLengths(torch.nn.Module):
    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, audio, lengths):
        out = self.student(audio, lengths)
        return out.logits, out.embedding


@pytest.mark.filterwarnings("ignore:# The axis name")  # audio and lengths share the batch axis
@pytest.mark.parametrize("name", EXTRA)
def test_onnx_export_dynamic_batch_and_length(name, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = trained(name, **TINY[name])
    for module in model.modules():  # as liser_tools.deploy.export does
        if hasattr(module, "prepare_export"):
            module.prepare_export()
    wrapper = _WithLengths(model).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    samples = torch.export.Dim("samples", min=8000, max=16000 * 600)
    program = torch.onnx.export(
        wrapper,
        (tone(1.0, 16000, batch=2), torch.tensor([16000, 12000])),
        input_names=["audio", "lengths"],
        output_names=["logits", "embedding"],
        dynamic_shapes={"audio": {0: batch, 1: samples}, "lengths": {0: batch}},
        dynamo=True,
        verbose=False,
    )
    program.save(str(tmp_path / "student.onnx"))
    session = ort.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(3)
    cases = [
        (tone(3.0, 16000, batch=1), torch.tensor([48000])),  # a 3 s clip
        (0.1 * torch.randn(3, 21937, generator=g), torch.tensor([21937, 15000, 9001])),  # random, padded
    ]
    for audio, lengths in cases:
        with torch.no_grad():
            ref = wrapper(audio, lengths)
        got = session.run(None, {"audio": audio.numpy(), "lengths": lengths.numpy()})
        for r, o in zip(ref, got):
            assert o.shape == tuple(r.shape)
            np.testing.assert_allclose(o, r.numpy(), atol=1e-4, rtol=0)


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name, rate", [("ecapa_tdnn", 16000), ("timm_mobile", 48000)])
def test_run_tiny_end_to_end(name, rate, run_tiny):
    pytest.importorskip(NEEDS[name])
    ctx = run_tiny(
        overrides=[
            f"student.name={name}",
            f"student.options={json.dumps(TINY[name])}",
            f"data.options.sample_rate={rate}",  # 48 kHz clips resampled to the student's 16 kHz
        ]
    )
    assert ctx.corpus.split("labeled")[0].sample_rate == rate
    result = ctx.results()["student"]
    assert 0.0 <= result["uar"] <= 1.0
    loaded = Student.from_pretrained(ctx.run_dir / "student", host=HOST)
    assert type(loaded) is type(ctx.student) and loaded.sample_rate == 16000
    audio = tone(0.5, 16000, batch=2)
    with torch.no_grad():
        assert torch.equal(loaded(audio).logits, ctx.student.eval()(audio).logits)


def test_ecapa_export_pads_without_gathers_and_computes_the_same():
    """prepare_export: SpeechBrain's zero-width reflection pads go; for ExecuTorch the others
    become one-frame slices, so ECAPA has no pad operator (ExecuTorch decomposes each into an
    index gather outside the XNNPACK delegate); for ONNX they stay one Pad each. The numbers are
    the same bits in both."""
    pytest.importorskip("speechbrain")
    model = trained("ecapa_tdnn", **TINY["ecapa_tdnn"]).eval()
    x, lengths = tone(1.3, 16000, batch=3), torch.tensor([20800, 15000, 9000])

    def pads(m) -> list[str]:  # pad operators in ECAPA (not the frontend's one on the waveform)
        with torch.no_grad():
            graph = torch.export.export(m, (x,)).graph
        return [str(n.target) for n in graph.nodes if n.op == "call_function" and "pad" in str(n.target)
                and "ecapa" in str(list(n.meta.get("nn_module_stack", {}).values())[-1:])]

    with torch.no_grad():
        before = model(x, lengths).logits
    every = pads(model)
    from speechbrain.nnet.CNN import Conv1d

    widths = [c.kernel_size for c in model.ecapa.modules() if isinstance(c, Conv1d)]
    assert len(every) == len(widths) > 0  # the check can fail: SpeechBrain pads every convolution
    for target, expected in (("onnx", sum(k > 1 for k in widths)), ("executorch", 0)):
        model.prepare_export(target=target)
        with torch.no_grad():
            after = model(x, lengths).logits
        assert torch.equal(before, after), target
        assert len(pads(model)) == expected < len(every), target

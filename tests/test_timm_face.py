"""timm_face: tiny randomly initialised real timm architectures, saved as safetensors and loaded
through the path a recipe takes (registry build with ``checkpoint=<file>``)."""

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from liser_core import Batch, ConfigError, load_plugins
from liser_core.checkpoint import WEIGHTS_NAME, load_component, save_component
from liser_core.engine import build_component
from liser_core.errors import UsageError
from liser_core.labels import AFFECTNET8, RAVDESS8

HOST = load_plugins()
TEACHERS = HOST.registries.teacher

#: one CNN (timm's ResNet with few channels) and one ViT (vit_tiny with 2 blocks of width 48)
ARCHS = {
    "cnn": {"model": "test_resnet", "image_size": 48},
    "vit": {"model": "vit_tiny_patch16_224", "model_kwargs": {"img_size": 64, "embed_dim": 48, "depth": 2, "num_heads": 2}},
}


def timm_model(arch: str, num_classes: int = 1000):
    o = ARCHS[arch]
    return timm.create_model(o["model"], pretrained=False, num_classes=num_classes, **o.get("model_kwargs", {}))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """{arch: (path of an ImageNet-style checkpoint, its state dict)} and 8-class AffectNet heads."""
    root = tmp_path_factory.mktemp("timm_weights")
    out = {}
    torch.manual_seed(0)
    for arch in ARCHS:
        for name, classes in (("imagenet", 1000), ("affectnet", 8)):
            sd = timm_model(arch, classes).state_dict()
            path = root / f"{arch}_{name}.safetensors"
            save_file(sd, str(path))
            out[arch, name] = (str(path), sd)
    return out


def options(arch, weights, which="imagenet", **more):
    return {**ARCHS[arch], "checkpoint": weights[arch, which][0], **more}


def build(opts, label_space=RAVDESS8):
    # exactly what the engine does with a recipe's teachers[i].options
    return build_component(TEACHERS, "timm_face", opts, "teachers.0.options", label_space=label_space)


def make_batch(n=4, t=4, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 8
    # a learnable signal: brightness by class, plus noise (the LBP cascade finds no face here)
    frames = 0.6 * torch.rand(n, t, size, size, generator=g) + labels[:, None, None, None] / 20
    return Batch(
        audio=torch.zeros(n, 160), lengths=torch.full((n,), 160), sample_rate=16000, labels=labels,
        clip_ids=[f"clip{i}" for i in range(n)], index=torch.arange(n), frames=frames,
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_head_over_the_corpus_classes(arch, weights):
    teacher = build(options(arch, weights)).eval()
    with torch.no_grad():
        out = teacher(make_batch())
    assert out.logits.shape == (4, len(RAVDESS8))
    assert out.embedding.shape == (4, teacher.embedding_dim)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.embedding).all()
    assert teacher.label_space == RAVDESS8 and not teacher.pretrained and teacher.fittable
    assert teacher.checkpoint_exclude == ("backbone.",)
    assert {n.split(".")[0] for n, p in teacher.named_parameters() if p.requires_grad} == {"head"}
    card = teacher.card
    assert (card.backbone, card.label_space, card.modality) == (ARCHS[arch]["model"], "ravdess8", "face")
    assert card.source == weights[arch, "imagenet"][0]
    # the backbone holds exactly the checkpoint's weights (its 1000-class head left out)
    sd = weights[arch, "imagenet"][1]
    for k, v in teacher.backbone.state_dict().items():
        assert torch.equal(v, sd[k]), k


@pytest.mark.parametrize("arch", ARCHS)
def test_pretrained_head_is_used_as_is(arch, weights):
    teacher = build(options(arch, weights, "affectnet", labels="affectnet8"))
    assert teacher.pretrained and not teacher.fittable and teacher.label_space == AFFECTNET8
    assert not teacher.trainable_parameters()
    batch = make_batch()
    reference = timm_model(arch, 8)
    reference.load_state_dict(weights[arch, "affectnet"][1])
    reference.eval()
    teacher.train()  # even in train mode a pretrained teacher's network stays in eval mode
    with torch.no_grad():
        out = teacher(batch)
        crops, kept, k = teacher.faces(batch.frames, batch.clip_ids)
        z = reference((crops - teacher.mean) / teacher.std).reshape(4, k, 8)
    expected = torch.softmax(z, -1).mean(1)
    assert torch.allclose(torch.softmax(out.logits, -1), expected, atol=1e-5)


def test_mean_and_attention_aggregation(weights):
    mean_t = build(options("vit", weights)).eval()
    att_t = build(options("vit", weights, aggregate="attention")).eval()
    assert att_t.trainable_parameters() and any(n.startswith("attention.") for n, _ in att_t.named_parameters())
    still = make_batch(n=2)
    still.frames = still.frames[:, :1].expand(-1, 4, -1, -1).contiguous()  # 4 identical frames
    moving = make_batch(n=2)
    with torch.no_grad():
        m_still, a_still = mean_t(still), att_t(still)
        m_mov, a_mov = mean_t(moving), att_t(moving)
        crops, _, k = mean_t.faces(moving.frames, moving.clip_ids)
        feats, _ = mean_t._features((crops - mean_t.mean) / mean_t.std)
        per_frame = mean_t.head(feats).reshape(2, k, -1)
    # identical frames: whatever the attention weights, the clip embedding is the frame's
    assert torch.allclose(m_still.embedding, a_still.embedding, atol=1e-5)
    # mean: log of the mean per-frame distribution; attention: a weighted (not uniform) average
    assert torch.allclose(torch.softmax(m_mov.logits, -1), torch.softmax(per_frame, -1).mean(1), atol=1e-5)
    assert torch.allclose(m_mov.embedding, feats.reshape(2, k, -1).mean(1), atol=1e-5)
    assert not torch.allclose(m_mov.embedding, a_mov.embedding, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_fitting_the_head_leaves_the_frozen_backbone_unchanged(arch, weights):
    torch.manual_seed(0)
    teacher = build(options(arch, weights, aggregate="attention", frames=2))
    before = {k: v.clone() for k, v in teacher.backbone.state_dict().items()}
    batch = make_batch(n=8)
    opt = torch.optim.Adam(teacher.trainable_parameters(), lr=0.1)  # random features are small
    losses = []
    for _ in range(15):
        teacher.train()
        loss = F.cross_entropy(teacher(batch).logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    after = teacher.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics


@pytest.mark.parametrize("freeze", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_is_exact(arch, freeze, weights, tmp_path):
    opts = options(arch, weights, aggregate="attention", freeze_backbone=freeze)
    teacher = build(opts)
    batch = make_batch()
    teacher.train()
    opt = torch.optim.SGD(teacher.trainable_parameters(), lr=0.1)
    F.cross_entropy(teacher(batch).logits, batch.labels).backward()
    opt.step()  # head (and, unfrozen, backbone and its BatchNorm statistics) now differ from a fresh build
    teacher.eval()
    save_component(teacher, tmp_path / "t", kind="teacher", name="timm_face", options=opts, label_space=RAVDESS8)
    saved = load_file(str(tmp_path / "t" / WEIGHTS_NAME))
    has_backbone = any(k.startswith("backbone.") for k in saved)
    assert has_backbone == (not freeze)  # a frozen backbone comes back from `checkpoint`
    assert ("source_sha256" in saved) == freeze
    loaded = load_component(tmp_path / "t", TEACHERS, kind="teacher").eval()
    with torch.no_grad():
        a, b = teacher(batch), loaded(batch)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.embedding, b.embedding)
    assert loaded.label_space == RAVDESS8


def test_reload_refuses_a_changed_backbone_file(weights, tmp_path):
    path = tmp_path / "backbone.safetensors"
    save_file(timm_model("vit").state_dict(), str(path))
    opts = {**ARCHS["vit"], "checkpoint": str(path)}
    save_component(build(opts), tmp_path / "t", kind="teacher", name="timm_face", options=opts, label_space=RAVDESS8)
    save_file(timm_model("vit").state_dict(), str(path))  # other weights under the same name
    with pytest.raises(UsageError, match="differs from the one the checkpoint was saved with"):
        load_component(tmp_path / "t", TEACHERS, kind="teacher")


def test_pytorch_files_are_read_without_unpickling_code(weights, tmp_path):
    sd = weights["vit", "imagenet"][1]
    safe = tmp_path / "nested.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, safe)
    teacher = build({**ARCHS["vit"], "checkpoint": str(safe)})
    assert torch.equal(teacher.backbone.pos_embed, sd["pos_embed"])

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": sd, "payload": Evil()}, evil)
    with pytest.raises(ConfigError, match="cannot read .* safely"):
        build({**ARCHS["vit"], "checkpoint": str(evil)})


def test_option_errors_are_config_errors(weights):
    with pytest.raises(ConfigError, match=r"teachers\.0\.options.*wrong shape"):
        build(options("cnn", weights, "imagenet", labels="affectnet8"))  # a 1000-class head
    with pytest.raises(ConfigError, match="give checkpoint too"):
        build({**ARCHS["cnn"], "labels": "fer2013_7"})
    with pytest.raises(ConfigError, match="aggregate 'attention'"):
        build(options("cnn", weights, "affectnet", labels="affectnet8", aggregate="attention"))
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build({"model": "resnet81"})
    with pytest.raises(ConfigError, match="unknown label space"):
        build(options("cnn", weights, "affectnet", labels="afectnet8"))
    with pytest.raises(ConfigError, match="does not exist"):
        build({**ARCHS["cnn"], "checkpoint": "/nonexistent/weights.safetensors"})


def test_recipe_end_to_end(run_tiny, weights):
    opts = json.dumps(options("cnn", weights))  # JSON is YAML
    ctx = run_tiny(overrides=[f"teachers=[{{name: timm_face, options: {opts}, fit: {{epochs: 1, batch_size: 8}}}}]"])
    assert set(ctx.results()) == {"timm_face", "student"}
    counts = ctx.diagnostics["no_face_clips"]["timm_face"]
    assert set(counts) == {"teach", "label", "evaluate"}
    n_test = len(ctx.corpus.split("test"))
    assert counts["evaluate"]["clips"] == n_test and 0 <= counts["evaluate"]["no_face"] <= n_test
    assert counts["teach"]["clips"] == len(ctx.corpus.split("teacher"))
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["diagnostics"]["no_face_clips"]["timm_face"] == counts
    saved = ctx.run_dir / "teachers" / "timm_face"
    assert not any(k.startswith("backbone.") for k in load_file(str(saved / WEIGHTS_NAME)))
    reloaded = load_component(saved, TEACHERS, kind="teacher").eval()
    batch = make_batch()
    with torch.no_grad():
        assert torch.equal(reloaded(batch).logits, ctx.teachers["timm_face"].eval()(batch).logits)

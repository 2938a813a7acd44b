"""Plugin API, second edition: self-fitting teachers, combiner and augmentation registries."""

from __future__ import annotations

import math

import pytest
import torch

from liser_core import (
    Augmentation,
    Combiner,
    Loss,
    ModelOutput,
    Teacher,
    TeacherCard,
    hookimpl,
    load_plugins,
)
from liser_core.labels import LabelSpace, combine


# -- Teacher.fit: a teacher that fits itself ------------------------------------------------------
class CentroidTeacher(Teacher):
    """Two hand-made features (log energy, zero-crossing rate), nearest class centroid."""

    modality = "audio"
    sample_rate = 16000
    embedding_dim = 2
    fits = 0  # calls of fit, across instances

    def __init__(self, label_space: LabelSpace):
        super().__init__()
        self.label_space = label_space
        self.register_buffer("centroids", torch.zeros(len(label_space), 2))
        self.card = TeacherCard(name="centroid", modality="audio", backbone="features", label_space=label_space.name)

    def features(self, batch):
        valid = torch.arange(batch.audio.shape[1])[None] < batch.lengths[:, None]
        x = batch.audio * valid
        energy = (x.pow(2).sum(1) / batch.lengths).clamp_min(1e-10).log()
        zcr = ((x[:, 1:] * x[:, :-1]) < 0).float().sum(1) / batch.lengths
        return torch.stack([energy, 100 * zcr], 1)

    def forward(self, batch):
        f = self.features(batch)
        return ModelOutput(-torch.cdist(f, self.centroids), f)

    def fit(self, dataset, *, config, device, seed):
        type(self).fits += 1
        feats, labels = [], []
        for batch in dataset.loader(config.batch_size):
            feats.append(self.features(batch))
            labels.append(batch.labels)
        f, y = torch.cat(feats), torch.cat(labels)
        for c in range(len(self.label_space)):
            if (y == c).any():
                self.centroids[c] = f[y == c].mean(0)
        return {"clips": len(y)}


def _host_with(**components):
    host = load_plugins()
    for kind, (name, factory) in components.items():
        host.registries[kind].register(name, factory)
    return host


def test_a_teacher_with_fit_fits_itself_instead_of_the_gradient_loop(run_tiny, tmp_path, caplog):
    CentroidTeacher.fits = 0
    host = _host_with(teacher=("centroid", CentroidTeacher))
    store = tmp_path / "store"
    over = ["teachers=[{name: centroid, fit: {epochs: 3, batch_size: 8}}]", f"store={store}"]
    with caplog.at_level("INFO", "liser"):
        ctx = run_tiny(overrides=over, host=host)
    assert CentroidTeacher.fits == 1
    assert "fitted itself on" in caplog.text and "teacher centroid epoch" not in caplog.text
    teacher = ctx.teachers["centroid"]
    assert teacher.centroids.abs().sum() > 0  # fitted: the centroids are the class means
    # its fit is saved with the run (safetensors), reloads to the same centroids
    from liser_core import checkpoint

    loaded = checkpoint.load_component(ctx.run_dir / "teachers" / "centroid", host.registries.teacher, kind="teacher")
    torch.testing.assert_close(loaded.centroids, teacher.centroids)
    # the same fit set again, in another run: reused from the store, not fitted again
    ctx2 = run_tiny(overrides=[*over, f"run_dir={tmp_path / 'run2'}"], host=host)
    assert CentroidTeacher.fits == 1
    assert ctx2.diagnostics["teacher_fits"]["centroid"]["reused"] is True
    torch.testing.assert_close(ctx2.teachers["centroid"].centroids, teacher.centroids)


# -- combiners -----------------------------------------------------------------------------------
def test_first_party_combiners_are_labels_combine():
    host = load_plugins()
    g = torch.Generator().manual_seed(0)
    probs = [torch.softmax(torch.randn(4, 3, generator=g), -1) for _ in range(2)]
    reached = [torch.tensor([True, True, True]), torch.tensor([True, False, True])]
    for name in ("per_class", "arithmetic", "geometric"):
        got = host.registries.combiner.build(name)(probs, [0.3, 0.7], reached)
        torch.testing.assert_close(got, combine(probs, [0.3, 0.7], reached, name))


class MaxCombiner(Combiner):
    """Per class, the largest probability any teacher gives it, renormalised."""

    def __init__(self, power: float = 1.0):
        self.power = power

    def __call__(self, probs, weights, reached):
        m = torch.stack(probs).amax(0) ** self.power
        return m / m.sum(-1, keepdim=True)


def test_a_plugin_combiner_makes_the_targets_the_student_learns(run_tiny):
    host = _host_with(combiner=("max", MaxCombiner))
    ctx = run_tiny(overrides=["distil.combination=max", "distil.combination_options={power: 2.0}"], host=host)
    t = ctx.targets
    keys = list(t.logits)
    probs = [t.label_maps[k].project(torch.softmax(t.logits[k].float(), -1)) for k in keys]
    m = torch.stack(probs).amax(0) ** 2
    want = m / m.sum(-1, keepdim=True)
    got = t.batch(torch.arange(len(want)), torch.device("cpu")).probs(1.0)
    torch.testing.assert_close(got, want)
    assert ctx.results()["targets"]  # the targets row is the max combination's


def test_an_unknown_combiner_or_option_is_a_usage_error_naming_the_key(run_tiny):
    from liser_core.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        run_tiny(overrides=["distil.combination=maximum"])
    assert e.value.key == "distil.combination" and "per_class" in str(e.value)
    with pytest.raises(ConfigError) as e:
        run_tiny(overrides=["distil.combination_options={temperature: 2}"])
    assert e.value.key == "distil.combination_options.temperature"


# -- augmentations -------------------------------------------------------------------------------
def test_gain_scales_by_the_decibels_asked_for():
    from liser_plugins.augment import Gain

    x = torch.randn(3, 800)
    y, n = Gain(db=[6.0, 6.0])(x, torch.tensor([800, 400, 100]))
    torch.testing.assert_close(y, x * 10 ** (6 / 20))
    assert n.tolist() == [800, 400, 100]


def test_noise_is_added_at_the_snr_asked_for_on_valid_samples_only():
    from liser_plugins.augment import Noise

    torch.manual_seed(0)
    x = torch.zeros(2, 16000)
    x[:, :8000] = torch.sin(torch.arange(8000) / 5.0)
    lengths = torch.tensor([8000, 8000])
    y, _ = Noise(snr_db=[12.0, 12.0])(x, lengths)
    noise = y - x
    assert noise[:, 8000:].abs().max() == 0  # padding untouched
    snr = 10 * torch.log10(x[:, :8000].pow(2).sum(1) / noise[:, :8000].pow(2).sum(1))
    torch.testing.assert_close(snr, torch.tensor([12.0, 12.0]), atol=1e-3, rtol=0)


def test_speed_changes_lengths_by_the_factor_and_time_mask_zeroes_spans():
    from liser_plugins.augment import Speed, TimeMask

    x, lengths = torch.randn(2, 16000), torch.tensor([16000, 8000])
    y, n = Speed(factors=[1.25])(x, lengths)
    assert n.tolist() == [math.ceil(16000 / 1.25), math.ceil(8000 / 1.25)] and y.shape[1] == n.max()
    torch.manual_seed(1)
    z, _ = TimeMask(max_seconds=0.05, masks=2)(torch.ones(4, 16000), torch.full((4,), 16000))
    zeros = (z == 0).sum(1)
    assert (zeros <= 2 * 800).all() and zeros.sum() > 0


class Counting(Augmentation):
    calls = 0
    training_calls = 0

    def __init__(self, sample_rate: int = 16000):
        super().__init__()

    def forward(self, audio, lengths):
        from liser_core.preflight import probing

        type(self).calls += not probing()  # the preflight probe's call is not a training step
        return audio * 0.5, lengths


def test_augmentations_run_on_student_training_batches_only(run_tiny, caplog):
    Counting.calls = 0
    host = _host_with(augmentation=("counting", Counting))
    with caplog.at_level("INFO", "liser"):
        ctx = run_tiny(overrides=["distil.augment=[{name: counting}]", "distil.batch_size=4", "distil.epochs=2"], host=host)
    n_distil = len(ctx.split("unlabeled")) + len(ctx.split("labeled"))
    steps = 2 * (n_distil // 4 + (1 if n_distil % 4 > 1 else 0))
    assert Counting.calls == steps  # every distil step, never in labeling or evaluation


def test_bad_augmentation_options_are_refused_before_anything_runs(run_tiny, tmp_path):
    from liser_core.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        run_tiny(overrides=["distil.augment=[{name: gain, options: {db: [6, -6]}}]"])
    assert e.value.key == "distil.augment.0.options" and "not a range" in str(e.value)
    with pytest.raises(ConfigError) as e:
        run_tiny(overrides=["distil.augment=[{name: gian}]"])
    assert e.value.key == "distil.augment.0.name" and "gain" in str(e.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    # a fixed gain or SNR is one number, as the factories take it (it was refused as not a list)
    from liser_core import load_plugins
    from liser_core.engine import prepare_config

    cfg = prepare_config("recipes/synth_kd.yaml", ["distil.augment=[{name: gain, options: {db: 3}}, "
                                                   "{name: noise, options: {snr_db: 20}}]"], load_plugins())
    assert cfg.distil.augment[0].options.db == 3


# -- discoverability -----------------------------------------------------------------------------
def test_show_prints_options_with_types_defaults_and_the_docstring(capsys):
    from liser_tools.cli import main

    assert main(["show", "dkd"]) == 0
    out = capsys.readouterr().out
    assert "loss dkd" in out and "plugin: losses" in out
    assert "warmup       int    = 20" in out and "temperature  float  = 4.0" in out
    assert "Decoupled knowledge distillation" in out  # the docstring
    assert main(["show", "augmentation:gain"]) == 0
    out = capsys.readouterr().out
    assert "db  float | Sequence[float]  = (-6.0, 6.0)" in out and "set by LiSER: sample_rate" in out
    assert main(["show", "dkdd"]) == 2
    assert "did you mean 'dkd'" in capsys.readouterr().err
    assert main(["list", "losses", "d*", "-v"]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "beta" in out and "Zhao et al." in out


def _module(src, name: str, loss: str):
    (src / f"{name}.py").write_text(
        "from liser_core import hookimpl\nfrom liser_plugins.losses import CrossEntropy\n\n"
        f"@hookimpl\ndef liser_register_losses(registry):\n    registry.register({loss!r}, CrossEntropy)\n"
    )


def test_a_plugin_name_declared_by_two_packages_is_listed_as_shadowed(fake_distribution, tmp_path, monkeypatch, capsys):
    from liser_tools.cli import main

    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    _module(src, "dup_one", "ce_one")
    _module(src, "dup_two", "ce_two")
    fake_distribution("pkg-one", {"dup": "dup_one"}, path=src)
    fake_distribution("pkg-two", {"dup": "dup_two"}, path=src)  # first on sys.path: it wins
    host = load_plugins()
    dup = [p for p in host.plugins if p.name == "dup"]
    assert sorted(p.status for p in dup) == ["loaded", "shadowed"]
    assert "ce_two" in host.registries.loss and "ce_one" not in host.registries.loss
    shadowed = next(p for p in dup if p.status == "shadowed")
    assert shadowed.distribution == "pkg-one" and "pkg-two" in shadowed.error
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "shadowed" in out and "pkg-one" in out
    from liser_tools.show import describe

    assert "plugin: dup (pkg-two " in describe(host, "loss", "ce_two")  # the package that provides it, not the shadowed one


def test_a_run_using_a_shadowed_plugins_name_records_which_package_ran(fake_distribution, run_tiny, tmp_path,
                                                                      monkeypatch):
    """The shadowing was said when plugins loaded, but not in the run's record: a recipe naming
    `dup:ce_two` ran pkg-two's code with no word in metrics.json of pkg-one also declaring `dup`."""
    import json

    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    _module(src, "dup_one", "ce_one")
    _module(src, "dup_two", "ce_two")
    fake_distribution("pkg-one", {"dup": "dup_one"}, path=src)
    fake_distribution("pkg-two", {"dup": "dup_two"}, path=src)  # first on sys.path: loaded
    ctx = run_tiny(overrides=["distil.losses=[{name: kl}, {name: 'dup:ce_two', weight: 0.5}]"], host=load_plugins())
    warnings = json.loads((ctx.run_dir / "metrics.json").read_text())["warnings"]
    assert any(w.startswith("distil.losses.1: plugin 'dup' is declared by pkg-two 0.0.1 (loaded, whose code runs) "
                            "and by pkg-one 0.0.1 (shadowed, not loaded)") for w in warnings), warnings
    plain = run_tiny(overrides=[f"run_dir={tmp_path / 'plain'}"], host=load_plugins())  # dup not used: nothing said
    assert not any("shadowed" in w for w in json.loads((plain.run_dir / "metrics.json").read_text())["warnings"])


def test_the_same_package_faked_over_an_installed_copy_loads_the_fake(fake_distribution, tmp_path, monkeypatch):
    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    old, new = tmp_path / "old", tmp_path / "new"
    for d, loss in ((old, "ce_old"), (new, "ce_new")):
        d.mkdir()
        _module(d, "twice_mod", loss)
    fake_distribution("pkg-twice", {"twice": "twice_mod"}, version="1.0", path=old)  # "installed"
    assert "ce_old" in load_plugins().registries.loss
    fake_distribution("pkg-twice", {"twice": "twice_mod"}, version="2.0", path=new)  # the copy under test
    host = load_plugins()
    info = next(p for p in host.plugins if p.name == "twice")
    assert (info.status, info.version) == ("loaded", "2.0")
    assert "ce_new" in host.registries.loss and "ce_old" not in host.registries.loss
    assert not [p for p in host.plugins if p.status == "shadowed"]


# -- validation and early stopping ---------------------------------------------------------------
def _toy_loop(tmp_path, scores, *, patience=2, restore=True, stop_at_step=None, epochs=6):
    """A linear model trained on noise; `validate` returns the scripted UAR of each epoch."""
    from liser_common.trainstate import Checkpointer
    from liser_core.config import EarlyStopConfig, TrainConfig
    from liser_core.data import Batch
    from liser_core.training import train

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(24, 4), torch.randint(0, 3, (24,))
    after_epoch, calls = [], {"validate": 0, "step": 0}

    def step(batch):
        calls["step"] += 1
        if stop_at_step is not None and calls["step"] == stop_at_step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)
        loss = torch.nn.functional.cross_entropy(model(batch.audio), batch.labels)
        return loss, {"ce": loss.detach()}

    def loader(epoch, skip):
        order = torch.randperm(24, generator=torch.Generator().manual_seed(epoch)).tolist()
        chunks = [order[i : i + 8] for i in range(0, 24, 8)][skip:]
        return [Batch(audio=x[c], lengths=torch.full((len(c),), 4), sample_rate=1, labels=y[c], clip_ids=[],
                      index=torch.tensor(c)) for c in chunks]

    def validate():
        calls["validate"] += 1
        torch.rand(5)  # draws inside validation must not change training's draws
        return {"uar": scores[len(after_epoch)], "loss": 1.0}

    def on_epoch_end(epoch, metrics, replayed=False):  # epochs done before a resume are replayed
        after_epoch.append(None if replayed else model.weight.detach().clone())

    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=0.05,
                      early_stop=EarlyStopConfig(metric="uar", patience=patience, restore_best=restore))
    hist = train([model], step, loader, 3, cfg, device=torch.device("cpu"), name="toy", validate=validate,
                 on_epoch_end=on_epoch_end, checkpointer=Checkpointer(tmp_path / "ckpt"))
    return model, hist, after_epoch, calls


def test_early_stop_keeps_the_best_epoch_and_stops_after_patience(tmp_path):
    scores = [0.5, 0.7, 0.6, 0.65, 0.9, 0.95]
    model, hist, after_epoch, calls = _toy_loop(tmp_path / "a", scores, patience=2)
    assert len(hist) == 4  # epoch 2 best (0.7); epochs 3 and 4 no better: stop
    assert [h["val_uar"] for h in hist] == scores[:4]
    torch.testing.assert_close(model.weight, after_epoch[1], rtol=0, atol=0)  # the best epoch's weights
    assert hist[-1]["best_epoch"] == 2 and hist[-1]["kept_epoch"] == 2  # and the record says which
    assert all("best_epoch" not in h for h in hist[:-1])
    # patience 0: every epoch runs, the best is still kept; restore_best=False keeps the last
    model, hist, after_epoch, _ = _toy_loop(tmp_path / "b", [0.5, 0.9, 0.6], patience=0, epochs=3)
    assert len(hist) == 3 and torch.equal(model.weight, after_epoch[1])
    model, hist, after_epoch, _ = _toy_loop(tmp_path / "c", [0.5, 0.9, 0.6], patience=0, epochs=3, restore=False)
    assert torch.equal(model.weight, after_epoch[2]) and (hist[-1]["best_epoch"], hist[-1]["kept_epoch"]) == (2, 3)


def test_validation_does_not_change_the_training_run(tmp_path):
    """The same loop with the scores never improving after epoch 1 and patience 0 trains like
    one without validation: validation draws from forked generators only."""
    from liser_core.config import TrainConfig
    from liser_core.training import train

    model, _, after_epoch, _ = _toy_loop(tmp_path / "a", [0.9, 0.1, 0.1], patience=0, epochs=3, restore=False)
    torch.manual_seed(0)
    plain = torch.nn.Linear(4, 3)
    x, y = torch.randn(24, 4), torch.randint(0, 3, (24,))
    from liser_core.data import Batch

    def loader(epoch, skip):
        order = torch.randperm(24, generator=torch.Generator().manual_seed(epoch)).tolist()
        return [Batch(audio=x[c], lengths=torch.full((len(c),), 4), sample_rate=1, labels=y[c], clip_ids=[],
                      index=torch.tensor(c)) for c in [order[i : i + 8] for i in range(0, 24, 8)][skip:]]

    def step(batch):
        loss = torch.nn.functional.cross_entropy(plain(batch.audio), batch.labels)
        return loss, {"ce": loss.detach()}

    train([plain], step, loader, 3, TrainConfig(epochs=3, batch_size=8, lr=0.05), device=torch.device("cpu"), name="plain")
    assert torch.equal(plain.weight, model.weight)


def test_early_stop_resumes_exactly_with_its_best_weights(tmp_path):
    from liser_core.training import TrainingInterrupted

    scores = [0.5, 0.7, 0.6, 0.65, 0.9, 0.95]
    ref, ref_hist, _, _ = _toy_loop(tmp_path / "ref", scores)
    with pytest.raises(TrainingInterrupted):
        _toy_loop(tmp_path / "b", scores, stop_at_step=8)  # in epoch 3, after the best epoch (2)
    model, hist, _, _ = _toy_loop(tmp_path / "b", scores)  # resumes: the best weights come back from the checkpoint
    assert torch.equal(model.weight, ref.weight)
    assert [h["val_uar"] for h in hist] == [h["val_uar"] for h in ref_hist]


def test_a_run_with_a_validation_split_and_early_stopping(run_tiny, caplog):
    over = ["validation={source: teacher, speakers: 0.5}", "distil.epochs=3",
            "distil.early_stop={metric: uar, patience: 1}", "teachers.0.fit.early_stop={metric: loss}"]
    with caplog.at_level("INFO", "liser"):
        ctx = run_tiny(overrides=over)
    val = ctx.split("validation")
    assert val and not {c.speaker for c in val} & {c.speaker for c in ctx.split("teacher")}
    assert not {c.speaker for c in val} & {c.speaker for c in ctx.split("test")}
    assert "validation: accuracy" in caplog.text and "best epoch" in caplog.text
    import json

    splits = json.loads((ctx.run_dir / "splits.json").read_text())["splits"]
    assert sorted(splits["validation"]["speakers"]) == sorted({c.speaker for c in val})


@pytest.mark.parametrize(("override", "key"), [
    ("validation.source=test", "validation.source"),
    ("distil.early_stop.metric=uar", "distil.early_stop.metric"),  # no validation split
    ("validation.source=labeled", "validation.source"),  # one labeled speaker: nothing to hold out
])
def test_validation_misconfigurations_are_usage_errors(run_tiny, override, key):
    from liser_core.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        run_tiny(overrides=[override, "distil.early_stop.metric=uar"] if "source" in override and "test" not in override
                 else [override])
    assert e.value.key == key


# -- feature taps, adapters and FitNets ------------------------------------------------------------
def test_pooling_a_tap_averages_each_clips_valid_frames_into_bins():
    from liser_core.taps import pool

    x = torch.arange(2 * 1 * 8, dtype=torch.float32).reshape(2, 1, 8)  # (B, C, T)
    out = pool(x, torch.tensor([1.0, 0.5]), -1, 2)
    # clip 0: frames 0..7 -> means of 0..3 and 4..7; clip 1: its valid half, 8..11 -> 8.5, 10.5
    torch.testing.assert_close(out, torch.tensor([[[1.5, 5.5]], [[8.5, 10.5]]]))
    y = x.transpose(1, 2)  # (B, T, C): time on axis 1
    torch.testing.assert_close(pool(y, torch.tensor([1.0, 0.5]), 1, 2), out)


def test_fitnets_matches_a_hand_computed_value():
    from liser_core import Batch, BatchTargets
    from liser_plugins.losses import FitNets

    loss = FitNets(student_tap="a", teacher_tap="b", teacher="t", bins=2, normalize=False)
    loss.bind(4, {"t": 3})
    loss.bind_features({("student", "a"): (1, 2), ("t", "b"): (2, 2)})
    with torch.no_grad():
        loss.regressor.weight.copy_(torch.tensor([[[2.0]], [[-1.0]]]))
        loss.regressor.bias.copy_(torch.tensor([0.5, 0.0]))
    s = torch.tensor([[[1.0, 3.0]]])  # (B=1, C_s=1, K=2)
    t = torch.tensor([[[2.0, 6.0], [0.0, -3.0]]])  # (1, C_t=2, 2)
    # r(s) = [[2.5, 6.5], [-1, -3]]; squared errors 0.25, 0.25, 1, 0 -> mean 0.375
    b = Batch(audio=torch.zeros(1, 4), lengths=torch.tensor([4]), sample_rate=1, labels=torch.tensor([-1]),
              clip_ids=["x"], index=torch.tensor([0]), extra={"features": {"a": s}})
    tg = BatchTargets(logits={}, embeddings={}, label_maps={}, weights={}, features={"t": {"b": t}})
    assert loss(ModelOutput(torch.zeros(1, 3), torch.zeros(1, 4)), b, tg).item() == pytest.approx(0.375)


def test_fitnets_in_a_run_features_through_the_store_and_not_in_the_saved_student(run_tiny, tmp_path, caplog):
    from safetensors.torch import load_file

    store = tmp_path / "store"
    over = ["distil.losses=[{name: kl}, {name: fitnets, weight: 0.5, options: {student_tap: block2, teacher_tap: block2,"
            " teacher: audio_cnn, bins: 4}}]", f"store={store}"]
    with caplog.at_level("INFO", "liser"):
        ctx = run_tiny(overrides=over)
    c_t = ctx.tap_shapes[("audio_cnn", "block2")]
    feats = ctx.targets.features["audio_cnn"]["block2"]
    assert feats.shape[1:] == c_t and c_t[1] == 4
    assert ctx.diagnostics["store"]["audio_cnn (features)"]["labeled"] == feats.shape[0]
    weights = load_file(str(ctx.run_dir / "student" / "model.safetensors"))
    assert not any("regressor" in k for k in weights)  # the adapter trains with the student, is not saved with it
    again = run_tiny(overrides=[*over, f"run_dir={tmp_path / 'again'}"])
    assert again.diagnostics["store"]["audio_cnn (features)"]["from_store"] == feats.shape[0]
    torch.testing.assert_close(again.targets.features["audio_cnn"]["block2"], feats, equal_nan=True)


def test_an_unknown_tap_is_a_usage_error_naming_the_loss_options(run_tiny):
    from liser_core.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        run_tiny(overrides=["distil.losses=[{name: fitnets, options: {student_tap: block9, teacher_tap: block2}}]"])
    assert e.value.key == "distil.losses.0.options" and "block9" in str(e.value) and "block1" in str(e.value)


class Unnormalised(Combiner):
    def __call__(self, probs, weights, reached):
        return sum(probs)  # two teachers: rows sum to 2


def test_a_combiner_that_does_not_return_distributions_is_refused_before_training(run_tiny):
    from liser_core.errors import ConfigError

    host = _host_with(combiner=("unnormalised", Unnormalised))
    with pytest.raises(ConfigError) as e:
        run_tiny(overrides=["distil.combination=unnormalised"], host=host)
    assert e.value.key == "distil.combination" and "sum to 1" in str(e.value)
    # the sums are printed (two teachers, each row summing to 1: every row sums to 2), not the shape twice
    assert "rows sum to 2, 2" in str(e.value) and "combiner 'unnormalised'" in str(e.value)


class NaNLoss(Loss):
    def forward(self, student, batch, targets):
        return student.logits.sum() * float("nan")


def test_a_nan_loss_in_the_preflight_names_its_plugin_and_key(run_tiny):
    from liser_core.errors import ConfigError

    class NaNPlugin:
        @hookimpl
        def liser_register_losses(self, registry):
            registry.register("nan_loss", NaNLoss)

    host = load_plugins(extra=[("nanplug", NaNPlugin())])
    with pytest.raises(ConfigError) as e:
        run_tiny(overrides=["distil.losses=[{name: kl}, {name: nan_loss}]"], host=host)
    assert e.value.key == "distil.losses.1"
    assert "loss 'nan_loss' (plugin nanplug, recipe key distil.losses.1) is nan" in str(e.value)


def test_an_unknown_tap_names_the_registry_name_and_plugin(run_tiny):
    from liser_core.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        run_tiny(overrides=["distil.losses=[{name: fitnets, options: {student_tap: block9, teacher_tap: block2}}]"])
    assert "student 'logmel_cnn' (plugin logmel_cnn, recipe key student) has no tap" in str(e.value)
    assert "declared taps: block1, block2" in str(e.value)


def test_show_lists_the_declared_taps(capsys):
    from liser_tools.cli import main

    assert main(["show", "logmel_cnn"]) == 0
    assert "taps: block1, block2, block3 (default options)" in capsys.readouterr().out
    assert main(["show", "hf_speech"]) == 0  # its taps depend on its required option
    assert "taps: declared when built (depends on its options; required: model)" in capsys.readouterr().out


def test_a_fit_that_returns_notimplemented_leaves_the_teacher_to_the_engine_loop(run_tiny, caplog):
    from liser_plugins.cnn_teachers import AudioCNNTeacher

    class Deferring(AudioCNNTeacher):
        def fit(self, dataset, *, config, device, seed):
            return NotImplemented

    host = _host_with(teacher=("deferring", Deferring))
    with caplog.at_level("INFO", "liser"):
        run_tiny(overrides=["teachers=[{name: deferring, fit: {epochs: 1, batch_size: 16}, options: {channels: [4, 8], hidden: 16}}]"],
                 host=host)
    assert "teacher deferring epoch 1/1" in caplog.text and "fitted itself" not in caplog.text


def test_an_entry_point_named_after_a_component_kind_is_refused(fake_distribution, tmp_path, monkeypatch):
    """A package whose entry point is called `loss` registered a student `kl`, unflagged, and
    `liser show loss:kl` read it as KIND:NAME and showed LiSER's loss: such a name is refused."""
    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    _module(src, "kindly", "ce_kindly")
    fake_distribution("pkg-kind", {"loss": "kindly"}, path=src)
    host = load_plugins()
    (info,) = [p for p in host.plugins if p.name == "loss"]
    assert info.status == "failed" and "is a component kind" in info.error
    assert "ce_kindly" not in host.registries.loss

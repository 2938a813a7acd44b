"""Plugin API, third edition: optimizers and schedules as components (with parameter groups for a
loss's adapters), losses that log scalars, batch samplers, taps on inputs and at full time
resolution, online teachers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from liser_core import Loss, Sampler, load_plugins
from liser_core.errors import ConfigError
from liser_core.testing import check_sampler

FITNETS = "{name: fitnets, weight: 0.5, options: {student_tap: block2, teacher_tap: block2, teacher: audio_cnn, bins: 2}}"


def _host_with(**components):
    host = load_plugins()
    for kind, (name, factory) in components.items():
        host.registries[kind].register(name, factory)
    return host


# -- optimizers and schedules --------------------------------------------------------------------
def test_the_default_components_are_the_optimizer_and_schedule_liser_always_used():
    from liser_core.config import TrainConfig
    from liser_core.training import make_optimizer
    from liser_plugins.optim import adamw, warmup_cosine

    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    cfg = TrainConfig(lr=0.01, weight_decay=0.1)
    opt_a, sched_a = make_optimizer(a.parameters(), cfg, 30)
    opt_b = adamw([{"params": list(b.parameters())}], lr=0.01, weight_decay=0.1)
    sched_b = warmup_cosine(opt_b, 30)
    x = torch.randn(8, 3)
    for _ in range(30):
        for m, opt, sched in ((a, opt_a, sched_a), (b, opt_b, sched_b)):
            opt.zero_grad()
            m(x).pow(2).sum().backward()
            opt.step()
            sched.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # bit for bit


def test_warmup_cosine_by_hand():
    from liser_plugins.optim import warmup_factor

    # warm-up of 2 steps, then cosine from 1 to 0 over the remaining 4 of 6
    got = [warmup_factor(s, 6, warmup=2, floor=0.0) for s in range(7)]
    want = [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0]
    assert got == pytest.approx(want)
    assert warmup_factor(0, 1000) == pytest.approx(1 / 50)  # default warm-up: 5 % of the steps, at most 50
    # warmup 0: no warm-up, the cosine from the first step (it was taken as 1)
    got = [warmup_factor(s, 4, warmup=0, floor=0.0) for s in range(5)]
    assert got == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0])


class Recording:
    """An optimizer factory that keeps what it was given and what it built."""

    made: list = []

    def __new__(cls, params, lr: float, weight_decay: float, momentum: float = 0.0):
        opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
        cls.made.append(opt)
        return opt


def test_a_loss_with_its_own_lr_gets_a_parameter_group_and_the_schedule_scales_both(run_tiny):
    Recording.made = []
    host = _host_with(optimizer=("recording", Recording))
    ctx = run_tiny(overrides=[f"distil.losses=[{{name: kl}}, {FITNETS.replace('weight: 0.5', 'weight: 0.5, lr: 0.05')}]",
                        "distil.optimizer=recording", "distil.optimizer_options={momentum: 0.5}",
                        "distil.lr=0.002", "distil.scheduler=warmup_cosine",
                        "distil.scheduler_options={warmup: 1, floor: 0.25}"], host=host)
    opt = Recording.made[-1]  # the distil stage's (the first was the stand-in check before any work)
    student, adapter = opt.param_groups
    assert adapter["initial_lr"] == 0.05 and student["initial_lr"] == 0.002
    # the schedule ended at its floor, for both groups alike
    assert adapter["lr"] == pytest.approx(0.05 * 0.25) and student["lr"] == pytest.approx(0.002 * 0.25)
    fitnets = ctx.losses["fitnets"][1]
    assert [id(p) for p in adapter["params"]] == [id(p) for p in fitnets.parameters()]  # its adapter, alone
    assert {id(p) for p in student["params"]} == {id(p) for p in ctx.student.parameters()}
    assert student["momentum"] == adapter["momentum"] == 0.5


@pytest.mark.parametrize(("override", "key", "words"), [
    ("distil.optimizer=adamx", "distil.optimizer", "adamw"),
    ("distil.optimizer_options={momentum: 0.9}", "distil.optimizer_options.momentum", "unknown option"),
    ("finetune.optimizer_options={betas: [0.9, 1.5]}", "finetune.optimizer_options", "betas"),
    ("distil.scheduler=cosine", "distil.scheduler", "warmup_cosine"),
    ("distil.scheduler_options={floor: 2}", "distil.scheduler_options", "floor"),
    ("distil.losses.0.lr=-1", "distil.losses.0.lr", "> 0"),
    ("distil.sampler=bucket", "distil.sampler", "duration_buckets"),
    ("baseline.sampler=dynamic", None, None),
])
def test_bad_training_components_are_refused_before_any_work(run_tiny, tmp_path, override, key, words):
    if key is None:  # a valid one: runs
        run_tiny(overrides=[override, "baseline.enabled=true"])
        return
    with pytest.raises(ConfigError) as e:
        run_tiny(overrides=[override])
    assert e.value.key == key and words in str(e.value)
    assert not (tmp_path / "run").exists()


# -- losses that log scalars -----------------------------------------------------------------------
class StepKL(Loss):
    """KL at T=1 that logs the optimiser step it is at, and (on even steps only) a constant."""

    needs_teacher = True
    seen: dict = {}

    def forward(self, student, batch, targets):
        from liser_core.preflight import probing

        if targets is None:
            return None
        if not probing():
            StepKL.seen.setdefault(self.position.epoch, []).append(self.position.step)
        self.log("step", self.position.step)
        if self.position.step % 2 == 0:
            self.log("even", torch.tensor(3.0))
        log_q = torch.log_softmax(student.logits.float(), -1)
        return torch.nn.functional.kl_div(log_q, targets.probs(1.0), reduction="batchmean")


def test_scalars_a_loss_logs_reach_the_epoch_event_and_history(run_tiny):
    StepKL.seen = {}
    host = _host_with(loss=("step_kl", StepKL))
    ctx = run_tiny(overrides=["distil.losses=[{name: step_kl}]", "distil.epochs=2", "distil.batch_size=8"], host=host)
    rows = [json.loads(line) for line in (ctx.run_dir / "history.jsonl").read_text().splitlines()]
    distil = [r for r in rows if r["stage"] == "distil"]
    assert len(distil) == 2 and len(StepKL.seen) == 2 and len(StepKL.seen[0]) > 1
    for e, r in enumerate(distil):
        steps = StepKL.seen[e]
        assert r["step_kl/step"] == pytest.approx(sum(steps) / len(steps))  # mean over the epoch's steps
        assert r["step_kl/even"] == 3.0  # averaged over the steps that logged it, not over all steps
    assert distil[1]["step_kl/step"] > distil[0]["step_kl/step"]
    assert "loss/step_kl" in distil[0]


# -- samplers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["random", "class_balanced", "duration_buckets", "dynamic"])
def test_first_party_samplers_pass_check_sampler(liser_host, name):
    check_sampler(name, {"max_seconds": 8.0} if name == "dynamic" else {}, host=liser_host)


def test_random_sampler_is_the_loaders_own_order():
    from liser_core import Clip, ClipDataset
    from liser_core.labels import label_space
    from liser_plugins.samplers import RandomBatches

    clips = [Clip(f"c{i}", torch.zeros(160).numpy(), 16000, "s", None) for i in range(11)]
    ds = ClipDataset(clips, label_space("ravdess8"), 16000)
    plain = [b.index.tolist() for b in ds.loader(4, shuffle=True, seed=7)]
    sampled = [b.index.tolist() for b in ds.loader(4, seed=7, sampler=RandomBatches())]
    assert sampled == plain


def test_class_balanced_duration_buckets_and_dynamic_by_their_definitions():
    from liser_plugins.samplers import ClassBalanced, DurationBuckets, DynamicBatches

    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 12 + [1] * 3 + [2] * 1 + [-1] * 4)  # 16 labeled, skewed
    secs = torch.arange(1, 21, dtype=torch.float64)
    picks = [i for b in ClassBalanced().epoch(secs, labels, ["s"] * 20, 5, g) for i in b]
    counts = torch.bincount(labels[picks][labels[picks] >= 0], minlength=3).tolist()
    assert counts == [6, 5, 5] and len(picks) == 20  # 16 labeled drawn class by class in turn, 4 unlabeled
    # every clip labeled (finetune, baseline): the epoch still draws as many clips as the stage has
    picks = [i for b in ClassBalanced(labeled_share=0.25).epoch(secs[:16], labels[:16], ["s"] * 16, 5, g) for i in b]
    assert len(picks) == 16 and torch.bincount(labels[picks], minlength=3).tolist() == [6, 5, 5]
    buckets = DurationBuckets(buckets=4).epoch(secs, labels, ["s"] * 20, 5, g)
    assert sorted(i for b in buckets for i in b) == list(range(20))
    assert all(max(secs[b]) - min(secs[b]) <= 4 for b in buckets)  # each batch within a bucket of 5 clips
    dyn = DynamicBatches(max_seconds=30.0, buckets=1).epoch(secs, labels, ["s"] * 20, 5, g)
    assert sorted(i for b in dyn for i in b) == list(range(20))
    assert all(len(b) == 1 or float(secs[b].max()) * len(b) <= 30 for b in dyn)


class EveryOther(Sampler):
    """Batches of the even-indexed clips only (a sampler may leave clips out)."""

    seen: list = []

    def epoch(self, seconds, labels, speakers, batch_size, generator):
        order = torch.randperm(len(seconds), generator=generator).tolist()
        keep = [i for i in order if i % 2 == 0]
        return [keep[i : i + batch_size] for i in range(0, len(keep), batch_size)]


def test_a_plugin_sampler_chooses_the_distillation_batches(run_tiny, monkeypatch):
    from liser_core import data

    used = []
    real = data.sampler_batches

    def spy(sampler, ds, batch_size, seed, drop_last):
        got = real(sampler, ds, batch_size, seed, drop_last)
        used.append(got)
        return got

    monkeypatch.setattr(data, "sampler_batches", spy)
    host = _host_with(sampler=("every_other", EveryOther))
    ctx = run_tiny(overrides=["distil.sampler=every_other", "distil.batch_size=4", "distil.epochs=2"], host=host)
    assert used and all(i % 2 == 0 for batches in used for b in batches for i in b)
    rows = [json.loads(line) for line in (ctx.run_dir / "history.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r["stage"] == "distil"]) == 2


# -- feature taps on inputs, at full time resolution --------------------------------------------------
def test_an_input_tap_catches_what_the_module_receives_and_full_resolution_masks_padding():
    from liser_core.taps import capture

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = torch.nn.Linear(2, 3)
            self.post = torch.nn.Linear(3, 1)

        def forward(self, x):  # x: (B, T, 2), time on axis 1
            return self.post(torch.relu(self.pre(x)))

    net = Net()
    x = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    with capture(net, {"input:post@1": None, "pre@1": 2}, torch.tensor([8, 4])) as feats:
        net(x)
    inner = torch.relu(net.pre(x)).detach()  # what `post` receives
    assert feats.frames["input:post@1"].tolist() == [4, 2]  # clip 1 is half as long: 2 of its 4 frames
    want = inner.transpose(1, 2).clone()
    want[1, :, 2:] = 0  # its padding frames zeroed
    torch.testing.assert_close(feats["input:post@1"], want)
    assert feats["pre@1"].shape == (2, 3, 2) and "pre@1" not in feats.frames  # pooled as before


class UnpooledFitNets(Loss):
    """MSE of the student's and a teacher's mean feature over the valid frames, both unpooled."""

    needs_teacher = True

    def __init__(self, student_tap: str = "input:block2", teacher_tap: str = "block2", teacher: str = "audio_cnn"):
        super().__init__()
        self.s, self.t, self.teacher = student_tap, teacher_tap, teacher

    def feature_requests(self):
        return [("student", self.s, None), (self.teacher, self.t, None)]

    def forward(self, student, batch, targets):
        if targets is None:
            return None
        fs, ns = batch.extra["features"][self.s], batch.extra["feature_frames"][self.s]
        ft, nt = targets.features[self.teacher][self.t], targets.feature_frames[self.teacher][self.t]
        a = fs.sum(-1).mean(1) / ns.float()
        b = ft.sum(-1).mean(1) / nt.float()
        return (a - b).pow(2).mean()


def test_full_resolution_teacher_taps_need_an_online_teacher(run_tiny):
    host = _host_with(loss=("unpooled", UnpooledFitNets))
    with pytest.raises(ConfigError) as e:
        run_tiny(overrides=["distil.losses=[{name: kl}, {name: unpooled}]"], host=host)
    assert e.value.key == "distil.losses.1.options" and "teachers.1.online=true" in str(e.value)
    ctx = run_tiny(overrides=["distil.losses=[{name: kl}, {name: unpooled}]", "teachers.1.online=true"], host=host)
    assert ctx.tap_shapes[("student", "input:block2")][1] is None  # (channels, None): full resolution
    assert "audio_cnn" not in ctx.targets.logits and "face_cnn" in ctx.targets.logits  # not labeled into the store


# -- online teachers -----------------------------------------------------------------------------------
def test_an_online_teacher_sees_the_students_augmented_view(run_tiny):
    from liser_core import Augmentation
    from liser_plugins.cnn_teachers import AudioCNNTeacher

    views, seen = [], []

    class Noisy(Augmentation):
        def __init__(self, sample_rate: int = 16000):
            super().__init__()

        def forward(self, audio, lengths):
            from liser_core.preflight import probing

            out = audio + 0.01 * torch.randn_like(audio)
            if not probing():  # the preflight probe runs augmentations once too
                views.append(out.clone())
            return out, lengths

    class Watching(AudioCNNTeacher):
        def forward(self, batch):
            from liser_core.preflight import probing

            if not probing() and not torch.is_grad_enabled() and len(views) > len(seen):
                seen.append(batch.audio.clone())
            return super().forward(batch)

    host = _host_with(augmentation=("noisy", Noisy), teacher=("watching", Watching))
    ctx = run_tiny(overrides=["teachers=[{name: watching, online: true, fit: {epochs: 1, batch_size: 16}, "
                              "options: {channels: [4, 8], hidden: 16}}]",
                              "distil.augment=[{name: noisy}]", "distil.epochs=2"], host=host)
    assert ctx.targets is None  # every teacher online: nothing labeled before distillation
    assert len(seen) == len(views) > 2
    assert all(torch.equal(a, b) for a, b in zip(seen, views))  # the very view the student trained on


class PeekKL(Loss):
    """KL at T=1 that keeps the audio teacher's logits and the batch's clip indices of every step."""

    needs_teacher = True
    peeked: list = []

    def forward(self, student, batch, targets):
        from liser_core.preflight import probing

        if targets is None:
            return None
        if not probing():
            PeekKL.peeked.append((batch.index.clone(), targets.logits["audio_cnn"].clone()))
        log_q = torch.log_softmax(student.logits.float(), -1)
        return torch.nn.functional.kl_div(log_q, targets.probs(1.0), reduction="batchmean")


def test_without_augmentation_an_online_teacher_gives_its_stored_targets(run_tiny, tmp_path):
    host = _host_with(loss=("peek_kl", PeekKL))
    PeekKL.peeked = []
    stored = run_tiny(overrides=["distil.losses=[{name: peek_kl}]"], host=host)
    PeekKL.peeked = []
    run_tiny(overrides=["distil.losses=[{name: peek_kl}]", "teachers.1.online=true", f"run_dir={tmp_path / 'online'}"],
             host=host)
    assert PeekKL.peeked
    for index, logits in PeekKL.peeked:  # the same teacher (same fit), the same clean clips
        torch.testing.assert_close(logits, stored.targets.logits["audio_cnn"][index], atol=1e-5, rtol=1e-5)


def test_a_face_teacher_cannot_run_online(run_tiny):
    with pytest.raises(ConfigError) as e:
        run_tiny(overrides=["teachers.0.online=true"])  # the tiny recipe's first teacher is face_cnn
    assert e.value.key == "teachers.0.online" and "face frames" in str(e.value)


# -- resuming keeps it exact -------------------------------------------------------------------------
def _groups_loop(tmp_path, stop_after=None):
    """A training loop with two parameter groups (SGD + warmup_cosine from the registry) and a
    logged scalar, optionally Ctrl-C'ed at step ``stop_after`` (mid-epoch)."""
    import os
    import signal

    from liser_common.trainstate import Checkpointer
    from liser_core.config import TrainConfig
    from liser_core.data import Batch
    from liser_core.training import train
    from liser_plugins.optim import sgd, warmup_cosine

    torch.manual_seed(0)
    body, head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    calls = {"n": 0}
    logged = {}

    def step(batch):
        calls["n"] += 1
        if stop_after is not None and calls["n"] == stop_after:
            os.kill(os.getpid(), signal.SIGINT)
        loss = torch.nn.functional.cross_entropy(head(torch.relu(body(batch.audio))), batch.labels)
        logged["norm"] = float(head.weight.detach().norm())
        return loss, {"ce": loss.detach()}

    def loader(epoch, skip):
        order = torch.randperm(40, generator=torch.Generator().manual_seed(epoch)).tolist()
        chunks = [order[i : i + 8] for i in range(0, 40, 8)][skip:]
        return [Batch(audio=x[c], lengths=torch.full((len(c),), 4), sample_rate=1, labels=y[c], clip_ids=[],
                      index=torch.tensor(c)) for c in chunks]

    def build(params, total):
        opt = sgd([{"params": list(body.parameters())}, {"params": list(head.parameters()), "lr": 0.3}],
                  lr=0.05, weight_decay=0.0, momentum=0.9)
        return opt, warmup_cosine(opt, total, warmup=2, floor=0.1)

    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, checkpoint_every=2)
    hist = train([body, head], step, loader, 5, cfg, device=torch.device("cpu"), name="groups",
                 checkpointer=Checkpointer(tmp_path / "ckpt"), build_optimizer=build,
                 scalars=lambda: {"head/norm": logged.pop("norm")})
    return [*body.parameters(), *head.parameters()], hist


def test_parameter_groups_and_scalars_resume_bit_exactly(tmp_path):
    from liser_core.training import TrainingInterrupted

    ref, ref_hist = _groups_loop(tmp_path / "a")
    with pytest.raises(TrainingInterrupted):
        _groups_loop(tmp_path / "b", stop_after=8)  # epoch 2, mid-epoch, off a checkpoint boundary
    got, hist = _groups_loop(tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in ref_hist]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in hist] == strip
    assert all("head/norm" in h and "head/norm#steps" not in h for h in strip)


def test_an_online_teacher_at_another_rate_gets_the_view_resampled(run_tiny, monkeypatch):
    import torchaudio.functional as AF

    from liser_plugins.cnn_teachers import AudioCNNTeacher

    pairs, active = [], []

    class Half(AudioCNNTeacher):
        def forward(self, batch):
            from liser_core.preflight import probing

            if active and not probing():  # called from the distillation step
                pairs.append((batch.audio.clone(), batch.lengths.clone()))
            return super().forward(batch)

    seen = []
    host = _host_with(teacher=("half", Half))
    from liser_core.stages import distil

    real = distil.online_targets

    def spy(engine, online, batch, audio, lengths, stored):
        seen.append((audio.clone(), lengths.clone()))  # the student's view of the batch
        active.append(True)
        try:
            return real(engine, online, batch, audio, lengths, stored)
        finally:
            active.clear()

    monkeypatch.setattr(distil, "online_targets", spy)
    run_tiny(overrides=["teachers=[{name: half, online: true, fit: {epochs: 1, batch_size: 16}, "
                        "options: {channels: [4, 8], hidden: 16, sample_rate: 8000}}]"], host=host)
    assert seen and len(pairs) == len(seen)
    for (audio, lengths), (teacher_audio, teacher_lengths) in zip(seen, pairs):
        torch.testing.assert_close(teacher_audio, AF.resample(audio, 16000, 8000))  # no augmentation: the clean view
        assert teacher_lengths.tolist() == [-(-int(n) // 2) for n in lengths]  # ceil(n * 8000 / 16000)

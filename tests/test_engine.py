import json

import pytest
import torch

from liser_core import ClipDataset, hookimpl, load_plugins
from liser_core.checkpoint import load_component
from liser_core.errors import ComponentError
from liser_plugins.cnn_teachers import AudioCNNTeacher


class Recorder:
    def __init__(self):
        self.events = []

    @hookimpl
    def liser_run_start(self, run):
        self.events.append(("run_start",))

    @hookimpl
    def liser_stage_start(self, stage):
        self.events.append(("stage_start", stage))

    @hookimpl
    def liser_stage_end(self, stage, seconds):
        assert seconds >= 0
        self.events.append(("stage_end", stage))

    @hookimpl
    def liser_epoch_end(self, stage, model, epoch, metrics):
        assert "loss" in metrics
        self.events.append(("epoch_end", stage, model, epoch))

    @hookimpl
    def liser_evaluation(self, result):
        self.events.append(("evaluation", result.model, result.role))

    @hookimpl
    def liser_run_end(self, results, error):
        self.events.append(("run_end", error is None, sorted(results)))


def test_tiny_run_end_to_end(run_tiny, tmp_path):
    host = load_plugins()
    rec = Recorder()
    host.add("recorder", rec)
    ctx = run_tiny(host=host, overrides=["baseline.enabled=true", "baseline.epochs=1"])
    run_dir = tmp_path / "run"
    assert ctx.run_dir == run_dir

    # lifecycle: run start, stages in order, evaluations, run end
    stages = [e[1] for e in rec.events if e[0] == "stage_start"]
    assert stages == ["teach", "label", "distil", "baseline", "evaluate"]
    assert rec.events[0] == ("run_start",)
    assert rec.events[-1] == ("run_end", True, ["audio_cnn", "baseline", "face_cnn", "student", "targets"])
    assert ("epoch_end", "teach", "face_cnn", 0) in rec.events
    assert ("epoch_end", "distil", "student", 0) in rec.events
    assert [e for e in rec.events if e[0] == "evaluation"] == [
        ("evaluation", "face_cnn", "teacher"),
        ("evaluation", "audio_cnn", "teacher"),
        ("evaluation", "targets", "targets"),  # the two teachers' combined targets
        ("evaluation", "baseline", "baseline"),
        ("evaluation", "student", "student"),
    ]

    # run directory
    for name in ["config.yaml", "manifest.json", "metrics.json", "log.txt", "history.jsonl",
                 "confusion_student.csv", "confusion_face_cnn.csv", "student/config.json",
                 "student/model.safetensors", "teachers/face_cnn/model.safetensors"]:
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    # the combined targets, scored on the test split from the two teachers' own scores
    ev = {e.model: e for e in ctx.evaluations}
    assert ev["targets"].clip_ids == ev["face_cnn"].clip_ids and metrics["targets"]["num_clips"] == len(ev["face_cnn"].clip_ids)
    w = ctx.targets.weights
    mix = w["face_cnn"] * ev["face_cnn"].probs + w["audio_cnn"] * ev["audio_cnn"].probs  # same label space: a plain mixture
    assert torch.allclose(ev["targets"].probs, mix, atol=1e-6)
    assert metrics["student"]["uar"] == pytest.approx(ctx.results()["student"]["uar"])
    assert set(metrics["teachers"]) == {"face_cnn", "audio_cnn"}
    assert metrics["teachers"]["face_cnn"]["card"]["trained_on"] == ["synth_av[teacher]"]
    rows = (run_dir / "confusion_student.csv").read_text().splitlines()
    assert rows[0].split(",")[1:] == list(ctx.label_space.classes)
    counts = sum(int(x) for r in rows[1:] for x in r.split(",")[1:])
    assert counts == len(ctx.corpus.split("test"))
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert {h["stage"] for h in history} == {"teach", "distil", "baseline"}
    assert "stage teach done" in (run_dir / "log.txt").read_text()


def test_saved_student_reproduces_evaluation(run_tiny):
    host = load_plugins()
    ctx = run_tiny(host=host)
    student = load_component(ctx.run_dir / "student", host.registries.student, kind="student").eval()
    ds = ClipDataset(ctx.corpus.split("test"), ctx.label_space, student.sample_rate)
    with torch.no_grad():
        probs = torch.cat([torch.softmax(student(b.audio, b.lengths).logits, -1) for b in ds.loader(5)])
    evaluated = next(e for e in ctx.evaluations if e.model == "student")
    assert torch.allclose(probs, evaluated.probs, atol=1e-6)


class SpyTeacher(AudioCNNTeacher):
    seen_training: set = set()
    seen_labels: list = []

    def forward(self, batch):
        if self.training:
            SpyTeacher.seen_training.update(batch.clip_ids)
        return super().forward(batch)


class SpyLoss(torch.nn.Module):
    needs_teacher = False
    labels: list = []

    def bind(self, student_dim, teacher_dims):
        pass

    def forward(self, student, batch, targets):
        if self.training:  # the preflight probe calls every loss once, in eval mode
            SpyLoss.labels.extend(batch.labels.tolist())
        return student.logits.sum() * 0


class SpyPlugin:
    @hookimpl
    def liser_register_teachers(self, registry):
        registry.register("spy_teacher", SpyTeacher, modality="audio")

    @hookimpl
    def liser_register_losses(self, registry):
        registry.register("spy_loss", SpyLoss)


def test_teachers_fit_on_teacher_split_only_and_pool_labels_are_hidden(run_tiny):
    host = load_plugins()
    host.add("spy", SpyPlugin())
    SpyTeacher.seen_training.clear()
    SpyLoss.labels.clear()
    ctx = run_tiny(
        host=host,
        overrides=[
            "teachers=[{name: spy_teacher, fit: {epochs: 2, batch_size: 8}, options: {channels: [4], hidden: 8}}]",
            "distil.losses=[{name: kl}, {name: spy_loss}]",
        ],
    )
    teacher_ids = {c.clip_id for c in ctx.corpus.split("teacher")}
    assert SpyTeacher.seen_training == teacher_ids
    n_pool = len(ctx.corpus.split("unlabeled"))
    n_labeled = len(ctx.corpus.split("labeled"))
    assert SpyLoss.labels.count(-1) == n_pool  # one epoch: every pool clip once, label hidden
    assert len(SpyLoss.labels) == n_pool + n_labeled
    assert all(label >= 0 for label in SpyLoss.labels if label != -1)


def test_teacher_checkpoint_reuse_and_overlap_warning(run_tiny, tmp_path):
    host = load_plugins()
    first = run_tiny(host=host)
    face_dir = first.run_dir / "teachers" / "face_cnn"
    cfg = json.loads((face_dir / "config.json").read_text())
    assert cfg["card"]["trained_on"] == ["synth_av[teacher]"]

    second = run_tiny(host=host, overrides=[f"teachers.0.checkpoint={face_dir}", f"run_dir={tmp_path / 'run2'}"])
    assert not (second.run_dir / "teachers" / "face_cnn").exists()  # loaded, not fitted again
    assert (second.run_dir / "teachers" / "audio_cnn").exists()
    before = next(e for e in first.evaluations if e.model == "face_cnn").probs
    after = next(e for e in second.evaluations if e.model == "face_cnn").probs
    assert torch.allclose(before, after, atol=1e-6)
    assert not any("NOT a fair estimate" in w for w in second.warnings)

    # a teacher whose card says it was trained on this corpus's test data is flagged loudly
    cfg["card"]["trained_on"] = ["synth_av"]
    (face_dir / "config.json").write_text(json.dumps(cfg))
    third = run_tiny(host=host, overrides=[f"teachers.0.checkpoint={face_dir}", f"run_dir={tmp_path / 'run3'}"])
    assert any("NOT a fair estimate" in w and "face_cnn" in w for w in third.warnings)


class ExplodingLogger:
    def __init__(self, where: str = "epoch"):
        if where == "init":
            raise RuntimeError("cannot start")
        self.where = where

    @hookimpl
    def liser_epoch_end(self):
        raise RuntimeError("logger crashed")


class BadLoss(torch.nn.Module):
    needs_teacher = False

    def bind(self, student_dim, teacher_dims):
        pass

    def forward(self, student, batch, targets):
        if self.training:  # passes the preflight probe (eval mode), fails in training
            raise FloatingPointError("loss went wrong")
        return student.logits.sum() * 0


class FaultPlugin:
    @hookimpl
    def liser_register_loggers(self, registry):
        registry.register("exploding", ExplodingLogger)

    @hookimpl
    def liser_register_losses(self, registry):
        registry.register("bad_loss", BadLoss)


def test_a_failing_logger_never_stops_the_run(run_tiny, tmp_path):
    host = load_plugins()
    host.add("faults", FaultPlugin())
    ctx = run_tiny(host=host, overrides=["loggers.exploding={where: epoch}"])
    assert "student" in ctx.results()
    ctx = run_tiny(host=host, overrides=["loggers.exploding={where: init}", f"run_dir={tmp_path / 'r2'}"])
    assert "student" in ctx.results()
    assert any("exploding" in w and "cannot start" in w for w in ctx.warnings)


def test_a_failed_run_says_so_in_its_metrics(run_tiny, tmp_path):
    host = load_plugins()
    host.add("faults", FaultPlugin())
    with pytest.raises(ComponentError, match="loss 'bad_loss' .plugin faults, recipe key distil.losses.0.") as e:
        run_tiny(host=host, overrides=["distil.losses=[{name: bad_loss}]"])
    assert isinstance(e.value.__cause__, FloatingPointError)  # kept for --debug
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "loss went wrong" in metrics["error"]


def test_no_teachers_means_labels_only_training(run_tiny):
    ctx = run_tiny(overrides=["teachers=[]", "distil.losses=[{name: ce}]"])
    assert set(ctx.results()) == {"student"}
    assert ctx.targets is None


def test_loss_needing_a_teacher_without_one_is_a_config_error(run_tiny):
    from liser_core import ConfigError

    with pytest.raises(ConfigError, match="needs a teacher"):
        run_tiny(overrides=["teachers=[]"])


def test_stages_are_seeded_independently(run_tiny, tmp_path):
    host = load_plugins()
    a = run_tiny(host=host, overrides=["baseline.enabled=true", "baseline.epochs=2", "distil.epochs=1"])
    b = run_tiny(host=host, overrides=["baseline.enabled=true", "baseline.epochs=2", "distil.epochs=2",
                                       f"run_dir={tmp_path / 'b'}"])
    pa = next(e for e in a.evaluations if e.model == "baseline").probs
    pb = next(e for e in b.evaluations if e.model == "baseline").probs
    assert torch.equal(pa, pb)  # the baseline does not depend on how long distillation ran
    sa = next(e for e in a.evaluations if e.model == "student").probs
    sb = next(e for e in b.evaluations if e.model == "student").probs
    assert not torch.equal(sa, sb)


def test_same_recipe_same_results(run_tiny, tmp_path):
    host = load_plugins()
    a = run_tiny(host=host)
    b = run_tiny(host=host, overrides=[f"run_dir={tmp_path / 'again'}"])
    for ea, eb in zip(a.evaluations, b.evaluations):
        assert ea.model == eb.model and torch.equal(ea.probs, eb.probs)


def test_wandb_logger_writes_an_offline_run(run_tiny, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    ctx = run_tiny(overrides=["loggers.wandb={mode: offline, project: liser-test}"])
    runs = list((ctx.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "no wandb event file written"


def test_wandb_auto_follows_wandb_mode(run_tiny, monkeypatch):
    """wandb's own switch counts in ``mode: auto``: WANDB_MODE=disabled writes nothing."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    ctx = run_tiny(overrides=["loggers.wandb={project: liser-test}"])
    assert not (ctx.run_dir / "wandb").exists()


class _Meddler:
    """A logger that writes into what it is given, and reads what the run wrote at its end."""

    seen_at_end: dict = {}

    @hookimpl
    def liser_epoch_end(self, metrics):
        metrics["loss"] = -999.0

    @hookimpl
    def liser_evaluation(self, result):
        result.metrics["uar"] = 0.999

    @hookimpl
    def liser_run_end(self, run):
        type(self).seen_at_end = {"metrics": (run.run_dir / "metrics.json").is_file(),
                                  "card": (run.run_dir / "student" / "README.md").is_file()}


def test_loggers_cannot_change_the_runs_record_and_end_after_the_reports_exist(run_tiny, tmp_path):
    """A logger writing into the metrics it is given changed every report of the run; now its
    hook fails (a logger's failure never stops a run) and the record stands. Other loggers end
    after metrics.json and the model card are written (they may upload them)."""
    import json

    from liser_core import load_plugins

    host = load_plugins()
    host.add("meddler", _Meddler())
    ctx = run_tiny(host=host)
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["student"]["uar"] != 0.999 and all(e.metrics["uar"] != 0.999 for e in ctx.evaluations)
    history = [json.loads(ln) for ln in (ctx.run_dir / "history.jsonl").read_text().splitlines()]
    assert history and all(h.get("loss") != -999.0 for h in history)
    assert _Meddler.seen_at_end == {"metrics": True, "card": True}
    # its failures are in the run's record, once per hook (not once per epoch)
    failed = [w for w in metrics["warnings"] if w.startswith("plugin 'meddler' failed in")]
    assert sorted(w.split(" (ignored)")[0] for w in failed) == [
        "plugin 'meddler' failed in liser_epoch_end", "plugin 'meddler' failed in liser_evaluation"]


def test_what_a_component_was_built_with_is_recorded_defaults_included(run_tiny):
    """``{name: kl}`` runs at the loss's default temperature: metrics.json says which
    (``components``), and the saved student records every option it was built with, so it loads
    as the same model whatever the plugin's defaults are later."""
    import inspect
    import json

    from liser_plugins.losses import KLDivergence

    ctx = run_tiny(overrides=["distil.losses=[{name: kl}, {name: ce, weight: 0.5}]"])
    components = json.loads((ctx.run_dir / "metrics.json").read_text())["components"]
    default_t = inspect.signature(KLDivergence).parameters["temperature"].default
    assert components["distil.losses.0"] == {"name": "kl", "plugin": "losses", "options": {"temperature": default_t}}
    assert components["student"]["options"]["channels"] == [4, 8] and "n_mels" in components["student"]["options"]
    saved = json.loads((ctx.run_dir / "student" / "config.json").read_text())
    assert {**saved["defaults"], **saved["options"]} == components["student"]["options"]
    assert set(components) >= {"teachers.0", "teachers.1", "student", "distil.losses.1", "distil.combination"}


def test_a_saved_student_is_rebuilt_with_the_defaults_it_was_built_with(run_tiny, tmp_path, caplog):
    """config.json's ``defaults`` are passed back on load (a plugin whose default changed since
    rebuilds the same model); one the factory no longer takes is left out with a warning."""
    import json
    import shutil

    from liser_core import Student
    from liser_tools.testing import resave_config

    ctx = run_tiny()
    folder = tmp_path / "student"
    shutil.copytree(ctx.run_dir / "student", folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["defaults"]["dropout"] == 0.1 and "dropout" not in config["options"]
    config["defaults"] |= {"dropout": 0.3, "a_parameter_since_removed": 1}  # as if today's default were 0.1
    config = resave_config(folder, config)  # saved so by a LiSER of another day
    with caplog.at_level("WARNING", "liser"):
        student = Student.from_pretrained(folder)
    assert student.dropout.p == 0.3
    assert "was built with a_parameter_since_removed=1, which it no longer takes" in caplog.text
    # loaded and saved again: the same config (its window, train_seconds, included) and weights
    student.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["train_seconds"] == config["train_seconds"]
    assert again["defaults"] == {k: v for k, v in config["defaults"].items() if k != "a_parameter_since_removed"}
    from safetensors.torch import load_file

    # the same tensors (the header's marker holds the new defaults)
    a, b = load_file(str(folder / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _StopOnce:
    """Ctrl-C after the first distillation epoch, once."""

    fired = False

    @hookimpl
    def liser_epoch_end(self, stage, epoch):
        if stage == "distil" and not type(self).fired:
            type(self).fired = True
            raise KeyboardInterrupt


def test_a_resumed_run_keeps_what_earlier_sessions_timed_warned_and_fitted(run_tiny, tmp_path):
    """Resumed mid-distillation with a store: the teach stage keeps the time it took (it was
    this session's 0.05 s), the earlier session's warnings stay in metrics.json, and teachers
    the run fitted itself are not "reused from the store"."""
    import json

    from liser_core import load_plugins

    host = load_plugins()
    host.add("stop", _StopOnce())
    over = [f"store={tmp_path / 'store'}", "distil.epochs=3", "distil.include_labeled=false"]  # ce never applies: a warning
    with pytest.raises(KeyboardInterrupt):
        run_tiny(overrides=over, host=host)
    state = json.loads((tmp_path / "run" / "state" / "run.json").read_text())
    teach = state["stage_seconds"]["teach"]
    assert teach > 0 and "distil" in state["stage_seconds"] and "distil" not in state["completed"]
    ctx = run_tiny(overrides=over, host=host)
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["stage_seconds"]["teach"] == pytest.approx(teach)
    manifest = json.loads((ctx.run_dir / "manifest.json").read_text())
    assert manifest["started"] <= manifest["resumed"]  # when the run started, and when this session did
    assert metrics["stage_seconds"]["distil"] > state["stage_seconds"]["distil"]  # both sessions' time
    assert sum("never applies" in w for w in metrics["warnings"]) == 1
    assert all(not f["reused"] for f in metrics["diagnostics"]["teacher_fits"].values())
    # the feature cache's counts are every session's (they were the last session's alone)
    first = state["feature_cache"]
    last = metrics["diagnostics"]["feature_cache"]
    # (misses or hits: the disk cache may be warm from other runs in this process's cache folder)
    assert all(last[k] >= first[k] for k in ("hits", "misses", "from_disk"))  # the first session's counts are kept
    assert first["hits"] + first["misses"] > 0 and last["hits"] + last["misses"] > first["hits"] + first["misses"]


def test_a_run_resumed_with_another_thread_count_says_so_in_its_record(run_tiny, tmp_path):
    """threads=2 on resume (a resume-free key) changes the floating-point results; it was said
    on the console and in state/run.json, not in metrics.json, where the scores are."""
    import json

    from liser_core import load_plugins

    host = load_plugins()
    _StopOnce.fired = False
    host.add("stop", _StopOnce())
    with pytest.raises(KeyboardInterrupt):
        run_tiny(overrides=["distil.epochs=2"], host=host)
    ctx = run_tiny(overrides=["distil.epochs=2", "threads=2"], host=host)
    warnings = json.loads((ctx.run_dir / "metrics.json").read_text())["warnings"]
    assert any(w.startswith("resumed with threads=2 (its earlier stages ran with threads=1): floating-point results "
                            "depend on it") for w in warnings), warnings
    sessions = json.loads((ctx.run_dir / "state" / "run.json").read_text())["sessions"]
    assert [x["threads"] for x in sessions] == [1, 2] and all("data.feature_cache" in x for x in sessions)


class _PeekMetrics:
    seen: list = []

    @hookimpl
    def liser_stage_start(self, run, stage):
        if stage == "distil":
            type(self).seen.append(json.loads((run.run_dir / "metrics.json").read_text()).get("status"))


def test_a_run_started_afresh_over_a_finished_one_never_reads_as_it(run_tiny):
    """--restart over a finished run: until it ends, its metrics.json says it is running (a kill
    -9 mid-run left the earlier run's "completed" record there, summarised as this run's)."""
    from liser_core import load_plugins

    first = run_tiny()
    assert json.loads((first.run_dir / "metrics.json").read_text())["status"] == "completed"
    host = load_plugins()
    host.add("peek", _PeekMetrics())
    _PeekMetrics.seen.clear()
    from liser_core.engine import Engine, prepare_config
    from liser_tools.testing import TINY_OVERRIDES

    cfg = prepare_config(first.run_dir / "state" / "recipe.yaml", [*TINY_OVERRIDES, f"run_dir={first.run_dir}"], host)
    Engine(cfg, host, resume="restart").execute()
    assert _PeekMetrics.seen == ["running"]
    assert json.loads((first.run_dir / "metrics.json").read_text())["status"] == "completed"


class _Epochs:
    seen: list = []

    @hookimpl
    def liser_epoch_end(self, stage, epoch, replayed):
        if stage == "distil":
            type(self).seen.append((epoch, replayed))


def test_an_epoch_told_to_hooks_before_its_checkpoint_was_on_disk_is_a_replay_after_a_kill(run_tiny, tmp_path):
    """The epoch's checkpoint is written during the next epoch; a kill -9 in between left an
    epoch told to loggers but not saved, and the resumed run told it again as new (an epoch twice
    in a logger's CSV). The engine records the last epoch told per model: recomputed, it is a
    replay. (The kill is staged: the record says epoch 1 was told, the checkpoint has epoch 0.)"""
    from liser_core import load_plugins

    host = load_plugins()
    host.add("stop", _StopOnce())
    _StopOnce.fired = False
    with pytest.raises(KeyboardInterrupt):
        run_tiny(overrides=["distil.epochs=3"], host=host)
    state_file = tmp_path / "run" / "state" / "run.json"
    state = json.loads(state_file.read_text())
    state["announced"] = {**state.get("announced", {}), "distil/student": 1}
    state_file.write_text(json.dumps(state))
    host = load_plugins()
    host.add("epochs", _Epochs())
    _Epochs.seen.clear()
    run_tiny(overrides=["distil.epochs=3"], host=host)
    assert _Epochs.seen == [(0, True), (1, True), (2, False)]

"""Bad input, second round: recipes, saved students, `liser predict` and plugins that exit.

Every case ends in one line naming the culprit (exit 2 for usage errors) and writes nothing;
nothing ends in a traceback or a silent wrong answer."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from liser_core import Student, UsageError, load_plugins
from liser_core.labels import RAVDESS8
from liser_core.testing import TINY_OVERRIDES, TINY_RECIPE
from liser_plugins.corpora import fixtures
from liser_tools.cli import main


def one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln]
    assert err and err[-1].startswith("liser: error: ") and not any("Traceback" in ln for ln in err), err
    return err[-1]


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


RECIPE_CASES = {
    "self_reference": ("name: ${name}", "name: Recursive interpolation"),
    "missing_reference": ("name: ${nowhere}", "name: Interpolation key 'nowhere' not found"),
    "huge_seed": ("seed: 1180591620717411303424", "seed: "),
    "float_seed": ("seed: 1e17", "seed: "),
    "lr_as_text": ("distil: {lr: '0.01', losses: [{name: ce}]}", "distil.lr: '0.01' is text"),
    "bogus_split": ("evaluate: {split: bogus}", "evaluate.split: 'bogus' is not a split"),
    "eval_batch_zero": ("evaluate: {batch_size: 0}", "evaluate.batch_size: 0 must be >= 1"),
    "weight_decay_negative": ("distil: {weight_decay: -1, losses: [{name: ce}]}", "distil.weight_decay: -1.0 must be >= 0"),
}
OVERRIDE_CASES = {
    "negative_threads": ("threads=-1", "threads: must be >= 1"),
    "teacher_batch_zero": ("teachers.0.fit.batch_size=0", "teachers.0.fit.batch_size: 0 must be >= 1"),
    "teacher_lr_negative": ("teachers.0.fit.lr=-1", "teachers.0.fit.lr: -1.0 must be > 0"),
    "teacher_epochs_negative": ("teachers.1.fit.epochs=-5", "teachers.1.fit.epochs: -5 must be >= 0"),
    "empty_channels": ("student.options={channels: []}", "student.options: student 'logmel_cnn' rejected its options: channels is empty"),
    "zero_channels": ("student.options={channels: [0]}", "channels must be widths in [1, 8192], got [0]"),
    "duplicate_teacher": ("teachers=[{name: audio_cnn}, {name: audio_cnn}]", "teachers.1: is the same teacher as teachers.0"),
    "temperature_zero": ("distil.losses=[{name: kl, options: {temperature: 0}}]", "distil.losses.0.options"),
    "no_teachers_kl": ("teachers=[]", "distil.losses.0: loss 'kl' needs a teacher"),
    "untrained_teacher": ("teachers.1.fit.epochs=0", "teachers.1.fit.epochs: 0 epochs fit nothing"),
    "augment_breaks_student": ("distil.augment=[{name: speed, options: {factors: [100]}}]",
                               "distil.augment: preflight: the student fails on clips as these augmentations leave them"),
    "label_smoothing_negative": ("distil.losses=[{name: kl}, {name: ce, options: {label_smoothing: -0.5}}]",
                                 "label_smoothing must be in [0, 1]"),
    "all_weights_zero": ("distil.losses=[{name: kl, weight: 0}, {name: ce, weight: 0}]",
                         "distil.losses: every loss term has weight 0"),
    "unknown_key_in_a_list_item": ("distil.augment=[{name: gain, opts: {p: 0.5}}]",
                                   "distil.augment.0.opts: unknown key 'opts'; did you mean 'options'?"),
    "lr_of_a_parameterless_loss": ("distil.losses=[{name: kl, lr: 0.5}]", "distil.losses.0.lr: loss 'kl' has no parameters"),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_bad_recipe_values_exit_2_with_one_line_and_write_nothing(case, recipe, tmp_path, capsys):
    line, expect = RECIPE_CASES[case]
    recipe.write_text(TINY_RECIPE + line + "\n")  # a repeated top-level key: the last one counts
    assert main(["run", str(recipe), *TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}"]) == 2
    assert expect in one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_ce_without_labeled_clips_in_distillation_is_said(recipe, tmp_path):
    assert main(["run", str(recipe), *TINY_OVERRIDES, "distil.include_labeled=false", f"run_dir={tmp_path / 'run'}"]) == 0
    warnings = json.loads((tmp_path / "run" / "metrics.json").read_text())["warnings"]
    assert any("distil.losses.1: loss 'ce' learns from labeled clips" in w and "never applies" in w for w in warnings)


@pytest.mark.parametrize("case", list(OVERRIDE_CASES))
def test_bad_overrides_exit_2_with_one_line_and_write_nothing(case, recipe, tmp_path, capsys):
    override, expect = OVERRIDE_CASES[case]
    assert main(["run", str(recipe), *TINY_OVERRIDES, override, f"run_dir={tmp_path / 'run'}"]) == 2
    assert expect in one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_garbage_and_alias_bombs_are_not_recipes(tmp_path, capsys):
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(128, 256)) * 4)
    assert main(["run", str(garbage), f"run_dir={tmp_path / 'run'}"]) == 2
    assert "not UTF-8 text" in one_line(capsys)
    bomb = tmp_path / "bomb.yaml"
    lines = ["a: &a [1,1,1,1,1,1,1,1,1]"] + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(7)]
    bomb.write_text("\n".join(lines) + "\n")
    assert len(bomb.read_bytes()) < 600
    assert main(["run", str(bomb), f"run_dir={tmp_path / 'run'}"]) == 2
    assert "expands to more than 100,000 values" in one_line(capsys)
    assert not (tmp_path / "run").exists()


# -- saved students ---------------------------------------------------------------------------------


@pytest.fixture
def saved_student(tmp_path):
    host = load_plugins()
    torch.manual_seed(0)
    student = host.registries.student.build("logmel_cnn", label_space=RAVDESS8, channels=[4, 8])
    student.liser_spec = {"name": "logmel_cnn", "options": {"channels": [4, 8]}}
    student.save_pretrained(tmp_path / "student", train_seconds=1.0)
    return tmp_path / "student"


def _edit(directory: Path, fn, saved_so: bool = False) -> None:
    cfg = json.loads((directory / "config.json").read_text())
    if saved_so:  # as another version of LiSER or the plugin would have saved it (weights' marker too)
        from liser_tools.testing import resave_config

        resave_config(directory, fn(cfg))
    else:
        (directory / "config.json").write_text(json.dumps(fn(cfg)))


#: saved so (config.json and the weights' marker agree): what a factory of today refuses
SAVED_SO = {"extra_option", "huge_channels"}
STUDENT_CASES = {
    "edited_options": (lambda c: {**c, "options": {**c["options"], "channels": [4, 16]}},
                       "options differs from what model.safetensors was saved with"),
    "extra_option": (lambda c: {**c, "options": {**c["options"], "hiden": 3}}, "rejects the saved options"),
    "options_null": (lambda c: {**c, "options": None}, "needs 'name' (text) and 'options' (a mapping)"),
    "no_label_space": (lambda c: {k: v for k, v in c.items() if k != "label_space"}, "'label_space' is not a label space"),
    "unknown_class": (lambda c: {**c, "label_space": {"name": "x", "classes": ["happy", "bored"]}}, "'bored' is not a canonical emotion"),
    "a_json_list": (lambda c: [c], "is a JSON object, not a list"),
    "bad_train_seconds": (lambda c: {**c, "train_seconds": "long"}, "train_seconds 'long' is not a window length"),
    "huge_channels": (lambda c: {**c, "options": {"channels": [10**9]}}, "channels must be widths in [1, 8192]"),
}


@pytest.mark.parametrize("case", list(STUDENT_CASES))
def test_a_broken_saved_student_is_one_line(case, saved_student, tmp_path, capsys):
    fn, expect = STUDENT_CASES[case]
    _edit(saved_student, fn, saved_so=case in SAVED_SO)
    wav = fixtures.write_wav(tmp_path / "a.wav", seconds=0.5)
    assert main(["predict", str(saved_student), str(wav)]) == 2
    assert expect in one_line(capsys)


def test_weights_of_the_wrong_shape_or_not_finite_are_refused(saved_student, capsys):
    state = load_file(str(saved_student / "model.safetensors"))
    key = next(k for k, v in state.items() if v.ndim == 4)
    shapes = dict(state)
    shapes[key] = torch.zeros(3, *state[key].shape[1:])
    save_file(shapes, str(saved_student / "model.safetensors"))
    with pytest.raises(UsageError, match="size mismatch"):
        Student.from_pretrained(saved_student)
    nan = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in state.items()}
    save_file(nan, str(saved_student / "model.safetensors"))
    with pytest.raises(UsageError, match="non-finite"):
        Student.from_pretrained(saved_student)


# -- liser predict ----------------------------------------------------------------------------------


def test_predict_names_bad_files_and_goes_on(saved_student, tmp_path, capsys):
    folder = tmp_path / "clips"
    for i in range(4):
        fixtures.write_wav(folder / f"good{i}.wav", seconds=0.6, seed=i)
    fixtures.write_wav(folder / "a1ms.wav", np.ones(16, np.float32) * 0.1, 16000)
    fixtures.write_wav(folder / "b1sample.wav", np.ones(1, np.float32) * 0.1, 16000)
    cut = fixtures.write_wav(folder / "c_cut.wav", seconds=1.0)
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    assert main(["predict", str(saved_student), str(folder), "--jsonl"]) == 1
    captured = capsys.readouterr()
    rows = [json.loads(ln) for ln in captured.out.splitlines()]
    assert sorted(Path(r["path"]).name for r in rows) == [f"good{i}.wav" for i in range(4)]  # every good file, after the bad ones
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("liser: error:")]
    assert len(errors) == 3 and "Traceback" not in captured.err
    assert any("a1ms.wav: too short" in e for e in errors) and any("c_cut.wav: truncated" in e for e in errors)


@pytest.mark.parametrize("window", ["-1", "0.001", "1e-9", "nan", "inf"])
def test_predict_window_is_a_usage_error(window, saved_student, tmp_path, capsys):
    wav = fixtures.write_wav(tmp_path / "a.wav", seconds=0.5)
    assert main(["predict", str(saved_student), str(wav), "--window", window]) == 2
    assert "--window" in one_line(capsys)


def test_long_inputs_are_scored_a_few_windows_at_a_time(saved_student):
    from liser_tools.deploy import Predictor

    audio = fixtures.tone(40.0, 16000)
    chunked = Predictor(saved_student, window=1.0, chunk=8)
    whole = Predictor(saved_student, window=1.0, chunk=10_000)
    p1, n1 = chunked.probs(audio)
    p2, n2 = whole.probs(audio)
    assert n1 == n2 == 79 and torch.allclose(p1, p2, atol=1e-6)


# -- plugins that exit ----------------------------------------------------------------------------------


def test_a_plugin_exiting_on_import_or_in_a_hook_fails_alone(fake_distribution, monkeypatch, tmp_path, recipe, capsys):
    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "exits_on_import.py").write_text("raise SystemExit(3)\n")
    (src / "exits_in_hook.py").write_text(
        "import sys\nfrom liser_core import hookimpl\n\n@hookimpl\ndef liser_epoch_end():\n    sys.exit(0)\n"
    )
    fake_distribution("exits", {"exits_on_import": "exits_on_import", "exits_in_hook": "exits_in_hook"}, path=src)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "exits_on_import" in out and "failed" in out and "SystemExit: 3" in out
    assert main(["run", str(recipe), *TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}"]) == 0  # the run goes on
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    shutil.rmtree(tmp_path / "run")

import os
import subprocess
import sys

import pytest

from liser_core.testing import TINY_OVERRIDES, TINY_RECIPE
from liser_tools.cli import main


def test_list_students(capsys):
    assert main(["list", "students"]) == 0
    out = capsys.readouterr().out
    assert "logmel_cnn" in out and "students (" in out and "teachers (" not in out


def test_list_teachers_with_wildcard(capsys):
    assert main(["list", "teachers", "face*"]) == 0
    out = capsys.readouterr().out
    assert "face_cnn" in out and "audio_cnn" not in out and "modality=face" in out


def test_list_everything_and_unknown_kind(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("teachers", "students", "losses", "datasets", "loggers"):
        assert kind in out
    assert main(["list", "studnets"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'student'" in err


def test_plugins_command(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "synth_av" in out and "liser" in out and "loaded" in out and "0.1.0" in out


@pytest.mark.parametrize("cmd", [[], ["run"], ["list"], ["plugins"]])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: liser" in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2


def test_dry_run_prints_resolved_recipe_and_writes_nothing(capsys, tmp_path):
    from liser_core.testing import TINY_OVERRIDES

    data = next(o for o in TINY_OVERRIDES if o.startswith("data.options="))  # a small corpus: quick
    assert main(["run", "recipes/synth_kd.yaml", "--dry-run", "distil.epochs=2", data, f"run_dir={tmp_path / 'run'}"]) == 0
    captured = capsys.readouterr()
    assert "epochs: 2" in captured.out and "logmel_cnn" in captured.out
    assert "every component built and run once on real clips" in captured.err
    assert not (tmp_path / "run").exists()


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "liser_tools.cli", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_bad_recipe_key_exits_2_with_one_line_and_no_traceback():
    r = run_cli("run", "recipes/synth_kd.yaml", "distil.epocs=3")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "distil.epocs" in lines[0] and "'epochs'" in lines[0]
    assert "Traceback" not in r.stderr


def test_misspelt_component_exits_2_with_close_match(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(open("recipes/synth_kd.yaml").read().replace("name: logmel_cnn", "name: logmel_cn"))
    r = run_cli("run", str(bad))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "student.name" in r.stderr and "'logmel_cnn'" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_recipe_exits_2(capsys):
    assert main(["run", "no/such/recipe.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_tiny_run_prints_the_final_table(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    assert main(["run", str(recipe), "-q", *TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    for word in ("face_cnn", "audio_cnn", "student", "WA (acc)", "UAR", "macro-F1", "chance UAR"):
        assert word in out
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_factory_that_rejects_its_options_exits_2(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    code = main(["run", str(recipe), *TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}",
                 "distil.losses=[{name: kl, options: {temperature: 0.0}}]"])
    assert code == 2
    err = capsys.readouterr().err
    assert "distil.losses.0.options" in err and "temperature must be > 0" in err


def test_plugins_strict_prints_table_then_fails(fake_distribution, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "tp_bad.py").write_text("raise ImportError('nope')\n")
    fake_distribution("tp-bad", {"tp_bad": "tp_bad"}, path=src)
    assert main(["plugins", "--strict-plugins"]) == 2  # a broken plugin environment is a usage error (docs/plugins.md)
    captured = capsys.readouterr()
    assert "tp_bad" in captured.out and "failed" in captured.out and "nope" in captured.out
    assert "--strict-plugins" in captured.err
    assert main(["plugins"]) == 0


def test_invalid_yaml_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distil: [1\n")
    r = run_cli("run", str(bad))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "invalid YAML" in r.stderr and str(bad) in r.stderr and "Traceback" not in r.stderr

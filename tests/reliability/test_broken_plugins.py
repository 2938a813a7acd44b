"""A broken third-party plugin package installed beside a good one, in a real ``liser`` process:
the good one's student trains, the broken ones are reported, ``--strict-plugins`` refuses."""

from __future__ import annotations

import os
import subprocess
import sys

from faults import REPO

from liser_core.testing import TINY_OVERRIDES, write_dist_info

GOOD = '''
from liser_core import hookimpl


@hookimpl
def liser_register_students(registry):
    from liser_plugins.logmel_cnn import LogMelCNN

    registry.register("good_student", LogMelCNN)
'''

BROKEN = "import this_module_does_not_exist_anywhere\n"

CRASHES_IN_A_RUN = '''
from liser_core import hookimpl


@hookimpl
def liser_epoch_end(run, stage, epoch):
    raise RuntimeError("logger crashed")
'''


def _install(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    for name, code in {"good_pkg": GOOD, "broken_pkg": BROKEN, "noisy_pkg": CRASHES_IN_A_RUN}.items():
        (site / f"{name}.py").write_text(code)
        write_dist_info(site, name.replace("_", "-"), "1.0", {name: name})
    return {**os.environ, "PYTHONPATH": str(site)}


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "liser_tools.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_broken_plugin_beside_a_good_one(tmp_path):
    env = _install(tmp_path)
    table = _cli(["plugins"], env)
    assert table.returncode == 0
    rows = {ln.split()[0]: ln for ln in table.stdout.splitlines() if ln and not ln.startswith(" ")}
    assert "loaded" in rows["good_pkg"] and "failed" in rows["broken_pkg"]
    assert "this_module_does_not_exist_anywhere" in table.stdout

    run = _cli(["run", "recipes/synth_kd.yaml", *TINY_OVERRIDES, "student.name=good_student",
                "student.options={channels: [4, 8]}", "teachers=[]", "distil.losses=[{name: ce}]",
                f"run_dir={tmp_path / 'run'}"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "broken_pkg" in run.stderr and "failed to load" in run.stderr
    assert "logger crashed" in run.stderr  # reported as a warning; the run went on
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file()

    strict = _cli(["run", "recipes/synth_kd.yaml", "--strict-plugins", "--dry-run"], env)
    assert strict.returncode != 0 and "broken_pkg" in strict.stderr and "Traceback" not in strict.stderr

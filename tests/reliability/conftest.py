from __future__ import annotations

from pathlib import Path

import pytest
from faults import RESUME_OVERRIDES, SIGNAL_AT, run_cli

from liser_core.testing import TINY_RECIPE


@pytest.fixture
def tiny_recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


@pytest.fixture
def liser_process(tmp_path):
    """``liser_process(args, fault=None)`` runs the CLI in a fresh process;
    ``fault=(stage, model, step, "SIGKILL"|"SIGINT")`` signals it at that checkpoint."""

    def go(args: list[str], fault: tuple[str, str, int, str] | None = None):
        if fault is None:
            return run_cli(args)
        stage, model, step, sig = fault
        plugin = SIGNAL_AT.format(stage=stage, model=model, step=step, signal=sig)
        return run_cli(args, site=tmp_path / "site-fault", plugin=plugin)

    return go


@pytest.fixture(scope="session")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted reference run, in a fresh process like the interrupted ones."""
    d = tmp_path_factory.mktemp("straight")
    recipe = d / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    p = run_cli(["run", str(recipe), *RESUME_OVERRIDES, f"run_dir={d / 'run'}"])
    assert p.returncode == 0, p.stderr[-3000:]
    return d / "run"

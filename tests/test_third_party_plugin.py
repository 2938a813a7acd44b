"""A third-party package (examples/liser-example-plugin) extends LiSER without touching the core.

The package is made discoverable exactly as after ``pip install`` (a ``.dist-info`` with a
``liser`` entry point on ``sys.path``) by the ``fake_distribution`` fixture.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

import liser_core
from liser_core import BatchTargets, LabelMap, LabelSpace, ModelOutput
from liser_core.checkpoint import load_component
from liser_core.errors import ConfigError
from liser_tools.cli import main as cli_main

REPO = Path(__file__).parents[1]
EXAMPLE_SRC = REPO / "examples" / "liser-example-plugin" / "src"
DIST, VERSION, PLUGIN, MODULE = "liser-example-plugin", "0.1.0", "example", "liser_example.plugin"

EXAMPLE_OVERRIDES = [
    "student.name=example_gru",
    "student.options={hidden: 16}",  # replaces the tiny recipe's logmel_cnn options
    "distil.losses=[{name: symmetric_kl, options: {temperature: 2.0}}, {name: ce, weight: 0.5}]",
]


@pytest.fixture
def example_installed(fake_distribution, monkeypatch):
    """``liser-example-plugin`` 0.1.0 as an installed distribution, auto-loading on."""
    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    fake_distribution(DIST, {PLUGIN: MODULE}, version=VERSION, path=EXAMPLE_SRC)
    yield
    # the fixture only forgets modules imported from its temporary folder; ours live in the repo
    for name in [m for m in sys.modules if m == "liser_example" or m.startswith("liser_example.")]:
        del sys.modules[name]


@pytest.fixture
def host(example_installed):
    return liser_core.load_plugins()


def test_discovered_through_entry_point(host):
    info = {p.name: p for p in host.plugins}[PLUGIN]
    assert (info.status, info.distribution, info.version, info.module) == ("loaded", DIST, VERSION, MODULE)
    assert info.components == {"student": ["example_gru"], "loss": ["annealed_kl", "attention_transfer", "energy_contour", "symmetric_kl"], "teacher": ["prosody"], "combiner": ["confidence"], "augmentation": ["polarity"], "logger": ["epoch_csv"],
                               "optimizer": ["sign_sgd"], "scheduler": ["linear_decay"], "sampler": ["speaker_mix"]}
    assert "example_gru" in host.registries.student
    assert "symmetric_kl" in host.registries.loss
    assert host.registries.student.get("example_gru").plugin == PLUGIN
    assert host.registries.loss.get("symmetric_kl").summary.startswith("0.5 (KL(p||q) + KL(q||p))")


def test_absent_without_the_distribution():
    host = liser_core.load_plugins()
    assert PLUGIN not in {p.name for p in host.plugins}
    assert "example_gru" not in host.registries.student


@pytest.mark.slow
def test_tiny_run_with_example_components(host, run_tiny):
    ctx = run_tiny(overrides=EXAMPLE_OVERRIDES, host=host)

    student = ctx.results()["student"]
    assert student["role"] == "student"
    assert math.isfinite(student["uar"]) and 0.0 <= student["uar"] <= 1.0
    assert type(ctx.student).__name__ == "GRUStudent" and ctx.student.embedding_dim == 16
    assert list(ctx.losses) == ["symmetric_kl", "ce"]

    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["corpus"], metrics["split"]) == ("completed", "synth_av", "test")
    assert metrics["student"]["uar"] == pytest.approx(student["uar"])
    assert metrics["student"]["num_parameters"] == ctx.student.num_parameters()

    history = [json.loads(line) for line in (ctx.run_dir / "history.jsonl").read_text().splitlines()]
    distil = [h for h in history if h["stage"] == "distil"]
    assert distil and all(math.isfinite(h["loss/symmetric_kl"]) for h in distil)

    config = yaml.safe_load((ctx.run_dir / "config.yaml").read_text())
    # the run's record names each component as PLUGIN:NAME (docs/plugins.md, Names)
    assert config["student"] == {"name": "example:example_gru", "options": {"hidden": 16}}
    assert [loss["name"] for loss in config["distil"]["losses"]] == ["example:symmetric_kl", "losses:ce"]

    manifest = json.loads((ctx.run_dir / "manifest.json").read_text())
    assert {"name": PLUGIN, "package": DIST, "version": VERSION, "status": "loaded"} in manifest["plugins"]

    # the saved student is rebuilt through the registry with the options it was trained with
    saved = json.loads((ctx.run_dir / "student" / "config.json").read_text())
    assert (saved["name"], saved["options"]) == ("example_gru", {"hidden": 16})
    reloaded = load_component(ctx.run_dir / "student", host.registries.student, kind="student").eval()
    audio = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 5000])
    ctx.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(audio, lengths).logits, ctx.student(audio, lengths).logits)


def test_options_are_validated(host, run_tiny):
    with pytest.raises(ConfigError) as err:
        run_tiny(overrides=[*EXAMPLE_OVERRIDES, "student.options.hidden=big"], host=host)
    assert str(err.value) == "student.options.hidden: 'big' is not a valid int for student 'example_gru'"
    with pytest.raises(ConfigError) as err:
        run_tiny(overrides=[*EXAMPLE_OVERRIDES, "distil.losses.0.options.temprature=1.0"], host=host)
    assert err.value.key == "distil.losses.0.options.temprature"
    assert err.value.suggestions == ("temperature",)


# -- symmetric_kl against numbers computed by hand ---------------------------------------------

TWO = LabelSpace("two", ("happy", "sad"))


def _targets(teacher_probs: list[list[float]], temperature: float) -> BatchTargets:
    """One teacher whose softmax at ``temperature`` is exactly ``teacher_probs``."""
    logits = torch.tensor(teacher_probs, dtype=torch.float64).log() * temperature
    return BatchTargets(
        logits={"t": logits}, embeddings={}, label_maps={"t": LabelMap(TWO, TWO)}, weights={"t": 1.0}
    )


def _student(probs: list[list[float]], temperature: float) -> ModelOutput:
    logits = torch.tensor(probs, dtype=torch.float64).log() * temperature
    return ModelOutput(logits, torch.zeros(len(probs), 1))


def test_symmetric_kl_by_hand(host):
    loss = host.registries.loss.build("symmetric_kl", temperature=2.0)
    assert loss.needs_teacher
    # row 1: teacher (0.8, 0.2), student (0.5, 0.5); row 2: teacher (0.1, 0.9), student (0.6, 0.4)
    kl_pq_1 = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)  # 0.19274...
    kl_qp_1 = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)  # 0.22314...
    kl_pq_2 = 0.1 * math.log(0.1 / 0.6) + 0.9 * math.log(0.9 / 0.4)  # 0.55066...
    kl_qp_2 = 0.6 * math.log(0.6 / 0.1) + 0.4 * math.log(0.4 / 0.9)  # 0.75068...
    expected = 0.5 * ((kl_pq_1 + kl_qp_1) + (kl_pq_2 + kl_qp_2)) / 2 * 2.0**2
    assert expected == pytest.approx(1.717233, abs=1e-6)

    value = loss(_student([[0.5, 0.5], [0.6, 0.4]], 2.0), None, _targets([[0.8, 0.2], [0.1, 0.9]], 2.0))
    assert value.ndim == 0
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_symmetric_kl_zero_when_equal_and_none_without_teacher(host):
    loss = host.registries.loss.build("symmetric_kl", temperature=3.0)
    probs = [[0.3, 0.7], [0.95, 0.05]]
    assert loss(_student(probs, 3.0), None, _targets(probs, 3.0)).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(_student(probs, 3.0), None, _targets([[0.7, 0.3], [0.05, 0.95]], 3.0)).item() > 0.1
    assert loss(_student(probs, 3.0), None, None) is None


# -- the command line sees it ------------------------------------------------------------------


def _listed(out: str) -> list[str]:
    """Component names in ``liser list`` output (indented rows under each kind's header)."""
    return [row.split()[0] for row in out.splitlines() if row.startswith("  ")]


def test_cli_lists_the_example(example_installed, capsys):
    assert cli_main(["list", "students"]) == 0
    out = capsys.readouterr().out
    assert "example_gru" in _listed(out)
    assert next(r for r in out.splitlines() if r.split()[0] == "example_gru").endswith(f"({PLUGIN})")

    assert cli_main(["plugins"]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith(PLUGIN + " "))
    assert row.split()[:4] == [PLUGIN, DIST, VERSION, "loaded"]


def test_cli_blocks_and_selects_the_example(example_installed, capsys, monkeypatch):
    assert cli_main(["list", "students", "-p", f"no:{PLUGIN}"]) == 0
    listed = _listed(capsys.readouterr().out)
    assert "logmel_cnn" in listed and "example_gru" not in listed

    monkeypatch.setenv("LISER_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert cli_main(["list", "students", "-p", PLUGIN]) == 0
    assert _listed(capsys.readouterr().out) == ["example_gru"]

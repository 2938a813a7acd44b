"""Test helpers for LiSER and for plugin authors (a pytest plugin, loaded automatically).

Fixtures:

``liser_host``
    A :class:`~liser_core.PluginHost` with every installed plugin loaded.
``fake_distribution``
    ``fake_distribution(name, entry_points={"my_plugin": "my_pkg.plugin"}, path=src_dir)``
    makes an installed-looking distribution (a ``.dist-info`` folder on ``sys.path``) so
    that ``importlib.metadata`` finds its ``liser`` entry points exactly as after
    ``pip install`` — no pip, no network.
``run_tiny``
    ``run_tiny(recipe=None, overrides=[...], host=None)`` runs a recipe on a tiny synth_av
    corpus with one epoch per stage (seconds, not minutes) in a temporary run directory and
    returns the :class:`~liser_core.RunContext`.

Conformance checks, one line each (:mod:`liser_tools.checks`): ``check_student``,
``check_teacher``, ``check_loss``, ``check_dataset``, ``check_combiner``, ``check_augmentation``,
``check_sampler``.

Example (in a plugin package's own tests)::

    def test_my_student_runs(fake_distribution, run_tiny):
        fake_distribution("my-plugin", {"my_plugin": "my_pkg.plugin"}, path="src")
        ctx = run_tiny(overrides=["student.name=my_student"])
        assert ctx.results()["student"]["uar"] >= 0
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

#: Overrides that shrink recipes/synth_kd.yaml-like runs to a few seconds.
TINY_OVERRIDES = [
    "data.name=synth_av",
    "data.options={classes: ravdess8, seconds: 0.5, frames: 4, teacher_speakers: 2,"
    " labeled_speakers: 1, unlabeled_speakers: 2, test_speakers: 1, teacher_clips: 1,"
    " labeled_clips: 1, unlabeled_clips: 1, test_clips: 1}",
    "distil.epochs=1",
    "distil.batch_size=16",
    "baseline.enabled=false",
    "finetune.epochs=0",
    "loggers={run_dir: {confusion_png: false}}",
    "threads=1",
]

#: A complete recipe for tiny runs: two fitted teachers, the log-mel student, kl + ce.
TINY_RECIPE = """\
name: tiny
seed: 0
data: {name: synth_av}
teachers:
  - {name: face_cnn, weight: 0.7, fit: {epochs: 1, batch_size: 16}, options: {channels: [4, 8], hidden: 16}}
  - {name: audio_cnn, weight: 0.3, fit: {epochs: 1, batch_size: 16}, options: {channels: [4, 8], hidden: 16}}
student: {name: logmel_cnn, options: {channels: [4, 8]}}
distil:
  losses:
    - {name: kl, options: {temperature: 2.0}}
    - {name: ce, weight: 0.5}
"""


def write_dist_info(root: Path, name: str, version: str, entry_points: dict[str, str]) -> Path:
    """Write ``<name>-<version>.dist-info`` with METADATA and a ``liser`` entry-point group."""
    norm = name.replace("-", "_")
    info = root / f"{norm}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[liser]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return info


def resave_config(folder: str | Path, config: dict) -> dict:
    """Write ``config`` as a saved component's ``config.json`` *and* into its weights' marker, as
    LiSER would have saved them (a test of a component saved by another version of a plugin or
    of LiSER; a plain edit of ``config.json`` is refused on load). Returns the config written,
    with the new ``weights_sha256``."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from liser_common.provenance import sha256_file
    from liser_common.weights import canonical_header
    from liser_core.checkpoint import CONFIG_NAME, DEFINING_KEYS, MARKER_KEY, WEIGHTS_NAME

    folder = Path(folder)
    weights = folder / WEIGHTS_NAME
    with safe_open(str(weights), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    marker = json.loads(meta.get(MARKER_KEY) or "{}")
    marker["config"] = json.loads(json.dumps({k: config[k] for k in DEFINING_KEYS if k in config}, default=str))
    meta[MARKER_KEY] = json.dumps(marker, sort_keys=True)
    save_file(tensors, str(weights), metadata=meta)
    canonical_header(weights)
    config = {**config, "weights_sha256": sha256_file(weights)}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return config


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    made = []

    def make(name: str, entry_points: dict[str, str], *, version: str = "0.0.1", path=None):
        # a folder of its own: the same package faked twice, or also really installed, is found
        # first here (importlib.metadata keeps the first distribution of a name on sys.path)
        made.append(name)
        site = tmp_path / f"site-{len(made)}-{name}"
        write_dist_info(site, name, version, entry_points)
        monkeypatch.syspath_prepend(str(site))
        if path is not None:
            monkeypatch.syspath_prepend(str(path))
            # an installed copy of the same modules, imported before, must not answer for these
            tops = {v.split(":")[0].split(".")[0] for v in entry_points.values()}
            for mod in [m for m in sys.modules if m.split(".")[0] in tops]:
                monkeypatch.delitem(sys.modules, mod)
        return site

    yield make
    # modules imported from the fake distribution must not leak into other tests
    # read __dict__, not getattr: getattr triggers lazily loaded modules (speechbrain) mid-loop
    for mod in [
        m
        for m, v in list(sys.modules.items())
        if str(tmp_path) in str((getattr(v, "__dict__", None) or {}).get("__file__") or "")
    ]:
        del sys.modules[mod]


@pytest.fixture
def liser_host():
    from liser_core import load_plugins

    return load_plugins()


@pytest.fixture
def run_tiny(tmp_path):
    from liser_core import run

    def go(recipe: str | Path | None = None, overrides=(), host=None):
        if recipe is None:
            recipe = tmp_path / "tiny.yaml"
            recipe.write_text(TINY_RECIPE)
        return run(
            recipe,
            [*TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}", *overrides],
            host=host,
        )

    return go


_CHECKS = ("CheckFailed", "check_augmentation", "check_combiner", "check_dataset", "check_loss", "check_sampler",
           "check_student", "check_teacher")


def __getattr__(name: str):
    """The conformance checks (liser_tools.checks), imported on first use: this module is a
    pytest plugin loaded in every test session, and should not import torch for it."""
    if name in _CHECKS:
        from liser_tools import checks

        return getattr(checks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

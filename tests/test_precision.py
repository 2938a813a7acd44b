"""Mixed precision: autocast in training and inference, the fp16 gradient scaler, devices."""

from __future__ import annotations

import math

import pytest
import torch

from liser_core.engine import resolve_device
from liser_core.training import autocast


def test_autocast_contexts():
    x = torch.randn(4, 8)
    w = torch.randn(8, 3)
    with autocast(torch.device("cpu"), "bf16"):
        assert (x @ w).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (x @ w).dtype == torch.float32


def test_a_bf16_run_trains_and_scores(run_tiny):
    ctx = run_tiny(overrides=["precision=bf16", "distil.epochs=2"])
    r = ctx.results()
    assert all(math.isfinite(v["uar"]) for v in r.values())
    hist = ctx.run_dir / "history.jsonl"
    assert "nan" not in hist.read_text().lower()


def test_precision_is_validated(liser_host):
    from liser_core import ConfigError
    from liser_core.engine import prepare_config

    with pytest.raises(ConfigError) as e:
        prepare_config("recipes/synth_kd.yaml", ["precision=fp8"], liser_host)
    assert e.value.key == "precision"


def test_auto_device_falls_back_to_cpu_here():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("setting", ["precision=bf16", "store_dtype=float16"])
def test_a_store_changes_where_targets_are_kept_not_what_they_are(setting, run_tiny, tmp_path):
    """Every model's test probabilities are the same with a store and without one: teachers label
    under the recipe's autocast with a store too (``precision``, its outputs entries of their own),
    and ``store_dtype: float16`` rounds the targets without a store as a float16 store returns
    them (``store`` is a result-free key)."""
    with_store = run_tiny(overrides=[setting, f"store={tmp_path / 'store'}", f"run_dir={tmp_path / 'a'}"])
    without = run_tiny(overrides=[setting, f"run_dir={tmp_path / 'b'}"])
    a = {e.model: e.probs for e in with_store.evaluations}
    b = {e.model: e.probs for e in without.evaluations}
    assert a.keys() == b.keys() and len(a) >= 3
    for model in a:
        assert torch.equal(a[model], b[model]), model

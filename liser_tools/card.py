"""Model cards for saved students: moved to :mod:`liser_core.card` (the ``run_dir`` plugin writes
them, and plugins may not import ``liser_tools``); this name stays for existing imports."""

from __future__ import annotations

from liser_core.card import METRICS, model_card, write_model_card

__all__ = ["METRICS", "model_card", "write_model_card"]

"""An example third-party LiSER plugin: the ``example_gru`` student and the ``symmetric_kl`` loss.

LiSER loads :mod:`liser_example.plugin` through the ``liser`` entry-point group declared in this
package's ``pyproject.toml``; nothing here is imported by LiSER's core.
"""

from __future__ import annotations

from .plugin import GRUStudent, SymmetricKL

__version__ = "0.1.0"

__all__ = ["GRUStudent", "SymmetricKL"]

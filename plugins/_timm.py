"""timm model creation shared by the first-party timm components (face teacher, student)."""

from __future__ import annotations

from torch import nn

from liser_core.errors import close_matches


def create_model(timm, name: str, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``; an unknown name is a
    ``ValueError`` with the close matches (weights never come from the hub here)."""
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" not in str(exc):
            raise
        close = close_matches(name, timm.list_models())
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"timm has no model {name!r}{hint}") from None

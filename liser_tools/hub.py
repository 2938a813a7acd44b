"""Sharing a student on the Hugging Face Hub: moved to :mod:`liser_core.hub` (``Student.push_to_hub``
uses it, and liser_core may not import liser_tools); this name stays for ``liser push`` and
existing imports."""

from __future__ import annotations

from liser_core.hub import (
    DEFAULT_TIMEOUT,
    PUSHED,
    HubError,
    hub_timeout,
    network_error,
    push,
    timeouts,
)

__all__ = ["DEFAULT_TIMEOUT", "PUSHED", "HubError", "hub_timeout", "network_error", "push", "timeouts"]

import logging
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _determinism():
    torch.manual_seed(0)
    yield
    logging.getLogger("liser").handlers.clear()

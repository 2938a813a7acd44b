import logging
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# what validation logs reaches the console only once it passes (or after this many seconds):
# tests that check a refusal prints one line must not depend on how loaded the machine is
os.environ.setdefault("LISER_LOG_PATIENCE", "3600")


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """LiSER's cache (file digests, video manifests) in a temporary folder, never the home's."""
    os.environ["LISER_CACHE_DIR"] = str(tmp_path_factory.mktemp("liser-cache"))
    yield


@pytest.fixture(autouse=True)
def _determinism():
    torch.manual_seed(0)
    yield
    logging.getLogger("liser").handlers.clear()

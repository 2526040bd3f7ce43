"""Shared fixtures.

Real data (MovieLens 100k and latest-small) lives outside the repository in
``../shared/data``; tests that need it take the ``shared_data_dir`` fixture and skip with a
clear reason when it is absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# TFRS needs Keras 2; set before any test module imports TensorFlow, whatever the import order.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA_DIR = (REPO_ROOT / ".." / "shared" / "data").resolve()

# `python -m pytest` puts the checkout on sys.path; a bare `pytest` of a non-installed checkout
# does not, so make both work.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout; skips the test when it is not there."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA_DIR} (MovieLens lives outside the repo)")
    return SHARED_DATA_DIR


@pytest.hookimpl(trylast=True)  # after -m / -k deselected what will not run
def pytest_collection_modifyitems(config, items):
    """Starts the background jobs the selected tests need (tests/background.py)."""
    from tests import background

    background.start(config, items)


def pytest_unconfigure(config):
    from tests import background

    background.stop(config)

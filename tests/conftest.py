"""Shared fixtures.

Real data (MovieLens 100k and latest-small) lives outside the repository in
``../shared/data``; tests that need it take the ``shared_data_dir`` fixture and skip with a
clear reason when it is absent.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# TFRS needs Keras 2; set before any test module imports TensorFlow, whatever the import order.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA_DIR = (REPO_ROOT / ".." / "shared" / "data").resolve()
CHILDREN_TMPDIR = pytest.StashKey[tuple[Path, str | None]]()

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


def pytest_configure(config):
    """Gives every process the tests start a temporary directory of the session's own.

    Several tests kill a job or a server on purpose; TensorFlow's autograph leaves its
    generated files behind in a killed process's temporary directory, and they would pile up
    in ``/tmp`` session after session. This process keeps its own (``tmp_path`` lives there).
    """
    tempfile.gettempdir()  # cached now, so only the children see the new TMPDIR
    children = Path(tempfile.mkdtemp(prefix="vidrec-test-children-"))
    config.stash[CHILDREN_TMPDIR] = (children, os.environ.get("TMPDIR"))
    os.environ["TMPDIR"] = str(children)


def pytest_unconfigure(config):
    from tests import background

    background.stop(config)
    children, previous = config.stash[CHILDREN_TMPDIR]
    shutil.rmtree(children, ignore_errors=True)
    if previous is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = previous

"""Fixtures shared by the serving tests: one tiny trained bundle for the whole session."""

from __future__ import annotations

import json
import shutil

import pytest

from core.bundle import BundleStore
from pipelines.jobs.train import train_job
from tests.tiny import SMALL_BODIES, small_platform, tiny_config, tiny_sections


@pytest.fixture(scope="session")
def serving_platform(tmp_path_factory):
    """``(data, config, root, bundle_id)``: a published tiny bundle under ``root/artifacts``.

    Tests may publish other bundles beside it but must point ``CURRENT`` back at it.
    """
    root = tmp_path_factory.mktemp("serving")
    data = small_platform(seed=1)
    # Plain TensorFlow on the request path: a LiteRT load costs ~12 s (a child process that
    # imports TensorFlow and converts both models) and these tests load many services. The
    # runtimes agree to 1e-5 (tests/ranking, tests/retrieval), test_serve compares a LiteRT
    # service with this one, and every test of a real `vidrec serve` process runs LiteRT.
    config = tiny_config(
        serving={"max_request_history": 30, "request_runtime": "graph", **SMALL_BODIES}
    )
    result = train_job(data, config, BundleStore(root / "artifacts"))
    return data, config, root, result.bundle_id


@pytest.fixture(scope="session")
def cli_workspace_template(tmp_path_factory):
    """A directory with ``data/`` (``vidrec generate``), ``config.json`` and ``artifacts/`` holding
    one bundle published by ``vidrec train``: trained once, copied by `cli_workspace`."""
    from pipelines.cli.main import main

    root = tmp_path_factory.mktemp("cli-template")
    (root / "config.json").write_text(
        json.dumps(
            tiny_sections(
                retrieval={"batch_size": 64, "max_epochs": 1, "patience": 1},
                ranking={"batch_size": 128, "max_examples": 1000},
            )
        )
    )
    generate = ["generate", "--out", str(root / "data"), "--users", "200", "--videos", "150"]
    assert main([*generate, "--events", "4000", "--days", "10", "--seed", "1"]) == 0
    train = ["train", "--data", str(root / "data"), "--artifacts", str(root / "artifacts")]
    assert main([*train, "--config", str(root / "config.json")]) == 0
    return root


@pytest.fixture(scope="module")
def cli_workspace(cli_workspace_template, tmp_path_factory):
    """A private copy of `cli_workspace_template` per test module (tests add bundles to it)."""
    root = tmp_path_factory.mktemp("cli") / "workspace"
    shutil.copytree(cli_workspace_template, root)
    return root

"""Fixtures shared by the serving tests: one tiny trained bundle for the whole session, and the
event store on either backend (a throwaway PostgreSQL server for the session)."""

from __future__ import annotations

import json
import shutil
import uuid

import psycopg
import pytest

from core.bundle import BundleStore
from pipelines.jobs.train import train_job
from tests.pg_cluster import Cluster, ClusterError
from tests.stores import POSTGRESQL, SQLITE, StoreBackend
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


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL server (tests/pg_cluster.py) for the session, removed afterwards.

    Never skipped: without PostgreSQL's server programs the tests that need it fail, saying how
    to install them (`make test` does).
    """
    try:
        cluster = Cluster(max_connections=300)
    except ClusterError as error:
        pytest.fail(f"cannot start a PostgreSQL server for the tests: {error}")
    yield cluster
    cluster.remove()


@pytest.fixture()
def pg_url(pg_cluster):
    """URL of a new empty schema of the session's PostgreSQL server, dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url(), autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    yield pg_cluster.url(search_path=schema)
    if not pg_cluster.running():  # a test that stops the server starts it again; be sure
        pg_cluster.start()
    with psycopg.connect(pg_cluster.url(), autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=[SQLITE, POSTGRESQL])
def store_backend(request, tmp_path):
    """The event store on each backend in turn (`tests.stores.StoreBackend`)."""
    if request.param == SQLITE:
        backend = StoreBackend(SQLITE, str(tmp_path / "events.db"))
    else:
        url = request.getfixturevalue("pg_url")
        backend = StoreBackend(POSTGRESQL, url, request.getfixturevalue("pg_cluster"))
    yield backend
    backend.close()

"""Fixtures shared by the pipeline tests: one tiny trained bundle for the whole session (serving,
CLI and retrain tests), and the event store on either backend (a throwaway PostgreSQL server for
the session)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest

from core.bundle import BundleStore
from core.config import VidrecConfig, config_from_dict
from tests.background import background_job, outcome, vidrec
from tests.pg_cluster import Cluster, ClusterError
from tests.stores import POSTGRESQL, SQLITE, StoreBackend
from tests.tiny import SHARED_SECTIONS, shared_platform


@background_job("shared_bundle")
def _train_shared_bundle(directory: Path, done) -> list[str]:
    """``data/`` (`tests.tiny.shared_platform`'s first seven days), ``config.json``
    (`tests.tiny.SHARED_SECTIONS`), and a real ``vidrec train`` to publish one bundle in
    ``artifacts/``."""
    from pipelines.data.datasets import write_dataset

    base, _ = shared_platform()
    write_dataset(base, directory / "data")
    (directory / "config.json").write_text(json.dumps(SHARED_SECTIONS))
    return vidrec(
        "train", "--data", directory / "data", "--artifacts", directory / "artifacts",
        "--config", directory / "config.json",
    )  # fmt: skip


@pytest.fixture(scope="session")
def shared_bundle(request) -> tuple[Path, str]:
    """``(directory, bundle id)`` of the session's tiny bundle, trained in the background
    (tests/background.py) by ``vidrec train`` on days 0-6 of `tests.tiny.shared_platform`: the
    directory holds ``data/``, ``config.json`` and ``artifacts/``. Read only: copy what a test
    changes."""
    run = outcome(request, "shared_bundle")
    if run.returncode != 0:
        pytest.fail(f"`vidrec train` of the shared bundle exited {run.returncode}:\n{run.output()}")
    bundle_id = BundleStore(run.directory / "artifacts").current_id()
    assert bundle_id is not None
    return run.directory, bundle_id


@pytest.fixture(scope="session")
def serving_platform(shared_bundle, tmp_path_factory):
    """``(data, config, root, bundle_id)``: a published tiny bundle under ``root/artifacts``,
    trained on ``data`` (days 0-6 of the shared platform).

    Tests may publish other bundles beside it but must point ``CURRENT`` back at it.
    """
    shared, bundle_id = shared_bundle
    root = tmp_path_factory.mktemp("serving")
    shutil.copytree(shared / "artifacts", root / "artifacts")
    base, _ = shared_platform()
    return base, config_from_dict(VidrecConfig, SHARED_SECTIONS), root, bundle_id


@pytest.fixture(scope="module")
def load_tiny_service(serving_platform, tmp_path_factory):
    """``load(name) -> RecommenderService``: the tiny bundle loaded over a new event store of
    its own (a load costs seconds: a module shares one)."""
    from pipelines.serve import RecommenderService
    from pipelines.serving.events import EventStore

    _, config, root, _ = serving_platform

    def load(name: str) -> RecommenderService:
        events = EventStore(tmp_path_factory.mktemp(name) / "events.db")
        service = RecommenderService(root / "artifacts", events, config.serving)
        service.reload()
        return service

    return load


@pytest.fixture(scope="module")
def cli_workspace(shared_bundle, tmp_path_factory):
    """A private copy per test module (tests add bundles to it) of a directory with ``data/``,
    ``config.json`` and ``artifacts/`` holding one bundle published by ``vidrec train``."""
    shared, _ = shared_bundle
    root = tmp_path_factory.mktemp("cli") / "workspace"
    shutil.copytree(shared, root)
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

"""The ``vidrec`` command line (`main`) and the worker factory of ``vidrec serve --workers``."""

from pipelines.cli.main import main, worker_app

__all__ = ["main", "worker_app"]

"""The ``vidrec`` command line.

Logging is configured here and nowhere else. Library errors (`VidrecError`) are shown as one
line and end the process with the exit code `core.errors.exit_code_for` gives (2 for bad input,
75 when another job holds the lock; the table is in `core.errors`); anything else is a bug and
keeps its traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.config import (
    SyntheticConfig,
    config_from_dict,
)
from core.errors import (
    EXIT_GATED_OUT,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,  # noqa: F401  (re-exported)
    EXIT_OK,
    ConfigError,
    VidrecError,
    exit_code_for,
)
from pipelines.cli import bundles as bundles_cli
from pipelines.cli import events as events_cli
from pipelines.cli.config_file import load_config

logger = logging.getLogger("vidrec")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _process_environment() -> None:
    """Process-wide settings, made before TensorFlow or Faiss is first imported."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # OpenMP threads that spin while waiting starve the other core on a 2-core machine
    # (Faiss' PQ training ran 70x slower beside a TensorFlow job).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _load_data(args: argparse.Namespace):
    from pipelines.data.datasets import load_dataset

    kwargs: dict[str, Any] = {"drop_duplicates": args.drop_duplicates or None}
    if args.encoding:
        kwargs["encoding"] = args.encoding
    if getattr(args, "column_map", None):
        kwargs["column_mapping"] = dict(item.split("=", 1) for item in args.column_map)
    return load_dataset(args.data, **kwargs)


def _training_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {
        "retrieval": {
            "max_epochs": args.max_epochs,
            "max_train_seconds": args.max_train_seconds,
            "seed": args.seed,
        }
    }


# -- commands ----------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from pipelines.data.synthetic import generate_platform, write_dataset

    defaults = SyntheticConfig()
    config = SyntheticConfig(
        num_users=args.users,
        num_videos=args.videos,
        num_events=args.events,
        num_categories=args.categories or min(defaults.num_categories, args.videos),
        num_creators=args.creators or min(defaults.num_creators, max(1, args.videos // 8)),
        days=args.days,
        seed=args.seed,
    )
    started = time.perf_counter()
    dataset = generate_platform(config)
    write_dataset(dataset, args.out)
    summary = dataset.summary()
    print(
        f"wrote {summary['interactions']} events, {summary['videos']} videos, "
        f"{summary['users']} users to {args.out} in {time.perf_counter() - started:.1f} s"
    )
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    import contextlib

    from core.bundle import BundleStore
    from core.lock import JobLock
    from pipelines.jobs.distribute import describe_task, is_chief
    from pipelines.jobs.train import train_job

    config = load_config(args.config, _training_overrides(args))
    # One job at a time per artifacts root. Under several workers (TF_CONFIG) only the chief
    # writes, so only the chief takes the lock.
    lock = JobLock(args.artifacts) if is_chief() else contextlib.nullcontext()
    with lock:
        dataset = _load_data(args)
        result = train_job(
            dataset,
            config,
            BundleStore(args.artifacts),
            publish=not args.no_publish,
            progress=not args.quiet,
        )
    if not result.bundle_id:
        print(f"{describe_task()}: training done; the chief wrote the bundle")
        return EXIT_OK
    print(f"bundle {result.bundle_id} at {result.bundle_dir}")
    print("validation: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(result.validation.items())))
    return EXIT_OK


def parse_cutoff(text: str) -> int:
    """Seconds since the epoch from an integer or an ISO 8601 date or time (UTC if naive).

    Raises:
        ConfigError: Neither.
    """
    import datetime as dt

    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as error:
        raise ConfigError(
            f"--cutoff {text!r}: expected seconds since the epoch or an ISO date such as "
            "2026-11-23 or 2026-11-23T00:00:00Z"
        ) from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


def cmd_retrain(args: argparse.Namespace) -> int:
    from core.bundle import BundleStore
    from pipelines.jobs.retrain import PUBLISHED, retrain_job
    from pipelines.serving.events import open_event_store, resolve_events_url

    config = load_config(args.config, _training_overrides(args))
    cutoff = parse_cutoff(args.cutoff)
    location = resolve_events_url(args.events, config.serving.events_url, args.artifacts)
    dataset = _load_data(args)
    events = open_event_store(location, config.serving, job=True)
    logger.info("event store: %s (%s)", events.location, events.backend)
    try:
        result = retrain_job(
            dataset, events, BundleStore(args.artifacts), config, cutoff, progress=not args.quiet
        )
    finally:
        events.close()
    verb = "found (same cutoff and data)" if result.reused else "wrote"
    print(f"{verb} bundle {result.bundle_id}: {result.status} - {result.reason}")
    print(f"serving: {result.serving_id}; report: {result.report}")
    return EXIT_OK if result.status == PUBLISHED else EXIT_GATED_OUT


def _bundle_dir(args: argparse.Namespace) -> Path | None:
    from core.bundle import BundleStore

    if args.bundle:
        return Path(args.bundle)
    store = BundleStore(args.artifacts)
    current = store.current_id()
    if current is None:
        return None
    return store.path(current)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.bundle import BundleStore
    from core.config import EvaluationConfig
    from pipelines.jobs.evaluate import evaluate_dataset, format_table, write_result

    config = load_config(args.config, {})
    evaluation = config.evaluation
    if args.baselines is not None:
        evaluation = dataclasses.replace(evaluation, baselines=tuple(args.baselines))
    evaluation = EvaluationConfig(**dataclasses.asdict(evaluation))
    dataset = _load_data(args)
    bundle_dir = None if args.baselines_only else _bundle_dir(args)
    if bundle_dir is None and not args.baselines_only:
        raise ConfigError(
            f"no bundle to evaluate under {args.artifacts}: run `vidrec train` first, pass "
            "--bundle DIR, or --baselines-only"
        )
    result = evaluate_dataset(dataset, evaluation, bundle_dir, progress=not args.quiet)
    print(format_table(result))
    out = Path(args.out) if args.out else Path(args.artifacts) / "reports" / "evaluation.json"
    write_result(result, out)
    print(f"wrote {out}")
    store = BundleStore(args.artifacts)
    if bundle_dir is not None and bundle_dir.resolve().parent == store.bundles_dir.resolve():
        # The inspector's bundle page shows the latest evaluation of the bundle it serves.
        write_result(result, store.evaluation_path(bundle_dir.name))
    return EXIT_OK


def cmd_build_index(args: argparse.Namespace) -> int:
    from core.bundle import BundleStore
    from core.lock import JobLock
    from pipelines.jobs.build_index import build_index_job

    override = None
    if args.config:
        try:
            override = json.loads(Path(args.config).read_text("utf-8"))
        except (OSError, ValueError) as error:  # bad JSON, and bytes that are not UTF-8
            raise ConfigError(f"--config {args.config}: {error}") from error
    with JobLock(args.artifacts):  # it writes and publishes a bundle: one job at a time
        result = build_index_job(
            BundleStore(args.artifacts),
            bundle=args.bundle,
            dataset=_load_data(args) if args.data else None,  # not kept here: the job frees it
            config_override=override,
            publish=not args.no_publish,
            progress=not args.quiet,
        )
    index = result.index
    print(
        f"bundle {result.bundle_id} (parent {result.parent}) at {result.bundle_dir}"
        + ("; published" if result.published else "")
    )
    print(
        f"{index['kind']} index ({index['factory']}) of {result.videos} videos "
        f"({result.added_videos} new), operating point {index['operating_point']}"
    )
    verification = index["verification"]
    print(
        f"recall@{verification['k']} vs exact: {index['tuning']['at_k']:.4f} on "
        f"{index['tuning']['queries']} tuning queries, {verification['at_k']:.4f} on "
        f"{verification['queries']} held-out {index['query_source']} (target "
        f"{index['target_recall']}); single query p50 {index['latency_ms']['p50']:.3f} ms, "
        f"p99 {index['latency_ms']['p99']:.3f} ms"
    )
    print("seconds: " + "  ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    return EXIT_OK


def cmd_export_embeddings(args: argparse.Namespace) -> int:
    from core.bundle import BundleStore
    from pipelines.jobs.export_embeddings import check_out_path, export_embeddings

    check_out_path(args.out)  # before the data set is read
    result = export_embeddings(
        BundleStore(args.artifacts),
        args.bundle,
        args.out,
        dataset=_load_data(args) if args.data else None,
    )
    print(
        f"wrote {result.path}: bundle {result.bundle_id}, {result.videos} videos x {result.dim}, "
        f"{result.tuning_queries} tuning + {result.queries} held-out {result.query_source} "
        f"queries ({result.seconds:.1f} s); benchmark it with "
        f"`python benchmarks/ann.py --embeddings {result.path}`"
    )
    return EXIT_OK


SERVE_SPEC_ENV = "VIDREC_SERVE_SPEC"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
UVICORN_BACKLOG = 2048  # uvicorn.Config's default


def _serving_app(artifacts: str, events_url: str, serving: Any) -> tuple[Any, Any]:
    """Loads the published bundle behind the HTTP app; returns the app and its
    `RecommenderService` (close it when the server stops)."""

    import tensorflow as tf

    from pipelines.serve import RecommenderService
    from pipelines.serving.app import create_app, start_polling
    from pipelines.serving.auth import KeyRing
    from pipelines.serving.events import open_event_store

    keys = KeyRing(serving)  # a malformed key fails before the bundle loads
    tf.config.threading.set_intra_op_parallelism_threads(serving.tf_threads)
    tf.config.threading.set_inter_op_parallelism_threads(serving.tf_threads)
    events = open_event_store(events_url, serving)
    logger.info("event store: %s (%s)", events.location, events.backend)
    service = RecommenderService(artifacts, events, serving)
    try:
        service.reload()
    except BaseException:
        events.close()
        raise
    if serving.reload_poll_seconds:
        start_polling(service, serving.reload_poll_seconds)  # a daemon thread; ends with us
    return create_app(service, serving, keys), service


def worker_app() -> Any:
    """The app of one ``vidrec serve --workers N`` process (a uvicorn factory).

    uvicorn starts each worker in a fresh interpreter; `cmd_serve` hands the settings over in
    the ``VIDREC_SERVE_SPEC`` environment variable.
    """
    import os
    import signal
    import threading

    from uvicorn.config import STARTUP_FAILURE

    from core.config import ServingConfig

    _process_environment()
    spec = json.loads(os.environ[SERVE_SPEC_ENV])
    _configure_logging(spec["verbose"])
    serving = config_from_dict(ServingConfig, spec["serving"], "serving")
    # uvicorn calls this with its SIGTERM handler installed, which waits for the load to end
    # (minutes at scale) before shutting down. While loading there is nothing to shut down:
    # SIGTERM ends the worker at once, and its model conversion process with it.
    main_thread = threading.current_thread() is threading.main_thread()
    graceful = signal.signal(signal.SIGTERM, signal.SIG_DFL) if main_thread else None
    try:
        app, service = _serving_app(spec["artifacts"], spec["events"], serving)
    except VidrecError as error:
        # One line, and uvicorn's start-up failure code: the supervisor then stops (`cmd_serve`
        # exits 2) instead of restarting a worker that would fail the same way forever.
        logger.error("worker %d cannot serve: %s", os.getpid(), error)
        sys.exit(STARTUP_FAILURE)
    except Exception:  # a bug: keep its traceback, but do not let uvicorn restart it forever
        logger.exception("worker %d failed to start", os.getpid())
        sys.exit(STARTUP_FAILURE)
    finally:
        if graceful is not None:
            signal.signal(signal.SIGTERM, graceful)
    logger.info("worker %d serving bundle %s", os.getpid(), service.current.bundle_id)
    return app


def cmd_serve(args: argparse.Namespace) -> int:
    import os
    import shutil
    import tempfile

    import uvicorn

    from core.bundle import BundleStore
    from core.config import ServingConfig

    config = load_config(args.config, {})
    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers))
        if v is not None
    }
    serving = ServingConfig(**{**dataclasses.asdict(config.serving), **overrides})
    from pipelines.serving.auth import KeyRing
    from pipelines.serving.balance import SHARES_ENV, create_shares_file
    from pipelines.serving.events import resolve_events_url

    events_url = resolve_events_url(args.events, serving.events_url, args.artifacts)

    # Read the keys now: a malformed key or keys file fails here, before anything loads.
    if not KeyRing(serving).configured and serving.host not in LOOPBACK:
        logger.warning(
            "write endpoints are open on %s: set %s (admin) and %s (ingest) or "
            "serving.api_keys_file to require API keys",
            serving.host,
            serving.api_key_env,
            serving.ingest_key_env,
        )
    # Serving never creates a store (the event store would create the directory).
    BundleStore(args.artifacts).require_root()
    # The port first: a busy port fails in a second, not after a bundle load.
    listener = _bind_port(serving.host, serving.port)
    server = {
        "host": serving.host,
        "port": serving.port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "log_level": "warning",
    }
    try:
        if serving.workers == 1:
            app, service = _serving_app(args.artifacts, events_url, serving)
            try:
                _listen(listener, serving.host, serving.port)
                print(
                    f"serving bundle {service.current.bundle_id} on "
                    f"http://{serving.host}:{serving.port}"
                )
                return _run_server(uvicorn.Server(uvicorn.Config(app, **server)), listener)
            finally:
                service.close()
                service.events.close()
        os.environ[SERVE_SPEC_ENV] = json.dumps(
            {
                "artifacts": str(args.artifacts),
                "events": events_url,
                "serving": dataclasses.asdict(serving),
                "verbose": bool(args.verbose),
            }
        )
        # Each worker counts its own requests; /metrics, answered by any one of them, sums the
        # files they all write here.
        metrics_dir = tempfile.mkdtemp(prefix="vidrec-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        # Workers close a keep-alive connection when they hold more than their share
        # (pipelines/serving/balance.py): left to the kernel, all 4 of wrk's connections
        # often landed on one worker.
        shares = create_shares_file(Path(metrics_dir) / "connections.shares", serving.workers)
        os.environ[SHARES_ENV] = str(shares)
        server["http"] = "pipelines.serving.balance:BalancedHttpToolsProtocol"
        print(f"serving on http://{serving.host}:{serving.port} with {serving.workers} workers")
        try:
            workers = uvicorn.Config(
                "pipelines.cli:worker_app", factory=True, workers=serving.workers, **server
            )
            return _run_workers(workers, listener)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    finally:
        listener.close()


def _bind_port(host: str, port: int) -> socket.socket:
    """The serving socket, bound but not listening yet: until a bundle is loaded, connections
    are refused rather than left waiting.

    Raises:
        ConfigError: The address is taken or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # As uvicorn does: a restarted server may bind while old connections sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise _listen_error(host, port, error) from None
    sock.set_inheritable(True)  # uvicorn's workers inherit it
    return sock


def _listen(sock: socket.socket, host: str, port: int) -> None:
    """Starts accepting connections on a socket from `_bind_port`.

    Raises:
        ConfigError: Another server bound the port at the same time and listens already.
    """
    try:
        sock.listen(UVICORN_BACKLOG)
    except OSError as error:
        raise _listen_error(host, port, error) from None


def _listen_error(host: str, port: int, error: OSError) -> ConfigError:
    reason = error.strerror or str(error)
    return ConfigError(
        f"cannot listen on {host}:{port}: {reason}; stop the other server or pass --port"
    )


class _Stopped(BaseException):
    """SIGTERM after uvicorn's graceful shutdown (a BaseException, like KeyboardInterrupt, so
    that no ``except Exception`` on the way swallows it)."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stopped


def _run_server(server: Any, listener: socket.socket) -> int:
    """Runs one uvicorn server on ``listener`` until it stops.

    uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the previous
    handler: with the default one the process would die by the signal, skipping the clean-up
    of `cmd_serve`. This handler makes it a normal exit (0).

    Raises:
        ConfigError: uvicorn could not start (its own exit code 3 means "gated out" here).
    """
    import signal

    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        server.run(sockets=[listener])
    except _Stopped:
        return EXIT_OK
    except SystemExit as error:
        raise _startup_error(f"uvicorn exited with status {error.code}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise _startup_error("uvicorn did not start")
    return EXIT_OK


def _run_workers(config: Any, listener: socket.socket) -> int:
    """Runs ``config.workers`` uvicorn worker processes on ``listener`` until they stop.

    Raises:
        ConfigError: A worker could not start (it said why in the log); the others were
            stopped.
    """
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    supervisor = Multiprocess(config, sockets=[listener])
    try:
        supervisor.run()
    except SystemExit as error:
        raise _startup_error(f"uvicorn exited with status {error.code}") from None
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        raise _startup_error(f"worker process {failed[0]} could not start")
    return EXIT_OK


def _startup_error(what: str) -> ConfigError:
    return ConfigError(f"the HTTP server could not start: {what}; the reason is in the log above")


def _tensorboard_bundle(artifacts: str, bundle: str | None) -> Path:
    """A bundle by id or directory, the serving one by default."""
    from core.bundle import BundleStore
    from core.errors import BundleError

    if bundle is not None and Path(bundle).is_dir():
        return Path(bundle)
    store = BundleStore(artifacts)
    bundle_id = bundle or store.current_id()
    if bundle_id is None:
        raise BundleError(f"no serving bundle under {artifacts}: pass --bundle ID")
    return store.path(bundle_id)


def cmd_tensorboard(args: argparse.Namespace) -> int:
    import os
    import shlex

    from pipelines import tensorboard

    command = tensorboard.command(_tensorboard_bundle(args.artifacts, args.bundle), args.port)
    print(shlex.join(command), flush=True)
    if not args.print_only:
        # Replaced, not spawned: Ctrl-C and a service manager's signals reach TensorBoard
        # itself, and no child can outlive this process.
        os.execv(command[0], command)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.jobs.demo import run_demo

    run_demo(Path(args.workdir), seed=args.seed, budget_seconds=args.budget_seconds)
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        help="MovieLens directory (100k, 1M, latest), a `vidrec generate` directory, or a "
        "CSV/Parquet interactions file",
    )
    parser.add_argument("--encoding", help="text encoding of the data files (default per format)")
    parser.add_argument(
        "--drop-duplicates",
        action="store_true",
        help="keep the first of identical (user, video, timestamp) events instead of failing",
    )
    parser.add_argument(
        "--column-map",
        nargs="*",
        metavar="SOURCE=TARGET",
        help="for CSV/Parquet files: rename source columns to user_id, video_id, timestamp, ...",
    )


EVENTS_HELP = (
    "event store: a path, sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME (default: "
    "$VIDREC_EVENTS_URL, else serving.events_url, else <artifacts>/events.db)"
)


def _add_data_options(parser: argparse.ArgumentParser, data_help: str) -> None:
    """``--data`` and how to read it, as `vidrec train` reads a data set."""
    parser.add_argument("--data", help=data_help)
    parser.add_argument("--encoding", help="text encoding of the data files")
    parser.add_argument("--drop-duplicates", action="store_true", help="as for `vidrec train`")
    parser.add_argument("--column-map", nargs="*", metavar="SOURCE=TARGET")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidrec", description="Video recommender: two-tower retrieval, Faiss, MHA ranker."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress reports (a line redrawn on a terminal, a log line every 15 s otherwise)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write a synthetic video platform")
    generate.add_argument("--out", required=True, help="directory for the Parquet files")
    defaults = SyntheticConfig()
    generate.add_argument("--users", type=int, default=defaults.num_users)
    generate.add_argument("--videos", type=int, default=defaults.num_videos)
    generate.add_argument("--events", type=int, default=defaults.num_events)
    generate.add_argument(
        "--categories", type=int, help=f"default {defaults.num_categories} (at most --videos)"
    )
    generate.add_argument(
        "--creators", type=int, help=f"default {defaults.num_creators} (at most --videos / 8)"
    )
    generate.add_argument("--days", type=int, default=defaults.days)
    generate.add_argument("--seed", type=int, default=defaults.seed)
    generate.set_defaults(handler=cmd_generate)

    train = commands.add_parser("train", help="train retrieval on a leave-one-out split")
    _add_data_arguments(train)
    train.add_argument("--artifacts", default="artifacts", help="bundle store root")
    train.add_argument("--config", help="JSON file with config sections (see config.json)")
    train.add_argument("--max-epochs", type=int, help="retrieval.max_epochs")
    train.add_argument("--max-train-seconds", type=float, help="retrieval.max_train_seconds")
    train.add_argument("--seed", type=int, help="retrieval.seed")
    train.add_argument("--no-publish", action="store_true", help="do not move CURRENT")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("evaluate", help="model and baselines, one table")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--artifacts", default="artifacts", help="bundle store root")
    evaluate.add_argument("--bundle", help="bundle directory (default: CURRENT)")
    evaluate.add_argument("--config", help="JSON file with config sections")
    evaluate.add_argument(
        "--baselines", nargs="*", help="subset of most_popular item_knn ease transition"
    )
    evaluate.add_argument("--baselines-only", action="store_true", help="no model")
    evaluate.add_argument("--out", help="JSON report path (default <artifacts>/reports/)")
    evaluate.set_defaults(handler=cmd_evaluate)

    build_index = commands.add_parser(
        "build-index",
        help="embed the catalogue, build and verify the Faiss index into a new bundle",
    )
    build_index.add_argument("--artifacts", default="artifacts", help="bundle store root")
    build_index.add_argument(
        "--bundle", help="source bundle id or directory (default: the serving one, CURRENT)"
    )
    _add_data_options(
        build_index,
        "data set whose catalogue (new uploads included) is indexed and whose users' recent "
        "histories tune the index; any format `vidrec train --data` reads",
    )
    build_index.add_argument(
        "--config", help="JSON file whose index section overrides the bundle's config.json"
    )
    build_index.add_argument("--no-publish", action="store_true", help="do not move CURRENT")
    build_index.set_defaults(handler=cmd_build_index)

    export = commands.add_parser(
        "export-embeddings",
        help="a bundle's video vectors and held-out user-tower queries as .npz "
        "(benchmarks/ann.py --embeddings)",
    )
    export.add_argument("--artifacts", default="artifacts", help="bundle store root (read only)")
    export.add_argument("--bundle", required=True, help="bundle id under <artifacts>/bundles")
    export.add_argument("--out", required=True, help="the .npz to write (atomically)")
    _add_data_options(
        export,
        "data set whose users' recent histories give the queries (as for build-index); "
        "default: one-watch histories",
    )
    export.set_defaults(handler=cmd_export_embeddings)

    bundles_cli.add_parser(commands)
    events_cli.add_parser(commands)

    retrain = commands.add_parser(
        "retrain", help="nightly job: warm-start, gate against serving, publish if not worse"
    )
    _add_data_arguments(retrain)
    retrain.add_argument(
        "--cutoff", required=True, help="train on events before this time (epoch s or ISO date)"
    )
    retrain.add_argument("--artifacts", default="artifacts", help="bundle store root")
    retrain.add_argument("--events", help=EVENTS_HELP)
    retrain.add_argument("--config", help="JSON file with config sections")
    retrain.add_argument("--max-epochs", type=int, help="retrieval.max_epochs")
    retrain.add_argument("--max-train-seconds", type=float, help="retrieval.max_train_seconds")
    retrain.add_argument("--seed", type=int, help="retrieval.seed")
    retrain.set_defaults(handler=cmd_retrain)

    serve = commands.add_parser("serve", help="HTTP API over the published bundle")
    serve.add_argument("--artifacts", default="artifacts", help="bundle store root")
    serve.add_argument("--config", help="JSON file with config sections (serving: ...)")
    serve.add_argument("--host", help="serving.host (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="serving.port (default 8000)")
    serve.add_argument("--events", help=EVENTS_HELP)
    serve.add_argument("--workers", type=int, help="serving.workers: server processes (default 1)")
    serve.set_defaults(handler=cmd_serve)

    board = commands.add_parser(
        "tensorboard", help="run TensorBoard on a bundle's event files (reports/tensorboard/)"
    )
    board.add_argument("--artifacts", default="artifacts", help="bundle store root")
    board.add_argument("--bundle", help="bundle id or directory (default: the serving one)")
    board.add_argument("--port", type=int, default=6006, help="TensorBoard's port (6006)")
    board.add_argument(
        "--print-only", action="store_true", help="print the tensorboard command, do not run it"
    )
    board.set_defaults(handler=cmd_tensorboard)

    demo = commands.add_parser("demo", help="generate, train, evaluate, recommend")
    demo.add_argument("--workdir", default="artifacts/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--budget-seconds", type=float, default=240.0, help="wall-clock budget of the whole demo"
    )
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vidrec`` console script."""
    args = build_parser().parse_args(argv)
    _process_environment()
    _configure_logging(args.verbose)
    try:
        return int(args.handler(args))
    except VidrecError as error:
        print(f"vidrec {args.command}: error: {error}", file=sys.stderr)
        return exit_code_for(error)
    except KeyboardInterrupt:
        print(f"vidrec {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

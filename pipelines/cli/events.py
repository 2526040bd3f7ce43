"""``vidrec events``: look after the event store.

The write path refuses anything a server could not apply, so rows that cannot be served come
only from an older store or a bug. Servers skip them (and record them as quarantined); these
commands show them, set them aside, and move a store to another backend:

- ``vidrec events check``: lists invalid live rows and rows servers skipped. Exit 0 when there
  is none, 2 otherwise (so a monitor can run it).
- ``vidrec events repair``: moves every invalid row out of the live tables into the quarantine
  table, with its content, in one transaction; servers no longer meet it and nothing is lost.
- ``vidrec events migrate --from URL --to URL``: copies a store (a SQLite file into
  PostgreSQL, typically) with its ids and order; refuses a non-empty target without
  ``--overwrite``.

The store is ``--events`` > ``VIDREC_EVENTS_URL`` > ``serving.events_url`` of ``--config`` >
``<artifacts>/events.db`` (`pipelines.serving.events.urls`).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from core.errors import EXIT_FAILED, EXIT_OK, StoreError
from pipelines.cli.config_file import load_config

logger = logging.getLogger(__name__)


def _open(location: str, args: argparse.Namespace, must_exist: bool) -> Any:
    # Imported here: pandas and the drivers only for the commands that need them.
    from pipelines.serving.events import SQLITE, backend_of, open_event_store
    from pipelines.serving.events.urls import sqlite_path

    serving = load_config(args.config, {}).serving
    if must_exist and backend_of(location) == SQLITE and not sqlite_path(location).is_file():
        raise StoreError(
            f"no event store at {sqlite_path(location)}; pass --events PATH or URL, or "
            "--artifacts DIR"
        )
    return open_event_store(location, serving, job=True)


def _store(args: argparse.Namespace) -> Any:
    from pipelines.serving.events import resolve_events_url

    serving = load_config(args.config, {}).serving
    return _open(resolve_events_url(args.events, serving.events_url, args.artifacts), args, True)


def _line(row: dict[str, Any]) -> str:
    payload = row["payload"]
    if isinstance(payload, str):
        payload = json.loads(payload)
    text = json.dumps(payload, default=str, sort_keys=True)
    return f"  {row['source']} {row['ref']}: {row['reason']}  {text[:160]}"


def cmd_check(args: argparse.Namespace) -> int:
    from pipelines.serving.events import SET_ASIDE, SKIPPED

    events = _store(args)
    invalid = events.invalid_rows()
    skipped = events.quarantined(SKIPPED)
    set_aside = events.quarantined(SET_ASIDE)
    print(f"event store {events.location}: {events.count()} events")
    print(f"invalid live rows: {len(invalid)}")
    for row in invalid[: args.limit]:
        print(_line(row))
    print(f"rows servers skipped: {len(skipped)}")
    for row in skipped[: args.limit]:
        print(_line(row))
    print(f"rows set aside by repair: {len(set_aside)}")
    if invalid or skipped:
        print("run `vidrec events repair` to set the invalid rows aside")
        return EXIT_FAILED
    return EXIT_OK


def cmd_repair(args: argparse.Namespace) -> int:
    events = _store(args)
    moved = events.repair()
    for row in moved[: args.limit]:
        print(_line(row))
    print(f"set aside {len(moved)} invalid row(s); the quarantine table keeps their content")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from pipelines.serving.events.migrate import migrate_store

    source = _open(args.source, args, must_exist=True)
    target = _open(args.target, args, must_exist=False)
    try:
        copied = migrate_store(source, target, overwrite=args.overwrite)
    finally:
        source.close()
        target.close()
    print(f"copied {source.location} ({source.backend}) into {target.location} ({target.backend}):")
    for table, counts in copied.items():
        keys = "" if counts["rows"] == 0 else f"  (keys {counts['first']}..{counts['last']})"
        issued = f"; ids issued up to {counts['high_water']}" if counts["high_water"] else ""
        print(f"  {table}: {counts['rows']} row(s){keys}{issued}")
    print(f"point the servers and the retrain at it: --events {target.location}")
    return EXIT_OK


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Adds ``vidrec events ...`` to the CLI's sub-commands."""
    configured = argparse.ArgumentParser(add_help=False)
    configured.add_argument(
        "--config", help="JSON file with config sections (serving.events_url and timeouts)"
    )
    common = argparse.ArgumentParser(add_help=False, parents=[configured])
    common.add_argument("--artifacts", default="artifacts", help="artifacts root")
    common.add_argument(
        "--events",
        help="event store: a path, sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME "
        "(default: $VIDREC_EVENTS_URL, else serving.events_url, else <artifacts>/events.db)",
    )
    common.add_argument("--limit", type=int, default=20, help="rows listed per kind")

    events = commands.add_parser("events", help="check, repair and migrate the event store")
    actions = events.add_subparsers(dest="events_command", required=True)
    check = actions.add_parser(
        "check", parents=[common], help="list invalid and skipped rows (exit 2 if any)"
    )
    check.set_defaults(handler=cmd_check)
    repair = actions.add_parser(
        "repair", parents=[common], help="set invalid rows aside into the quarantine table"
    )
    repair.set_defaults(handler=cmd_repair)
    migrate = actions.add_parser(
        "migrate",
        parents=[configured],
        help="copy an event store into another (SQLite into PostgreSQL), ids and order kept",
    )
    migrate.add_argument(
        "--from", dest="source", required=True, help="store to copy: a path or sqlite:///PATH"
    )
    migrate.add_argument(
        "--to", dest="target", required=True, help="store to fill: postgresql://USER@HOST/DB"
    )
    migrate.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what the target holds (refused by default when it is not empty)",
    )
    migrate.set_defaults(handler=cmd_migrate)

"""``vidrec events``: look after the event store's rows that cannot be served.

The write path refuses anything a server could not apply, so such rows come only from an older
store or a bug. Servers skip them (and record them as quarantined); these commands show them
and set them aside:

- ``vidrec events check``: lists invalid live rows and rows servers skipped. Exit 0 when there
  is none, 2 otherwise (so a monitor can run it).
- ``vidrec events repair``: moves every invalid row out of the live tables into the quarantine
  table, with its content, in one transaction; servers no longer meet it and nothing is lost.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from core.errors import EXIT_FAILED, EXIT_OK, StoreError

logger = logging.getLogger(__name__)


def _store(args: argparse.Namespace) -> Any:
    from pipelines.serving.events import EventStore  # pandas: only for the commands that need it

    path = Path(args.events or Path(args.artifacts) / "events.db")
    if not path.is_file():
        raise StoreError(f"no event store at {path}; pass --events PATH or --artifacts DIR")
    return EventStore(path)


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
    print(f"event store {events.path}: {events.count()} events")
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


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Adds ``vidrec events ...`` to the CLI's sub-commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--artifacts", default="artifacts", help="artifacts root")
    common.add_argument("--events", help="event store path (default <artifacts>/events.db)")
    common.add_argument("--limit", type=int, default=20, help="rows listed per kind")

    events = commands.add_parser("events", help="check and repair the event store's rows")
    actions = events.add_subparsers(dest="events_command", required=True)
    check = actions.add_parser(
        "check", parents=[common], help="list invalid and skipped rows (exit 2 if any)"
    )
    check.set_defaults(handler=cmd_check)
    repair = actions.add_parser(
        "repair", parents=[common], help="set invalid rows aside into the quarantine table"
    )
    repair.set_defaults(handler=cmd_repair)

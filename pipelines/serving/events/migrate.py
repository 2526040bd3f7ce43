"""``vidrec events migrate``: copy one event store into another, e.g. SQLite into PostgreSQL.

Every table is copied with its keys (event ids, the change log's ``seq``, quarantine ids), so
a bundle's ``events_until_id`` means the same events in the new store and replicas replay the
same catalogue. The source is read in one consistent snapshot and the target written in one
transaction: a failed copy leaves the target as it was. The target must be empty unless
``overwrite`` is given, and the copy is checked row for row by count before it commits.
"""

from __future__ import annotations

import logging
from typing import Any

from core.errors import StoreError
from pipelines.serving.events import sql
from pipelines.serving.events.base import EventStore, Writer

logger = logging.getLogger(__name__)


def migrate_store(
    source: EventStore, target: EventStore, overwrite: bool = False
) -> dict[str, dict[str, Any]]:
    """Copies every table of ``source`` into ``target``.

    Args:
        source: The store to copy (left unchanged; servers may still read it).
        target: The store to fill.
        overwrite: Replace what ``target`` holds instead of refusing a non-empty target.

    Returns:
        Per table: ``rows`` copied, ``first``/``last`` key (None for an empty table) and
        ``high_water``, the largest id its identity ever handed out (the target's next id is
        above it).

    Raises:
        StoreError: Source and target are the same store; the source holds invalid live rows
            (set them aside with ``vidrec events repair`` first: the quarantine table is
            copied); the target is not empty and ``overwrite`` is not set; or the copy does
            not match the source. Nothing is written then.
    """
    if source.backend == target.backend and source.location == target.location:
        raise StoreError(f"--from and --to are the same store ({source.location})")
    invalid = source.invalid_rows()
    if invalid:
        raise StoreError(
            f"event store {source.location} holds {len(invalid)} invalid live row(s) that "
            f"{target.backend} may not take as they are: run `vidrec events repair --events "
            f"{source.location}` first (it moves them to the quarantine table, which is copied)"
        )
    with source._snapshot() as snapshot:
        expected = {}
        for table in sql.TABLES:
            count, first, last = snapshot.fetchall(
                f"SELECT COUNT(*), MIN({table.key}), MAX({table.key}) FROM {table.name}"
            )[0]
            expected[table.name] = {
                "rows": int(count),
                "first": first,
                "last": last,
                "high_water": snapshot.high_water(table),
            }

        def work(writer: Writer) -> dict[str, dict[str, Any]]:
            held = {t.name: _count(writer, t.name) for t in sql.TABLES}
            if any(held.values()):
                if not overwrite:
                    described = ", ".join(f"{n} {c}" for n, c in held.items() if c)
                    raise StoreError(
                        f"event store {target.location} is not empty ({described}); pass "
                        "--overwrite to replace its contents, or migrate into an empty store"
                    )
                for table in reversed(sql.TABLES):
                    writer.execute(f"DELETE FROM {table.name}")
            for table in sql.TABLES:
                rows = (row for chunk in snapshot.rows(table) for row in chunk)
                copied = writer.copy_in(table, rows)
                writer.identities_follow(table, expected[table.name]["high_water"])
                logger.info("copied %d row(s) of %s", copied, table.name)
            for table in sql.TABLES:
                count = _count(writer, table.name)
                if count != expected[table.name]["rows"]:
                    raise StoreError(
                        f"copy of {table.name} holds {count} row(s), the source "
                        f"{expected[table.name]['rows']}; nothing was written"
                    )
            return expected

        return target._write(work, ordered=True)


def _count(writer: Writer, table: str) -> int:
    return int(writer.fetchall(f"SELECT COUNT(*) FROM {table}")[0][0])

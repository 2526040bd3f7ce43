"""The live event store: feedback events, uploads, takedowns, the ordered catalogue change log
and the quarantine of rows that cannot be served (docs/design.md §7).

Serving writes here and reads a user's events since the bundle's data cutoff on every call, so
the very next recommendation reflects a watch without retraining, and every server process
agrees on the catalogue. The nightly retrain reads the same store up to its cutoff. A write is
acknowledged only once its transaction has committed.

One interface (`EventStore`), two backends chosen by URL (`urls`):

- `SQLiteEventStore` (``sqlite:///...`` or a plain path; the default ``<artifacts>/events.db``):
  one file, for the processes of one machine.
- `PostgresEventStore` (``postgresql://...``): shared by replicas on several machines and the
  retrain machine.

Modules: `records` (what a row may hold), `sql` (tables and statements both backends run),
`base` (the interface and everything the backends share), `sqlite`, `postgres`, `migrate`
(copy one store into another), `urls` (which store a command uses).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pipelines.serving.events.base import EventStore
from pipelines.serving.events.records import (
    CHANGE_ROW,
    EVENT_KINDS,
    EVENT_ROW,
    SET_ASIDE,
    SKIPPED,
    TAKEDOWN,
    UPSERT,
    VALID_EVENT,
    VIDEO_ROW,
    CatalogueChange,
    FeedbackEvent,
)
from pipelines.serving.events.sql import SCHEMA_VERSION
from pipelines.serving.events.sqlite import SQLiteEventStore
from pipelines.serving.events.urls import (
    ENV_VAR,
    POSTGRESQL,
    SQLITE,
    backend_of,
    redact,
    resolve_events_url,
)

if TYPE_CHECKING:
    from core.config import ServingConfig

__all__ = [
    "CHANGE_ROW",
    "ENV_VAR",
    "EVENT_KINDS",
    "EVENT_ROW",
    "POSTGRESQL",
    "SCHEMA_VERSION",
    "SET_ASIDE",
    "SKIPPED",
    "SQLITE",
    "TAKEDOWN",
    "UPSERT",
    "VALID_EVENT",
    "VIDEO_ROW",
    "CatalogueChange",
    "EventStore",
    "FeedbackEvent",
    "SQLiteEventStore",
    "backend_of",
    "open_event_store",
    "redact",
    "resolve_events_url",
]


def open_event_store(
    location: str | os.PathLike[str], serving: ServingConfig, job: bool = False
) -> EventStore:
    """Opens the store ``location`` names with the serving configuration's settings.

    Args:
        location: A URL or a plain path (`resolve_events_url`).
        serving: ``events_synchronous`` applies to SQLite; ``events_pool_size``, the timeouts
            and ``events_retry_seconds`` to PostgreSQL.
        job: A batch job (the retrain, ``vidrec events``): its statements may run as long as
            ``events_job_timeout_seconds`` and it keeps a pool of two connections.

    Raises:
        StoreError: The store cannot be opened or is newer than this code.
        ConfigError: ``location`` names no backend vidrec has.
    """
    options: dict[str, Any]
    if backend_of(location) == POSTGRESQL:
        options = {
            "pool_size": min(2, serving.events_pool_size) if job else serving.events_pool_size,
            "connect_timeout_seconds": serving.events_connect_timeout_seconds,
            "statement_timeout_seconds": (
                serving.events_job_timeout_seconds
                if job
                else serving.events_statement_timeout_seconds
            ),
            "retry_seconds": serving.events_retry_seconds,
            "bulk_timeout_seconds": serving.events_job_timeout_seconds,
        }
    else:
        options = {"synchronous": serving.events_synchronous}
    return EventStore(location, **options)

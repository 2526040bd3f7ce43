"""The shared backend: PostgreSQL (psycopg 3 with psycopg-pool), for replicas on several machines
and the retrain.

**Commit order.** Identity columns hand out numbers when a row is inserted, not when its
transaction commits: writer A may take ``seq`` 7 and commit after writer B took 8 and
committed. A replica reading ``MAX(seq)`` = 8 would mark itself synced to 8 and never apply 7.
The two logs are made safe in two ways, each chosen for how it is read:

- The catalogue change log is read by every replica before every answer, as "everything after
  the last ``seq`` I applied". Its writers take ``LOCK TABLE catalogue_changes IN EXCLUSIVE
  MODE`` first: one writer at a time draws a ``seq`` and commits, and PostgreSQL makes a
  commit visible before it releases the transaction's locks, so a reader that sees ``seq`` N
  committed has every smaller one too. Readers are not blocked (the lock does not conflict with
  ``SELECT``). Uploads and takedowns are rare, so serialising them costs nothing; tracking gaps
  instead would put a snapshot check on every request of every replica.
- Feedback events are written hundreds at a time by every replica, and their ids are read as
  a watermark only by the retrain (``events_until_id``) and, per user, above that watermark by
  the request path. Serialising their writers would cap ingestion at one commit at a time, so
  they are not: `PostgresEventStore.last_id` returns the largest id of one snapshot only after
  every transaction still in flight at that snapshot has ended, so no event with a smaller id
  can commit afterwards. The request path reads a user's events above the watermark and
  never needs more.

**When PostgreSQL is unreachable or slow.** Every wait is bounded: connecting
(``connect_timeout``), a statement (``statement_timeout``), waiting for a pooled connection
(the connect timeout again). A connection found broken, a read past its timeout or a failed
connect marks the store unavailable (a write past its timeout waited for a lock and is refused
alone): its pool is closed, every call fails at once with `StoreError` (reads fall
back to the bundle, writes answer 503 with ``Retry-After``), and a background thread tries to
connect every ``retry_seconds``; when it succeeds a new pool takes over, with nothing restarted.
A connection that died while idle in the pool (the server restarted between two requests) is
replaced and the call retried once: nothing of it had been sent. A write is acknowledged only
after its ``COMMIT`` returned; if the connection breaks during the ``COMMIT`` itself the
outcome is unknown, the caller gets a 503 and may send it again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import pandas as pd
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from core.errors import ConfigError, StoreError
from pipelines.serving.events import sql
from pipelines.serving.events.base import EventStore, Snapshot, Writer
from pipelines.serving.events.urls import POSTGRESQL, redact

logger = logging.getLogger(__name__)

T = TypeVar("T")

LOCK_CHANGE_LOG = "LOCK TABLE catalogue_changes IN EXCLUSIVE MODE"
# Taken while the schema is created or migrated: several replicas may start at once.
SCHEMA_LOCK_KEY = 0x76696472_65630001
# A session idle inside a transaction (a client that died mid-write) is ended after this, so a
# lock it holds cannot stall the other writers for long.
IDLE_IN_TRANSACTION_SECONDS = 60.0
# Transactions in flight when `last_id` read its snapshot are polled this often.
IN_FLIGHT_POLL_SECONDS = 0.01


def _pg(statement: str) -> str:
    """A shared statement (``?`` placeholders) in psycopg's ``%s`` style."""
    return statement.replace("?", "%s")


class _CommitUncertainError(Exception):
    """The connection failed while the transaction was committing."""


class _PostgresWriter(Writer):
    def __init__(self, connection: psycopg.Connection) -> None:
        self.connection = connection

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        self.connection.execute(_pg(statement), tuple(params))

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        # psycopg pipelines the rows: one round trip for the whole batch.
        with self.connection.cursor() as cursor:
            cursor.executemany(_pg(statement), rows)

    def fetchall(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.connection.execute(_pg(statement), tuple(params)).fetchall()

    def copy_in(self, table: sql.Table, rows: Iterable[Sequence[Any]]) -> int:
        copied = 0
        statement = pg_sql.SQL("COPY {} ({}) FROM STDIN").format(
            pg_sql.Identifier(table.name),
            pg_sql.SQL(", ").join(pg_sql.Identifier(c) for c in table.columns),
        )
        with self.connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
                copied += 1
        return copied

    def identities_follow(self, table: sql.Table, high_water: int) -> None:
        if table.identity is None:
            return
        self.connection.execute(
            pg_sql.SQL(
                "SELECT setval(pg_get_serial_sequence({name}, {column}), "
                "GREATEST((SELECT MAX({ident}) FROM {table}), {high_water}, 0) + 1, false)"
            ).format(
                name=pg_sql.Literal(table.name),
                column=pg_sql.Literal(table.identity),
                ident=pg_sql.Identifier(table.identity),
                table=pg_sql.Identifier(table.name),
                high_water=pg_sql.Literal(int(high_water)),
            )
        )


class _PostgresSnapshot(Snapshot):
    def __init__(self, connection: psycopg.Connection) -> None:
        self.connection = connection

    def rows(self, table: sql.Table, chunk: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
        statement = pg_sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
            pg_sql.SQL(", ").join(pg_sql.Identifier(c) for c in table.columns),
            pg_sql.Identifier(table.name),
            pg_sql.Identifier(table.key),
        )
        # A server-side cursor: a table larger than memory streams.
        with self.connection.cursor(name=f"export_{table.name}") as cursor:
            cursor.execute(statement)
            while batch := cursor.fetchmany(chunk):
                yield batch

    def fetchall(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.connection.execute(_pg(statement), tuple(params)).fetchall()

    def high_water(self, table: sql.Table) -> int:
        if table.identity is None:
            return 0
        row = self.connection.execute(
            "SELECT pg_sequence_last_value(pg_get_serial_sequence(%s, %s)::regclass)",
            (table.name, table.identity),
        ).fetchone()
        return int(row[0] or 0)


class PostgresEventStore(EventStore):
    """PostgreSQL-backed store shared by every replica and the retrain.

    Args:
        location: ``postgresql://user[:password]@host[:port]/dbname[?param=value...]``: any
            libpq URI (a password is better kept in ``~/.pgpass`` or ``PGPASSWORD``).
        pool_size: Most connections this process opens (the pool keeps one open when idle).
        connect_timeout_seconds: Longest wait to connect, and for a pooled connection (libpq
            counts whole seconds, at least 2).
        statement_timeout_seconds: Longest a statement may run (``statement_timeout``); a
            lock wait counts.
        retry_seconds: While the store is unavailable, how often it tries to reconnect; every
            call meanwhile fails at once.
        bulk_timeout_seconds: ``statement_timeout`` of a bulk read (`interactions`) and of the
            in-flight wait of `last_id`.
        application_name: Shown in ``pg_stat_activity``.
    """

    backend = POSTGRESQL

    def __init__(
        self,
        location: str | os.PathLike[str],
        pool_size: int = 4,
        connect_timeout_seconds: float = 2.0,
        statement_timeout_seconds: float = 1.0,
        retry_seconds: float = 1.0,
        bulk_timeout_seconds: float = 3600.0,
        application_name: str = "vidrec",
    ) -> None:
        self.url = os.fspath(location)
        self.location = redact(self.url)
        self.pool_size = int(pool_size)
        self.connect_timeout_seconds = max(2.0, float(math.ceil(connect_timeout_seconds)))
        self.statement_timeout_seconds = float(statement_timeout_seconds)
        self.retry_seconds = float(retry_seconds)
        self.bulk_timeout_seconds = float(bulk_timeout_seconds)
        self._conninfo = self._make_conninfo(application_name)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._down_since: float | None = None  # time.time() the store became unavailable
        self._last_error: str | None = None
        self._prober: threading.Thread | None = None
        self._open_schema()
        self._pool: ConnectionPool | None = self._new_pool()

    def _open_schema(self) -> None:
        """Creates or migrates the schema over a connection of its own: a store that cannot
        be reached is refused with libpq's own reason, before any pool exists."""
        try:
            with (
                psycopg.connect(self._conninfo, autocommit=True) as connection,
                connection.transaction(),
            ):
                writer = _PostgresWriter(connection)
                writer.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))
                tables = {
                    name
                    for (name,) in writer.fetchall(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = current_schema()"
                    )
                }
                self._prepare_schema(writer, tables, sql.POSTGRES_TABLES)
        except psycopg.Error as error:
            raise StoreError(
                f"event store {self.location} cannot be opened ({_describe(error)}); check "
                "that PostgreSQL runs and takes this URL, or pass another --events"
            ) from error

    def _make_conninfo(self, application_name: str) -> str:
        try:
            params = conninfo_to_dict(self.url)
        except psycopg.ProgrammingError as error:
            raise ConfigError(
                f"event store {self.location}: not a PostgreSQL URL ({error})"
            ) from error
        ours = (
            f"-c statement_timeout={int(self.statement_timeout_seconds * 1000)} "
            f"-c idle_in_transaction_session_timeout={int(IDLE_IN_TRANSACTION_SECONDS * 1000)}"
        )
        # The URL's own options (a search_path, ...) are kept; ours come last and win.
        params["options"] = f"{params.get('options', '')} {ours}".strip()
        params["connect_timeout"] = str(int(self.connect_timeout_seconds))
        params.setdefault("application_name", application_name)
        return make_conninfo("", **params)

    def _new_pool(self) -> ConnectionPool:
        pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True},
            timeout=self.connect_timeout_seconds,
            open=False,
            name="vidrec-events",
            num_workers=2,
        )
        pool.open(wait=False)
        return pool

    def close(self) -> None:
        """Closes the pool and stops reconnecting; the store cannot be used afterwards."""
        self._closed.set()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # -- availability -----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        with self._lock:
            down_since, error = self._down_since, self._last_error
        if down_since is None:
            return {"backend": self.backend, "location": self.location, "state": "ok"}
        return {
            "backend": self.backend,
            "location": self.location,
            "state": "unavailable",
            "error": error,
            "unavailable_seconds": round(time.time() - down_since, 3),
        }

    def _live_pool(self, writing: bool) -> ConnectionPool:
        with self._lock:
            pool = self._pool
            down_since, error = self._down_since, self._last_error
        if pool is None:
            if self._closed.is_set() and down_since is None:
                raise StoreError(f"event store {self.location} is closed")
            seconds = time.time() - (down_since or time.time())
            what = "cannot take a write now" if writing else "cannot be read now"
            raise StoreError(
                f"event store {self.location} {what}: unavailable for {seconds:.1f} s "
                f"({error}); vidrec reconnects by itself, retry"
            )
        return pool

    def _mark_down(self, pool: ConnectionPool, error: BaseException) -> None:
        """Takes ``pool`` out of service (if it still is) and starts reconnecting."""
        with self._lock:
            self._last_error = _describe(error)
            if self._pool is not pool:
                return
            self._pool = None
            if self._down_since is None:
                self._down_since = time.time()
                logger.error(
                    "event store %s unavailable (%s): serving from the bundle alone, refusing "
                    "writes with 503; reconnecting every %.1f s",
                    self.location,
                    self._last_error,
                    self.retry_seconds,
                )
            if self._closed.is_set() or (self._prober and self._prober.is_alive()):
                prober = None
            else:
                prober = self._prober = threading.Thread(
                    target=self._reconnect, name="vidrec-events-reconnect", daemon=True
                )
        # Closing waits for the pool's threads: not on a request's time.
        threading.Thread(target=pool.close, kwargs={"timeout": 1.0}, daemon=True).start()
        if prober is not None:
            prober.start()

    def _try_new_pool(self) -> ConnectionPool | None:
        """A new pool with one connection made, or None while PostgreSQL cannot be reached."""
        try:
            # One plain connection first: a pool would keep retrying (and logging) by itself.
            with psycopg.connect(self._conninfo, autocommit=True) as probe:
                probe.execute("SELECT 1")
            pool = self._new_pool()
        except psycopg.Error as error:
            with self._lock:
                self._last_error = _describe(error)
            return None
        try:
            pool.wait(timeout=self.connect_timeout_seconds)
        except psycopg.Error as error:
            with self._lock:
                self._last_error = _describe(error)
            pool.close(timeout=1.0)
            return None
        return pool

    def _reconnect(self) -> None:
        while not self._closed.wait(self.retry_seconds):
            pool = self._try_new_pool()
            if pool is None:
                continue
            with self._lock:
                closed = self._closed.is_set()
                if not closed:
                    down_for = time.time() - (self._down_since or time.time())
                    self._pool, self._down_since, self._last_error = pool, None, None
            if closed:
                pool.close(timeout=1.0)
            else:
                logger.warning(
                    "event store %s reachable again after %.1f s", self.location, down_for
                )
            return

    def _replace_dead_pool(self, pool: ConnectionPool, error: BaseException) -> bool:
        """After a connection of ``pool`` was found dead: True when a working pool has taken
        over (the call may be retried), False when PostgreSQL cannot be reached now."""
        with self._lock:
            if self._pool is not pool:
                return self._pool is not None
        fresh = self._try_new_pool()
        if fresh is None:
            self._mark_down(pool, error)
            return False
        with self._lock:
            if self._pool is pool:
                self._pool = fresh
                fresh = None
        for stale in (pool, fresh):
            if stale is not None:
                threading.Thread(target=stale.close, kwargs={"timeout": 1.0}, daemon=True).start()
        logger.warning(
            "event store %s: replaced connections that had died (%s)",
            self.location,
            _describe(error),
        )
        return True

    def _with_connection(self, use: Callable[[psycopg.Connection], T], writing: bool) -> T:
        """``use(connection)`` on a pooled connection, with the failures described in the
        module's doc turned into `StoreError`."""
        what = "cannot take a write now" if writing else "cannot be read now"
        for attempt in range(2):
            pool = self._live_pool(writing)
            try:
                connection = pool.getconn()
            except PoolClosed:
                continue  # replaced meanwhile: take the new one
            except PoolTimeout as error:
                self._mark_down(pool, error)
                raise StoreError(f"event store {self.location} {what} ({error}); retry") from error
            try:
                return use(connection)
            except _CommitUncertainError as uncertain:
                error = uncertain.__cause__ or uncertain
                if not connection.broken:  # the server answered: it rolled back
                    raise StoreError(
                        f"event store {self.location} {what} ({_describe(error)}); retry"
                    ) from error
                self._mark_down(pool, error)
                raise StoreError(
                    f"event store {self.location} {what}: the connection failed while "
                    f"committing ({_describe(error)}), so this write may or may not be stored; "
                    "retry"
                ) from error
            except psycopg.Error as error:
                if connection.broken and attempt == 0 and self._replace_dead_pool(pool, error):
                    # Nothing of this call was committed: a transaction whose connection dies
                    # before its COMMIT is rolled back by the server.
                    continue
                # A read past its timeout means PostgreSQL is too slow to serve from: answer
                # from the bundle for a while. A write past it waited for a lock (another
                # writer, a migration): refuse it alone, reads go on.
                timed_out = isinstance(error, pg_errors.QueryCanceled) and not writing
                if connection.broken or timed_out:
                    self._mark_down(pool, error)
                raise StoreError(
                    f"event store {self.location} {what} ({_describe(error)}); retry"
                ) from error
            finally:
                pool.putconn(connection)
        raise StoreError(f"event store {self.location} {what}: its connections were replaced")

    # -- primitives -------------------------------------------------------------------------

    def _fetch(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        query = _pg(statement)
        return self._with_connection(
            lambda connection: connection.execute(query, tuple(params)).fetchall(), writing=False
        )

    def _write(self, work: Callable[[Writer], T], *, ordered: bool = False) -> T:
        def use(connection: psycopg.Connection) -> T:
            committing = False
            try:
                with connection.transaction():
                    if ordered:
                        # Commit order = seq order; see the module's doc.
                        connection.execute(LOCK_CHANGE_LOG)
                    result = work(_PostgresWriter(connection))
                    committing = True
            except psycopg.Error as error:
                if committing:
                    raise _CommitUncertainError from error
                raise
            return result

        return self._with_connection(use, writing=True)

    def _frame(self, statement: str, params: Sequence[Any], columns: Sequence[str]) -> Any:
        """One ``COPY ... TO STDOUT`` of the query, parsed by pandas in one go."""
        query = pg_sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(pg_sql.SQL(_pg(statement)))

        def use(connection: psycopg.Connection) -> bytes:
            buffer = io.BytesIO()
            with connection.transaction():
                connection.execute(
                    pg_sql.SQL("SET LOCAL statement_timeout = {}").format(
                        pg_sql.Literal(int(self.bulk_timeout_seconds * 1000))
                    )
                )
                with connection.cursor() as cursor, cursor.copy(query, tuple(params)) as copy:
                    for data in copy:
                        buffer.write(data)
            return buffer.getvalue()

        data = self._with_connection(use, writing=False)
        if not data:
            return pd.DataFrame({column: [] for column in columns})
        # Empty fields are NULL (COPY's CSV form); text is never empty in these columns.
        return pd.read_csv(io.BytesIO(data), names=list(columns), header=None)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Snapshot]:
        pool = self._live_pool(writing=False)
        try:
            connection = pool.getconn()
        except PoolTimeout as error:
            raise StoreError(f"event store {self.location} cannot be read now ({error})") from error
        try:
            with connection.transaction():
                connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                connection.execute(
                    pg_sql.SQL("SET LOCAL statement_timeout = {}").format(
                        pg_sql.Literal(int(self.bulk_timeout_seconds * 1000))
                    )
                )
                yield _PostgresSnapshot(connection)
        except psycopg.Error as error:
            raise StoreError(
                f"event store {self.location} cannot be read now ({_describe(error)})"
            ) from error
        finally:
            pool.putconn(connection)

    # -- the event watermark ----------------------------------------------------------------

    def last_id(self) -> int:
        """Id of the newest stored event (0 when empty), once no smaller id can still commit.

        The largest id and the snapshot are read by one statement; then this waits until every
        transaction in flight at that snapshot has committed or rolled back (their ids may be
        smaller). Bounded by ``bulk_timeout_seconds``.
        """
        found = self._fetch(f"SELECT pg_current_snapshot()::text, ({sql.LAST_ID})")
        snapshot, last = found[0]
        deadline = time.monotonic() + self.bulk_timeout_seconds
        while self._fetch(
            "SELECT COUNT(*) FROM pg_snapshot_xip(?::pg_snapshot) AS x "
            "WHERE pg_xact_status(x) = 'in progress'",
            (snapshot,),
        )[0][0]:
            if time.monotonic() > deadline:
                raise StoreError(
                    f"event store {self.location}: transactions in flight at snapshot "
                    f"{snapshot} did not end within {self.bulk_timeout_seconds:.0f} s; find them "
                    "in pg_stat_activity"
                )
            time.sleep(IN_FLIGHT_POLL_SECONDS)
        return int(last or 0)


def _describe(error: BaseException) -> str:
    """One line of a driver error (libpq's messages span several)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300]

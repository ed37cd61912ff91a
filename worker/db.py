"""Database access: one SQLAlchemy Core engine per process, the named queries of worker/sql/, and the
per-dialect encoding of ids, JSON and timestamps.

Postgres is the production store (psycopg v3); SQLite (a file, WAL mode) is the embedded default for
a single box. Both run the same named queries, written once per dialect in worker/sql/<dialect>.sql.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy import event, exc

SQL_DIR = Path(__file__).parent / "sql"
NOTIFY_CHANNEL = "wan_worker_tasks"
SQLITE_BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_SECONDS = 10  # an unreachable server fails fast and is retried, instead of a long TCP wait

_QUERY_HEADER = re.compile(r"^-- name: (\w+) --$", re.MULTILINE)


def load_queries(path: Path) -> dict[str, str]:
    """Parse a file of `-- name: x --` blocks into {name: sql}; text before the first header is the
    file's preamble. The description comment under each header stays part of the SQL (harmless)."""
    source = path.read_text()
    parts = _QUERY_HEADER.split(source)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in queries:
            raise ValueError(f"{path}: query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


def normalise_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg v3; anything else is passed to SQLAlchemy as is."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@dataclass
class Database:
    """An engine plus what differs between dialects: the named queries and value encodings."""

    engine: sa.Engine
    dialect: str  # "postgresql" or "sqlite"
    queries: dict[str, sa.TextClause] = field(repr=False)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def query(self, name: str) -> sa.TextClause:
        return self.queries[name]

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sa.Connection]:
        """One transaction for several statements. durable=False: see `run`."""
        with self.engine.begin() as conn:
            if not durable and self.is_postgres:
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            yield conn

    def run(self, name: str, params: dict[str, Any] | None = None, *, durable: bool = True) -> "Executed":
        """One named statement on its own. On Postgres a durable one runs in autocommit (one round trip);
        durable=False runs it in a transaction whose commit does not wait for the WAL to reach the disk.
        The worker uses that for writes a server crash may undo without harm, because every later
        write is fenced and leases expire: claims, heartbeats, progress, retries, releases, maintenance.
        Results, failures, parking, inserts and cancellations stay durable. SQLite runs every statement
        in its own BEGIN IMMEDIATE transaction (WAL with synchronous=NORMAL throughout)."""
        if self.is_postgres and durable:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                return Executed.of(conn.execute(self.query(name), params or {}))
        with self.transaction(durable=durable) as conn:
            return Executed.of(conn.execute(self.query(name), params or {}))

    def listen_conninfo(self) -> str:
        """A libpq connection string for the dedicated LISTEN connection (psycopg, outside the pool)."""
        return self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    # Encodings: Postgres takes JSON text cast to jsonb and arrays as lists; SQLite stores JSON text.

    def encode_json(self, value: Any) -> str | None:
        """JSON text; NaN/Infinity (which neither jsonb nor SQLite's json_valid accept) raise ValueError,
        and values JSON cannot hold raise TypeError, before anything reaches the database."""
        return None if value is None else json.dumps(value, allow_nan=False)

    def encode_text_array(self, values: Sequence[str] | None) -> list[str] | str | None:
        """A text[] parameter on Postgres, a JSON array (read with json_each) on SQLite; None stays NULL."""
        if values is None:
            return None
        return list(values) if self.is_postgres else json.dumps(list(values))

    def decode_json(self, value: Any) -> Any:
        """A JSON column's value. Both dialects hand JSON over as text (see _configure_postgres), so a
        value the database stores but Python cannot decode (an integer over Python's digit limit,
        nesting deeper than its recursion limit) becomes Undecodable instead of an exception inside a
        claim: one such row must not stop a worker, let alone the fleet."""
        if value is None:
            return None
        try:
            return json.loads(value)
        except (ValueError, RecursionError) as error:
            return Undecodable(f"{type(error).__name__}: {str(error)[:200]}")

    def decode_ids(self, value: Any) -> list[str]:
        items = value if self.is_postgres else self.decode_json(value)
        return [str(item) for item in items] if isinstance(items, list) else []

    def decode_id(self, value: Any) -> str | None:
        return None if value is None else str(value)

    def decode_time(self, value: Any) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)

    def dispose(self) -> None:
        self.engine.dispose()


@dataclass(frozen=True)
class Undecodable:
    """A JSON value the database holds but Python cannot decode; `error` says why."""

    error: str

    def __str__(self) -> str:
        return f"<undecodable JSON: {self.error}>"


@dataclass(frozen=True)
class Executed:
    """What a statement returned, read before its connection went back to the pool."""

    rows: list[sa.RowMapping]
    rowcount: int

    @classmethod
    def of(cls, result: sa.CursorResult) -> "Executed":
        rows = list(result.mappings()) if result.returns_rows else []
        return cls(rows=rows, rowcount=result.rowcount)


def connect(url: str, *, pool_size: int = 4) -> Database:
    """Open (lazily) the database at `url`: sqlite:///path or postgresql://user@host:port/db."""
    sa_url = sa.make_url(normalise_url(url))
    dialect = sa_url.get_backend_name()
    if dialect == "postgresql":
        # No pre-ping (a round trip per checkout): a broken connection raises a disconnect error, SQLAlchemy
        # then discards the pool's connections, and the caller's retry gets fresh ones.
        engine = sa.create_engine(
            sa_url, pool_size=pool_size, max_overflow=pool_size,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
        )
        _configure_postgres(engine)
    elif dialect == "sqlite":
        if sa_url.database in (None, "", ":memory:"):
            raise ValueError("SQLite needs a file (sqlite:///path/to/wan-worker.db): workers share it")
        engine = sa.create_engine(sa_url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
    else:
        raise ValueError(f"unsupported database {dialect!r}: use postgresql://... or sqlite:///path")
    sql_file = SQL_DIR / f"{'postgres' if dialect == 'postgresql' else 'sqlite'}.sql"
    queries = {name: sa.text(sql) for name, sql in load_queries(sql_file).items()}
    return Database(engine=engine, dialect=dialect, queries=queries)


def _configure_postgres(engine: sa.Engine) -> None:
    """json and jsonb arrive as text, decoded by Database.decode_json: psycopg's own decoding would
    raise inside the claim's fetch, after the row was taken, for values Python cannot decode."""
    from psycopg.types.string import TextLoader

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        for name in ("json", "jsonb"):
            dbapi_connection.adapters.register_loader(name, TextLoader)


def _configure_sqlite(engine: sa.Engine) -> None:
    """WAL (readers never block the writer), a busy timeout, foreign keys, and BEGIN IMMEDIATE for every
    transaction so the write lock is taken up front (no lock upgrade that could fail mid-transaction)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying: the server went away, the connection broke, a lock timed out, a deadlock."""
    if isinstance(error, (exc.OperationalError, exc.InterfaceError)):
        return True
    return isinstance(error, exc.DBAPIError) and error.connection_invalidated


def parse_uuid(value: str) -> str | None:
    """The canonical text of a task id, or None when `value` is not a UUID (so lookups by a typo find
    nothing instead of raising a type error in Postgres)."""
    try:
        return str(UUID(str(value)))
    except ValueError:
        return None

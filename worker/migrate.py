"""Versioned plain-SQL migrations (migrations/<dialect>/NNNN_name.sql), applied in order, each in its
own transaction together with its row in schema_migrations; re-running applies nothing."""
from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from worker.db import Database

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: str  # "0001"
    name: str  # "tasks"
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()


def available_migrations(dialect: str) -> list[Migration]:
    """The migration files for a dialect, in version order."""
    folder = MIGRATIONS_DIR / ("postgres" if dialect == "postgresql" else "sqlite")
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ValueError(f"{path}: migration files are named NNNN_name.sql")
        found.append(Migration(version=match[1], name=match[2], path=path))
    return found


def pending_migrations(db: Database) -> list[Migration]:
    """Migrations not yet recorded in schema_migrations (all of them on an empty database). Reads only:
    a worker checks this at start-up under a role that may have no right to create tables."""
    with db.engine.begin() as conn:
        if not conn.execute(db.query("schema_migrations_exists")).scalar_one():
            return available_migrations(db.dialect)
        applied = {row.version for row in conn.execute(db.query("applied_migrations"))}
    return [m for m in available_migrations(db.dialect) if m.version not in applied]


def migrate(db: Database) -> list[Migration]:
    """Apply every missing migration; returns those applied now. Safe to run from several processes at
    once: the ledger is read and written under a lock (advisory lock / BEGIN IMMEDIATE)."""
    applied_now = []
    for migration in available_migrations(db.dialect):
        with db.engine.begin() as conn:
            conn.execute(db.query("lock_schema_migrations"))
            conn.execute(db.query("create_schema_migrations"))
            applied = {row.version for row in conn.execute(db.query("applied_migrations"))}
            if migration.version in applied:
                continue
            cursor = conn.connection.cursor()  # raw DBAPI: migration files hold several statements
            for statement in _statements(migration.sql, db.dialect):
                cursor.execute(statement)
            cursor.close()
            conn.execute(db.query("record_migration"), {"version": migration.version, "name": migration.name})
        applied_now.append(migration)
    return applied_now


def _statements(script: str, dialect: str) -> list[str]:
    """Postgres runs a whole script in one execute(); sqlite3 runs one statement per execute(), so the
    script is cut where sqlite3 says a statement is complete (trigger bodies hold inner semicolons)."""
    if dialect == "postgresql":
        return [script]
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current)
            current = ""
    if _strip_comments(current).strip():
        raise ValueError(f"unterminated statement at the end of a migration: {current.strip()[:80]!r}")
    return statements


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))

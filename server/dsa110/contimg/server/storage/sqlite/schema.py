"""Bringing a database file to this release's schema (migrations.py), in one transaction."""

from __future__ import annotations

import logging
import secrets
import sqlite3

from ..clock import now_us
from ..migrations_plan import pending
from .migrations import MIGRATIONS

log = logging.getLogger(__name__)


def migrate(conn: sqlite3.Connection) -> bytes:
    """Apply pending migrations in one transaction; return the page-token secret."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_time INTEGER NOT NULL)"
        )
        done = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        for version, name, sql in pending(MIGRATIONS, done):
            log.info("applying migration %d: %s", version, name)
            for statement in split_sql(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, now_us()))
        conn.execute("INSERT OR IGNORE INTO settings VALUES ('page_token_secret', ?)", (secrets.token_bytes(32),))
        secret = bytes(conn.execute("SELECT value FROM settings WHERE key = 'page_token_secret'").fetchone()[0])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return secret


def split_sql(script: str) -> list[str]:
    """The statements of a migration, comments dropped. A trigger's body holds semicolons of its own:
    pieces are joined until SQLite says the statement is complete."""
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    statements: list[str] = []
    pending = ""
    for piece in "\n".join(lines).split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip().removesuffix(";").strip())
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending.strip().removesuffix(";").strip())
    return statements

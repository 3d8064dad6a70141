"""Bringing a PostgreSQL database to this release's schema (migrations.py), in one transaction.

Replicas starting together take a transaction-level advisory lock first, so one migrates and the
others find the work done.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..clock import now_us
from ..migrations_plan import pending
from .migrations import MIGRATIONS

if TYPE_CHECKING:
    from .database import Conn

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key: any constant that other applications sharing the database do not use.
_MIGRATION_LOCK = 0x636F6E74696D67  # "contimg"


async def migrate(conn: Conn, new_secret: bytes) -> bytes:
    """Apply pending migrations; return the page-token secret (`new_secret` if there was none)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version integer PRIMARY KEY, name text NOT NULL, applied_time bigint NOT NULL)"
        )
        done = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        for version, name, sql in pending(MIGRATIONS, done):
            log.info("applying migration %d: %s", version, name)
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, $3)", version, name, now_us())
        await conn.execute(
            "INSERT INTO settings VALUES ('page_token_secret', $1) ON CONFLICT (key) DO NOTHING", new_secret
        )
        secret = await conn.fetchval("SELECT value FROM settings WHERE key = 'page_token_secret'")
    return bytes(secret)

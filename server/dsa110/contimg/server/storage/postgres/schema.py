"""Bringing a PostgreSQL database to this release's schema (migrations.py), in one transaction.

Replicas starting together take a transaction-level advisory lock first, so one migrates and the
others find the work done.

Then the optional sky index (`sky_index`): q3c's index over the sources' positions, made where the
extension can be had. It is a step of its own at every open rather than a migration because its
outcome depends on the server, not on the schema: a migration runs once, so a database migrated
before the package was installed would never get it, while this step makes it at the next start
(or `contimg-server migrate`); the off switch (`PostgresSettings.q3c`, `--no-q3c`) keeps the
extension out altogether; and the schema version stays where it was, so the previous release still
opens the database (migrations_plan.pending refuses a newer version), which it may: the index
changes no answer, only how fast cones are found, and PostgreSQL maintains it for every writer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import asyncpg

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


# The q3c index over the sources' positions (the plans of storage/postgres/sources.py name it).
Q3C_INDEX = "sources_by_q3c"
_HAS_Q3C = (
    f"SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'q3c') AND to_regclass('{Q3C_INDEX}') IS NOT NULL"
)


# What sources.py's q3c path calls besides the index, run once at open: a q3c of another major
# version, which may lack it, leaves cone search to the GiST index instead of failing searches.
_Q3C_PROBE = "SELECT q3c_radial_query_it(0::float8, 0::float8, 1::float8, 0, 1), q3c_ang2ipix(0::float8, 0::float8)"


async def sky_index(conn: Conn, wanted: bool) -> bool:
    """Whether cone searches can walk the q3c index: made first, when `wanted`, where PostgreSQL
    offers the extension (Debian: postgresql-15-q3c) and this role may create it. Never fails the
    open: without it the GiST box index serves (the same answers, see sources.py)."""
    if not wanted:
        return False
    if not await conn.fetchval(_HAS_Q3C) and not await _create_q3c_index(conn):
        return False
    try:
        await conn.fetchval(_Q3C_PROBE)
    except asyncpg.PostgresError as exc:
        log.warning("this q3c lacks what cone search calls (%s): cone search uses the GiST box index", exc)
        return False
    return True


async def _create_q3c_index(conn: Conn) -> bool:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        if await conn.fetchval(_HAS_Q3C):  # made by another replica meanwhile
            return True
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'q3c')"):
            log.info("q3c is not installed on the PostgreSQL server: cone search uses the GiST box index")
            return False
        try:
            async with conn.transaction():  # a savepoint: a refusal leaves the rest of the open alone
                await conn.execute("CREATE EXTENSION IF NOT EXISTS q3c")
                # Built once over every source, as long as that takes: not a query to cut short.
                await conn.execute("SET LOCAL statement_timeout = 0")
                await conn.execute(f"CREATE INDEX IF NOT EXISTS {Q3C_INDEX} ON sources (q3c_ang2ipix(ra_deg, dec_deg))")
                await conn.execute("ANALYZE sources")  # the expression index's statistics, for the planner
        except asyncpg.PostgresError as exc:
            # Typically InsufficientPrivilegeError: q3c is not a trusted extension, so a role that
            # is not a superuser needs one to run CREATE EXTENSION q3c once; the next open finds it.
            log.warning("cannot create the q3c sky index (%s): cone search uses the GiST box index", exc)
            return False
    log.info("created the q3c sky index %s", Q3C_INDEX)
    return True

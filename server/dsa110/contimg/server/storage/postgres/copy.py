"""`contimg-server copy-data`: a whole SQLite database into an empty PostgreSQL one, verified.

Every table is streamed in primary-key order and written with COPY (asyncpg's binary
copy_records_to_table), all in one transaction: a copy that fails leaves the target as it was. The
columns copied are those both schemas have; what only PostgreSQL keeps is derived on the way (each
image's footprint box for the GiST index, storage/postgres/sky.py; each image's measured sources as
an array). Identity counters continue after the largest id the SQLite database ever assigned, and
the job event counter after its last event, so names and event sequences stay unique.

Verification, after the commit: per table, the row count and a BLAKE2 checksum of every copied
value in key order, read back from both databases as Python values (floats bit for bit), so a
value changed, lost or reordered on the way shows as a mismatch. The SQLite file is opened
read-only; copy from a quiet database or a backup (a server writing it meanwhile would make the
checksums differ, and the command says so).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from ...domain.errors import StartupError
from .database import Database, PostgresSettings
from .sky import footprint_box

log = logging.getLogger(__name__)

CHUNK = 20_000
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class TableCopy:
    name: str
    key: str  # ORDER BY of both sides
    derive: Callable[[list[str], Row], Row] | None = None  # SQLite row -> the row PostgreSQL takes
    extra: tuple[str, ...] = ()  # PostgreSQL-only columns `derive` appends


def _image_row(columns: list[str], row: Row) -> Row:
    get = dict(zip(columns, row, strict=True))
    box = footprint_box(
        get["center_ra_deg"], get["center_dec_deg"], get["size_x_px"], get["size_y_px"], get["cell_size_arcsec"]
    )
    footprint = asyncpg.Box(asyncpg.Point(box[2], box[3]), asyncpg.Point(box[0], box[1])) if box is not None else None
    return (*row, footprint)


def _image_photometry_row(columns: list[str], row: Row) -> Row:
    image_id, sids = row
    return image_id, [int(s) for s in json.loads(sids)]


# In dependency order (a row's references are copied before it).
TABLES = (
    TableCopy("measurement_sets", "path"),
    TableCopy("images", "id", _image_row, ("footprint",)),
    TableCopy("sources", "sid"),
    TableCopy("photometry", "source_sid, observation_mjd, image_id"),
    TableCopy("image_photometry", "image_id", _image_photometry_row),
    TableCopy("jobs", "id"),
    TableCopy("job_events", "sequence"),
    TableCopy("job_logs", "job_id, line_number"),
    TableCopy("request_ids", "request_id"),
)
# Identity columns to continue after the SQLite database's largest assigned id.
IDENTITIES = (("images", "id"), ("sources", "sid"))


@dataclass(frozen=True, slots=True)
class TableReport:
    name: str
    rows: int
    seconds: float
    checksum: str


def _sqlite_rows(conn: sqlite3.Connection, sql: str) -> Iterator[list[Row]]:
    cursor = conn.execute(sql)
    while True:
        chunk = cursor.fetchmany(CHUNK)
        if not chunk:
            return
        yield chunk


def _digest_update(digest: Any, row: Sequence[Any]) -> None:
    digest.update(repr(tuple(_plain(v) for v in row)).encode())


def _plain(value: Any) -> Any:
    """One value as both engines' rows compare: arrays (PostgreSQL) and JSON arrays (SQLite) of
    sources as tuples, floats bit for bit."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, float):
        return value.hex()
    return value


async def copy_database(source: Path, target: str) -> list[TableReport]:
    """Copy, then verify; the report per table. Raises StartupError with one clear line on refusal
    (a target that already holds data, a schema mismatch) or on a verification failure."""
    try:
        lite = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        lite.execute("SELECT 1 FROM measurement_sets LIMIT 1")
    except sqlite3.Error as exc:
        raise StartupError(f"cannot read a contimg SQLite database at {source}: {exc}") from exc
    db = Database(PostgresSettings(target, pool_min=1, pool_max=2))
    await db.open()  # migrates the target to this release's schema
    try:
        pool = db.pool
        assert pool is not None
        async with pool.acquire() as conn:
            existing = await _data_tables_holding_rows(conn)
            if existing:
                raise StartupError(
                    f"the target database already holds {', '.join(existing)}: copy-data needs an empty one"
                )
            reports = []
            async with conn.transaction():
                for spec in TABLES:
                    reports.append(await _copy_table(lite, conn, spec))
                await _copy_settings(lite, conn)
                await _continue_counters(lite, conn)
            checked = [await _verify(lite, conn, spec, report) for spec, report in zip(TABLES, reports, strict=True)]
        return checked
    finally:
        lite.close()
        await db.close()


_DATA_TABLES = ("measurement_sets", "images", "sources", "jobs")


async def _data_tables_holding_rows(conn: Any) -> list[str]:
    return [t for t in _DATA_TABLES if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {t})")]


async def holds_data(url: str) -> list[str]:
    """Which data tables of the PostgreSQL database hold rows (migrating it first)."""
    db = Database(PostgresSettings(url, pool_min=1, pool_max=1))
    await db.open()
    try:
        assert db.pool is not None
        async with db.pool.acquire() as conn:
            return await _data_tables_holding_rows(conn)
    finally:
        await db.close()


def _columns(lite: sqlite3.Connection, spec: TableCopy, pg_columns: dict[str, str]) -> list[str]:
    return [r[1] for r in lite.execute(f"PRAGMA table_info({spec.name})") if r[1] in pg_columns]


async def _pg_columns(conn: Any, table: str) -> dict[str, str]:
    """Column name -> PostgreSQL data type."""
    found = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1", table
    )
    return {r[0]: r[1] for r in found}


# The target's secondary indexes (not those of its keys and unique constraints): built once after
# the rows are in, not row by row. A GiST index filled row by row took 1,000,000 sources from
# ~5 minutes to copy; built at the end, seconds.
_SECONDARY_INDEXES = (
    "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = current_schema() "
    "AND i.tablename = $1 AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
)


async def _copy_table(lite: sqlite3.Connection, conn: Any, spec: TableCopy) -> TableReport:
    started = time.perf_counter()
    indexes = await conn.fetch(_SECONDARY_INDEXES, spec.name)
    for name, _ in indexes:
        await conn.execute(f'DROP INDEX "{name}"')
    columns = _columns(lite, spec, await _pg_columns(conn, spec.name))
    select = f"SELECT {', '.join(columns)} FROM {spec.name} ORDER BY {spec.key}"
    count = 0
    for chunk in _sqlite_rows(lite, select):
        records = [spec.derive(columns, r) for r in chunk] if spec.derive is not None else chunk
        await conn.copy_records_to_table(spec.name, records=records, columns=[*columns, *spec.extra])
        count += len(chunk)
    for _, definition in indexes:
        await conn.execute(definition)
    seconds = time.perf_counter() - started
    log.info("copied %s: %d rows in %.1f s", spec.name, count, seconds)
    return TableReport(spec.name, count, seconds, "")


async def _copy_settings(lite: sqlite3.Connection, conn: Any) -> None:
    """The page-token key above all: tokens the SQLite server gave out stay valid."""
    for key, value in lite.execute("SELECT key, value FROM settings WHERE key != 'health_probe'"):
        data = value if isinstance(value, bytes) else str(value).encode()
        await conn.execute(
            "INSERT INTO settings VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, data
        )


async def _continue_counters(lite: sqlite3.Connection, conn: Any) -> None:
    assigned = dict(lite.execute("SELECT name, seq FROM sqlite_sequence"))
    for table, column in IDENTITIES:
        largest = max(
            int(assigned.get(table) or 0),
            int(lite.execute(f"SELECT coalesce(max({column}), 0) FROM {table}").fetchone()[0]),
        )
        if largest:
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), $1)", largest)
    last_event = max(
        int(assigned.get("job_events") or 0),
        int(lite.execute("SELECT coalesce(max(sequence), 0) FROM job_events").fetchone()[0]),
    )
    await conn.execute("UPDATE job_event_counter SET last = $1", last_event)


async def _verify(lite: sqlite3.Connection, conn: Any, spec: TableCopy, report: TableReport) -> TableReport:
    types = await _pg_columns(conn, spec.name)
    columns = _columns(lite, spec, types)
    # SQLite keeps a whole number in a REAL column as an integer; PostgreSQL gives it back as a float.
    floats = [i for i, c in enumerate(columns) if types[c] == "double precision"]
    select = f"SELECT {', '.join(columns)} FROM {spec.name} ORDER BY {spec.key}"
    mine, theirs = hashlib.blake2b(digest_size=16), hashlib.blake2b(digest_size=16)
    lite_count = 0
    for chunk in _sqlite_rows(lite, select):
        for row in chunk:
            derived = list(spec.derive(columns, row) if spec.derive is not None else row)[: len(columns)]
            for i in floats:
                derived[i] = float(derived[i])
            _digest_update(mine, derived)
        lite_count += len(chunk)
    pg_count = 0
    async with conn.transaction():
        async for record in conn.cursor(select, prefetch=CHUNK):
            _digest_update(theirs, tuple(record))
            pg_count += 1
    if lite_count != pg_count or mine.digest() != theirs.digest():
        raise StartupError(
            f"verification failed for {spec.name}: {lite_count} rows in SQLite, {pg_count} in PostgreSQL, "
            f"checksums {mine.hexdigest()} and {theirs.hexdigest()} (was the SQLite database written meanwhile?)"
        )
    return TableReport(spec.name, report.rows, report.seconds, mine.hexdigest())

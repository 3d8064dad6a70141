"""The entry points: fill an empty database with demo data, or leave one with data alone.

The schema is created through `Database` (migrations), then one plain sqlite3 connection in a worker
thread loads everything in a single transaction. A rollback journal on a new file records almost
nothing (new pages need no undo) and keeps the load atomic, where WAL would write everything twice;
synchronous is OFF and the cache big during the load, and WAL comes back at the end.

On PostgreSQL (a postgresql:// --database) the same data are made in a SQLite file in a temporary
directory and moved over with `copy-data` (storage/postgres/copy.py), verified: one generator, the
same records on both engines.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from dsa110.contimg.server.config import ServerConfig
from dsa110.contimg.server.storage.sqlite.database import Database, SQLiteSettings

from .loader import load

log = logging.getLogger(__name__)

DEFAULT_SEED = 110
# Any row in one of these makes a database "not empty": demo data has no append mode.
_DATA_TABLES = ("measurement_sets", "images", "sources", "jobs")


async def fill(cfg: ServerConfig, images: int, *, seed: int = DEFAULT_SEED, catalog_sources: int = 0) -> None:
    """Fill the (empty) database at `cfg.database_path` with `images` demo images and all around them,
    plus `catalog_sources` reference-catalog sources that no image measured (spread over the sky
    NVSS covers; the real catalog holds ~1.6 million).

    Raises SystemExit when the database already holds data.
    """
    if cfg.postgres:
        await _fill_postgres(cfg.database, images, seed, only_if_empty=False, catalog_sources=catalog_sources)
        return
    summary = await _fill(cfg.database_path, images, seed, only_if_empty=False, catalog_sources=catalog_sources)
    assert summary is not None


async def fill_if_empty(cfg: ServerConfig, images: int) -> None:
    """Fill the database with demo data unless it already has some (then log and leave it alone)."""
    if cfg.postgres:
        await _fill_postgres(cfg.database, images, DEFAULT_SEED, only_if_empty=True)
        return
    await _fill(cfg.database_path, images, DEFAULT_SEED, only_if_empty=True)


async def _fill_postgres(url: str, images: int, seed: int, *, only_if_empty: bool, catalog_sources: int = 0) -> None:
    from dsa110.contimg.server.domain.errors import StartupError
    from dsa110.contimg.server.storage.postgres.copy import copy_database, holds_data

    existing = await holds_data(url)
    if existing:
        if only_if_empty:
            log.info("demo data: the PostgreSQL database already holds %s; leaving it as it is", ", ".join(existing))
            return
        raise SystemExit(
            f"demo data: the PostgreSQL database is not empty (data in {', '.join(existing)}); demo data only "
            "goes into an empty database"
        )
    with tempfile.TemporaryDirectory(prefix="contimg-demo-") as scratch:
        path = Path(scratch) / "contimg.sqlite3"
        await _fill(path, images, seed, only_if_empty=False, catalog_sources=catalog_sources)
        try:
            await copy_database(path, url)
        except StartupError as exc:
            raise SystemExit(f"demo data: {exc}") from exc


async def _fill(
    path: Path, images: int, seed: int, *, only_if_empty: bool, catalog_sources: int = 0
) -> dict[str, int] | None:
    if images < 1:
        raise SystemExit("demo data: the number of images must be at least 1")
    db = Database(SQLiteSettings(path))
    await db.open()  # creates or migrates the schema
    await db.close()
    return await asyncio.to_thread(_fill_sync, path, images, seed, only_if_empty, catalog_sources)


def _fill_sync(
    path: Path, images: int, seed: int, only_if_empty: bool, catalog_sources: int = 0
) -> dict[str, int] | None:
    started = time.perf_counter()
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
    try:
        _prepare_bulk_load(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            existing = _rows_found(conn)
            if any(existing.values()):
                conn.execute("ROLLBACK")
                _not_empty(path, existing, only_if_empty)
                return None
            summary = load(conn, random.Random(seed), images, catalog_sources)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            _restore_durability(conn, path)
    finally:
        conn.close()
    elapsed = time.perf_counter() - started
    log.info("demo data: %s in %.1f s: %s", path, elapsed, ", ".join(f"{n:,} {k}" for k, n in summary.items()))
    return summary


def _prepare_bulk_load(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA busy_timeout = 5000")
    try:
        conn.execute("PRAGMA journal_mode = DELETE").fetchone()
    except sqlite3.OperationalError:
        # Another process holds the file open (several --workers filling at once): stay in WAL,
        # slower, still correct.
        log.info("demo data: the database is in use elsewhere; loading in WAL mode")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1048576")  # 1 GiB
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA busy_timeout = 3600000")  # wait for another filler rather than fail


def _restore_durability(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("PRAGMA synchronous = FULL")
    try:
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
    except sqlite3.OperationalError:
        log.warning("demo data: could not switch %s back to WAL (the server will on open)", path)


def _rows_found(conn: sqlite3.Connection) -> dict[str, int]:
    """Per data table, 1 if it has a row (0 if not); for images, how many (for the log)."""
    found = {}
    for table in _DATA_TABLES:
        found[table] = int(conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 1)").fetchone()[0])
    found["images"] = int(conn.execute("SELECT count(*) FROM images").fetchone()[0]) if found["images"] else 0
    return found


def _not_empty(path: Path, existing: dict[str, int], only_if_empty: bool) -> None:
    """Leave a database with data alone (`only_if_empty`: log why) or refuse it (SystemExit)."""
    holding = ", ".join(t for t, n in existing.items() if n)
    if not only_if_empty:
        raise SystemExit(
            f"demo data: {path} is not empty ({existing['images']} images; data in {holding}); demo data only "
            "goes into an empty database: use another --data-dir/--database or delete the file"
        )
    if existing["images"]:
        log.info("demo data: %s already holds %d images; leaving it as it is", path, existing["images"])
    else:
        log.warning("demo data: %s has no images but holds other data (%s); not adding demo data", path, holding)

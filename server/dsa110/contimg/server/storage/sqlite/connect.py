"""SQLite settings, the write connection and what its errors mean: shared by the server process and
its write process (write_process.py), which opens the same file with the same pragmas."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import cast

from ...domain.errors import StorageFailure, StorageFull, StorageUnavailable


@dataclass(frozen=True, slots=True)
class SQLiteSettings:
    path: Path
    readers: int = 4
    busy_timeout_ms: int = 10_000
    # FULL: a commit is on disk before the RPC is acknowledged, even across power loss.
    synchronous: str = "FULL"
    cache_mb: int = 64
    statement_timeout_s: float = 30.0
    # Photometry ingest's SQLite work runs in a process of its own (see write_process.py).
    write_process: bool = True
    # Quick reads tried on the event loop within a budget (reads.py); else every read on the pool.
    inline_reads: bool = True


def write_process_sqlite() -> ModuleType:
    """The SQLite module the write process links: pysqlite3's when installed (a dependency on Linux
    x86_64), else the standard library's. Its SQLite 3.51 is built without the SECURE_DELETE and
    OMIT_LOOKASIDE of Debian's 3.40: 19 % fewer instructions per photometry row (callgrind), 10 %
    more rows/s through storage alone (bench/README.md). Only the write process uses it, so each
    process links one SQLite (two in one process would release each other's POSIX locks on close);
    both share the file, whose format and WAL are the same across versions."""
    try:
        from pysqlite3 import dbapi2  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return sqlite3
    return cast(ModuleType, dbapi2)


def pragmas(settings: SQLiteSettings) -> list[str]:
    return [
        f"busy_timeout = {int(settings.busy_timeout_ms)}",
        "foreign_keys = ON",
        f"cache_size = {-1024 * int(settings.cache_mb)}",
        "temp_store = MEMORY",
    ]


def connect_writer(settings: SQLiteSettings, driver: ModuleType = sqlite3) -> sqlite3.Connection:
    conn = cast(sqlite3.Connection, driver.connect(str(settings.path), isolation_level=None, check_same_thread=False))
    for pragma in [*pragmas(settings), f"synchronous = {settings.synchronous}", "mmap_size = 268435456"]:
        conn.execute(f"PRAGMA {pragma}").fetchall()
    mode = _enable_wal(conn, settings, driver)
    if mode != "wal":
        conn.close()
        raise RuntimeError(f"could not enable WAL on {settings.path}")
    return conn


def _enable_wal(conn: sqlite3.Connection, settings: SQLiteSettings, driver: ModuleType) -> str:
    """PRAGMA journal_mode = WAL, retried while "locked" for up to busy_timeout. On a new file,
    processes opening it together (--workers N, replicas) each hold a shared lock and ask for the
    exclusive one; SQLite fails one of them at once instead of calling the busy handler (waiting
    would deadlock), so busy_timeout alone does not help. Measured: 30 of 100 rounds of three
    processes opening a new file failed without the retry."""
    deadline = time.monotonic() + settings.busy_timeout_ms / 1000
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0])
        except driver.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.005)  # the winner converts the file meanwhile


# SQL functions the queries use (the cone search's distances) that SQLite builds without
# SQLITE_ENABLE_MATH_FUNCTIONS lack; Debian's and pysqlite3's have them. Where missing, Python's
# stand in (correct, but each call takes the GIL: slower, and no longer off the event loop's GIL).
MATH_FUNCTIONS: dict[str, Callable[[float], float]] = {"cos": math.cos, "sin": math.sin, "radians": math.radians}


def has_math(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT cos(0.0), sin(0.0), radians(0.0)").fetchall()
    except sqlite3.OperationalError:
        return False
    return True


def add_math(conn: sqlite3.Connection) -> None:
    """Python's math functions under SQLite's names, on a connection whose SQLite lacks them."""
    for name, fn in MATH_FUNCTIONS.items():
        conn.create_function(name, 1, fn, deterministic=True)


def translate(exc: Exception) -> Exception:
    """A write's exception as the caller should see it: a busy or locked file is UNAVAILABLE, a full
    disk RESOURCE_EXHAUSTED; never INTERNAL with a traceback for what the machine did."""
    return storage_error(exc) if isinstance(exc, sqlite3.OperationalError) else exc


def storage_error(exc: sqlite3.OperationalError) -> Exception:
    text = str(exc)
    if "locked" in text or "busy" in text or "interrupted" in text:
        return StorageUnavailable(f"storage busy: {text}")
    if "disk is full" in text:  # SQLITE_FULL
        return StorageFull("the disk holding the database is full: writes are refused until space is freed")
    if "disk I/O error" in text:  # SQLITE_IOERR_*
        return StorageFailure("the database's disk failed a read or write (I/O error); retry later")
    if "readonly database" in text:  # SQLITE_READONLY: the file, its directory or the disk turned read-only
        return StorageFailure("the database cannot be written (its file or disk is read-only)")
    return exc

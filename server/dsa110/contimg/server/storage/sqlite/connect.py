"""SQLite settings, the write connection and what its errors mean: shared by the server process and
its write process (write_process.py), which opens the same file with the same pragmas."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ...domain.errors import StorageUnavailable


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


def pragmas(settings: SQLiteSettings) -> list[str]:
    return [
        f"busy_timeout = {int(settings.busy_timeout_ms)}",
        "foreign_keys = ON",
        f"cache_size = {-1024 * int(settings.cache_mb)}",
        "temp_store = MEMORY",
    ]


def connect_writer(settings: SQLiteSettings) -> sqlite3.Connection:
    conn = sqlite3.connect(str(settings.path), isolation_level=None, check_same_thread=False)
    for pragma in [*pragmas(settings), f"synchronous = {settings.synchronous}", "mmap_size = 268435456"]:
        conn.execute(f"PRAGMA {pragma}").fetchall()
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()
    if mode[0][0] != "wal":
        conn.close()
        raise RuntimeError(f"could not enable WAL on {settings.path}")
    return conn


def translate(exc: Exception) -> Exception:
    """A write's exception as the caller should see it (a busy or locked file is UNAVAILABLE)."""
    return storage_error(exc) if isinstance(exc, sqlite3.OperationalError) else exc


def storage_error(exc: sqlite3.OperationalError) -> Exception:
    text = str(exc)
    if "locked" in text or "busy" in text or "interrupted" in text:
        return StorageUnavailable(f"storage busy: {text}")
    return exc

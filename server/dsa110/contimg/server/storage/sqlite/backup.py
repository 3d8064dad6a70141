"""`contimg-server backup` and `restore` for the SQLite engine: an online, consistent copy of a database
being served and written, and putting one back.

Backup reads the database in one read transaction through SQLite's own backup API (every page in
one step): in WAL mode a reader sees one committed state and writers go on meanwhile, so the copy
holds exactly the writes committed before it began, none half. It is written beside DEST, checked
(`PRAGMA integrity_check`), made durable (fsync of the file and of its directory) and only then
renamed to DEST: a failed or interrupted backup leaves no DEST. It never writes the source.

Restore puts such a copy in place of a database, the same way: checked first, then one rename over
the file (and the old file's WAL and shared-memory files removed, which belong to the old file).
Stop the server first. A server still serving the old file notices the swap and refuses every write
(DATABASE_REPLACED: README, "Health and faults") rather than acknowledge writes nobody will read.
After a restore, a watcher resuming from an event the restored log does not hold gets OUT_OF_RANGE.

PostgreSQL's equivalent is its own tooling: `pg_dump -Fc` (consistent, online) and `pg_restore`
into an empty database (README).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class BackupError(Exception):
    """A backup or restore that cannot be done; its message says why, for one line of output."""


@dataclass(frozen=True)
class Copied:
    path: Path
    bytes: int
    seconds: float


def backup(source: Path, dest: Path) -> Copied:
    """Copy the database at `source` to `dest` (which must not exist), consistently, while it is served."""
    if dest.exists():
        raise BackupError(f"{dest} exists: give a new path")
    if not source.exists():
        raise BackupError(f"no database at {source}")
    return _copy_into_place(source, dest, "backup")


def restore(backup_file: Path, target: Path) -> Copied:
    """Put the backup at `backup_file` in place of the database at `target` (made if absent)."""
    if not backup_file.exists():
        raise BackupError(f"no backup at {backup_file}")
    _check(backup_file)

    def forget_old_log() -> None:  # the old file's: SQLite must not apply them to the new one
        for leftover in (Path(f"{target}-wal"), Path(f"{target}-shm")):
            leftover.unlink(missing_ok=True)

    return _copy_into_place(backup_file, target, "restore", forget_old_log)


def _copy_into_place(source: Path, dest: Path, verb: str, before_rename: Callable[[], None] = lambda: None) -> Copied:
    """`source`'s pages, read in one read transaction, into a file beside `dest`; checked, on disk,
    then renamed to `dest`. Nothing is left at `dest` or beside it if any step fails."""
    started = time.perf_counter()
    partial = dest.with_name(f"{dest.name}.{verb}-partial")
    partial.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
        try:
            out = sqlite3.connect(partial)
            try:
                src.backup(out)  # pages=-1: every page in one step, under one read transaction
                out.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            finally:
                out.close()
        finally:
            src.close()
        _check(partial)
        _fsync(partial)
        before_rename()
        os.replace(partial, dest)
        _fsync(dest.parent)
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"{verb} of {source} failed: {exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return Copied(dest, dest.stat().st_size, time.perf_counter() - started)


def _check(path: Path) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        found = conn.execute("PRAGMA integrity_check").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a usable SQLite database: {exc}") from exc
    finally:
        conn.close()
    if found != "ok":
        raise BackupError(f"{path} fails PRAGMA integrity_check: {found}")
    if "schema_migrations" not in tables:
        raise BackupError(f"{path} is not a contimg database (no schema_migrations table)")


def _fsync(path: Path) -> None:
    """A file's data, or a directory's entries (a rename), on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The SQLite database: opening it (writer, schema, read connections, change probe), writes, faults.

One writer connection serializes every write (SQLite allows one writer anyway; queueing in-process
is cheaper than lock retries): see writer.py for its thread, group commit and why a cancelled caller
never leaves a transaction half done. Reads: reads.py. What is reused between reads, and when it is
stale: readcache.py, with the version from changes.py. request_ids: idempotency.py.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Any, TypeVar

from ...domain.errors import DomainError, StartupError, StorageFull, StorageUnavailable
from ...domain.page_keys import LEGACY_SETTING as LEGACY
from ...domain.page_keys import SETTING, PageKey, decode_keys, encode_keys, rotated
from ...readcache import ReadCache
from ...tracing import storage_span
from ..clock import now_us
from ..load import CommitLog, Load
from ..request_ids import EXPIRE_BATCH, REQUEST_ID_RETENTION_US
from .changes import ChangeProbe
from .connect import SQLiteSettings, connect_writer, has_math, translate
from .guard import FAULTS, FREE_AFTER_FULL_BYTES, DatabaseFile, WriteState, free_bytes
from .idempotency import expire_batch
from .reads import Reads, Row
from .schema import migrate
from .write_process import WriteProcess
from .writer import Body, Finish, Writer

__all__ = ["Database", "SQLiteSettings"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# The read cache's bound when none is given (--read-cache-mb).
DEFAULT_READ_CACHE_BYTES = 256 << 20


class Database:
    def __init__(self, settings: SQLiteSettings, read_cache_bytes: int = DEFAULT_READ_CACHE_BYTES):
        self.settings = settings
        self._offload = WriteProcess(settings) if settings.write_process else None
        self._writer = Writer(partial(connect_writer, settings), translate, self._offload, check=self._check_file)
        self.file: DatabaseFile | None = None  # set once open (guard.py)
        self.writes = WriteState()
        self.reads = Reads(settings)
        self.changes = ChangeProbe(settings.path)
        # Every result reused between reads, checked against `version` (readcache.py).
        self.read_cache = ReadCache(self.version, read_cache_bytes)
        self.page_token_secret = b""

    async def open(self) -> None:
        path = self.settings.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            await self._writer.open()
            self.page_token_secret = await self._writer.call(migrate)
        except StartupError:
            await self._writer.close()
            raise
        except (sqlite3.Error, OSError, RuntimeError) as exc:
            await self._writer.close()
            raise StartupError(f"cannot open the database {path} for writing: {exc}") from exc
        self.file = DatabaseFile(path)
        probe = sqlite3.connect(":memory:")
        math = has_math(probe)
        probe.close()
        if not math:
            log.warning("this SQLite has no math functions: Python's stand in (cone searches are slower)")
        await self.reads.open(math)
        self.changes.open()

    async def start_write_process(self) -> None:
        """Start the write process now (on the writer thread: writes queue behind it meanwhile)."""
        offload = self._offload
        if offload is not None and self._writer.is_open:
            await self._writer.call(lambda _conn: offload.start())

    async def close(self) -> None:
        self.changes.close()
        self.read_cache.clear()
        if self._writer.is_open:
            try:
                await self._writer.call(lambda conn: conn.execute("PRAGMA optimize").fetchall())
            except sqlite3.OperationalError as exc:
                # Optional upkeep: another process closing the same file at the same moment (the
                # --workers of one service stopping together) can hold the lock it needs; found as
                # a worker's exit status 1 at a clean stop.
                log.info("PRAGMA optimize skipped at close: %s", exc)
            await self._writer.close()
        await self.reads.close()

    @property
    def description(self) -> str:
        return str(self.settings.path)

    # ---- what the metrics read (load.py) -----------------------------------------------------------

    @property
    def commits(self) -> CommitLog:
        return self._writer.commits

    def load(self) -> Load:
        return Load(self._writer.pending, self.reads.in_use, self.reads.size)

    async def size_bytes(self) -> int:
        """The database file and its write-ahead log, in bytes."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(f"{self.settings.path}{suffix}").st_size
            except OSError:  # no WAL yet, or the file gone (health.py reports that)
                pass
        return total

    async def schema_version(self) -> int:
        rows = await self.fetchall("SELECT max(version) FROM schema_migrations")
        return int(rows[0][0] or 0)

    # ---- reads (reads.py) ----------------------------------------------------------------------

    async def lookup(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with storage_span("read", sql):
            return await self.reads.lookup(sql, params)

    async def try_inline(self, sql: str, params: Sequence[Any] = ()) -> list[Row] | None:
        with storage_span("read inline", sql):
            return await self.reads.try_inline(sql, params)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with storage_span("read", sql):
            return await self.reads.fetchall(sql, params)

    def version(self) -> Hashable | None:
        """A value that changes with every commit to the database, by any connection of any process;
        None when it cannot tell (changes.py)."""
        return self.changes.version()

    async def count(self, sql: str, params: Sequence[Any]) -> int:
        """A COUNT query, reused until the next commit by anyone: the pages of one list share it."""

        async def run() -> int:
            return int((await self.lookup(sql, params))[0][0])

        return await self.read_cache.computed(("count", sql, tuple(params)), run)

    # ---- writes ------------------------------------------------------------------------------

    async def write(
        self,
        body: Body[T],
        after_commit: Callable[[T], None] | None = None,
        *,
        finish: Finish | None = None,
        offload: bool = False,
    ) -> T:
        """Run `body` (on the writer thread) in a transaction; all or nothing, never cancelled halfway.

        `after_commit` runs on the event loop after COMMIT and before any later write is acknowledged,
        so whatever it publishes goes out in commit order. `finish`: see writer.py. `offload`: run
        `body` and `finish` in the write process (write_process.py) when there is one; both must
        then pickle (module-level functions, partials of them over plain data).
        """
        if not self._writer.is_open:
            raise StorageUnavailable("the database is closed")
        try:
            with storage_span("write"):
                result = await self._writer.write(body, finish, after_commit, offload=offload)
        except FAULTS as exc:
            self.writes.failed(exc)
            raise
        if self.writes.fault is not None:
            self.writes.succeeded()
        return result

    def _check_file(self) -> Exception | None:
        """For the writer, before and after each group (guard.py)."""
        return self.file.check() if self.file is not None else None

    def fault(self) -> DomainError | None:
        """Why writes fail now, if they do: the file replaced (checked now), else the fault the last
        write met (a full disk, an I/O error, a read-only file) until a write succeeds again."""
        replaced = self._check_file()
        if replaced is not None:
            self.writes.failed(replaced)
        return self.writes.fault

    async def probe(self) -> None:
        """A small real write: whether writes succeed again (the health monitor, while they fail).
        After a full disk, only once there is room for real writes again (guard.py)."""
        if isinstance(self.writes.fault, StorageFull) and free_bytes(self.settings.path.parent) < FREE_AFTER_FULL_BYTES:
            return
        await self.write(
            lambda txn: txn.execute("INSERT OR REPLACE INTO settings VALUES ('health_probe', ?)", (now_us(),))
        )

    async def expire_request_ids(self, retention_us: int = REQUEST_ID_RETENTION_US) -> int:
        """Forget request_ids older than the retention, a batch per write so that no write waits
        long behind it; how many were forgotten."""
        before = now_us() - retention_us
        total = 0
        while True:
            removed = await self.write(partial(expire_batch, before_us=before))
            total += removed
            if removed < EXPIRE_BATCH:
                return total

    # ---- page-token keys (domain/page_keys.py) ---------------------------------------------------

    async def page_token_keys(self) -> tuple[PageKey, ...]:
        rows = await self.fetchall("SELECT value FROM settings WHERE key = ?", (SETTING,))
        return decode_keys(bytes(rows[0][0]) if rows else None, self.page_token_secret)

    async def rotate_page_token_key(self, new: bytes, signs_from_us: int) -> tuple[PageKey, ...]:
        return await self.write(partial(_rotate_page_token_key, new=new, signs_from_us=signs_from_us))


def _rotate_page_token_key(txn: sqlite3.Connection, new: bytes, signs_from_us: int) -> tuple[PageKey, ...]:
    rows = dict(txn.execute("SELECT key, value FROM settings WHERE key IN (?, ?)", (SETTING, LEGACY)).fetchall())
    stored = rows.get(SETTING)
    keys = rotated(decode_keys(bytes(stored) if stored is not None else None, bytes(rows[LEGACY])), new, signs_from_us)
    txn.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (SETTING, encode_keys(keys)))
    return keys

"""The SQLite database: connections, pragmas, migrations, transactions, idempotency records.

One writer connection serializes every write (SQLite allows one writer anyway; queueing in-process
is cheaper than lock retries): see writer.py for its thread, group commit and why a cancelled caller
never leaves a transaction half done. Reads go to a small pool of read-only connections (WAL lets
them run beside the writer) and, when quick, to one connection on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar, cast

import aiosqlite

from ...domain.errors import (
    DomainError,
    QueryTimeout,
    RequestIdMismatch,
    StartupError,
    StorageFull,
    StorageUnavailable,
)
from ...repositories.protocols import Idempotency
from .connect import (
    MATH_FUNCTIONS,
    SQLiteSettings,
    add_math,
    connect_writer,
    has_math,
    pragmas,
    storage_error,
    translate,
)
from .guard import FAULTS, FREE_AFTER_FULL_BYTES, DatabaseFile, WriteState, free_bytes
from .migrations import MIGRATIONS
from .wal_index import WalIndexHeader
from .write_process import WriteProcess
from .writer import Body, Finish, Txn, Writer

__all__ = ["Database", "SQLiteSettings", "check_request_id", "chunks", "now_us", "placeholders", "remember_request_id"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Row = Sequence[Any]


# How long a read on the event loop may wait for a lock before it moves to the thread pool.
INLINE_BUSY_MS = 5
# Work a read may do on the event loop: TICKS x OPS SQLite VM instructions (~1 ms), then it moves.
INLINE_TICK_OPS = 1000
INLINE_BUDGET_TICKS = 100
# Read results kept until the database changes (see Database.cached): pages, counts and searches,
# and apart from them (so that many single reads do not push pages out) records read by key.
# Bounded by bytes as well as entries: 2,048 distinct cones of 1,000 sources each once held ~2.8 GB.
# Bytes are estimates by kind (tracemalloc of records as read: a Source in a Match ~0.9 KB, an Image
# ~1.5 KB, an (id, update_time) ref ~0.12 KB), so the bound holds to within those estimates.
RESULT_CACHE_ENTRIES = 2048
RESULT_CACHE_BYTES = 48 << 20
RECORD_CACHE_ENTRIES = 4096
_RECORD_BYTES = 1536
_REF_BYTES = 128
# How long a request_id is remembered (common.proto: "request_id"): a retry of a write within this
# time returns the first result; later, the request is new. Long past any client's retries and a
# pipeline's restart, short enough that the table stays small.
REQUEST_ID_RETENTION_US = 7 * 24 * 3600 * 1_000_000
_EXPIRE_BATCH = 5000


def now_us() -> int:
    return time.time_ns() // 1000


class Database:
    def __init__(self, settings: SQLiteSettings):
        self.settings = settings
        self._offload = WriteProcess(settings) if settings.write_process else None
        self._writer = Writer(partial(connect_writer, settings), translate, self._offload, check=self._check_file)
        self.file: DatabaseFile | None = None  # set once open (guard.py)
        self.writes = WriteState()
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []
        self.page_token_secret = b""
        self._math = True  # whether SQLite has its math functions (connect.py: MATH_FUNCTIONS)
        self._inline: sqlite3.Connection | None = None
        self._inline_ticks = 0
        self.inline_fallbacks = 0
        self._wal: WalIndexHeader | None = None
        self._results: OrderedDict[Hashable, tuple[Hashable, Any]] = OrderedDict()
        self._result_bytes = 0  # estimated (_weight)
        self._records: OrderedDict[Hashable, tuple[Hashable, Any]] = OrderedDict()

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(str(self.settings.path), isolation_level=None, check_same_thread=False)
        for pragma in [*pragmas(self.settings), "query_only = ON", "mmap_size = 268435456"]:
            # execute_fetchall, not execute: a PRAGMA that returns a row (busy_timeout, mmap_size) left
            # unfetched stays an active statement, and then the interrupt() that stops a cancelled
            # query is never cleared: every later statement on the connection fails "interrupted".
            await conn.execute_fetchall(f"PRAGMA {pragma}")
        if not self._math:
            for name, fn in MATH_FUNCTIONS.items():
                await conn.create_function(name, 1, fn, deterministic=True)
        return conn

    async def open(self) -> None:
        path = self.settings.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            await self._writer.open()
            self.page_token_secret = await self._writer.call(_migrate)
        except StartupError:
            await self._writer.close()
            raise
        except (sqlite3.Error, OSError, RuntimeError) as exc:
            await self._writer.close()
            raise StartupError(f"cannot open the database {path} for writing: {exc}") from exc
        self.file = DatabaseFile(path)
        probe = sqlite3.connect(":memory:")
        self._math = has_math(probe)
        probe.close()
        if not self._math:
            log.warning("this SQLite has no math functions: Python's stand in (cone searches are slower)")
        for _ in range(max(1, self.settings.readers)):
            conn = await self._connect()
            self._all_readers.append(conn)
            self._readers.put_nowait(conn)
        self._inline = sqlite3.connect(str(self.settings.path), isolation_level=None, check_same_thread=False)
        self._inline.set_progress_handler(self._inline_budget, INLINE_TICK_OPS)
        if not self._math:
            add_math(self._inline)
        for pragma in (
            "query_only = ON",
            f"busy_timeout = {INLINE_BUSY_MS}",
            "mmap_size = 268435456",
            f"cache_size = {-1024 * int(self.settings.cache_mb)}",
        ):
            self._inline.execute(f"PRAGMA {pragma}")
        # A read opens the WAL index (the -shm file) for this process's connections first.
        self._inline.execute("PRAGMA data_version").fetchall()
        self._wal = WalIndexHeader.open(self.settings.path)
        if self._wal is None or not self._wal.mapped:
            log.warning("WAL index of %s not readable: reused results are checked with a pragma", self.settings.path)

    async def start_write_process(self) -> None:
        """Start the write process now (on the writer thread: writes queue behind it meanwhile)."""
        offload = self._offload
        if offload is not None and self._writer.is_open:
            await self._writer.call(lambda _conn: offload.start())

    async def close(self) -> None:
        wal, self._wal = self._wal, None  # no more reads of it; closed last (wal_index.py: why)
        if self._writer.is_open:
            await self._writer.call(lambda conn: conn.execute("PRAGMA optimize").fetchall())
            await self._writer.close()
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        for conn in self._all_readers:
            await conn.close()
        self._all_readers.clear()
        if wal is not None:
            wal.close()

    async def schema_version(self) -> int:
        rows = await self.fetchall("SELECT max(version) FROM schema_migrations")
        return int(rows[0][0] or 0)

    # ---- reads -------------------------------------------------------------------------------

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[aiosqlite.Connection]:
        conn = await self._readers.get()
        try:
            yield conn
        finally:
            self._readers.put_nowait(conn)

    async def lookup(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """A read expected to be quick (a key lookup, an indexed page), tried on the event loop thread.

        Measured: a thread hop to an aiosqlite connection costs more CPU than an indexed lookup or a
        100-row index range. SQLite's progress handler caps the inline attempt at ~1 ms of VM work;
        a query that needs more is abandoned and rerun on the reader pool, so one slow filter never
        stalls the loop. In WAL mode readers do not wait for the writer; if the file is briefly busy
        anyway, the pool takes it too.
        """
        conn = self._inline
        if conn is None:
            return await self.fetchall(sql, params)
        self._inline_ticks = 0
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            self.inline_fallbacks += 1
            return await self.fetchall(sql, params)

    async def try_inline(self, sql: str, params: Sequence[Any] = ()) -> list[Row] | None:
        """The rows if the query finishes within the on-loop budget, else None (nothing is retried)."""
        conn = self._inline
        if conn is None:
            return None
        self._inline_ticks = 0
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return None

    def version(self) -> Hashable | None:
        """A value that changes with every commit to the database, by any connection of any process;
        None when it cannot be told. The WAL index's header (wal_index.py), else SQLite's count of
        commits by other connections (the writer, other processes) as seen by the on-loop one."""
        wal = self._wal
        if wal is not None:
            header = wal.read()
            if header is not None:
                return header
        conn = self._inline
        if conn is None:
            return None
        self._inline_ticks = 0
        try:
            return int(conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.OperationalError:
            return None

    async def cached(self, key: Hashable, compute: Callable[[], Awaitable[T]], *, record: bool = False) -> T:
        """`compute()`'s result, reused until anything commits to the database, from any process.

        Exact, not a TTL: `version()` changes with every commit. So a page, a cone or a record asked
        for again (dashboards polling, clients paging in step) costs a look at the WAL index until
        the next write; under a steady stream of writes this saves nothing and costs ~1 us.
        `record`: a record read by key, kept apart from pages and searches. What is returned is
        shared by every caller until then: never modified.
        """
        version = self.version()
        try:
            hash(key)
        except TypeError:  # e.g. a forged page token with a list inside: let the query reject it
            version = None
        if version is None:
            return await compute()
        kept, limit = (self._records, RECORD_CACHE_ENTRIES) if record else (self._results, RESULT_CACHE_ENTRIES)
        hit = kept.get(key)
        if hit is not None and hit[0] == version:
            kept.move_to_end(key)
            return cast(T, hit[1])
        value = await compute()
        if record:
            kept[key] = (version, value)
            if len(kept) > limit:
                kept.popitem(last=False)
            return value
        weight = _weight(value)
        if weight > RESULT_CACHE_BYTES // 16:  # one result may not push out a sixteenth of the rest
            return value
        old = kept.pop(key, None)
        if old is not None:
            self._result_bytes -= _weight(old[1])
        kept[key] = (version, value)
        self._result_bytes += weight
        while len(kept) > limit or self._result_bytes > RESULT_CACHE_BYTES:
            _, (_, evicted) = kept.popitem(last=False)
            self._result_bytes -= _weight(evicted)
        return value

    async def record(self, key: Hashable, sql: str, params: Sequence[Any], convert: Callable[[Row], T]) -> T | None:
        """`convert` of the one row `sql` selects (None if none), reused until the next commit like
        `cached` results are, kept apart from pages: what a Get by key reads."""

        async def load() -> T | None:
            found = await self.lookup(sql, params)
            return convert(found[0]) if found else None

        return await self.cached(key, load, record=True)

    def _inline_budget(self) -> int:
        self._inline_ticks += 1
        return 1 if self._inline_ticks > INLINE_BUDGET_TICKS else 0

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self.reader() as conn:
            try:
                # asyncio.timeout, unlike wait_for, does not spawn a task per query.
                async with asyncio.timeout(self.settings.statement_timeout_s):
                    return list(await conn.execute_fetchall(sql, params))
            except TimeoutError:
                await conn.interrupt()
                raise QueryTimeout(
                    f"the query ran past the server's statement timeout ({self.settings.statement_timeout_s:g} s): "
                    "narrow it (a filter, a smaller page or radius)"
                ) from None
            except asyncio.CancelledError:
                # The caller gave up (deadline or cancel): stop the statement instead of finishing it.
                await conn.interrupt()
                raise
            except sqlite3.OperationalError as exc:
                raise storage_error(exc) from exc

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

    def invalidate(self) -> None:
        """Forget every reused read result (another replica says it wrote; benchmarks of misses)."""
        self._results.clear()
        self._result_bytes = 0
        self._records.clear()

    async def expire_request_ids(self, retention_us: int = REQUEST_ID_RETENTION_US) -> int:
        """Forget request_ids older than the retention, a batch per write so that no write waits
        long behind it; how many were forgotten."""
        before = now_us() - retention_us
        total = 0
        while True:
            removed = await self.write(partial(_expire_batch, before_us=before))
            total += removed
            if removed < _EXPIRE_BATCH:
                return total

    async def count(self, sql: str, params: Sequence[Any]) -> int:
        """A COUNT query, reused until the next commit by anyone (see `cached`)."""

        async def run() -> int:
            return int((await self.lookup(sql, params))[0][0])

        return await self.cached(("count", sql, tuple(params)), run)


def _weight(value: Any) -> int:
    """Estimated bytes a cached result holds (a Page of refs or records, or a count)."""
    items = getattr(value, "items", None)
    if not isinstance(items, list):
        return 64
    per = _REF_BYTES if items and type(items[0]) is tuple else _RECORD_BYTES  # a ref, not a record
    return 256 + per * len(items)


def _expire_batch(txn: Txn, before_us: int) -> int:
    """Forget up to a batch of request_ids stored before `before_us`, oldest first; how many."""
    cursor = txn.execute(
        "DELETE FROM request_ids WHERE request_id IN "
        "(SELECT request_id FROM request_ids WHERE create_time < ? ORDER BY create_time LIMIT ?)",
        (before_us, _EXPIRE_BATCH),
    )
    return int(cursor.rowcount)


def check_request_id(txn: Txn, idem: Idempotency | None) -> Any | None:
    """The stored result of an earlier identical request, or None when this one is new."""
    if idem is None:
        return None
    row = txn.fetchone("SELECT method, fingerprint, result FROM request_ids WHERE request_id = ?", (idem.request_id,))
    if row is None:
        return None
    method, fingerprint, result = row
    if method != idem.method or fingerprint != idem.fingerprint:
        raise RequestIdMismatch(idem.request_id)
    return json.loads(result)


def remember_request_id(txn: Txn, idem: Idempotency | None, result: Any) -> None:
    """Keep the first result of a request with a request_id, as JSON; `result` may be a function
    giving it, called only when there is a request_id (rows.remembered(record): a record)."""
    if idem is not None:
        if callable(result):
            result = result()
        txn.execute(
            "INSERT INTO request_ids VALUES (?, ?, ?, ?, ?)",
            (idem.request_id, idem.method, idem.fingerprint, json.dumps(result), now_us()),
        )


def placeholders(n: int) -> str:
    return ",".join("?" * n)


def chunks(items: Sequence[T], size: int = 500) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _migrate(conn: sqlite3.Connection) -> bytes:
    """Apply pending migrations in one transaction; return the page-token secret."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_time INTEGER NOT NULL)"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        known = max(version for version, _, _ in MIGRATIONS)
        if done and max(done) > known:
            # Migrated by a newer release: its tables may mean things this code would get wrong.
            raise StartupError(
                f"the database has schema version {max(done)}, newer than this server's {known} "
                "(a newer release migrated it): run that release, or a copy of the database made for this one"
            )
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            log.info("applying migration %d: %s", version, name)
            for statement in _split_sql(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, now_us()))
        conn.execute("INSERT OR IGNORE INTO settings VALUES ('page_token_secret', ?)", (secrets.token_bytes(32),))
        secret = bytes(conn.execute("SELECT value FROM settings WHERE key = 'page_token_secret'").fetchone()[0])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return secret


def _split_sql(script: str) -> list[str]:
    """Statements of a migration (no semicolons inside our statements, so a split is enough)."""
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]

"""The PostgreSQL database: a pool of asyncpg connections, the schema, writes, faults.

Reads run on pooled connections (asyncpg prepares and caches each statement per connection).
Writes run a body `async def body(conn) -> T` inside one transaction: all or nothing. A caller that
is cancelled while its write runs does not cancel the write (the transaction runs as a task of its
own and is awaited shielded), so an acknowledged write and a half-done one cannot be confused: it
either commits whole or rolls back whole. Serialization failures and deadlocks are retried.
What is reused between reads and when it is stale: readcache.py, with the version from changes.py.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg

from ...domain.errors import DomainError, QueryTimeout, StartupError, StorageUnavailable
from ...domain.page_keys import LEGACY_SETTING as LEGACY
from ...domain.page_keys import SETTING, PageKey, decode_keys, encode_keys, rotated
from ...readcache import ReadCache
from ...tracing import storage_span
from ..clock import now_us
from ..load import CommitLog, Load
from ..request_ids import EXPIRE_BATCH, REQUEST_ID_RETENTION_US
from .changes import ChangeListener
from .schema import migrate, sky_index

__all__ = ["Database", "PostgresSettings", "is_postgres_url"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Row = Sequence[Any]
if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # What a write body and a read get: a pooled connection (or a plain one, for tools).
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Conn = asyncpg.Connection
Body = Callable[[Conn], Awaitable[T]]

DEFAULT_READ_CACHE_BYTES = 256 << 20
_RETRIES = 5
# What PostgreSQL answers when two writers met: run the transaction again.
_RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
# The database went away (restart, network): UNAVAILABLE, which clients retry.
_UNREACHABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    ConnectionError,
    # A session ended by the server (a restart) while idle between a transaction's statements leaves
    # asyncpg's protocol mid-error: the next statement (often COMMIT, never sent) raises this, and so
    # does the pool's reset on release (which then drops the connection). tests/test_postgres_replicas.py
    asyncpg.InternalClientError,
)


def is_postgres_url(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    dsn: str
    pool_min: int = 2
    pool_max: int = 10
    statement_timeout_s: float = 30.0
    # Cone search through the q3c extension's index where it can be had (schema.sky_index); False
    # keeps the extension out and searches with the GiST box index (`--no-q3c`).
    q3c: bool = True
    # Reuse a kept reply only after a round trip on the listening session (changes.py: `barrier`);
    # False (`--no-read-barrier`) reuses it at once, which can be stale by one notification's delay.
    read_barrier: bool = True


def storage_error(exc: BaseException) -> Exception:
    """An asyncpg exception as the caller should see it (never INTERNAL for what the machine did)."""
    if isinstance(exc, asyncpg.QueryCanceledError):
        return QueryTimeout(
            "the query ran past the server's statement timeout: narrow it (a filter, a smaller page or radius)"
        )
    if isinstance(exc, _UNREACHABLE):
        return StorageUnavailable(f"the database is unreachable: {exc}")
    if isinstance(exc, asyncpg.DiskFullError):
        return StorageUnavailable("the database's disk is full: writes are refused until space is freed")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


class Database:
    def __init__(self, settings: PostgresSettings, read_cache_bytes: int = DEFAULT_READ_CACHE_BYTES):
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.changes = ChangeListener(settings.dsn)
        barrier = self.changes.barrier if settings.read_barrier else None
        self.read_cache = ReadCache(self.version, read_cache_bytes, barrier)
        self.page_token_secret = b""
        # Whether cone searches walk the q3c index (else the GiST box index): found at open.
        self.q3c = False
        self._fault: DomainError | None = None
        self.commits = CommitLog()
        self._writing = 0  # write transactions begun and not yet ended

    async def open(self) -> None:
        timeout_ms = int(self.settings.statement_timeout_s * 1000)
        try:
            self.pool = await asyncpg.create_pool(
                self.settings.dsn,
                min_size=self.settings.pool_min,
                max_size=self.settings.pool_max,
                # JIT off: this server's statements are short index walks, and PostgreSQL compiles
                # anew at every execution whose estimated cost passes jit_above_cost (~300 ms measured
                # for the q3c cone, sources.py, whose join it cannot estimate, to run ~1 ms).
                server_settings={
                    "statement_timeout": str(timeout_ms),
                    "application_name": "contimg-server",
                    "jit": "off",
                },
            )
            async with self.pool.acquire() as conn:
                self.page_token_secret = await migrate(conn, secrets.token_bytes(32))
                self.q3c = await sky_index(conn, self.settings.q3c)
        except StartupError:
            await self.close()
            raise
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise StartupError(f"cannot open the PostgreSQL database {self.description}: {exc}") from exc
        await self.changes.start()

    async def close(self) -> None:
        await self.changes.stop()
        self.read_cache.clear()
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.close()

    @property
    def description(self) -> str:
        """The database's URL without its password."""
        return _safe(self.settings.dsn)

    async def schema_version(self) -> int:
        return int(await self.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))

    def version(self) -> Hashable | None:
        """Changes with every commit to the database by anyone; None when it cannot tell (changes.py)."""
        return self.changes.version()

    # ---- reads -----------------------------------------------------------------------------------

    def _pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise StorageUnavailable("the database is closed")
        return self.pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A pooled connection. Failing to get one (the server down or restarting, the database
        refusing connections, too many clients) is UNAVAILABLE, which clients retry, and a fault
        the health monitor reports until a write succeeds again."""
        pool = self._pool()
        try:
            conn = await pool.acquire()
        except (asyncpg.PostgresError, *_UNREACHABLE) as exc:
            self._fault = StorageUnavailable(f"cannot connect to PostgreSQL: {exc}")
            raise self._fault from exc
        try:
            yield conn
        finally:
            await pool.release(conn)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            with storage_span("read", sql):
                async with self.connection() as conn:
                    return list(await conn.fetch(sql, *args))
        except (asyncpg.PostgresError, *_UNREACHABLE) as exc:
            raise storage_error(exc) from exc

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        found = await self.fetch(sql, *args)
        return found[0] if found else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        found = await self.fetch(sql, *args)
        return found[0][0] if found else None

    async def count(self, sql: str, *args: Any) -> int:
        """A COUNT query, reused until the next commit by anyone: the pages of one list share it."""

        async def run() -> int:
            return int(await self.fetchval(sql, *args))

        return await self.read_cache.computed(("count", sql, tuple(args)), run)

    # ---- writes ----------------------------------------------------------------------------------

    async def write(self, body: Body[T], after_commit: Callable[[T], None] | None = None) -> T:
        """Run `body` in one transaction, retried when PostgreSQL reports a conflict; never left half
        done by a cancelled caller. `after_commit` runs after COMMIT, before the caller resumes."""
        with storage_span("write"):  # the task below inherits the span as its parent (contextvars)
            task = asyncio.ensure_future(self._transaction(body))
        self._writing += 1
        task.add_done_callback(self._written)
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The caller gave up; the write still finishes (or fails) whole.
            task.add_done_callback(_consume)
            raise
        if after_commit is not None:
            after_commit(result)
        return result

    def _written(self, _task: asyncio.Future[Any]) -> None:
        self._writing -= 1

    async def _transaction(self, body: Body[T]) -> T:
        for attempt in range(_RETRIES):
            started = time.perf_counter()
            try:
                async with self.connection() as conn, conn.transaction():
                    result = await body(conn)
            except (*_RETRYABLE, asyncpg.UniqueViolationError) as exc:
                # A unique violation is a race SQLite's single writer never had: two writers both
                # found a key free (a path, a job id) and the second's insert failed once the first
                # committed. Run again, the body sees the committed row and answers as it would
                # have in sequence (ALREADY_EXISTS, or a request_id's first result).
                if attempt + 1 == _RETRIES:
                    if isinstance(exc, asyncpg.UniqueViolationError):
                        # Every run met it: not a race but the body's own duplicate, the caller's
                        # to report (ingest then runs each batch of a group alone: sources.py).
                        raise
                    raise StorageUnavailable("the write kept conflicting with others; retry") from None
                await asyncio.sleep(0.005 * (attempt + 1))
                continue
            except DomainError:
                raise
            except (asyncpg.PostgresError, *_UNREACHABLE) as exc:
                error = storage_error(exc)
                if isinstance(error, StorageUnavailable):
                    self._fault = error
                raise error from exc
            self.commits.add(time.perf_counter() - started, 1)
            self.changes.committed()
            self._fault = None
            return result
        raise AssertionError("unreachable")

    # ---- what the metrics read (load.py) -----------------------------------------------------------

    def load(self) -> Load:
        pool = self.pool
        if pool is None:
            return Load(self._writing, 0, 0)
        return Load(self._writing, pool.get_size() - pool.get_idle_size(), pool.get_max_size())

    async def size_bytes(self) -> int:
        return int(await self.fetchval("SELECT pg_database_size(current_database())"))

    # ---- health and upkeep (health.py, housekeeping.py) --------------------------------------------

    def fault(self) -> DomainError | None:
        """Why writes fail now, if they do: the database unreachable, as the last write found or as
        the change listener's session, which is always open, found without any write."""
        if self._fault is None and self.pool is not None and self.changes.version() is None:
            return StorageUnavailable("the connection to PostgreSQL was lost; reconnecting")
        return self._fault

    async def probe(self) -> None:
        """A small real write: whether writes succeed again."""

        async def body(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO settings VALUES ('health_probe', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                str(now_us()).encode(),
            )

        await self.write(body)

    async def expire_request_ids(self, retention_us: int = REQUEST_ID_RETENTION_US) -> int:
        before = now_us() - retention_us
        total = 0
        while True:

            async def body(conn: Conn) -> int:
                status = await conn.execute(
                    "DELETE FROM request_ids WHERE request_id IN (SELECT request_id FROM request_ids "
                    "WHERE create_time < $1 ORDER BY create_time LIMIT $2)",
                    before,
                    EXPIRE_BATCH,
                )
                return int(status.split()[-1])

            removed = await self.write(body)
            total += removed
            if removed < EXPIRE_BATCH:
                return total

    # ---- page-token keys (domain/page_keys.py) ---------------------------------------------------

    async def page_token_keys(self) -> tuple[PageKey, ...]:
        stored = await self.fetchval("SELECT value FROM settings WHERE key = $1", SETTING)
        return decode_keys(bytes(stored) if stored is not None else None, self.page_token_secret)

    async def rotate_page_token_key(self, new: bytes, signs_from_us: int) -> tuple[PageKey, ...]:
        async def body(conn: Conn) -> tuple[PageKey, ...]:
            found = await conn.fetch(
                "SELECT key, value FROM settings WHERE key IN ($1, $2) FOR UPDATE", SETTING, LEGACY
            )
            rows: dict[str, Any] = {r["key"]: r["value"] for r in found}
            keys = rotated(decode_keys(_bytes(rows.get(SETTING)), bytes(rows[LEGACY])), new, signs_from_us)
            await conn.execute(
                "INSERT INTO settings VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                SETTING,
                encode_keys(keys),
            )
            return keys

        return await self.write(body)


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _bytes(value: Any) -> bytes | None:
    return bytes(value) if value is not None else None


def _safe(dsn: str) -> str:
    """The URL without its password, for messages."""
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return dsn

"""Read connections: a small pool of read-only aiosqlite connections (WAL lets them run beside the
writer), and one connection on the event loop for reads that are quick, within a budget."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

from ...domain.errors import QueryTimeout
from .connect import MATH_FUNCTIONS, SQLiteSettings, add_math, pragmas, storage_error

Row = Sequence[Any]

# How long a read on the event loop may wait for a lock before it moves to the thread pool.
INLINE_BUSY_MS = 5
# Work a read may do on the event loop: TICKS x OPS SQLite VM instructions (~1 ms), then it moves.
INLINE_TICK_OPS = 1000
INLINE_BUDGET_TICKS = 100
_MMAP_BYTES = 268435456


class Reads:
    def __init__(self, settings: SQLiteSettings):
        self.settings = settings
        self._pool: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all: list[aiosqlite.Connection] = []
        self._inline: sqlite3.Connection | None = None
        self._inline_ticks = 0
        self._math = True
        self.inline_fallbacks = 0

    async def open(self, math: bool) -> None:
        """`math`: whether SQLite has its math functions (connect.py: MATH_FUNCTIONS)."""
        self._math = math
        for _ in range(max(1, self.settings.readers)):
            conn = await self._connect()
            self._all.append(conn)
            self._pool.put_nowait(conn)
        if not self.settings.inline_reads:
            return
        inline = sqlite3.connect(str(self.settings.path), isolation_level=None, check_same_thread=False)
        inline.set_progress_handler(self._inline_budget, INLINE_TICK_OPS)
        if not math:
            add_math(inline)
        for pragma in (
            "query_only = ON",
            f"busy_timeout = {INLINE_BUSY_MS}",
            f"mmap_size = {_MMAP_BYTES}",
            f"cache_size = {-1024 * int(self.settings.cache_mb)}",
        ):
            inline.execute(f"PRAGMA {pragma}")
        self._inline = inline

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(str(self.settings.path), isolation_level=None, check_same_thread=False)
        for pragma in [*pragmas(self.settings), "query_only = ON", f"mmap_size = {_MMAP_BYTES}"]:
            # execute_fetchall, not execute: a PRAGMA that returns a row (busy_timeout, mmap_size) left
            # unfetched stays an active statement, and then the interrupt() that stops a cancelled
            # query is never cleared: every later statement on the connection fails "interrupted".
            await conn.execute_fetchall(f"PRAGMA {pragma}")
        if not self._math:
            for name, fn in MATH_FUNCTIONS.items():
                await conn.create_function(name, 1, fn, deterministic=True)
        return conn

    async def close(self) -> None:
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        for conn in self._all:
            await conn.close()
        self._all.clear()

    @property
    def size(self) -> int:
        return len(self._all)

    @property
    def in_use(self) -> int:
        return len(self._all) - self._pool.qsize()

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[aiosqlite.Connection]:
        conn = await self._pool.get()
        try:
            yield conn
        finally:
            self._pool.put_nowait(conn)

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

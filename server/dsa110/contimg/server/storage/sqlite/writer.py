"""The single SQLite writer: one thread owns the write connection and commits queued writes in groups.

Why a thread of its own with synchronous write bodies: a body used to await one aiosqlite hop per
statement (a write of five statements paid five thread hops); now the whole body runs where the
connection lives, in one hop.

Why groups (group commit): with `synchronous=FULL` every COMMIT pays a WAL write and an fsync, and
each page a transaction touches is written whole. Writes that queue up while one group commits are
run together in the next, one COMMIT for all, and only then is any of them acknowledged. A body
that fails is rolled back alone and gets its own error: the group is then run again with each body
in a SAVEPOINT of its own (not on the first try, as each savepoint copies the pages its body touches). Concurrent
photometry batches of overlapping fields touch the same source and index pages, so a group writes
those pages once instead of once per batch. A write that arrives to an idle writer runs at once
(no waiting for company), so a single caller sees no added latency.

Bodies of one kind may also share work until the commit: a body can name a `finish` step that runs
once per group, after the bodies and before COMMIT, over state they left in `Txn.scratch` (the
photometry ingest writes each source's statistics once per group this way). A group never mixes
bodies that have a `finish` step with later bodies that do not, so nothing else ever reads state
that a pending step is still to write.

A write may be offloaded: its group is then run by `run_group` in the write process (see
write_process.py) instead of on this thread. The thread still takes groups one at a time, so the
two connections never wait on each other for SQLite's write lock, and commit order stays the
order of the queue. Groups never mix offloaded and local writes.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Protocol, TypeVar, cast

from ..load import CommitLog

log = logging.getLogger(__name__)
T = TypeVar("T")
Row = Sequence[Any]

# Enough to amortize the commit; small enough that one group never holds the writer for long.
MAX_GROUP = 32


class Txn:
    """The open write transaction as one body sees it (used only on the writer thread)."""

    __slots__ = ("conn", "scratch")

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        # State shared by the bodies of one group and their finish step.
        self.scratch: dict[str, Any] = {}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, seq: Any) -> None:
        self.conn.executemany(sql, seq)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(sql, params).fetchall()

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self.conn.execute(sql, params).fetchone()
        return row


Body = Callable[[Txn], T]
Finish = Callable[[Txn], None]
Work = tuple[Body[Any], Finish | None]
# (True, the body's value) or (False, the exception its caller gets)
Outcome = tuple[bool, Any]


class Offload(Protocol):
    """Runs a group of writes elsewhere, as `run_group` would here (called on the writer thread).
    Each write arrives as its pickled `Work`: pickled on the event loop by `Writer.write`, because
    pickling a group here, on a thread that must win the GIL back from the loop at every switch,
    took 25-44 ms for 32 photometry batches while the write process waited (bench/README.md)."""

    def run(self, work: list[bytes]) -> list[Outcome]: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _Pending(Generic[T]):
    body: Body[T]
    finish: Finish | None
    after_commit: Callable[[T], None] | None
    future: asyncio.Future[T]
    offloaded: bytes | None  # the pickled (body, finish) when the Offload runs it


class Writer:
    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        translate: Callable[[Exception], Exception],
        offload: Offload | None = None,
        check: Callable[[], Exception | None] | None = None,
    ):
        self._connect = connect
        self._translate = translate
        self._offload = offload
        # Asked before and after each group, on the writer thread: an error when the database can no
        # longer take writes (its file replaced), which every write of the group then gets.
        self._check = check or (lambda: None)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="contimg-sqlite-writer")
        self._conn: sqlite3.Connection | None = None
        self._queue: deque[_Pending[Any]] = deque()
        self._drainer: asyncio.Future[None] | None = None
        self.groups = 0  # commits so far (tests check that concurrent writes share them)
        self.running = 0  # writes in the group being committed now
        self.commits = CommitLog()

    @property
    def pending(self) -> int:
        """Writes taken and not yet committed."""
        return len(self._queue) + self.running

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    async def open(self) -> None:
        self._conn = await self._in_thread(self._connect)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the writer thread outside any group (migrations, maintenance at close)."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("the writer is closed")
        return await self._in_thread(lambda: fn(conn))

    async def close(self) -> None:
        while self._drainer is not None:
            await asyncio.shield(self._drainer)
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._in_thread(conn.close)
        if self._offload is not None:
            await self._in_thread(self._offload.close)
        self._executor.shutdown(wait=True)

    async def write(
        self,
        body: Body[T],
        finish: Finish | None = None,
        after_commit: Callable[[T], None] | None = None,
        *,
        offload: bool = False,
    ) -> T:
        """Run `body` in a transaction; return once it is committed. Cancelling the caller never
        interrupts the write: it is committed (or rolled back) whole either way. `offload`: run it
        in the Offload given at construction, if any (a body or finish that does not pickle fails
        here, alone)."""
        if self._conn is None:
            raise RuntimeError("the writer is closed")
        offloaded = None
        if offload and self._offload is not None:
            offloaded = pickle.dumps((body, finish), protocol=pickle.HIGHEST_PROTOCOL)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(body, finish, after_commit, future, offloaded))
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_consume)
            raise

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                await self._in_thread(partial(self._run_queued, loop))
        finally:
            self._drainer = None

    def _run_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer thread: run groups until the queue is empty, handing each group's outcomes
        to the loop as it commits. The thread takes the next group itself: when the loop did it,
        the next group also waited for the loop to finish whatever requests were ahead of it
        (at 64 photometry writers the write process's idle time between 8 groups went from
        186-259 ms to 155-157 ms; bench/README.md)."""
        while self._queue:
            group = self._take_group()
            self.running = len(group)
            refused = self._check()
            if refused is not None:
                loop.call_soon_threadsafe(self._settle, group, [(False, refused)] * len(group), -1.0)
                continue
            started = time.perf_counter()
            try:
                outcomes = self._run_group(group)
            except Exception as exc:  # run_group answers for its bodies; this is a bug, not theirs
                log.exception("write group failed")
                outcomes = [(False, exc)] * len(group)
            seconds = time.perf_counter() - started
            refused = self._check()
            if refused is not None:  # committed, but maybe into a file nobody will read: not acknowledged
                outcomes = [(False, refused)] * len(group)
            loop.call_soon_threadsafe(self._settle, group, outcomes, seconds)
        self.running = 0

    def _settle(self, group: list[_Pending[Any]], outcomes: list[Outcome], seconds: float) -> None:
        """On the loop, in commit order (callbacks run in the order they were handed over), so what
        after_commit publishes is ordered. `seconds`: the group's run and commit (-1: refused unrun)."""
        self.groups += 1
        if seconds >= 0:
            self.commits.add(seconds, len(group))
        for pending, (ok, value) in zip(group, outcomes, strict=True):
            if ok and pending.after_commit is not None:
                try:
                    pending.after_commit(value)
                except Exception:
                    log.exception("after-commit step failed")
            if pending.future.done():
                continue
            if ok:
                pending.future.set_result(value)
            else:
                pending.future.set_exception(value)

    def _take_group(self) -> list[_Pending[Any]]:
        group = [self._queue.popleft()]
        finish, offload = group[0].finish, group[0].offloaded is not None
        while self._queue and len(group) < MAX_GROUP:
            nxt = self._queue[0]
            if (nxt.offloaded is not None) != offload or (finish is not None and nxt.finish != finish):
                break
            finish = nxt.finish
            group.append(self._queue.popleft())
        return group

    def _run_group(self, group: list[_Pending[Any]]) -> list[Outcome]:
        if self._offload is not None and group[0].offloaded is not None:
            return self._offload.run([cast(bytes, pending.offloaded) for pending in group])
        conn = self._conn
        if conn is None:
            return [(False, RuntimeError("the writer is closed"))] * len(group)
        return run_group(conn, [(pending.body, pending.finish) for pending in group], self._translate)


def run_group(conn: sqlite3.Connection, work: list[Work], translate: Callable[[Exception], Exception]) -> list[Outcome]:
    """Run a group of bodies in one transaction and commit it; each body's outcome, in order.

    One body's failure never fails another's: a body that raises is rolled back alone (its
    savepoint), and when what fails is the group's shared part (a finish step over what every body
    left, or the COMMIT), each body is run again in a transaction of its own, so that only the
    write whose data the step could not take fails."""
    if len(work) == 1:
        return _run_in_transaction(conn, work, translate, isolate=False)[0]
    # Optimistically without savepoints (each costs a copy of every page its body touches);
    # if anything fails, the group is rolled back and run again with one savepoint per body.
    outcomes, _ = _run_in_transaction(conn, work, translate, isolate=False)
    if all(ok for ok, _ in outcomes):
        return outcomes
    outcomes, shared_part_failed = _run_in_transaction(conn, work, translate, isolate=True)
    if not shared_part_failed:
        return outcomes
    log.warning("a write group's shared step failed: running its %d writes one by one", len(work))
    return [_run_in_transaction(conn, [one], translate, isolate=False)[0][0] for one in work]


def _run_in_transaction(
    conn: sqlite3.Connection, work: list[Work], translate: Callable[[Exception], Exception], *, isolate: bool
) -> tuple[list[Outcome], bool]:
    """The outcomes, and whether what failed was outside every body (BEGIN, a finish step, COMMIT:
    then every outcome is that failure)."""
    txn = Txn(conn)
    try:
        conn.execute("BEGIN IMMEDIATE")
    except conn.Error as exc:  # the connection's own classes: the write process may link another SQLite
        return [(False, translate(exc))] * len(work), True
    outcomes: list[Outcome] = []
    in_bodies = True
    try:
        for body, _ in work:
            outcomes.append(_in_savepoint(conn, txn, body, translate) if isolate else (True, body(txn)))
        in_bodies = False
        finishes: list[Finish] = []
        for (_, finish), (ok, _) in zip(work, outcomes, strict=True):
            if ok and finish is not None and finish not in finishes:
                finishes.append(finish)
        for finish in finishes:
            finish(txn)
        conn.execute("COMMIT")
    except Exception as exc:
        # SQLite has already rolled back after some errors (a full disk or an I/O error at COMMIT).
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except conn.Error:
                log.exception("rollback failed")
        return [(False, translate(exc))] * len(work), isolate or not in_bodies
    return outcomes, False


def _in_savepoint(
    conn: sqlite3.Connection, txn: Txn, body: Body[Any], translate: Callable[[Exception], Exception]
) -> tuple[bool, Any]:
    conn.execute("SAVEPOINT body")
    try:
        value = body(txn)
    except Exception as exc:
        conn.execute("ROLLBACK TO body")
        conn.execute("RELEASE body")
        return False, translate(exc)
    conn.execute("RELEASE body")
    return True, value


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()

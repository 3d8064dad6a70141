"""Job events across server processes: the database's event log is the stream.

Every process serving a database (a server, its --workers, replicas sharing the file) writes the
same `job_events` table. A job transition records its event inside the write transaction; the
sequence is an AUTOINCREMENT assigned while the database write lock is held, so commit order equals
sequence order across all processes, and once sequence S is visible to a reader every smaller
sequence is too. That table is therefore already a totally ordered, durable stream with a cursor.

Each process runs one tailer: it remembers the last sequence it handed to its in-process bus, and
whenever it is woken it reads `events_after(last)` in sequence order and publishes those events to
the LocalEventBus, advancing `last`. So an event reaches the watchers of every process exactly once,
in order, whichever process committed it. Wake-ups come from

* a local commit (the storage calls `publish()` after COMMIT; nothing is sent to the bus directly);
* the database itself: every `check_s` the tailer compares the database's change version (SQLite's
  data_version, ~5 us: storage/sqlite/changes.py) with the one it last drained at,
  and drains when another process has committed anything. This is what makes `--workers N` and
  replicas without Redis deliver every transition to every watcher (they once did not, silently);
* with Redis (`link`), a notification on the channel `contimg:job-events` carrying the newest
  sequence, which every replica publishes after its own commits;
* a periodic full read every `poll_s`, for storage that cannot tell its version.

Why not Redis Streams: order and exactly-once come from the database for free (one cursor, one
ordered table), and a Stream would be a second copy of the log that cannot be written in the same
step as the commit: a crash or a Redis outage between COMMIT and XADD would lose or reorder events.
With the tail, losing Redis, a message, or a whole Redis restart costs latency only, never an
event, a duplicate or an inversion. The price is one indexed range read per wake-up per process
(coalesced: one read covers every event committed since the last one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable
from functools import partial

from redis.asyncio import Redis

from ..domain.records import JobEvent
from ..redislink import RedisLink, RedisUnavailable
from ..repositories.protocols import JobRepository
from .local import LocalEventBus

log = logging.getLogger("contimg.events")

CHANNEL = "contimg:job-events"
BATCH = 1000


class EventTailer:
    """The storage's EventPublisher, and the task feeding the bus from `job_events`."""

    def __init__(
        self,
        bus: LocalEventBus,
        link: RedisLink | None = None,
        *,
        version: Callable[[], Hashable | None] | None = None,
        check_s: float = 0.02,
        poll_s: float = 0.5,
    ):
        self.bus = bus
        self.link = link
        self.version = version
        self.check_s = check_s
        self.poll_s = poll_s
        self.last_published = 0
        self.drains = 0
        self._committed = 0  # newest sequence committed by this process
        self._wake = asyncio.Event()
        self._notify = asyncio.Event()
        self._jobs: JobRepository | None = None
        self._tasks: list[asyncio.Task[None]] = []
        if link is not None:
            link.on_message(CHANNEL, self._on_notification)
            link.on_state(self._on_link_state)

    # ---- EventPublisher ---------------------------------------------------------------------------

    def publish(self, event: JobEvent) -> None:
        """Called by the storage after a local commit (in commit order): wake the tailer, tell the others."""
        if event.sequence > self._committed:
            self._committed = event.sequence
        self._wake.set()
        self._notify.set()

    # ---- lifecycle --------------------------------------------------------------------------------

    async def start(self, jobs: JobRepository) -> None:
        """Start after the storage is open and before serving: events from now on are delivered."""
        self._jobs = jobs
        self.last_published = await jobs.last_sequence()
        self._tasks = [asyncio.create_task(self._tail(), name="job-event-tailer")]
        if self.link is not None:
            self._tasks.append(asyncio.create_task(self._announce(), name="job-event-announcer"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # ---- internals --------------------------------------------------------------------------------

    def _on_notification(self, data: bytes) -> None:
        try:
            sequence = int(data)
        except ValueError:
            return
        if sequence > self.last_published:
            self._wake.set()

    async def _on_link_state(self, up: bool) -> None:
        # Messages may have been missed while the link was down: look at the table once now.
        self._wake.set()
        if up:
            self._notify.set()

    async def _tail(self) -> None:
        drained_at, drained_version = time.monotonic(), self._version()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_s):
                    await self._wake.wait()
            version = self._version()
            if not self._wake.is_set() and version == drained_version and version is not None:
                if time.monotonic() - drained_at < self.poll_s:
                    continue  # nothing committed anywhere since the last read
            self._wake.clear()
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading job events failed (%s); retrying", exc)
                await asyncio.sleep(self.poll_s)
                continue
            drained_at, drained_version = time.monotonic(), version

    def _version(self) -> Hashable | None:
        return self.version() if self.version is not None else None

    async def drain(self) -> None:
        """Publish every event after `last_published` to the bus, in sequence order."""
        assert self._jobs is not None
        self.drains += 1
        while True:
            batch = await self._jobs.events_after(self.last_published, None, BATCH)
            for event in batch:
                if event.sequence <= self.last_published:  # cannot happen; never publish twice
                    continue
                self.last_published = event.sequence
                self.bus.publish(event)
            if len(batch) < BATCH:
                return

    async def _announce(self) -> None:
        """Publish the newest local sequence on Redis; bursts of commits collapse into one message."""
        while True:
            await self._notify.wait()
            self._notify.clear()
            sequence = self._committed
            if self.link is None or not self.link.usable or sequence <= 0:
                continue
            try:
                await self.link.command(partial(_notify, message=str(sequence)))
            except RedisUnavailable:
                pass  # the other replicas' polls pick the event up


async def _notify(client: Redis, *, message: str) -> int:
    return int(await client.publish(CHANNEL, message))

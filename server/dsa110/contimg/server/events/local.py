"""In-process event bus: one process's committed job events to its own watchers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from ..domain.records import JobEvent

QUEUE_LIMIT = 10_000


class Subscription:
    """A watcher's queue. On overflow it is marked lagged and the watcher replays from storage."""

    def __init__(self, job_id: str | None):
        self.job_id = job_id
        self.queue: asyncio.Queue[JobEvent | None] = asyncio.Queue(QUEUE_LIMIT)
        self.lagged = False
        self.closed = False

    def close(self) -> None:
        """Wake the watcher with None: the bus is shutting down."""
        self.closed = True
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            self.queue.get_nowait()
            self.queue.put_nowait(None)

    def offer(self, event: JobEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # Drop the backlog rather than grow without bound; the watcher replays it from storage.
            self.lagged = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(event)


class LocalEventBus:
    def __init__(self) -> None:
        self._by_job: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        self.published = 0
        self.closed = False

    def close(self) -> None:
        """End every watch stream (server shutdown); new subscriptions start closed."""
        self.closed = True
        for sub in [*self._all, *(s for subs in self._by_job.values() for s in subs)]:
            sub.close()

    def publish(self, event: JobEvent) -> None:
        self.published += 1
        for sub in self._all:
            sub.offer(event)
        for sub in self._by_job.get(event.job.id, ()):
            sub.offer(event)

    @contextmanager
    def subscribe(self, job_id: str | None) -> Iterator[Subscription]:
        sub = Subscription(job_id)
        if self.closed:
            sub.close()
        if job_id is None:
            self._all.add(sub)
        else:
            self._by_job.setdefault(job_id, set()).add(sub)
        try:
            yield sub
        finally:
            if job_id is None:
                self._all.discard(sub)
            else:
                subs = self._by_job.get(job_id)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._by_job[job_id]

    @property
    def subscriber_count(self) -> int:
        return len(self._all) + sum(len(s) for s in self._by_job.values())

"""WatchJob / WatchJobs: replay from the durable event log, then follow live events, in order.

Subscribe first, read storage second, then drop any live event whose sequence was already sent:
nothing committed in between can be missed, and nothing is sent twice. Inner generators are closed
with `aclosing` as soon as their caller stops, so a watcher that leaves unsubscribes at once rather
than at the next garbage collection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from ..domain import jobs as job_rules
from ..domain.errors import NotFound, OutOfRange, ShuttingDown
from ..domain.records import Heartbeat, JobEvent, JobEventType
from ..repositories.protocols import JobRepository
from .local import LocalEventBus, Subscription

REPLAY_BATCH = 1000
# WatchJobs sends a heartbeat after this long without events (keeps idle streams resumable).
HEARTBEAT_S = 30.0
EventFilter = Callable[[JobEvent], bool]


class JobWatcher:
    def __init__(self, jobs: JobRepository, bus: LocalEventBus):
        self.jobs = jobs
        self.bus = bus

    async def _check_position(self, after_sequence: int) -> None:
        """A position past the newest event (one from before a restore, say) is refused: waiting for
        it would wait for events that are numbered below it already, and report none of them."""
        newest = await self.jobs.last_sequence()
        if after_sequence > newest:
            raise OutOfRange(
                f"after_sequence {after_sequence} is past the newest job event ({newest}): resume from 0, "
                "or from a sequence this server sent",
                reason="SEQUENCE_OUT_OF_RANGE",
                metadata={"last_sequence": str(newest), "after_sequence": str(after_sequence)},
            )

    async def watch_job(self, job_id: str, after_sequence: int) -> AsyncGenerator[JobEvent, None]:
        with self.bus.subscribe(job_id) as sub:
            if after_sequence > 0:
                current = await self.jobs.get(job_id, with_transitions=False)
                if current is None:
                    raise NotFound("JOB", f"jobs/{job_id}")
                await self._check_position(after_sequence)
                last = after_sequence
                async with aclosing(self._replay(job_id, last, lambda e: True)) as replayed:
                    async for event in replayed:
                        yield event
                        last = event.sequence
                        if job_rules.is_final(event.job):
                            return
                if job_rules.is_final(current):
                    # Final before the replay began: the replay held every event there will ever be
                    # (resuming after the final event must end, not wait forever).
                    return
            else:
                job = await self.jobs.get(job_id)
                if job is None:
                    raise NotFound("JOB", f"jobs/{job_id}")
                last = job.transitions[-1].sequence if job.transitions else 0
                # A snapshot carries the job, not its history (the repository's record is shared: a copy).
                yield JobEvent(sequence=last, type=JobEventType.SNAPSHOT, job=job._replace(transitions=()))
                if job_rules.is_final(job):
                    return
            async with aclosing(self._follow(sub, job_id, last, lambda e: True)) as followed:
                async for item in followed:
                    if isinstance(item, Heartbeat):  # not requested here (no heartbeat_s); for the type checker
                        continue
                    yield item
                    if job_rules.is_final(item.job):
                        return

    async def watch_jobs(
        self, accept: EventFilter, after_sequence: int, heartbeat_s: float = HEARTBEAT_S
    ) -> AsyncGenerator[JobEvent | Heartbeat, None]:
        with self.bus.subscribe(None) as sub:
            last = after_sequence
            if after_sequence > 0:
                await self._check_position(after_sequence)
                async with aclosing(self._replay(None, last, accept)) as replayed:
                    async for event in replayed:
                        yield event
                        last = event.sequence
            else:
                last = await self.jobs.last_sequence()
            yield Heartbeat(last)
            async with aclosing(self._follow(sub, None, last, accept, heartbeat_s)) as followed:
                async for item in followed:
                    yield item

    async def _replay(self, job_id: str | None, after: int, accept: EventFilter) -> AsyncGenerator[JobEvent, None]:
        while True:
            batch = await self.jobs.events_after(after, job_id, REPLAY_BATCH)
            for event in batch:
                after = event.sequence
                if accept(event):
                    yield event
            if len(batch) < REPLAY_BATCH:
                return

    async def _follow(
        self, sub: Subscription, job_id: str | None, last: int, accept: EventFilter, heartbeat_s: float | None = None
    ) -> AsyncGenerator[JobEvent | Heartbeat, None]:
        while True:
            if heartbeat_s is None:
                # No timer to arm: a transition reaches 1,000 watchers of a job at once, and a
                # timeout scope per watcher per event was a measurable part of that fan-out.
                event = await sub.queue.get()
            else:
                try:
                    async with asyncio.timeout(heartbeat_s):
                        event = await sub.queue.get()
                except TimeoutError:
                    yield Heartbeat(last)
                    continue
            if event is None or sub.closed:
                raise ShuttingDown("the server is shutting down: reconnect and resume from the last sequence")
            if sub.lagged:
                # Fell behind the bus: storage has every event, so catch up from there.
                sub.lagged = False
                async with aclosing(self._replay(job_id, last, accept)) as missed:
                    async for replayed in missed:
                        yield replayed
                        last = replayed.sequence
                continue
            if event.sequence <= last:
                continue
            last = event.sequence
            if accept(event):
                yield event

"""The lease expiry sweep: every server process, about once a second, fails the attempt of each
RUNNING job whose lease expired (LEASE_EXPIRED) and, while attempts remain, makes it PENDING again.

Every process serving a database runs it (replicas, --workers): no leader to elect or lose. Each
expiry is one write transaction that reads the job again and decides on what it reads then
(domain.jobs.expire; on PostgreSQL with the row locked), so a job renewed or finished meanwhile is
left alone, and two processes that find one job due expire it once: the second finds it PENDING
(or FAILED) and changes nothing. The sweep's cost when nothing is due is one indexed read of the
RUNNING jobs (jobs_by_state) per second per process.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from .storage.clock import now_us
from .tasks import cancel_and_wait

log = logging.getLogger("contimg.leases")

SWEEP_S = 1.0
BATCH = 100  # jobs expired per round at most (the next round continues)


class Expiring(Protocol):
    async def expire_leases(self, now: int, limit: int) -> int: ...


class LeaseSweeper:
    def __init__(self, jobs: Expiring, *, every_s: float = SWEEP_S):
        self.jobs = jobs
        self.every_s = every_s  # read at each round: tests may shorten it on a running server
        self.expired = 0  # jobs this process expired, for tests and logs
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lease-expiry")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def sweep(self) -> int:
        """One round: the number of jobs expired."""
        expired = await self.jobs.expire_leases(now_us(), BATCH)
        if expired:
            self.expired += expired
            log.info("expired the leases of %d jobs", expired)
        return expired

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                while await self.sweep() >= BATCH:
                    pass
            except Exception as exc:  # the database unreachable or read-only: the next round tries again
                log.warning("expiring job leases failed: %s", exc)

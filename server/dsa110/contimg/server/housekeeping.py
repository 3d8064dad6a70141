"""Periodic upkeep of the database while serving: request_ids past their retention are forgotten.

Hourly, the first time a minute after start (not during it: a database that has not been served
for weeks may have many to forget, a batch per write). Every process serving the database does it;
the deletes are idempotent, so replicas need no coordination.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

log = logging.getLogger("contimg.housekeeping")


class Expiring(Protocol):
    async def expire_request_ids(self) -> int: ...


class Housekeeping:
    def __init__(self, storage: Expiring, *, first_s: float = 60.0, every_s: float = 3600.0):
        self.storage = storage
        self.first_s = first_s
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        await asyncio.sleep(self.first_s)
        while True:
            try:
                forgotten = await self.storage.expire_request_ids()
                if forgotten:
                    log.info("forgot %d request_ids past their retention", forgotten)
            except Exception as exc:  # a full disk, say: the next round tries again
                log.warning("expiring request_ids failed: %s", exc)
            await asyncio.sleep(self.every_s)

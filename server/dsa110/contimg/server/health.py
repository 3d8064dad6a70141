"""Health that means something: the overall status follows whether the database takes writes.

Every `check_s` the monitor asks the storage why writes fail, if they do (storage/sqlite/guard.py:
the database file removed or replaced, checked there and then; a full disk, an I/O error or a
read-only file, as the last write found). While there is such a fault, `""` and `contimg.storage`
report NOT_SERVING, and the monitor tries a small real write each time, so that health comes back
to SERVING as soon as writes would succeed (space freed), without waiting for a client's write.
A healthy server costs one `stat` a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from .domain.errors import DatabaseReplaced, DomainError
from .tasks import cancel_and_wait

log = logging.getLogger("contimg.health")

STORAGE_HEALTH = "contimg.storage"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Writable(Protocol):
    def fault(self) -> DomainError | None: ...
    async def probe(self) -> None: ...


class StorageHealth:
    def __init__(self, storage: Writable, health: HealthServicer, *, check_s: float = 1.0):
        self.storage = storage
        self.health = health
        self.check_s = check_s
        self.serving = True
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._report(True)
        self._task = asyncio.create_task(self._run(), name="storage-health")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def check(self) -> bool:
        """Whether writes succeed (probing with a write while they did not); health follows."""
        fault = self.storage.fault()
        if fault is not None and not isinstance(fault, DatabaseReplaced):
            with contextlib.suppress(DomainError):
                await self.storage.probe()
            fault = self.storage.fault()
        serving = fault is None
        if serving != self.serving:
            await self._report(serving)
        return serving

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                await self.check()
            except Exception:  # the monitor must outlive anything a check meets
                log.exception("storage health check failed")

    async def _report(self, serving: bool) -> None:
        self.serving = serving
        status = SERVING if serving else NOT_SERVING
        for name in ("", STORAGE_HEALTH):
            await self.health.set(name, status)

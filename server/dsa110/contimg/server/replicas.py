"""What `--redis-url` adds to a server: job-event wake-ups across replicas, the query cache, Redis health.

Without a Redis URL none of this exists: job events still reach every process's watchers through
the database's event log (events/tail.py), and no read is cached in Redis, so a server needs
nothing but the package.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from .cache.query_cache import QueryCache
from .cache.repositories import CachedImages, CachedJobs, CachedMeasurementSets, CachedSources
from .redislink import RedisLink
from .repositories.protocols import ImageRepository, JobRepository, MeasurementSetRepository, SourceRepository
from .storage.sqlite.storage import SQLiteStorage

log = logging.getLogger("contimg.redis")

# gRPC health service name: SERVING while Redis answers, NOT_SERVING while the server runs on the
# database alone ("" stays SERVING: every RPC still answers).
HEALTH_NAME = "contimg.redis"


@dataclass(frozen=True, slots=True)
class Repositories:
    measurement_sets: MeasurementSetRepository
    images: ImageRepository
    sources: SourceRepository
    jobs: JobRepository

    @classmethod
    def of(cls, storage: SQLiteStorage) -> Repositories:
        return cls(storage.measurement_sets, storage.images, storage.sources, storage.jobs)


class RedisFeatures:
    def __init__(self, url: str):
        self.link = RedisLink(url)
        self.cache: QueryCache | None = None

    async def start(self, storage: SQLiteStorage, health: HealthServicer) -> Repositories:
        """Connect (without waiting long for a Redis that is down), wrap the repositories."""
        self.cache = cache = QueryCache(self.link, storage.db.invalidate)

        async def report(up: bool) -> None:
            status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
            await health.set(HEALTH_NAME, status)

        await health.set(HEALTH_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.link.on_state(report)
        await self.link.start()
        return Repositories(
            CachedMeasurementSets(storage.measurement_sets, cache),
            CachedImages(storage.images, cache),
            CachedSources(storage.sources, cache),
            CachedJobs(storage.jobs, cache),
        )

    async def stop(self) -> None:
        await self.link.close()
        if self.cache is not None:
            log.info("query cache: %s", self.cache.describe())

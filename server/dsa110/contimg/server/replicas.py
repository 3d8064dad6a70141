"""What `--redis-url` adds to a server: job-event wake-ups across replicas, and Redis health.

Without a Redis URL none of this exists: job events still reach every process's watchers through
the database's event log (events/tail.py), polled on the database's change version, so a server
needs nothing but the package. Reads never touch Redis (readcache.py; bench/REDIS.md has the
measurement that retired the Redis query cache).
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from .redislink import RedisLink

# gRPC health service name: SERVING while Redis answers, NOT_SERVING while the server runs on the
# database alone ("" stays SERVING: every RPC still answers).
HEALTH_NAME = "contimg.redis"


class RedisFeatures:
    def __init__(self, url: str):
        self.link = RedisLink(url)

    async def start(self, health: HealthServicer) -> None:
        """Connect, without waiting long for a Redis that is down; report its state as health."""

        async def report(up: bool) -> None:
            status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
            await health.set(HEALTH_NAME, status)

        await health.set(HEALTH_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.link.on_state(report)
        await self.link.start()

    async def stop(self) -> None:
        await self.link.close()

"""One object that opens the PostgreSQL database and hands out its repositories (as SQLiteStorage)."""

from __future__ import annotations

from collections.abc import Hashable

from ...readcache import ReadCache
from ...repositories.protocols import EventPublisher
from .database import DEFAULT_READ_CACHE_BYTES, Database, PostgresSettings
from .images import PostgresImages
from .jobs import PostgresJobs
from .measurement_sets import PostgresMeasurementSets
from .sources import PostgresSources


class PostgresStorage:
    def __init__(
        self, settings: PostgresSettings, publisher: EventPublisher, read_cache_bytes: int = DEFAULT_READ_CACHE_BYTES
    ):
        self.db = Database(settings, read_cache_bytes)
        self.measurement_sets = PostgresMeasurementSets(self.db)
        self.images = PostgresImages(self.db)
        self.sources = PostgresSources(self.db)
        self.jobs = PostgresJobs(self.db, publisher)

    @property
    def read_cache(self) -> ReadCache:
        return self.db.read_cache

    def version(self) -> Hashable | None:
        return self.db.version()

    @property
    def description(self) -> str:
        return self.db.description

    async def open(self) -> None:
        await self.db.open()

    async def start_background(self) -> None:
        """Nothing to start: PostgreSQL has no helper process (SQLite's write process)."""

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self.db.fetch("SELECT 1")

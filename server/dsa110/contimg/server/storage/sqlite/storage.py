"""One object that opens the SQLite database and hands out its repositories."""

from __future__ import annotations

from collections.abc import Hashable

from ...readcache import ReadCache
from ...repositories.protocols import EventPublisher
from .database import DEFAULT_READ_CACHE_BYTES, Database, SQLiteSettings
from .images import SQLiteImages
from .jobs import SQLiteJobs
from .measurement_sets import SQLiteMeasurementSets
from .sources import SQLiteSources


class SQLiteStorage:
    def __init__(
        self, settings: SQLiteSettings, publisher: EventPublisher, read_cache_bytes: int = DEFAULT_READ_CACHE_BYTES
    ):
        self.db = Database(settings, read_cache_bytes)
        self.measurement_sets = SQLiteMeasurementSets(self.db)
        self.images = SQLiteImages(self.db)
        self.sources = SQLiteSources(self.db)
        self.jobs = SQLiteJobs(self.db, publisher)

    @property
    def read_cache(self) -> ReadCache:
        """Every read result reused between calls (readcache.py), checked against `version`."""
        return self.db.read_cache

    def version(self) -> Hashable | None:
        return self.db.version()

    @property
    def description(self) -> str:
        return self.db.description

    async def open(self) -> None:
        await self.db.open()

    async def start_background(self) -> None:
        """Start the write process now, so that the first RecordPhotometry need not wait for it."""
        await self.db.start_write_process()

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self.db.fetchall("SELECT 1")

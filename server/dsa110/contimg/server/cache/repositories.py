"""Repository wrappers that serve the expensive reads from the QueryCache and invalidate on writes.

Each wrapper implements the same Protocol as the SQLite repository it wraps, so the servicers do
not know whether a cache is there. Which reads are cached is decided by measurement
(bench/REDIS.md); everything else passes straight through. Every write names the tags it
changes - including the cascades (an image deletion also changes its sources' statistics and its
measurement set's image count; a measurement set deletion also changes its jobs).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

from ..domain.records import (
    Image,
    Job,
    JobEvent,
    JobLogEntry,
    Match,
    MeasurementSet,
    Page,
    Photometry,
    PhotometryBatch,
    PhotometryResult,
    Source,
)
from ..repositories.protocols import (
    Idempotency,
    ImageRepository,
    JobMutation,
    JobRepository,
    ListQuery,
    MeasurementSetRepository,
    SourceRepository,
    query_key,
)
from .query_cache import IMAGES, JOBS, MEASUREMENT_SETS, SOURCES, QueryCache

# Lightcurves longer than this are streamed from the database every time (not worth the memory).
MAX_CACHED_POINTS = 20_000


def page_weight(page: Page[Any]) -> int:
    return len(page.items) + 1


class CachedMeasurementSets:
    """MeasurementSetRepository: list pages cached; Gets pass through."""

    TAGS = (MEASUREMENT_SETS,)

    def __init__(self, inner: MeasurementSetRepository, cache: QueryCache):
        self.inner = inner
        self.cache = cache

    async def get_many(self, paths: Sequence[str]) -> list[MeasurementSet | None]:
        return await self.inner.get_many(paths)

    async def list_page(self, query: ListQuery) -> Page[MeasurementSet]:
        return await self.cache.get_or_load(
            ("measurement_sets.list", query_key(query)), self.TAGS, lambda: self.inner.list_page(query), page_weight
        )

    async def create(self, ms: MeasurementSet, idem: Idempotency | None) -> MeasurementSet:
        return await self.cache.write((MEASUREMENT_SETS,), lambda: self.inner.create(ms, idem))

    async def upsert(
        self, ms: MeasurementSet, fields: Sequence[str], allow_missing: bool, idem: Idempotency | None
    ) -> MeasurementSet:
        # Images without a mid_mjd of their own take a new one from their MS.
        tags = (MEASUREMENT_SETS, IMAGES) if "mid_mjd" in fields else (MEASUREMENT_SETS,)
        return await self.cache.write(tags, lambda: self.inner.upsert(ms, fields, allow_missing, idem))

    async def delete(self, path: str, force: bool) -> None:
        # Cascades: the images (and their photometry, hence source statistics); jobs lose the reference.
        await self.cache.write((MEASUREMENT_SETS, IMAGES, SOURCES, JOBS), lambda: self.inner.delete(path, force))


class CachedImages:
    """ImageRepository: list and search pages cached; Gets pass through."""

    TAGS = (IMAGES,)

    def __init__(self, inner: ImageRepository, cache: QueryCache):
        self.inner = inner
        self.cache = cache

    async def get_many(self, ids: Sequence[int]) -> list[Image | None]:
        return await self.inner.get_many(ids)

    async def list_refs(self, query: ListQuery) -> Page[tuple[int, int]]:
        return await self.cache.get_or_load(
            ("images.refs", query_key(query)), self.TAGS, lambda: self.inner.list_refs(query), page_weight
        )

    async def search(self, ra_deg: float, dec_deg: float, query: ListQuery) -> Page[Match[Image]]:
        return await self.cache.get_or_load(
            ("images.search", ra_deg, dec_deg, query_key(query)),
            self.TAGS,
            lambda: self.inner.search(ra_deg, dec_deg, query),
            page_weight,
        )

    async def create(self, image: Image, idem: Idempotency | None) -> Image:
        # The measurement set's image_count changes too.
        return await self.cache.write((IMAGES, MEASUREMENT_SETS), lambda: self.inner.create(image, idem))

    async def update(self, image: Image, fields: Sequence[str], idem: Idempotency | None) -> Image:
        return await self.cache.write((IMAGES,), lambda: self.inner.update(image, fields, idem))

    async def delete(self, image_id: int, force: bool) -> None:
        await self.cache.write((IMAGES, SOURCES, MEASUREMENT_SETS), lambda: self.inner.delete(image_id, force))


class CachedSources:
    """SourceRepository: search pages and lightcurves (by source version) cached; the rest passes through.

    ListSources is not cached: its orders are all indexed and a page is a LIMIT 50 range scan, which
    measured no more expensive than the counter read a cached page needs (bench/REDIS.md).
    """

    TAGS = (SOURCES,)

    def __init__(self, inner: SourceRepository, cache: QueryCache):
        self.inner = inner
        self.cache = cache

    async def get_many(self, ids: Sequence[str]) -> list[Source | None]:
        return await self.inner.get_many(ids)

    async def list_refs(self, query: ListQuery) -> Page[tuple[str, int]]:
        return await self.inner.list_refs(query)

    async def search(self, ra_deg: float, dec_deg: float, radius_deg: float, query: ListQuery) -> Page[Match[Source]]:
        return await self.cache.get_or_load(
            ("sources.search", ra_deg, dec_deg, radius_deg, query_key(query)),
            self.TAGS,
            lambda: self.inner.search(ra_deg, dec_deg, radius_deg, query),
            page_weight,
        )

    async def lightcurve(
        self, source_id: str, start_mjd: float, end_mjd: float, chunk: int
    ) -> AsyncGenerator[list[Photometry], None]:
        # A lightcurve changes only with its source's statistics, which move update_time in the same
        # transaction: the current update_time (a primary-key lookup) names the lightcurve's version
        # exactly, on any replica, so a write to other sources does not evict it.
        [source] = await self.inner.get_many([source_id])
        version = (source.update_time, source.detection_count) if source is not None else None
        key = ("sources.lightcurve", source_id, version, start_mjd, end_mjd, chunk)
        found, value, ticket = await self.cache.open(key, ()) if source is not None else (False, None, None)
        if found:
            for part in cast(list[list[Photometry]], value):
                yield part
            return
        if ticket is not None:
            self.cache.stats.misses += 1
        parts: list[list[Photometry]] | None = [] if ticket is not None else None
        points = 0
        async for part in self.inner.lightcurve(source_id, start_mjd, end_mjd, chunk):
            if parts is not None:
                parts.append(part)
                points += len(part)
                if points > MAX_CACHED_POINTS:
                    parts = None
            yield part
        if parts is not None and ticket is not None:  # only a lightcurve read to the end is stored
            self.cache.finish(ticket, parts, points + 1)

    async def record_photometry(
        self, image_id: int, batch: PhotometryBatch, idem: Idempotency | None
    ) -> PhotometryResult:
        # Source statistics and lightcurves change, and so does the image's photometry_count.
        return await self.cache.write((SOURCES, IMAGES), lambda: self.inner.record_photometry(image_id, batch, idem))


class CachedJobs:
    """JobRepository: list pages cached; Gets, logs and the event log pass through.

    Job writes are frequent (progress reports), so a job list page lives only until the next one;
    the invalidation also reaches the other replicas' COUNT caches, so ListJobs.total_size is exact
    on every replica right after a write.
    """

    TAGS = (JOBS,)

    def __init__(self, inner: JobRepository, cache: QueryCache):
        self.inner = inner
        self.cache = cache

    async def get(self, job_id: str, *, with_transitions: bool = True) -> Job | None:
        return await self.inner.get(job_id, with_transitions=with_transitions)

    async def list_page(self, query: ListQuery) -> Page[Job]:
        return await self.cache.get_or_load(
            ("jobs.list", query_key(query)), self.TAGS, lambda: self.inner.list_page(query), page_weight
        )

    async def create(self, job: Job, idem: Idempotency | None) -> Job:
        return await self.cache.write((JOBS,), lambda: self.inner.create(job, idem))

    async def transition(self, job_id: str, mutate: JobMutation, idem: Idempotency | None) -> Job:
        return await self.cache.write((JOBS,), lambda: self.inner.transition(job_id, mutate, idem))

    async def append_log(self, job_id: str, lines: Sequence[str], idem: Idempotency | None) -> int:
        return await self.cache.write((JOBS,), lambda: self.inner.append_log(job_id, lines, idem))

    async def list_logs(self, job_id: str, page_size: int, after: int) -> Page[JobLogEntry]:
        return await self.inner.list_logs(job_id, page_size, after)

    async def events_after(self, sequence: int, job_id: str | None, limit: int) -> list[JobEvent]:
        return await self.inner.events_after(sequence, job_id, limit)

    async def last_sequence(self) -> int:
        return await self.inner.last_sequence()

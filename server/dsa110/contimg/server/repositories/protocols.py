"""What the servicers may ask of storage, one Protocol per resource.

Every method is atomic. Writes that take an `idempotency` key return the first result when the
same key comes again with the same fingerprint, and raise RequestIdMismatch for a different one.
Keyset pagination: `after` is the keyset returned as `Page.next_after` of the previous page.
Records and pages are immutable (NamedTuples, frozen dataclasses): a servicer may share what a
read returned with other callers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..domain.query import OrderKey, Term
from ..domain.records import (
    Image,
    Job,
    JobEvent,
    JobEventType,
    JobLogEntry,
    JobTransition,
    Match,
    MeasurementSet,
    Page,
    Photometry,
    PhotometryBatch,
    PhotometryResult,
    Source,
)


@dataclass(frozen=True, slots=True)
class Idempotency:
    request_id: str
    method: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class ListQuery:
    conditions: Sequence[Term]  # all must hold (query.parse_filter)
    order: Sequence[OrderKey]
    page_size: int
    after: list[object] | None


class MeasurementSetRepository(Protocol):
    async def get_many(self, paths: Sequence[str]) -> list[MeasurementSet | None]: ...
    async def list_page(self, query: ListQuery) -> Page[MeasurementSet]: ...
    # `actor`, here and below: who writes (the caller name of the call's token), recorded with the write.
    async def create(self, ms: MeasurementSet, idem: Idempotency | None, *, actor: str = "") -> MeasurementSet: ...
    async def upsert(
        self,
        ms: MeasurementSet,
        fields: Sequence[str],
        allow_missing: bool,
        idem: Idempotency | None,
        *,
        actor: str = "",
    ) -> MeasurementSet: ...
    async def delete(self, path: str, force: bool) -> None: ...


class ImageRepository(Protocol):
    async def get_many(self, ids: Sequence[int]) -> list[Image | None]: ...
    async def list_refs(self, query: ListQuery) -> Page[tuple[int, int]]:
        """One page of (id, update_time): callers that hold encoded rows fetch only the rest (get_many)."""
        ...

    async def search(self, ra_deg: float, dec_deg: float, query: ListQuery) -> Page[Match[Image]]: ...
    async def create(self, image: Image, idem: Idempotency | None, *, actor: str = "") -> Image: ...
    async def update(
        self, image: Image, fields: Sequence[str], idem: Idempotency | None, *, actor: str = ""
    ) -> Image: ...
    async def delete(self, image_id: int, force: bool) -> None: ...


class SourceRepository(Protocol):
    async def get_many(self, ids: Sequence[str]) -> list[Source | None]: ...
    async def list_refs(self, query: ListQuery) -> Page[tuple[str, int]]: ...
    async def search(
        self, ra_deg: float, dec_deg: float, radius_deg: float, query: ListQuery
    ) -> Page[Match[Source]]: ...
    def lightcurve(
        self, source_id: str, start_mjd: float, end_mjd: float, chunk: int
    ) -> AsyncGenerator[list[Photometry], None]: ...
    async def record_photometry(
        self, image_id: int, batch: PhotometryBatch, idem: Idempotency | None, *, actor: str = ""
    ) -> PhotometryResult: ...


# A pure function deciding a transition (domain.jobs.apply, bound to its arguments).
JobMutation = Callable[[Job, int], tuple[Job, JobTransition, JobEventType]]
# A pure function renewing a lease (domain.jobs.heartbeat, bound to its lease): no state change.
LeaseRenewal = Callable[[Job, int], Job]


@dataclass(frozen=True, slots=True)
class ClaimSpec:
    """Which PENDING jobs a claimer takes: any of `types` (empty: any type), of the measurement set
    `ms_path` (empty: any), with priority at least `min_priority` (None: any)."""

    types: tuple[int, ...] = ()
    ms_path: str = ""
    min_priority: int | None = None


class JobRepository(Protocol):
    async def get(self, job_id: str, *, with_transitions: bool = True) -> Job | None: ...
    async def list_page(self, query: ListQuery) -> Page[Job]: ...
    # `actor`: who makes the change (the caller name of the call's token), recorded with its transition.
    async def create(self, job: Job, idem: Idempotency | None, *, actor: str = "") -> Job: ...
    async def transition(
        self, job_id: str, mutate: JobMutation, idem: Idempotency | None, *, actor: str = ""
    ) -> Job: ...
    async def claim(self, spec: ClaimSpec, mutate: JobMutation, *, actor: str = "") -> Job | None:
        """Apply `mutate` (a START with a lease) to the first PENDING job matching `spec`, by
        priority desc, create_time, id; None when there is none. Each job is claimed once, whatever
        the number of concurrent claimers and processes."""
        ...

    async def heartbeat(self, job_id: str, renew: LeaseRenewal) -> Job:
        """Store `renew(job, now)` (the job's lease renewed); no event, no new update_time."""
        ...

    async def expire_leases(self, now: int, limit: int) -> int:
        """For each RUNNING job whose lease expired by `now` (at most `limit`), apply
        domain.jobs.expire in a transaction of its own, guarded so that each expiry happens once
        across processes. The number of jobs expired."""
        ...

    async def update_priority(self, job_id: str, priority: int, idem: Idempotency | None, actor: str = "") -> Job: ...
    async def append_log(self, job_id: str, lines: Sequence[str], idem: Idempotency | None) -> int: ...
    async def list_logs(self, job_id: str, page_size: int, after: int) -> Page[JobLogEntry]: ...
    async def events_after(self, sequence: int, job_id: str | None, limit: int) -> list[JobEvent]: ...
    async def last_sequence(self) -> int: ...


class EventPublisher(Protocol):
    """Where committed job events go (in-process bus; Redis later). Called in commit order."""

    def publish(self, event: JobEvent) -> None: ...

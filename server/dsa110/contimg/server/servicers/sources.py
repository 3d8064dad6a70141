"""SourceService."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from functools import partial

from dsa110.contimg.v1 import sources_pb2 as pb

from ..accesslog import Recorder
from ..domain import names, photometry_request
from ..domain.checks import Checker
from ..domain.errors import NotFound
from ..domain.listing import SOURCE_DEFAULT_ORDER, SOURCE_FIELDS
from ..domain.photometry_rules import MAX_MEASUREMENTS
from ..domain.records import Match, Photometry, PhotometryBatch, Source
from ..readcache import ReadCache, no_cache
from ..repositories.protocols import SourceRepository
from ..rpc_types import Ctx
from ..slices import map_in_slices
from .admission import OPEN, Admission
from .common import SEARCH_MAX_PAGE_SIZE, Paging, batch_keys, idempotency, list_reply
from .convert import photometry_from_columns, photometry_from_proto, photometry_to_proto, source_to_proto
from .encoded import Encoded, double_field, field_bytes, page, unframe
from .envelope import read, read_stream, unary

MAX_RADIUS_DEG = 10.0
# Page tokens of cones are keyed by squared chord distance since 2026-12 (by separation before):
# bound to this too, so that an older token is refused rather than misread.
SEARCH_KEYSET = "chord2"


def _version(src: Source) -> tuple[str, int]:
    return src.id, src.update_time


class SourceServicer:
    """dsa110.contimg.v1.SourceService (registered by servicers/handlers.py: reads leave as Encoded bytes)."""

    admission: Admission = OPEN  # the server sets its own (tokens, concurrency limit)
    reads: ReadCache = no_cache()  # the server sets its own (readcache.py)
    recorder: Recorder | None = None  # the server's, when it logs or counts calls (accesslog.py)

    def __init__(self, repo: SourceRepository, paging: Paging):
        self.repo = repo
        self.paging = paging
        self.photometry_rows = 0  # measurements recorded (replies to repeated request_ids included)

    def _match(self, match: Match[Source]) -> bytes:
        """A SourceMatch as field 1 of SearchSourcesResponse."""
        return field_bytes(1, self._encoded(match.item) + double_field(2, match.separation_deg))

    def _encoded(self, src: Source) -> bytes:
        """The source as field 1 (of BatchGet/List responses, SourceMatch and GetLightcurveResponse)."""
        return self.reads.item(("source", src.id, src.update_time), lambda: _framed_source(src))

    def _point(self, point: Photometry) -> bytes:
        """A lightcurve point as field 2 of GetLightcurveResponse, kept under its whole record."""
        return self.reads.item(("point", *point), lambda: _framed_point(point))

    @read
    async def GetSource(self, request: pb.GetSourceRequest, context: Ctx) -> Encoded[pb.Source]:
        source_id = names.parse_source_name(request.name)
        [src] = await self.repo.get_many([source_id])
        if src is None:
            raise NotFound("SOURCE", names.source_name(source_id))
        return Encoded(pb.Source, unframe(self._encoded(src)))

    @read
    async def BatchGetSources(
        self, request: pb.BatchGetSourcesRequest, context: Ctx
    ) -> Encoded[pb.BatchGetSourcesResponse]:
        ids = batch_keys(request.names, names.parse_source_name)
        found = await self.repo.get_many(ids)
        for source_id, src in zip(ids, found, strict=True):
            if src is None:
                raise NotFound("SOURCE", names.source_name(source_id))
        return Encoded(
            pb.BatchGetSourcesResponse, b"".join(await map_in_slices(self._encoded, [s for s in found if s]))
        )

    @read
    async def ListSources(self, request: pb.ListSourcesRequest, context: Ctx) -> Encoded[pb.ListSourcesResponse]:
        async def items(refs: list[tuple[str, int]]) -> list[bytes]:
            return await self.reads.items_for_refs("source", refs, self.repo.get_many, _version, _framed_source)

        return await list_reply(
            self.paging,
            "ListSources",
            request,
            SOURCE_FIELDS,
            SOURCE_DEFAULT_ORDER,
            self.repo.list_refs,
            items,
            pb.ListSourcesResponse,
        )

    @read
    async def SearchSources(self, request: pb.SearchSourcesRequest, context: Ctx) -> Encoded[pb.SearchSourcesResponse]:
        c = Checker()
        c.ra("ra_deg", request.ra_deg)
        c.dec("dec_deg", request.dec_deg)
        c.finite("radius_deg", request.radius_deg, lo=0.0, lo_open=True, hi=MAX_RADIUS_DEG)
        query, fp = self.paging.query(
            "SearchSources",
            request,
            SOURCE_FIELDS,
            (),
            sortable=False,
            bound_to=(request.ra_deg, request.dec_deg, request.radius_deg, SEARCH_KEYSET),
            max_page_size=SEARCH_MAX_PAGE_SIZE,
            checks=c,
        )
        found = await self.repo.search(request.ra_deg, request.dec_deg, request.radius_deg, query)
        matches = await map_in_slices(self._match, found.items)
        return page(pb.SearchSourcesResponse, matches, self.paging.next_token(found, fp), found.total_size)

    @read_stream
    async def GetLightcurve(
        self, request: pb.GetLightcurveRequest, context: Ctx
    ) -> AsyncGenerator[Encoded[pb.GetLightcurveResponse], None]:
        c = Checker()
        source_id = c.parsed(names.parse_source_name, request.name, "name") or ""
        c.mjd_range("start_mjd", request.start_mjd, "end_mjd", request.end_mjd)
        if not 0 <= request.max_points_per_message <= 10_000:
            c.add("max_points_per_message", "must be between 0 (default 1000) and 10000")
        c.raise_if_any()
        [src] = await self.repo.get_many([source_id])
        if src is None:
            raise NotFound("SOURCE", names.source_name(source_id))
        head = self._encoded(src)
        chunk = request.max_points_per_message or 1000
        async with aclosing(self.repo.lightcurve(source_id, request.start_mjd, request.end_mjd, chunk)) as chunks:
            async for points in chunks:
                yield Encoded(pb.GetLightcurveResponse, b"".join([head, *map(self._point, points)]))
                head = b""
        if head:  # no points: the source alone
            yield Encoded(pb.GetLightcurveResponse, head)

    @unary
    async def RecordPhotometry(self, request: pb.RecordPhotometryRequest, context: Ctx) -> pb.RecordPhotometryResponse:
        c = Checker()
        image_id = c.parsed(names.parse_image_name, request.image, "image") or 0
        has_columns = request.HasField("columns")
        photometry_request.check_one_form(has_columns, bool(request.measurements), c)
        if has_columns:
            batch = _batch_from_columns(request.columns, c)
        else:
            batch = _batch_from_rows(request.measurements, c)
        idem = idempotency("RecordPhotometry", request, c)
        c.raise_if_any()
        result = await self.repo.record_photometry(image_id, batch, idem, actor=self.admission.actor(context))
        self.photometry_rows += result.recorded_count  # the metrics' (metrics.py)
        return pb.RecordPhotometryResponse(
            image=f"images/{result.image_id}",
            recorded_count=result.recorded_count,
            created_source_count=result.created_source_count,
            updated_source_count=result.updated_source_count,
        )


def _batch_from_rows(measurements: Sequence[pb.PhotometryMeasurement], c: Checker) -> PhotometryBatch:
    """RecordPhotometryRequest.measurements as a checked batch (domain/photometry_request.py)."""
    sent = measurements[:MAX_MEASUREMENTS]  # beyond the limit nothing is read: the request fails
    times = {
        i: (m.measure_time.seconds, m.measure_time.nanos) for i, m in enumerate(sent) if m.HasField("measure_time")
    }
    source_ids = photometry_request.row_source_ids([m.source for m in sent], times, c)
    rows = list(map(photometry_from_proto, sent, source_ids))  # as many as there are ids
    return photometry_request.batch_of_rows(rows, len(measurements), c)


def _batch_from_columns(columns: pb.PhotometryColumns, c: Checker) -> PhotometryBatch:
    """RecordPhotometryRequest.columns as a checked batch (domain/photometry_request.py)."""
    source_ids = photometry_request.column_source_ids(columns.source, c)
    if source_ids is None:  # too many to read
        return PhotometryBatch.of_rows([])
    batch, wrong = photometry_from_columns(columns, source_ids)
    photometry_request.check_columns(batch, partial(getattr, columns), wrong, c)
    return batch


def _framed_source(src: Source) -> bytes:
    return field_bytes(1, source_to_proto(src).SerializeToString())


def _framed_point(point: Photometry) -> bytes:
    return field_bytes(2, photometry_to_proto(point).SerializeToString())

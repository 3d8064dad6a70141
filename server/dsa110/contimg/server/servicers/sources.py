"""SourceService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

from dsa110.contimg.v1 import sources_pb2 as pb
from dsa110.contimg.v1 import sources_pb2_grpc as pb_grpc

from ..domain import names
from ..domain.checks import Checker
from ..domain.errors import NotFound
from ..domain.listing import SOURCE_DEFAULT_ORDER, SOURCE_FIELDS
from ..domain.records import Source
from ..domain.validation import MAX_MEASUREMENTS, check_measurements
from ..repositories.protocols import SourceRepository
from ..rpc_types import Ctx
from .common import Paging, batch_names, idempotency
from .convert import photometry_from_proto, photometry_to_proto, source_to_proto
from .encoded import EncodedCache, double_field, field_bytes
from .errors import streaming, unary

MAX_RADIUS_DEG = 10.0


class SourceServicer(pb_grpc.SourceServiceServicer):
    def __init__(self, repo: SourceRepository, paging: Paging, cache: EncodedCache | None = None):
        self.repo = repo
        self.paging = paging
        self.cache = cache or EncodedCache()

    def _encoded(self, src: Source) -> bytes:
        return self.cache.get(("source", src.id, src.update_time), lambda: source_to_proto(src))

    @unary
    async def GetSource(self, request: pb.GetSourceRequest, context: Ctx) -> pb.Source:
        source_id = names.parse_source_name(request.name)
        [src] = await self.repo.get_many([source_id])
        if src is None:
            raise NotFound("SOURCE", names.source_name(source_id))
        return source_to_proto(src)

    @unary
    async def BatchGetSources(self, request: pb.BatchGetSourcesRequest, context: Ctx) -> pb.BatchGetSourcesResponse:
        batch_names(request.names)
        ids = [names.parse_source_name(n, f"names[{i}]") for i, n in enumerate(request.names)]
        found = await self.repo.get_many(ids)
        for source_id, src in zip(ids, found, strict=True):
            if src is None:
                raise NotFound("SOURCE", names.source_name(source_id))
        return self.cache.message(pb.BatchGetSourcesResponse, 1, [self._encoded(s) for s in found if s])

    @unary
    async def ListSources(self, request: pb.ListSourcesRequest, context: Ctx) -> pb.ListSourcesResponse:
        query, fp = self.paging.query("ListSources", request, SOURCE_FIELDS, SOURCE_DEFAULT_ORDER)
        page = await self.repo.list_refs(query)
        items = await self.cache.from_refs(
            "source", page.items, self.repo.get_many, lambda s: (s.id, s.update_time), source_to_proto
        )
        response = self.cache.message(pb.ListSourcesResponse, 1, items)
        response.next_page_token = self.paging.next_token(page, fp)
        response.total_size = page.total_size
        return response

    @unary
    async def SearchSources(self, request: pb.SearchSourcesRequest, context: Ctx) -> pb.SearchSourcesResponse:
        c = Checker()
        c.ra("ra_deg", request.ra_deg)
        c.dec("dec_deg", request.dec_deg)
        c.finite("radius_deg", request.radius_deg, lo=0.0, lo_open=True, hi=MAX_RADIUS_DEG)
        c.raise_if_any()
        query, fp = self.paging.query(
            "SearchSources",
            request,
            SOURCE_FIELDS,
            (),
            sortable=False,
            bound_to=(request.ra_deg, request.dec_deg, request.radius_deg),
        )
        page = await self.repo.search(request.ra_deg, request.dec_deg, request.radius_deg, query)
        matches = [field_bytes(1, self._encoded(m.item)) + double_field(2, m.separation_deg) for m in page.items]
        response = self.cache.message(pb.SearchSourcesResponse, 1, matches)
        response.next_page_token = self.paging.next_token(page, fp)
        response.total_size = page.total_size
        return response

    @streaming
    async def GetLightcurve(
        self, request: pb.GetLightcurveRequest, context: Ctx
    ) -> AsyncIterator[pb.GetLightcurveResponse]:
        source_id = names.parse_source_name(request.name)
        c = Checker()
        c.mjd_range("start_mjd", request.start_mjd, "end_mjd", request.end_mjd)
        if not 0 <= request.max_points_per_message <= 10_000:
            c.add("max_points_per_message", "must be between 0 (default 1000) and 10000")
        c.raise_if_any()
        [src] = await self.repo.get_many([source_id])
        if src is None:
            raise NotFound("SOURCE", names.source_name(source_id))
        # Encoded points are cached under the source's version: every photometry write that touches
        # the source (new epoch, deleted image) bumps its update_time and so retires them.
        head = field_bytes(1, self._encoded(src))
        sent_first = False
        async for points in self.repo.lightcurve(
            source_id, request.start_mjd, request.end_mjd, request.max_points_per_message or 1000
        ):
            parts = [
                field_bytes(
                    2,
                    self.cache.get(("point", source_id, src.update_time, p.image_id), partial(photometry_to_proto, p)),
                )
                for p in points
            ]
            yield pb.GetLightcurveResponse.FromString(b"".join([b"" if sent_first else head, *parts]))
            sent_first = True
        if not sent_first:
            yield pb.GetLightcurveResponse.FromString(head)

    @unary
    async def RecordPhotometry(self, request: pb.RecordPhotometryRequest, context: Ctx) -> pb.RecordPhotometryResponse:
        image_id = names.parse_image_name(request.image, "image")
        c = Checker()
        rows = []
        for i, m in enumerate(request.measurements[:MAX_MEASUREMENTS]):
            source_id = names.source_id_or_none(m.source)
            if source_id is None:
                try:
                    source_id = names.parse_source_name(m.source, f"measurements[{i}].source")
                except Exception as exc:  # collect alongside the other violations
                    c.violations.extend(getattr(exc, "violations", []))
                    source_id = f"invalid-{i}"
            if m.HasField("measure_time"):
                c.timestamp(f"measurements[{i}].measure_time", m.measure_time.seconds, m.measure_time.nanos)
            rows.append(photometry_from_proto(m, source_id))
            if len(c.violations) >= 100:
                break
        if len(request.measurements) > MAX_MEASUREMENTS:
            c.add("measurements", f"at most {MAX_MEASUREMENTS} measurements per call")
        check_measurements(rows, c)
        c.raise_if_any()
        result = await self.repo.record_photometry(image_id, rows, idempotency("RecordPhotometry", request))
        return pb.RecordPhotometryResponse(
            image=f"images/{result.image_id}",
            recorded_count=result.recorded_count,
            created_source_count=result.created_source_count,
            updated_source_count=result.updated_source_count,
        )

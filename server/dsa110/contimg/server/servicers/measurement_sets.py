"""MSService."""

from __future__ import annotations

from dsa110.contimg.v1 import measurement_sets_pb2 as pb
from google.protobuf import empty_pb2

from ..accesslog import Recorder
from ..domain import names
from ..domain.checks import Checker
from ..domain.errors import NotFound
from ..domain.listing import MS_DEFAULT_ORDER, MS_FIELDS
from ..domain.records import MS_WRITABLE_FIELDS, MSStage, MSStatus
from ..domain.validation import check_measurement_set
from ..readcache import ReadCache, no_cache
from ..repositories.protocols import MeasurementSetRepository
from ..rpc_types import Ctx
from .admission import OPEN, Admission
from .common import Paging, batch_keys, framed, idempotency, list_reply, require
from .convert import ms_from_proto, ms_to_proto, set_fields
from .encoded import Encoded
from .envelope import read, unary


def _target_path(msg: pb.MeasurementSet, c: Checker) -> str:
    """The MS path the request names; "" with the violation added to `c` when it names none."""
    if msg.name:
        path = c.parsed(names.parse_ms_name, msg.name, "measurement_set.name")
        if path is not None and msg.path and msg.path != path:
            c.add("measurement_set.path", "does not match measurement_set.name")
        return path or ""
    return c.parsed(names.check_path, msg.path, "measurement_set.path") or ""


def _check_process_time(msg: pb.MeasurementSet, c: Checker) -> None:
    if msg.HasField("process_time"):
        c.timestamp("measurement_set.process_time", msg.process_time.seconds, msg.process_time.nanos)


class MSServicer:
    """dsa110.contimg.v1.MSService (registered by servicers/handlers.py: list pages leave as Encoded bytes)."""

    admission: Admission = OPEN  # the server sets its own (tokens, concurrency limit)
    reads: ReadCache = no_cache()  # the server sets its own (readcache.py)
    recorder: Recorder | None = None  # the server's, when it logs or counts calls (accesslog.py)

    def __init__(self, repo: MeasurementSetRepository, paging: Paging):
        self.repo = repo
        self.paging = paging

    @read
    async def GetMeasurementSet(self, request: pb.GetMeasurementSetRequest, context: Ctx) -> pb.MeasurementSet:
        path = names.parse_ms_name(request.name)
        [ms] = await self.repo.get_many([path])
        if ms is None:
            raise NotFound("MEASUREMENT_SET", names.ms_name(path))
        return ms_to_proto(ms)

    @read
    async def BatchGetMeasurementSets(
        self, request: pb.BatchGetMeasurementSetsRequest, context: Ctx
    ) -> pb.BatchGetMeasurementSetsResponse:
        paths = batch_keys(request.names, names.parse_ms_name)
        found = await self.repo.get_many(paths)
        for path, ms in zip(paths, found, strict=True):
            if ms is None:
                raise NotFound("MEASUREMENT_SET", names.ms_name(path))
        return pb.BatchGetMeasurementSetsResponse(measurement_sets=[ms_to_proto(m) for m in found if m])

    @read
    async def ListMeasurementSets(
        self, request: pb.ListMeasurementSetsRequest, context: Ctx
    ) -> Encoded[pb.ListMeasurementSetsResponse]:
        return await list_reply(
            self.paging,
            "ListMeasurementSets",
            request,
            MS_FIELDS,
            MS_DEFAULT_ORDER,
            self.repo.list_page,
            framed(ms_to_proto),
            pb.ListMeasurementSetsResponse,
        )

    @unary
    async def CreateMeasurementSet(self, request: pb.CreateMeasurementSetRequest, context: Ctx) -> pb.MeasurementSet:
        c = Checker()
        present = require(request, "measurement_set", c)
        path = _target_path(request.measurement_set, c) if present else ""
        record = ms_from_proto(request.measurement_set, path)
        if present:
            check_measurement_set(record, MS_WRITABLE_FIELDS, "measurement_set", c)
            _check_process_time(request.measurement_set, c)
        idem = idempotency("CreateMeasurementSet", request, c)
        c.raise_if_any()
        return ms_to_proto(await self.repo.create(record, idem, actor=self.admission.actor(context)))

    @unary
    async def UpdateMeasurementSet(self, request: pb.UpdateMeasurementSetRequest, context: Ctx) -> pb.MeasurementSet:
        c = Checker()
        path = _target_path(request.measurement_set, c) if require(request, "measurement_set", c) else ""
        paths = list(request.update_mask.paths)
        if not paths:
            fields = [f for f in set_fields(request.measurement_set) if f in MS_WRITABLE_FIELDS]
        elif paths == ["*"]:
            fields = list(MS_WRITABLE_FIELDS)
        else:
            for i, p in enumerate(paths):
                if p not in MS_WRITABLE_FIELDS:
                    c.add(f"update_mask.paths[{i}]", f"{p!r} is not a writable MeasurementSet field")
            # The values of the valid paths are checked even when other paths are not.
            fields = [p for p in dict.fromkeys(paths) if p in MS_WRITABLE_FIELDS]
        record = ms_from_proto(request.measurement_set, path)
        check_measurement_set(record, fields, "measurement_set", c)
        if "process_time" in fields:
            _check_process_time(request.measurement_set, c)
        idem = idempotency("UpdateMeasurementSet", request, c)
        c.raise_if_any()
        actor = self.admission.actor(context)
        updated = await self.repo.upsert(record, fields, request.allow_missing, idem, actor=actor)
        return ms_to_proto(updated)

    @unary
    async def AdvanceMeasurementSetStage(
        self, request: pb.AdvanceMeasurementSetStageRequest, context: Ctx
    ) -> pb.MeasurementSet:
        c = Checker()
        path = c.parsed(names.parse_ms_name, request.name, "name") or ""
        c.enum("stage", request.stage, MSStage, required=True)
        c.enum("status", request.status, MSStatus)
        idem = idempotency("AdvanceMeasurementSetStage", request, c)
        c.raise_if_any()
        record = ms_from_proto(pb.MeasurementSet(), path)._replace(
            stage=request.stage, status=request.status or MSStatus.IN_PROGRESS
        )
        actor = self.admission.actor(context)
        updated = await self.repo.upsert(record, ["stage", "status"], False, idem, actor=actor)
        return ms_to_proto(updated)

    @unary
    async def DeleteMeasurementSet(self, request: pb.DeleteMeasurementSetRequest, context: Ctx) -> empty_pb2.Empty:
        await self.repo.delete(names.parse_ms_name(request.name), request.force)
        return empty_pb2.Empty()

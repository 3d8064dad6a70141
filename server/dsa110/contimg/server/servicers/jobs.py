"""JobService."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from functools import partial

from dsa110.contimg.v1 import jobs_pb2 as pb
from google.protobuf.message import Message

from ..domain import jobs as rules
from ..domain import names
from ..domain.checks import Checker, page_size
from ..domain.errors import InvalidArgument, NotFound
from ..domain.listing import JOB_DEFAULT_ORDER, JOB_FIELDS, JOB_WATCH_FIELDS
from ..domain.query import fingerprint, parse_filter
from ..domain.records import Heartbeat, Job, JobEvent, JobEventType, JobStage
from ..domain.validation import MAX_ARTIFACTS, MAX_LOG_LINES, check_job, check_lines
from ..events.watch import JobWatcher
from ..readcache import ReadCache, no_cache
from ..repositories.protocols import JobRepository
from ..rpc_types import Ctx
from .admission import OPEN, Admission
from .common import Paging, framed, idempotency, list_reply, require
from .convert import event_to_proto, job_to_proto, log_entry_to_proto, parameters_json
from .encoded import Encoded
from .envelope import read, streaming, unary

# Sent as soon as a watch is set up, before any event (see the contract's WatchJob): clients tell a
# server that answered from one they cannot reach, even when no event comes for hours.
WATCH_OPEN = (("contimg-watch", "open"),)


class JobServicer:
    """dsa110.contimg.v1.JobService (registered by servicers/handlers.py: list pages leave as Encoded bytes)."""

    admission: Admission = OPEN  # the server sets its own (tokens, concurrency limit)
    reads: ReadCache = no_cache()  # the server sets its own (readcache.py)

    def __init__(self, repo: JobRepository, paging: Paging, watcher: JobWatcher):
        self.repo = repo
        self.paging = paging
        self.watcher = watcher

    def _event(self, event: JobEvent | Heartbeat) -> Encoded[pb.JobEvent]:
        """The event's message. A logged event is one object handed to every watcher (1,000 watchers
        of a job each built the same message): its bytes are kept under its sequence and its job's
        version. Snapshots and heartbeats are built each time (their sequence names no event)."""
        if isinstance(event, Heartbeat) or event.type == JobEventType.SNAPSHOT:
            return Encoded(pb.JobEvent, event_to_proto(event).SerializeToString())
        key = ("event", event.sequence, event.job.id, event.job.update_time)
        return Encoded(pb.JobEvent, self.reads.item(key, lambda: event_to_proto(event).SerializeToString()))

    @read
    async def GetJob(self, request: pb.GetJobRequest, context: Ctx) -> pb.Job:
        job_id = names.parse_job_name(request.name)
        job = await self.repo.get(job_id)
        if job is None:
            raise NotFound("JOB", names.job_name(job_id))
        return job_to_proto(job)

    @read
    async def ListJobs(self, request: pb.ListJobsRequest, context: Ctx) -> Encoded[pb.ListJobsResponse]:
        return await list_reply(
            self.paging,
            "ListJobs",
            request,
            JOB_FIELDS,
            JOB_DEFAULT_ORDER,
            self.repo.list_page,
            framed(job_to_proto),
            pb.ListJobsResponse,
        )

    @unary
    async def CreateJob(self, request: pb.CreateJobRequest, context: Ctx) -> pb.Job:
        c = Checker()
        msg = request.job
        present = require(request, "job", c)
        job_id = c.parsed(names.check_job_id, request.job_id, "job_id") if request.job_id else f"job-{uuid.uuid4().hex}"
        ms_path = ""
        if msg.measurement_set:
            ms_path = c.parsed(names.parse_ms_name, msg.measurement_set, "job.measurement_set") or ""
        job = Job(
            id=job_id or "",
            type=msg.type,
            ms_path=ms_path,
            target_path=msg.ms_path or ms_path,
            parameters_json=_parameters_json(msg, c),
            max_attempts=msg.max_attempts or 3,
        )
        if present:
            check_job(job, c)
        idem = idempotency("CreateJob", request, c)
        c.raise_if_any()
        return job_to_proto(await self.repo.create(job, idem, actor=self.admission.actor(context)))

    async def _transition(
        self, method: str, request: Message, context: Ctx, c: Checker, action: rules.Action, **kwargs: object
    ) -> pb.Job:
        """Apply `action` to the job `request.name` names, after raising the violations in `c`
        (the caller's checks of the request's other fields) with any of the name and request_id;
        the transition names the call's caller as its actor."""
        job_id = c.parsed(names.parse_job_name, getattr(request, "name", ""), "name") or ""
        idem = idempotency(method, request, c)
        c.raise_if_any()
        mutate = partial(_apply, action=action, kwargs=kwargs)
        actor = self.admission.actor(context)
        job = await self.repo.transition(job_id, mutate, idem, actor=actor)  # type: ignore[arg-type]
        return job_to_proto(job)

    @unary
    async def StartJob(self, request: pb.StartJobRequest, context: Ctx) -> pb.Job:
        return await self._transition("StartJob", request, context, Checker(), rules.Action.START)

    @unary
    async def ReportJobProgress(self, request: pb.ReportJobProgressRequest, context: Ctx) -> pb.Job:
        c = Checker()
        c.enum("stage", request.stage, JobStage)
        c.finite("progress_percent", request.progress_percent, lo=0.0, hi=100.0)
        c.text("message", request.message, max_len=4096)
        return await self._transition(
            "ReportJobProgress",
            request,
            context,
            c,
            rules.Action.PROGRESS,
            stage=request.stage,
            progress=request.progress_percent,
            message=request.message,
        )

    @unary
    async def SucceedJob(self, request: pb.SucceedJobRequest, context: Ctx) -> pb.Job:
        c = Checker()
        if len(request.artifacts) > MAX_ARTIFACTS:
            c.add("artifacts", f"at most {MAX_ARTIFACTS} artifacts")
        for i, a in enumerate(request.artifacts[:MAX_ARTIFACTS]):
            try:
                names.check_artifact(a, f"artifacts[{i}]")
            except InvalidArgument as bad:
                c.add(bad.violations[0].field, bad.violations[0].description)
        c.text("message", request.message, max_len=4096)
        return await self._transition(
            "SucceedJob",
            request,
            context,
            c,
            rules.Action.SUCCEED,
            artifacts=list(request.artifacts),
            message=request.message,
        )

    @unary
    async def FailJob(self, request: pb.FailJobRequest, context: Ctx) -> pb.Job:
        c = Checker()
        c.text("error_message", request.error_message, max_len=4096, required=True)
        return await self._transition("FailJob", request, context, c, rules.Action.FAIL, message=request.error_message)

    @unary
    async def CancelJob(self, request: pb.CancelJobRequest, context: Ctx) -> pb.Job:
        c = Checker()
        c.text("reason", request.reason, max_len=4096)
        return await self._transition("CancelJob", request, context, c, rules.Action.CANCEL, message=request.reason)

    @unary
    async def RetryJob(self, request: pb.RetryJobRequest, context: Ctx) -> pb.Job:
        return await self._transition("RetryJob", request, context, Checker(), rules.Action.RETRY)

    @unary
    async def AppendJobLog(self, request: pb.AppendJobLogRequest, context: Ctx) -> pb.AppendJobLogResponse:
        c = Checker()
        job_id = c.parsed(names.parse_job_name, request.name, "name") or ""
        check_lines(request.lines, "lines", c, max_items=MAX_LOG_LINES)
        idem = idempotency("AppendJobLog", request, c)
        c.raise_if_any()
        total = await self.repo.append_log(job_id, list(request.lines), idem)
        return pb.AppendJobLogResponse(log_line_count=total)

    @read
    async def ListJobLogEntries(
        self, request: pb.ListJobLogEntriesRequest, context: Ctx
    ) -> pb.ListJobLogEntriesResponse:
        try:
            job_id = names.parse_job_name(request.parent, "parent")
            size = page_size(request.page_size, default=100)
            fp = fingerprint("ListJobLogEntries", job_id)
            after = self.paging.tokens.decode(request.page_token, fp)
        except InvalidArgument:
            # Name every bad field, not only the first. A token can only be checked against a
            # well-formed parent (it is bound to the job).
            c = Checker()
            parent = c.parsed(names.parse_job_name, request.parent, "parent")
            c.parsed(page_size, request.page_size)
            if parent is not None:
                c.parsed(self.paging.tokens.decode, request.page_token, fingerprint("ListJobLogEntries", parent))
            c.raise_if_any()
            raise
        start = after[0] if after and isinstance(after[0], int) and 0 <= after[0] < 2**63 else 0
        page = await self.repo.list_logs(job_id, size, start)
        return pb.ListJobLogEntriesResponse(
            entries=[log_entry_to_proto(e) for e in page.items],
            next_page_token=self.paging.next_token(page, fp),
            total_size=page.total_size,
        )

    @streaming
    async def WatchJob(self, request: pb.WatchJobRequest, context: Ctx) -> AsyncGenerator[Encoded[pb.JobEvent], None]:
        c = Checker()
        job_id = c.parsed(names.parse_job_name, request.name, "name") or ""
        if request.after_sequence < 0:
            c.add("after_sequence", "must not be negative")
        c.raise_if_any()
        await context.send_initial_metadata(WATCH_OPEN)
        async with aclosing(self.watcher.watch_job(job_id, max(request.after_sequence, 0))) as events:
            async for event in events:
                yield self._event(event)

    @streaming
    async def WatchJobs(self, request: pb.WatchJobsRequest, context: Ctx) -> AsyncGenerator[Encoded[pb.JobEvent], None]:
        c = Checker()
        if request.after_sequence < 0:
            c.add("after_sequence", "must not be negative")
        conditions = c.parsed(parse_filter, request.filter, JOB_WATCH_FIELDS) or []
        c.raise_if_any()
        await context.send_initial_metadata(WATCH_OPEN)

        def accept(event: JobEvent) -> bool:
            for cond in conditions:
                value = {
                    "state": event.job.state,
                    "type": event.job.type,
                    "measurement_set": event.job.ms_path,
                }[cond.field]
                if (value == cond.value) != (cond.op == "="):
                    return False
            return True

        async with aclosing(self.watcher.watch_jobs(accept, max(request.after_sequence, 0))) as events:
            async for event in events:
                yield self._event(event)


def _parameters_json(msg: pb.Job, c: Checker) -> str:
    try:
        return parameters_json(msg.parameters)
    except ValueError:  # NaN and Infinity have no JSON form
        c.add("job.parameters", "numbers must be finite")
        return "{}"


def _apply(job: Job, now: int, *, action: rules.Action, kwargs: dict[str, object]) -> tuple[Job, object, object]:
    return rules.apply(job, action, now, **kwargs)  # type: ignore[arg-type]

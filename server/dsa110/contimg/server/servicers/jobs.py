"""JobService."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from functools import partial

from dsa110.contimg.v1 import jobs_pb2 as pb
from google.protobuf.message import Message

from ..accesslog import Recorder
from ..domain import jobs as rules
from ..domain import names
from ..domain.checks import Checker, page_size
from ..domain.errors import InvalidArgument, NotFound
from ..domain.listing import JOB_DEFAULT_ORDER, JOB_FIELDS, JOB_WATCH_FIELDS
from ..domain.query import fingerprint, matches, parse_filter
from ..domain.records import Heartbeat, Job, JobEvent, JobEventType, JobStage, JobState, JobType
from ..domain.validation import MAX_ARTIFACTS, MAX_LOG_LINES, check_job, check_lines
from ..events.local import Subscription
from ..events.watch import JobWatcher
from ..readcache import ReadCache, no_cache
from ..repositories.protocols import ClaimSpec, JobRepository
from ..rpc_types import Ctx
from .admission import OPEN, Admission
from .common import Paging, framed, idempotency, list_reply, require
from .convert import event_to_proto, job_to_proto, log_entry_to_proto, parameters_json, timestamp
from .encoded import Encoded
from .envelope import read, streaming, unary

# Sent as soon as a watch is set up, before any event (see the contract's WatchJob): clients tell a
# server that answered from one they cannot reach, even when no event comes for hours.
WATCH_OPEN = (("contimg-watch", "open"),)
log = logging.getLogger("contimg.jobs")
# ClaimJob's wait: at most this long (and never past the call's deadline, less a margin to answer in).
MAX_CLAIM_WAIT_US = 300_000_000
DEADLINE_MARGIN_S = 0.05
# A waiting claim tries again at least this often even without an event (a belt for the bus's braces:
# events from other processes come through the tailer, which may lag when the database is busy).
CLAIM_REPOLL_S = 2.0
MAX_WORKER_LEN = 256
_ABANDONED = "claim abandoned: its caller left before the reply; the attempt is given back"
_CLAIMABLE_TYPES = frozenset(int(t) for t in JobType if t != JobType.UNSPECIFIED)


class JobServicer:
    """dsa110.contimg.v1.JobService (registered by servicers/handlers.py: list pages leave as Encoded bytes)."""

    admission: Admission = OPEN  # the server sets its own (tokens, concurrency limit)
    reads: ReadCache = no_cache()  # the server sets its own (readcache.py)
    recorder: Recorder | None = None  # the server's, when it logs or counts calls (accesslog.py)

    def __init__(self, repo: JobRepository, paging: Paging, watcher: JobWatcher):
        self.repo = repo
        self.paging = paging
        self.watcher = watcher
        self._releasing: set[asyncio.Future[Job]] = set()  # abandoned claims being given back

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
            priority=msg.priority,
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
        return job_to_proto(await self._transition_record(method, request, context, c, action, **kwargs))

    async def _transition_record(
        self, method: str, request: Message, context: Ctx, c: Checker, action: rules.Action, **kwargs: object
    ) -> Job:
        job_id = c.parsed(names.parse_job_name, getattr(request, "name", ""), "name") or ""
        idem = idempotency(method, request, c)
        c.raise_if_any()
        mutate = partial(_apply, action=action, kwargs=kwargs)
        actor = self.admission.actor(context)
        return await self.repo.transition(job_id, mutate, idem, actor=actor)  # type: ignore[arg-type]

    @unary
    async def StartJob(self, request: pb.StartJobRequest, context: Ctx) -> pb.Job:
        c = Checker()
        if not request.worker:
            if request.HasField("lease_duration"):
                c.add("lease_duration", "only with `worker` (a start without a worker grants no lease)")
            return await self._transition("StartJob", request, context, c, rules.Action.START)
        c.text("worker", request.worker, max_len=MAX_WORKER_LEN)
        lease_us = _lease_duration(request, "lease_duration", c)
        token = rules.new_token()
        lease = rules.Lease(grant_hash=rules.token_hash(token), holder=request.worker, duration_us=lease_us)
        record = await self._transition_record("StartJob", request, context, c, rules.Action.START, lease=lease)
        job = job_to_proto(record)
        if record.lease_token_hash == lease.grant_hash:
            # The token goes to this reply only. A replay of the request_id returns the first result
            # without it (its lease's hash is the first call's): the token is kept nowhere.
            job.lease_token = token
        return job

    @unary
    async def ClaimJob(self, request: pb.ClaimJobRequest, context: Ctx) -> pb.ClaimJobResponse:
        c = Checker()
        for i, t in enumerate(request.types):
            if int(t) not in _CLAIMABLE_TYPES:
                c.add(f"types[{i}]", f"unknown job type {t}")
        ms_path = ""
        if request.measurement_set:
            ms_path = c.parsed(names.parse_ms_name, request.measurement_set, "measurement_set") or ""
        c.text("worker", request.worker, max_len=MAX_WORKER_LEN, required=True)
        lease_us = _lease_duration(request, "lease_duration", c)
        wait_us = _duration_us(request, "wait", c, default=0, lo=0, hi=MAX_CLAIM_WAIT_US)
        c.raise_if_any()
        spec = ClaimSpec(
            tuple(sorted(set(request.types))),
            ms_path,
            request.min_priority if request.HasField("min_priority") else None,
        )
        actor = self.admission.actor(context)
        loop = asyncio.get_running_loop()
        end = loop.time() + wait_us / 1e6
        remaining = context.time_remaining() if hasattr(context, "time_remaining") else None
        if remaining is not None:
            end = min(end, loop.time() + remaining - DEADLINE_MARGIN_S)
        # Subscribed before the first attempt: a job made claimable after that attempt read the
        # table is announced on `sub`, so no job that comes during the wait is missed.
        with self.watcher.bus.subscribe(None) as sub:
            while True:
                token = rules.new_token()
                lease = rules.Lease(grant_hash=rules.token_hash(token), holder=request.worker, duration_us=lease_us)
                mutate = partial(_apply, action=rules.Action.START, kwargs={"lease": lease})
                claiming = asyncio.ensure_future(self.repo.claim(spec, mutate, actor=actor))  # type: ignore[arg-type]
                try:
                    job = await asyncio.shield(claiming)
                except asyncio.CancelledError:
                    # The caller left (cancelled, deadline): a job claimed for it now would wait for
                    # its lease to expire and lose an attempt. Give it back as soon as the claim ends.
                    claiming.add_done_callback(partial(self._release, lease=lease, actor=actor))
                    raise
                if job is not None:
                    return pb.ClaimJobResponse(job=job_to_proto(job), lease_token=token)
                left = end - loop.time()
                if left <= 0 or sub.closed:
                    return pb.ClaimJobResponse()
                await _claimable(sub, spec, min(left, CLAIM_REPOLL_S))

    def _release(self, claiming: asyncio.Future[Job | None], *, lease: rules.Lease, actor: str) -> None:
        if claiming.cancelled() or claiming.exception() is not None:
            return
        job = claiming.result()
        if job is None:
            return
        held = rules.Lease(token_hash=lease.grant_hash)
        mutate = partial(_apply, action=rules.Action.RELEASE, kwargs={"lease": held, "message": _ABANDONED})
        task = asyncio.ensure_future(self.repo.transition(job.id, mutate, None, actor=actor))  # type: ignore[arg-type]
        self._releasing.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Future[Job]) -> None:
        self._releasing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("giving back an abandoned claim failed: %s", task.exception())

    @unary
    async def HeartbeatJob(self, request: pb.HeartbeatJobRequest, context: Ctx) -> pb.HeartbeatJobResponse:
        c = Checker()
        job_id = c.parsed(names.parse_job_name, request.name, "name") or ""
        c.text("lease_token", request.lease_token, max_len=256, required=True)
        duration = 0
        if request.HasField("lease_duration"):
            duration = _lease_duration(request, "lease_duration", c)
        c.raise_if_any()
        lease = rules.Lease(token_hash=rules.token_hash(request.lease_token), duration_us=duration, renew=True)
        job = await self.repo.heartbeat(job_id, partial(_renew, lease=lease))
        return pb.HeartbeatJobResponse(lease_expire_time=timestamp(job.lease_expire_time))

    @unary
    async def UpdateJob(self, request: pb.UpdateJobRequest, context: Ctx) -> pb.Job:
        c = Checker()
        require(request, "job", c)
        job_id = c.parsed(names.parse_job_name, request.job.name, "job.name") or ""
        if not request.HasField("update_mask") or not request.update_mask.paths:
            c.add("update_mask", "required: name the fields to update (`priority`)")
        for i, path in enumerate(request.update_mask.paths):
            if path not in ("priority", "*"):
                c.add(f"update_mask.paths[{i}]", f"{path!r} is not an updatable Job field (only `priority`)")
        idem = idempotency("UpdateJob", request, c)
        c.raise_if_any()
        actor = self.admission.actor(context)
        return job_to_proto(await self.repo.update_priority(job_id, request.job.priority, idem, actor))

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
            lease=_presented(request, c, renew=True),
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
            lease=_presented(request, c),
        )

    @unary
    async def FailJob(self, request: pb.FailJobRequest, context: Ctx) -> pb.Job:
        c = Checker()
        c.text("error_message", request.error_message, max_len=4096, required=True)
        return await self._transition(
            "FailJob",
            request,
            context,
            c,
            rules.Action.FAIL,
            message=request.error_message,
            lease=_presented(request, c),
        )

    @unary
    async def CancelJob(self, request: pb.CancelJobRequest, context: Ctx) -> pb.Job:
        c = Checker()
        c.text("reason", request.reason, max_len=4096)
        return await self._transition("CancelJob", request, context, c, rules.Action.CANCEL, message=request.reason)

    @unary
    async def RetryJob(self, request: pb.RetryJobRequest, context: Ctx) -> pb.Job:
        return await self._transition(
            "RetryJob",
            request,
            context,
            Checker(),
            rules.Action.RETRY,
            ignore_attempt_limit=request.ignore_attempt_limit,
        )

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
            values = {"state": event.job.state, "type": event.job.type, "measurement_set": event.job.ms_path}
            return matches(conditions, values.__getitem__)

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


def _renew(job: Job, now: int, *, lease: rules.Lease) -> Job:
    return rules.heartbeat(job, lease, now)


def _presented(request: Message, c: Checker, *, renew: bool = False) -> rules.Lease | None:
    """The lease a write presents (its `lease_token`), or None: then the write does not check leases."""
    token: str = getattr(request, "lease_token", "")
    if not token:
        return None
    c.text("lease_token", token, max_len=256)
    return rules.Lease(token_hash=rules.token_hash(token), renew=renew)


def _duration_us(request: Message, field: str, c: Checker, *, default: int, lo: int, hi: int) -> int:
    """A google.protobuf.Duration field in microseconds: `default` when unset; out of [lo, hi] is a
    violation of `field`."""
    if not request.HasField(field):
        return default
    d = getattr(request, field)
    if d.seconds < 0 or d.nanos < 0:
        c.add(field, "must not be negative")
        return default
    if d.nanos >= 1_000_000_000:
        c.add(field, "nanos must be below 1,000,000,000")
        return default
    us = d.seconds * 1_000_000 + d.nanos // 1000
    if not lo <= us <= hi:
        c.add(field, f"must be between {lo / 1e6:g} s and {hi / 1e6:g} s")
        return default
    return int(us)


def _lease_duration(request: Message, field: str, c: Checker) -> int:
    return _duration_us(request, field, c, default=rules.DEFAULT_LEASE_US, lo=rules.MIN_LEASE_US, hi=rules.MAX_LEASE_US)


def _could_claim(event: JobEvent, spec: ClaimSpec) -> bool:
    job = event.job
    return (
        job.state == JobState.PENDING
        and (not spec.types or job.type in spec.types)
        and (not spec.ms_path or job.ms_path == spec.ms_path)
        and (spec.min_priority is None or job.priority >= spec.min_priority)
    )


async def _claimable(sub: Subscription, spec: ClaimSpec, timeout_s: float) -> None:
    """Return when an event may have made a job claimable for `spec` (a job created, retried or
    re-prioritized into PENDING), when the bus closes or lags, or after `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                event = await sub.queue.get()
                if event is None or sub.closed or sub.lagged:
                    sub.lagged = False
                    return
                if _could_claim(event, spec):
                    return
    except TimeoutError:
        return

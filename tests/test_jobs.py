"""JobService over the real server: creation, the state machine, logs, listing, and watch streams.

The state machine is checked exhaustively: every (state, action) pair is either a legal transition,
whose JobTransition record is verified, or FAILED_PRECONDITION with reason INVALID_JOB_TRANSITION
(or RETRIES_EXHAUSTED) leaving the job untouched.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from dsa110.contimg.v1 import jobs_pb2, jobs_pb2_grpc, measurement_sets_pb2
from google.protobuf import struct_pb2

from conftest import make_stubs
from helpers_jobs import expect_error, make_ms

ENGINES = ("sqlite", "postgres")

Job = jobs_pb2.Job
JobEvent = jobs_pb2.JobEvent
S = Job.State
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    S.STATE_PENDING,
    S.STATE_RUNNING,
    S.STATE_SUCCEEDED,
    S.STATE_FAILED,
    S.STATE_CANCELLED,
)
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT
READ_TIMEOUT = 10.0


def micros(ts: Any) -> int:
    return int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1000


async def create(stubs, type_: int = Job.TYPE_IMAGE, job_id: str = "", request_id: str = "", **fields: Any) -> Job:
    return await stubs.jobs.CreateJob(
        jobs_pb2.CreateJobRequest(job=Job(type=type_, **fields), job_id=job_id, request_id=request_id)
    )


async def get(stubs, name: str) -> Job:
    return await stubs.jobs.GetJob(jobs_pb2.GetJobRequest(name=name))


# Every state-changing method, with a request that is valid apart from the job's state.
Action = Callable[[Any, str, str], Awaitable[Job]]
ACTIONS: dict[str, Action] = {
    "start": lambda st, n, rid: st.jobs.StartJob(jobs_pb2.StartJobRequest(name=n, request_id=rid)),
    "progress": lambda st, n, rid: st.jobs.ReportJobProgress(
        jobs_pb2.ReportJobProgressRequest(
            name=n, stage=Job.STAGE_IMAGING, progress_percent=42.5, message="cleaning", request_id=rid
        )
    ),
    "succeed": lambda st, n, rid: st.jobs.SucceedJob(
        jobs_pb2.SucceedJobRequest(
            name=n, artifacts=["images/42", "/data/images/x.fits"], message="done", request_id=rid
        )
    ),
    "fail": lambda st, n, rid: st.jobs.FailJob(
        jobs_pb2.FailJobRequest(name=n, error_message="wsclean crashed", request_id=rid)
    ),
    "cancel": lambda st, n, rid: st.jobs.CancelJob(
        jobs_pb2.CancelJobRequest(name=n, reason="operator", request_id=rid)
    ),
    "retry": lambda st, n, rid: st.jobs.RetryJob(jobs_pb2.RetryJobRequest(name=n, request_id=rid)),
}
TARGET = {
    "start": RUNNING,
    "progress": RUNNING,
    "succeed": SUCCEEDED,
    "fail": FAILED,
    "cancel": CANCELLED,
    "retry": PENDING,
}

# How to reach each starting state from a new job (max_attempts, actions).
STATES: dict[str, tuple[int, list[str]]] = {
    "PENDING": (3, []),
    "RUNNING": (3, ["start"]),
    "SUCCEEDED": (3, ["start", "succeed"]),
    "FAILED": (3, ["start", "fail"]),  # attempts remain
    "FAILED_EXHAUSTED": (1, ["start", "fail"]),
    "CANCELLED": (3, ["cancel"]),
    "PENDING_RETRIED": (3, ["start", "fail", "retry"]),
}
LEGAL: dict[str, set[str]] = {
    "PENDING": {"start", "fail", "cancel"},
    "RUNNING": {"progress", "succeed", "fail", "cancel"},
    "SUCCEEDED": set(),
    "FAILED": {"retry"},
    "FAILED_EXHAUSTED": set(),  # retry: RETRIES_EXHAUSTED
    "CANCELLED": set(),
    "PENDING_RETRIED": {"start", "fail", "cancel"},
}


async def job_in(stubs, state: str) -> Job:
    max_attempts, path = STATES[state]
    job = await create(stubs, max_attempts=max_attempts)
    for action in path:
        job = await ACTIONS[action](stubs, job.name, "")
    return await get(stubs, job.name)


# ---- CreateJob -----------------------------------------------------------------------------------


async def test_create_job(stubs):
    ms = await make_ms(stubs, "/data/ms/2025-02-01T10:00:00.ms")
    params = struct_pb2.Struct()
    params.update({"niter": 10000, "weighting": "briggs", "robust": -0.5})
    job = await create(
        stubs,
        Job.TYPE_IMAGE,
        measurement_set=ms.name,
        parameters=params,
        max_attempts=5,
        state=SUCCEEDED,
        attempt=7,
        error_message="ignored",
    )  # output-only fields are ignored
    assert re.fullmatch(r"jobs/job-[0-9a-f]{32}", job.name)
    assert job.state == PENDING and job.attempt == 0 and job.max_attempts == 5 and not job.error_message
    assert job.measurement_set == ms.name and job.ms_path == ms.path
    assert dict(job.parameters) == {"niter": 10000, "weighting": "briggs", "robust": -0.5}
    assert job.HasField("create_time") and job.create_time == job.update_time
    assert not job.HasField("start_time") and not job.HasField("end_time")
    [created] = job.transitions
    assert (created.from_state, created.to_state) == (S.STATE_UNSPECIFIED, PENDING)
    assert created.sequence > 0 and created.time == job.create_time
    assert await get(stubs, job.name) == job

    other = await create(stubs, Job.TYPE_IMAGE)
    assert other.name != job.name and other.max_attempts == 3  # default
    assert other.transitions[0].sequence > created.sequence

    named = await create(stubs, Job.TYPE_CONVERT, job_id="convert-2025-02-01", ms_path="/data/ms/new.ms")
    assert named.name == "jobs/convert-2025-02-01" and named.ms_path == "/data/ms/new.ms"
    assert not named.measurement_set
    err = await expect_error(
        create(stubs, Job.TYPE_IMAGE, job_id="convert-2025-02-01"), grpc.StatusCode.ALREADY_EXISTS, "JOB_ALREADY_EXISTS"
    )
    assert err.metadata["resource"] == "jobs/convert-2025-02-01"
    assert (await get(stubs, "jobs/convert-2025-02-01")).type == Job.TYPE_CONVERT  # untouched

    # A bare MS path works as well as the resource name; an unknown MS is NOT_FOUND.
    by_path = await create(stubs, Job.TYPE_CALIBRATE, measurement_set=ms.path)
    assert by_path.measurement_set == ms.name
    await expect_error(
        create(stubs, Job.TYPE_IMAGE, measurement_set="measurementSets/%2Fdata%2Fnope.ms"),
        grpc.StatusCode.NOT_FOUND,
        "MEASUREMENT_SET_NOT_FOUND",
    )
    await expect_error(
        create(stubs, Job.TYPE_IMAGE, measurement_set="/data/nope.ms"),
        grpc.StatusCode.NOT_FOUND,
        "MEASUREMENT_SET_NOT_FOUND",
    )

    await expect_error(create(stubs, Job.TYPE_UNSPECIFIED), INVALID, "INVALID_ARGUMENT", "job.type")
    await expect_error(create(stubs, 99), INVALID, "INVALID_ARGUMENT", "job.type")
    await expect_error(create(stubs, Job.TYPE_IMAGE, max_attempts=11), INVALID, "INVALID_ARGUMENT", "job.max_attempts")
    for bad_id in ("Upper", "9starts-with-digit", "under_score", "x" * 64):
        await expect_error(create(stubs, Job.TYPE_IMAGE, job_id=bad_id), INVALID, "INVALID_ARGUMENT", "job_id")
    await expect_error(
        create(stubs, Job.TYPE_IMAGE, measurement_set="relative/path.ms"),
        INVALID,
        "INVALID_ARGUMENT",
        "job.measurement_set",
    )
    await expect_error(stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest()), INVALID, "INVALID_ARGUMENT", "job")
    listed = await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest())
    assert listed.total_size == 4  # the failures stored nothing

    await expect_error(get(stubs, "jobs/missing"), grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    await expect_error(get(stubs, "missing"), INVALID, "INVALID_ARGUMENT", "name")


async def test_create_job_idempotent(stubs):
    request_id = str(uuid.uuid4())
    first = await create(stubs, Job.TYPE_PIPELINE, request_id=request_id)
    again = await create(stubs, Job.TYPE_PIPELINE, request_id=request_id)
    assert again == first  # same generated id, not a second job
    listed = await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest())
    assert [j.name for j in listed.jobs] == [first.name]
    await expect_error(
        create(stubs, Job.TYPE_IMAGE, request_id=request_id), grpc.StatusCode.ABORTED, "REQUEST_ID_MISMATCH"
    )


# ---- the state machine ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(STATES))
async def test_every_action_from_every_state(stubs, state):
    for action, call in ACTIONS.items():
        job = await job_in(stubs, state)
        before = list(job.transitions)
        if action in LEGAL[state]:
            after = await call(stubs, job.name, "")
            assert after.state == TARGET[action], (state, action)
            assert list(after.transitions[: len(before)]) == before
            [new] = after.transitions[len(before) :]
            assert (new.from_state, new.to_state) == (job.state, TARGET[action]), (state, action)
            assert new.sequence > before[-1].sequence
            assert micros(new.time) >= micros(before[-1].time)
            assert new.time == after.update_time and new.stage == after.stage
            assert await get(stubs, job.name) == after
            check_effects(action, job, after, new)
        else:
            reason = (
                "RETRIES_EXHAUSTED" if (state, action) == ("FAILED_EXHAUSTED", "retry") else ("INVALID_JOB_TRANSITION")
            )
            err = await expect_error(call(stubs, job.name, ""), PRECONDITION, reason)
            assert err.metadata["resource"] == job.name
            if reason == "INVALID_JOB_TRANSITION":
                assert err.metadata["from_state"] == S.Name(job.state).removeprefix("STATE_"), (state, action)
                assert err.metadata["to_state"] == S.Name(TARGET[action]).removeprefix("STATE_"), (state, action)
            assert await get(stubs, job.name) == job, f"{action} from {state} changed the job"


def check_effects(action: str, before: Job, after: Job, transition: jobs_pb2.JobTransition) -> None:
    if action == "start":
        assert after.attempt == before.attempt + 1
        assert after.start_time == transition.time and not after.HasField("end_time")
        assert after.progress_percent == 0.0 and not after.error_message
    elif action == "progress":
        assert after.stage == Job.STAGE_IMAGING and after.progress_percent == 42.5
        assert transition.message == "cleaning" and after.attempt == before.attempt
    elif action == "succeed":
        assert after.stage == Job.STAGE_DONE and after.progress_percent == 100.0
        assert list(after.artifacts) == ["images/42", "/data/images/x.fits"]
        assert after.end_time == transition.time and transition.message == "done"
    elif action == "fail":
        assert after.error_message == "wsclean crashed" == transition.message
        assert after.end_time == transition.time and after.attempt == before.attempt
    elif action == "cancel":
        assert after.end_time == transition.time and transition.message == "operator"
    elif action == "retry":
        assert not after.HasField("end_time") and after.stage == Job.STAGE_UNSPECIFIED
        assert after.attempt == before.attempt  # the attempt counts at StartJob


async def test_full_lifecycle_records_every_transition(stubs):
    job = await create(stubs, Job.TYPE_PIPELINE, max_attempts=2)
    steps = [
        ("start", PENDING, RUNNING),
        ("progress", RUNNING, RUNNING),
        ("fail", RUNNING, FAILED),
        ("retry", FAILED, PENDING),
        ("start", PENDING, RUNNING),
        ("progress", RUNNING, RUNNING),
        ("succeed", RUNNING, SUCCEEDED),
    ]
    for action, _, _ in steps:
        job = await ACTIONS[action](stubs, job.name, "")
    assert job.attempt == 2 and job.state == SUCCEEDED
    got = [(t.from_state, t.to_state) for t in job.transitions]
    assert got == [(S.STATE_UNSPECIFIED, PENDING)] + [(f, t) for _, f, t in steps]
    sequences = [t.sequence for t in job.transitions]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    times = [micros(t.time) for t in job.transitions]
    assert times == sorted(times)


async def test_retry_until_exhausted(stubs):
    job = await create(stubs, Job.TYPE_CALIBRATE, max_attempts=3)
    # A failure before any start uses no attempt.
    job = await ACTIONS["fail"](stubs, job.name, "")
    job = await ACTIONS["retry"](stubs, job.name, "")
    assert job.state == PENDING and job.attempt == 0
    for attempt in (1, 2, 3):
        job = await ACTIONS["start"](stubs, job.name, "")
        assert job.attempt == attempt
        job = await ACTIONS["fail"](stubs, job.name, "")
        assert job.state == FAILED
        if attempt < 3:
            job = await ACTIONS["retry"](stubs, job.name, "")
            assert job.state == PENDING
    err = await expect_error(ACTIONS["retry"](stubs, job.name, ""), PRECONDITION, "RETRIES_EXHAUSTED")
    assert err.metadata["resource"] == job.name
    final = await get(stubs, job.name)
    assert final.state == FAILED and final.attempt == 3 and final == await get(stubs, job.name)
    assert len(final.transitions) == 1 + 2 + 3 * 2 + 2


async def test_idempotent_transitions(stubs):
    job = await create(stubs, Job.TYPE_IMAGE)
    rid = str(uuid.uuid4())
    started = await ACTIONS["start"](stubs, job.name, rid)
    again = await ACTIONS["start"](stubs, job.name, rid)  # a retry: no second attempt, no error
    assert again.state == RUNNING and again.attempt == 1 and len(again.transitions) == 2
    assert again == started

    fail_rid = str(uuid.uuid4())
    failed = await ACTIONS["fail"](stubs, job.name, fail_rid)
    # Retrying the same FailJob succeeds although FAILED -> FAILED is not a legal transition.
    assert await ACTIONS["fail"](stubs, job.name, fail_rid) == failed
    assert len((await get(stubs, job.name)).transitions) == 3
    # Another method or another body under the same key is refused.
    await expect_error(ACTIONS["retry"](stubs, job.name, fail_rid), grpc.StatusCode.ABORTED, "REQUEST_ID_MISMATCH")
    await expect_error(
        stubs.jobs.FailJob(jobs_pb2.FailJobRequest(name=job.name, error_message="other", request_id=fail_rid)),
        grpc.StatusCode.ABORTED,
        "REQUEST_ID_MISMATCH",
    )
    # A new key is a new request, judged on the job's state.
    await expect_error(ACTIONS["fail"](stubs, job.name, str(uuid.uuid4())), PRECONDITION, "INVALID_JOB_TRANSITION")
    await expect_error(ACTIONS["start"](stubs, job.name, "bad key!"), INVALID, "INVALID_ARGUMENT", "request_id")
    assert len((await get(stubs, job.name)).transitions) == 3


async def test_transition_argument_errors(stubs):
    job = await job_in(stubs, "RUNNING")
    await expect_error(
        stubs.jobs.ReportJobProgress(jobs_pb2.ReportJobProgressRequest(name=job.name, progress_percent=100.5)),
        INVALID,
        "INVALID_ARGUMENT",
        "progress_percent",
    )
    await expect_error(
        stubs.jobs.ReportJobProgress(jobs_pb2.ReportJobProgressRequest(name=job.name, stage=99)),
        INVALID,
        "INVALID_ARGUMENT",
        "stage",
    )
    await expect_error(
        stubs.jobs.FailJob(jobs_pb2.FailJobRequest(name=job.name)), INVALID, "INVALID_ARGUMENT", "error_message"
    )
    for i, bad in enumerate(["", "not a name or path", "images/abc", "relative/out.fits", "/x\n.fits", "jobs/A"]):
        await expect_error(
            stubs.jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=job.name, artifacts=["images/1"] * i + [bad])),
            INVALID,
            "INVALID_ARGUMENT",
            f"artifacts[{i}]",
        )
    assert await get(stubs, job.name) == job
    for action in ACTIONS.values():
        await expect_error(action(stubs, "jobs/nope", ""), grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
        await expect_error(action(stubs, "nope", ""), INVALID, "INVALID_ARGUMENT", "name")


# ---- logs ----------------------------------------------------------------------------------------


async def test_job_logs_append_and_page(stubs):
    job = await job_in(stubs, "RUNNING")
    lines = [f"line {i}: {'x' * (i % 50)}" for i in range(1, 251)]
    total = 0
    for chunk in (lines[:100], lines[100:101], lines[101:]):
        resp = await stubs.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=job.name, lines=chunk))
        total += len(chunk)
        assert resp.log_line_count == total
    rid = str(uuid.uuid4())
    assert (
        await stubs.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=job.name, lines=["retried"], request_id=rid))
    ).log_line_count == 251
    assert (
        await stubs.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=job.name, lines=["retried"], request_id=rid))
    ).log_line_count == 251  # not appended twice
    lines.append("retried")
    assert (await get(stubs, job.name)).log_line_count == 251

    entries = []
    token = ""
    pages = 0
    while True:
        resp = await stubs.jobs.ListJobLogEntries(
            jobs_pb2.ListJobLogEntriesRequest(parent=job.name, page_size=100, page_token=token)
        )
        assert resp.total_size == 251 and len(resp.entries) <= 100
        entries.extend(resp.entries)
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    assert pages == 3
    assert [e.line_number for e in entries] == list(range(1, 252))
    assert [e.text for e in entries] == lines
    assert all(e.HasField("time") for e in entries)
    default = await stubs.jobs.ListJobLogEntries(jobs_pb2.ListJobLogEntriesRequest(parent=job.name))
    assert len(default.entries) == 100 and default.next_page_token  # default page size 100

    # Logs may be appended in any state, including final ones.
    done = await ACTIONS["succeed"](stubs, job.name, "")
    await stubs.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=done.name, lines=["after the end"]))
    assert (await get(stubs, job.name)).log_line_count == 252

    await expect_error(
        stubs.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=job.name)), INVALID, "INVALID_ARGUMENT", "lines"
    )
    await expect_error(
        stubs.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=job.name, lines=["ok", "x" * 4097])),
        INVALID,
        "INVALID_ARGUMENT",
        "lines[1]",
    )
    await expect_error(
        stubs.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=job.name, lines=["x"] * 1001)),
        INVALID,
        "INVALID_ARGUMENT",
        "lines",
    )
    assert (await get(stubs, job.name)).log_line_count == 252
    await expect_error(
        stubs.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name="jobs/nope", lines=["x"])),
        grpc.StatusCode.NOT_FOUND,
        "JOB_NOT_FOUND",
    )
    await expect_error(
        stubs.jobs.ListJobLogEntries(jobs_pb2.ListJobLogEntriesRequest(parent="jobs/nope")),
        grpc.StatusCode.NOT_FOUND,
        "JOB_NOT_FOUND",
    )
    other = await create(stubs)
    await expect_error(
        stubs.jobs.ListJobLogEntries(
            jobs_pb2.ListJobLogEntriesRequest(parent=other.name, page_token=default.next_page_token)
        ),
        INVALID,
        "INVALID_PAGE_TOKEN",
        "page_token",
    )


# ---- ListJobs ------------------------------------------------------------------------------------


async def list_jobs(stubs, page_size: int = 4, **kwargs: Any) -> list[Job]:
    out: list[Job] = []
    token = ""
    while True:
        resp = await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=page_size, page_token=token, **kwargs))
        out.extend(resp.jobs)
        token = resp.next_page_token
        if not token:
            return out


async def test_list_jobs_filters(stubs):
    ms_a = await make_ms(stubs, "/data/ms/a.ms")
    ms_b = await make_ms(stubs, "/data/ms/b.ms")
    plan = [  # (type, ms, state)
        (Job.TYPE_IMAGE, ms_a, "PENDING"),
        (Job.TYPE_IMAGE, ms_a, "RUNNING"),
        (Job.TYPE_IMAGE, ms_b, "SUCCEEDED"),
        (Job.TYPE_CALIBRATE, ms_a, "RUNNING"),
        (Job.TYPE_CALIBRATE, ms_b, "FAILED"),
        (Job.TYPE_CONVERT, None, "PENDING"),
        (Job.TYPE_CONVERT, None, "CANCELLED"),
        (Job.TYPE_PHOTOMETRY, ms_b, "RUNNING"),
        (Job.TYPE_IMAGE, ms_b, "PENDING"),
    ]
    jobs: list[tuple[Job, str]] = []
    for type_, ms, state in plan:
        job = await create(stubs, type_, measurement_set=ms.name if ms else "")
        for action in STATES[state][1]:
            job = await ACTIONS[action](stubs, job.name, "")
        jobs.append((job, state))

    everything = await list_jobs(stubs)
    assert {j.name for j in everything} == {j.name for j, _ in jobs}
    assert len(everything) == len(plan)
    keys = [(micros(j.create_time), j.name) for j in everything]
    assert keys == sorted(keys, reverse=True)  # newest first
    assert not any(j.transitions for j in everything)  # ListJobs leaves transitions to GetJob

    def names(predicate: Callable[[Job, str], bool]) -> set[str]:
        return {j.name for j, st in jobs if predicate(j, st)}

    cases = [
        ("state = RUNNING", lambda j, st: st == "RUNNING"),
        ("state = STATE_PENDING", lambda j, st: st == "PENDING"),
        ("state != PENDING", lambda j, st: st != "PENDING"),
        ("type = IMAGE", lambda j, st: j.type == Job.TYPE_IMAGE),
        ("type = CALIBRATE AND state = FAILED", lambda j, st: j.type == Job.TYPE_CALIBRATE and st == "FAILED"),
        (f'measurement_set = "{ms_a.name}"', lambda j, st: j.measurement_set == ms_a.name),
        ('measurement_set = "/data/ms/b.ms"', lambda j, st: j.measurement_set == ms_b.name),
        (
            f'measurement_set = "{ms_b.name}" AND type = IMAGE AND state = PENDING',
            lambda j, st: j.measurement_set == ms_b.name and j.type == Job.TYPE_IMAGE and st == "PENDING",
        ),
        ("attempt >= 1", lambda j, st: j.attempt >= 1),
        ("stage = DONE", lambda j, st: st == "SUCCEEDED"),
    ]
    for filter_, predicate in cases:
        got = await list_jobs(stubs, filter=filter_)
        assert {j.name for j in got} == names(predicate), filter_
        assert len(got) == len({j.name for j in got})
        total = (await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(filter=filter_))).total_size
        assert total == len(names(predicate)), filter_

    oldest_first = await list_jobs(stubs, order_by="create_time")
    assert [j.name for j in oldest_first] == [j.name for j in reversed(everything)]
    await expect_error(
        stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(filter="state = SLEEPING")), INVALID, "INVALID_FILTER", "filter"
    )
    await expect_error(
        stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(filter='measurement_set > "/a"')),
        INVALID,
        "INVALID_FILTER",
        "filter",
    )
    await expect_error(
        stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(order_by="state")), INVALID, "INVALID_ORDER_BY", "order_by"
    )


# ---- WatchJob / WatchJobs ------------------------------------------------------------------------


async def read(call: Any) -> JobEvent:
    """The next job event, skipping WatchJobs' position-only heartbeats."""
    while True:
        msg = await asyncio.wait_for(call.read(), READ_TIMEOUT)
        assert msg is not grpc.aio.EOF, "stream ended early"
        if msg.type != JobEvent.TYPE_HEARTBEAT:
            return msg  # type: ignore[no-any-return]


async def test_watch_jobs_starts_with_a_resumable_heartbeat(stubs: Any) -> None:
    created = await stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)))
    position = created.transitions[-1].sequence
    call = stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest())
    first = await asyncio.wait_for(call.read(), READ_TIMEOUT)
    assert first.type == JobEvent.TYPE_HEARTBEAT
    assert first.sequence == position and not first.HasField("job")
    # A change made before the client reads anything more is not lost when it resumes from the heartbeat.
    call.cancel()
    started = await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=created.name))
    resumed = stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(after_sequence=first.sequence))
    event = await read(resumed)
    assert event.sequence == started.transitions[-1].sequence
    assert event.job.state == jobs_pb2.Job.STATE_RUNNING
    resumed.cancel()


async def read_to_end(call: Any) -> list[JobEvent]:
    events = []
    while True:
        msg = await asyncio.wait_for(call.read(), READ_TIMEOUT)
        if msg is grpc.aio.EOF:
            break
        events.append(msg)
    assert await call.code() == grpc.StatusCode.OK
    return events


def as_events(job: Job, after: int) -> list[tuple[int, int, int, int]]:
    """(sequence, type, from, to) of a job's recorded transitions after `after`, from GetJob."""
    out = []
    for t in job.transitions:
        if t.sequence > after:
            kind = (
                JobEvent.TYPE_CREATED
                if t.from_state == S.STATE_UNSPECIFIED
                else (JobEvent.TYPE_PROGRESS if t.from_state == t.to_state == RUNNING else JobEvent.TYPE_STATE_CHANGED)
            )
            out.append((t.sequence, kind, t.from_state, t.to_state))
    return out


def summary(events: list[JobEvent]) -> list[tuple[int, int, int, int]]:
    return [(e.sequence, e.type, e.transition.from_state, e.transition.to_state) for e in events]


async def test_watch_job_snapshot_then_every_change_then_end(stubs):
    job = await create(stubs, Job.TYPE_IMAGE, max_attempts=2)
    job = await ACTIONS["start"](stubs, job.name, "")
    call = stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name))
    snapshot = await read(call)
    assert snapshot.type == JobEvent.TYPE_SNAPSHOT
    assert snapshot.job.state == RUNNING and snapshot.job.name == job.name and snapshot.job.attempt == 1
    assert snapshot.sequence == job.transitions[-1].sequence
    assert not snapshot.HasField("transition") and not snapshot.job.transitions

    rid = str(uuid.uuid4())
    await ACTIONS["progress"](stubs, job.name, rid)
    await ACTIONS["progress"](stubs, job.name, rid)  # an idempotent retry publishes nothing
    await ACTIONS["fail"](stubs, job.name, "")  # attempts remain: not the end
    await ACTIONS["retry"](stubs, job.name, "")
    await AppendLog(stubs, job.name)  # logs are not job events
    await ACTIONS["start"](stubs, job.name, "")
    await ACTIONS["succeed"](stubs, job.name, "")
    events = await read_to_end(call)  # ends by itself after SUCCEEDED

    final = await get(stubs, job.name)
    assert summary(events) == as_events(final, snapshot.sequence)
    assert [e.job.state for e in events] == [RUNNING, FAILED, PENDING, RUNNING, SUCCEEDED]
    assert events[0].type == JobEvent.TYPE_PROGRESS and events[0].job.progress_percent == 42.5
    assert events[-1].job.artifacts == final.artifacts and not events[-1].job.transitions
    for e in events:
        assert e.sequence == e.transition.sequence and e.job.update_time == e.transition.time


async def AppendLog(stubs, name: str) -> None:
    await stubs.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=name, lines=["a log line"]))


async def test_watch_job_ends_on_final_states(stubs):
    # Already final: the snapshot, then the end.
    for state in ("SUCCEEDED", "CANCELLED", "FAILED_EXHAUSTED"):
        job = await job_in(stubs, state)
        events = await read_to_end(stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name)))
        assert [e.type for e in events] == [JobEvent.TYPE_SNAPSHOT], state
        assert events[0].job.state == job.state and events[0].sequence == job.transitions[-1].sequence

    # Becoming final: FAILED ends the stream only when no attempt is left.
    job = await create(stubs, max_attempts=1)
    call = stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name))
    assert (await read(call)).job.state == PENDING
    await ACTIONS["start"](stubs, job.name, "")
    await ACTIONS["fail"](stubs, job.name, "")
    events = await read_to_end(call)
    assert [e.job.state for e in events] == [RUNNING, FAILED]

    job = await create(stubs)
    call = stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name))
    await read(call)
    await ACTIONS["cancel"](stubs, job.name, "")
    assert [e.job.state for e in await read_to_end(call)] == [CANCELLED]

    await expect_error(
        read_to_end(stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name="jobs/nope"))),
        grpc.StatusCode.NOT_FOUND,
        "JOB_NOT_FOUND",
    )
    await expect_error(
        read_to_end(stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name="jobs/nope", after_sequence=3))),
        grpc.StatusCode.NOT_FOUND,
        "JOB_NOT_FOUND",
    )
    await expect_error(
        read_to_end(stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name, after_sequence=-1))),
        INVALID,
        "INVALID_ARGUMENT",
        "after_sequence",
    )


async def test_watch_job_after_sequence_replays(stubs):
    job = await create(stubs)
    noise = await create(stubs)  # another job's events are not replayed
    created_seq = job.transitions[0].sequence
    for action in ("start", "progress"):
        await ACTIONS[action](stubs, job.name, "")
        await ACTIONS[action](stubs, noise.name, "")

    call = stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name, after_sequence=created_seq))
    replayed = [await read(call), await read(call)]  # no snapshot: the recorded events after created_seq
    assert [e.type for e in replayed] == [JobEvent.TYPE_STATE_CHANGED, JobEvent.TYPE_PROGRESS]
    # ... then live events, without a gap or a repeat, until the final one.
    await ACTIONS["progress"](stubs, job.name, "")
    await ACTIONS["progress"](stubs, noise.name, "")
    await ACTIONS["succeed"](stubs, job.name, "")
    events = replayed + await read_to_end(call)
    assert summary(events) == as_events(await get(stubs, job.name), created_seq)
    assert len(events) == 4

    # Resuming after the last event a client saw repeats nothing, and a finished job's replay ends.
    middle = events[1].sequence
    resumed = await read_to_end(stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name, after_sequence=middle)))
    assert summary(resumed) == summary(events[2:])
    assert created_seq == 1
    everything = await read_to_end(stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name, after_sequence=1)))
    assert summary(everything) == as_events(await get(stubs, job.name), 1) == summary(events)
    # Resuming after the final event itself: nothing is left to send, so the stream ends at once
    # (instead of waiting forever for a change that a finished job can never make).
    after_end = await read_to_end(
        stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name, after_sequence=events[-1].sequence))
    )
    assert after_end == []


async def test_watch_jobs_filter_and_order(stubs):
    ms = await make_ms(stubs, "/data/ms/watched.ms")
    anchor = await create(stubs, Job.TYPE_CONVERT)
    start_seq = anchor.transitions[-1].sequence
    by_type = stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(filter="type = IMAGE", after_sequence=start_seq))
    by_state = stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(filter="state = RUNNING", after_sequence=start_seq))
    by_ms = stubs.jobs.WatchJobs(
        jobs_pb2.WatchJobsRequest(filter=f'measurement_set = "{ms.name}"', after_sequence=start_seq)
    )
    everything = stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(after_sequence=start_seq))

    # Interleaved activity on jobs of several types, some of it before the streams are read.
    image_a = await create(stubs, Job.TYPE_IMAGE, measurement_set=ms.name)
    convert = await create(stubs, Job.TYPE_CONVERT)
    image_b = await create(stubs, Job.TYPE_IMAGE)
    for action in ("start", "progress"):
        for job in (image_a, convert, image_b):
            await ACTIONS[action](stubs, job.name, "")
    await ACTIONS["succeed"](stubs, image_a.name, "")
    await ACTIONS["fail"](stubs, convert.name, "")
    await ACTIONS["cancel"](stubs, image_b.name, "")
    await ACTIONS["retry"](stubs, convert.name, "")

    jobs = {j.name: await get(stubs, j.name) for j in (image_a, convert, image_b)}
    all_events = sorted(e for j in jobs.values() for e in as_events(j, start_seq))
    state_after = {}  # sequence -> (job name, state after the change)
    for j in jobs.values():
        for t in j.transitions:
            state_after[t.sequence] = (j.name, t.to_state)
    expect = {
        "type": [e for e in all_events if jobs[state_after[e[0]][0]].type == Job.TYPE_IMAGE],
        "state": [e for e in all_events if state_after[e[0]][1] == RUNNING],
        "ms": [e for e in all_events if jobs[state_after[e[0]][0]].measurement_set == ms.name],
        "all": all_events,
    }
    assert 0 < len(expect["ms"]) < len(expect["type"]) < len(all_events)
    assert 0 < len(expect["state"]) < len(all_events)
    streams = {"type": by_type, "state": by_state, "ms": by_ms, "all": everything}
    for key, call in streams.items():
        got = [await read(call) for _ in expect[key]]
        assert summary(got) == expect[key], key
        for e in got:
            assert e.job.name == state_after[e.sequence][0] and e.job.state == state_after[e.sequence][1]

    # Nothing else was delivered: the next event each stream sees is a fresh marker that matches all
    # the filters, after a change that matches none of them.
    await ACTIONS["cancel"](stubs, convert.name, "")
    marker = await create(stubs, Job.TYPE_IMAGE, measurement_set=ms.name)
    marker = await ACTIONS["start"](stubs, marker.name, "")
    for key, call in streams.items():
        event = await read(call)
        if key == "all":
            assert event.job.name == convert.name and event.job.state == CANCELLED
            event = await read(call)
        if key in ("type", "ms", "all"):
            assert event.job.name == marker.name and event.type == JobEvent.TYPE_CREATED, key
            event = await read(call)
        assert event.job.name == marker.name and event.job.state == RUNNING, key
        assert event.sequence == marker.transitions[-1].sequence
        call.cancel()

    await expect_error(
        read_to_end(stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(filter="attempt = 1"))),
        INVALID,
        "INVALID_FILTER",
        "filter",
    )


async def test_watch_jobs_live_without_replay(stubs):
    call = stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(filter="type = PHOTOMETRY"))
    received: asyncio.Queue[JobEvent] = asyncio.Queue()

    async def pump() -> None:
        async for event in call:
            if event.type != JobEvent.TYPE_HEARTBEAT:
                received.put_nowait(event)

    pumping = asyncio.create_task(pump())
    try:
        # Poke until the subscription is certainly live.
        probes = []
        first = None
        for _ in range(50):
            probes.append(await create(stubs, Job.TYPE_PHOTOMETRY))
            try:
                first = await asyncio.wait_for(received.get(), 0.2)
                break
            except TimeoutError:
                continue
        assert first is not None and first.type == JobEvent.TYPE_CREATED
        for job in probes:
            await create(stubs, Job.TYPE_IMAGE)
            await ACTIONS["start"](stubs, job.name, "")
        later = [await asyncio.wait_for(received.get(), READ_TIMEOUT) for _ in probes]
        seen = [first, *later]
        sequences = [e.sequence for e in seen]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        assert [e.job.name for e in later] == [p.name for p in probes]
        assert all(e.job.state == RUNNING for e in later)
        assert all(e.job.type == Job.TYPE_PHOTOMETRY for e in seen)
        assert received.empty()
    finally:
        call.cancel()
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)


async def test_many_concurrent_watchers(server_factory):
    # 200 watchers from one address: past the default of 100 streams per caller.
    server = await server_factory(max_watch_streams_per_caller=1000)
    channel = grpc.aio.insecure_channel(server.target)
    stubs = make_stubs(channel)
    job = await create(stubs, Job.TYPE_PIPELINE)
    channels = [grpc.aio.insecure_channel(server.target) for _ in range(4)]
    try:
        job_stubs = [jobs_pb2_grpc.JobServiceStub(channel) for channel in channels]
        request = jobs_pb2.WatchJobRequest(name=job.name)
        watchers = [job_stubs[i % len(job_stubs)].WatchJob(request) for i in range(200)]
        snapshots = await asyncio.gather(*(read(w) for w in watchers))
        assert all(s.type == JobEvent.TYPE_SNAPSHOT and s.job.state == PENDING for s in snapshots)
        assert server.server.bus.subscriber_count >= 200

        started = await ACTIONS["start"](stubs, job.name, "")
        firsts = await asyncio.gather(*(read(w) for w in watchers))
        assert {(e.sequence, e.type, e.job.state) for e in firsts} == {
            (started.transitions[-1].sequence, JobEvent.TYPE_STATE_CHANGED, RUNNING)
        }

        done = await ACTIONS["succeed"](stubs, job.name, "")
        rests = await asyncio.gather(*(read_to_end(w) for w in watchers))
        assert all(summary(r) == as_events(done, started.transitions[-1].sequence) for r in rests)
        assert all(len(r) == 1 for r in rests)

        # Every finished stream let go of its subscription.
        for _ in range(500):  # up to 5 s
            if not server.server.bus.subscriber_count:
                break
            await asyncio.sleep(0.01)
        assert server.server.bus.subscriber_count == 0
    finally:
        for each in [*channels, channel]:
            await each.close()


async def test_watch_jobs_replay_overlapping_live_events(server, stubs):
    """Events committed while a resumed stream is still replaying arrive once each, in order.

    The client reads slowly (a small flow-control window, no BDP growth, big events), so the
    server's replay (batches of 1000 from storage) is still running when new events are committed:
    those are both in a later replay batch and in the stream's live queue, and must be sent once.
    """
    jobs = [await ACTIONS["start"](stubs, (await create(stubs, Job.TYPE_PIPELINE)).name, "") for _ in range(11)]
    resume_from = jobs[-1].transitions[-1].sequence
    note = "n" * 4000  # makes every event ~4 KB

    async def progress(job: Job, n: int) -> None:
        for i in range(n):
            await stubs.jobs.ReportJobProgress(
                jobs_pb2.ReportJobProgressRequest(name=job.name, progress_percent=i % 100, message=note)
            )

    await asyncio.gather(*(progress(job, 100) for job in jobs))
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 8192)]
    async with grpc.aio.insecure_channel(server.target, options=options) as slow:
        call = jobs_pb2_grpc.JobServiceStub(slow).WatchJobs(jobs_pb2.WatchJobsRequest(after_sequence=resume_from))
        first = await read(call)  # the stream is subscribed and replaying
        await progress(jobs[0], 30)
        marker = await create(stubs, Job.TYPE_IMAGE)
        events = [first]
        while events[-1].job.name != marker.name:
            events.append(await read(call))
        # Whatever the replay has sent, the live queue still holds the same events: none may follow.
        closing = await create(stubs, Job.TYPE_IMAGE)
        after_marker = await read(call)
        assert after_marker.job.name == closing.name, "an event was sent twice"
        call.cancel()
    sequences = [e.sequence for e in events]
    assert len(sequences) == len(set(sequences)), "an event was sent twice"
    assert sequences == sorted(sequences)
    recorded = [await get(stubs, job.name) for job in jobs]
    expected = sorted(t.sequence for job in recorded for t in job.transitions if t.sequence > resume_from)
    assert sequences == [*expected, marker.transitions[-1].sequence]
    assert len(expected) == 1130


async def test_deleting_its_measurement_set_changes_the_job(stubs):
    """The job outlives its MS and loses the reference; that is a change, so update_time moves."""
    ms = await make_ms(stubs, "/data/ms/job-ms-delete.ms")
    job = await create(stubs, measurement_set=ms.name)
    unrelated = await create(stubs)
    await stubs.ms.DeleteMeasurementSet(measurement_sets_pb2.DeleteMeasurementSetRequest(name=ms.name))
    after = await get(stubs, job.name)
    assert not after.measurement_set and after.ms_path == ms.path  # the file path stays
    assert micros(after.update_time) > micros(job.update_time)
    assert after.state == job.state and list(after.transitions) == list(job.transitions)
    assert await get(stubs, unrelated.name) == unrelated


async def test_a_watch_resumed_past_the_newest_event_is_out_of_range(stubs):
    """A position past the end of the event log (a client's from before the database was restored,
    say): WatchJob used to send nothing and never end, even for a CANCELLED job; WatchJobs echoed
    the position in its heartbeat and then dropped every new event."""
    job = await create(stubs)
    await ACTIONS["cancel"](stubs, job.name, "")
    newest = (await get(stubs, job.name)).transitions[-1].sequence
    for call in (
        stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name, after_sequence=newest + 1000)),
        stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(after_sequence=newest + 1000)),
    ):
        err = await expect_error(read(call), grpc.StatusCode.OUT_OF_RANGE, "SEQUENCE_OUT_OF_RANGE")
        assert int(err.metadata["last_sequence"]) >= newest
    # The newest position itself is one the server has: resuming there is fine.
    at_end = stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(after_sequence=newest))
    heartbeat = await asyncio.wait_for(at_end.read(), READ_TIMEOUT)
    assert heartbeat.type == JobEvent.TYPE_HEARTBEAT and heartbeat.sequence >= newest
    at_end.cancel()

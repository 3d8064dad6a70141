"""Job claims, leases and heartbeats (issue 21), on both engines.

* ClaimJob hands each job out once, whatever the number of claimers, channels and servers sharing
  the database; in priority order, then age; filtered by type, measurement set and priority.
* A write presenting a lease token that is not the job's lease is refused (LEASE_LOST) and changes
  nothing; HeartbeatJob and ReportJobProgress renew the lease.
* An expired lease fails the attempt (LEASE_EXPIRED) and returns the job to PENDING while attempts
  remain, once even with two servers sweeping; the old holder's heartbeat and succeed are refused.
* A long-poll claim wakes for a job created through another channel, and ends with an empty
  reply at its wait or its deadline.
* RetryJob's `ignore_attempt_limit`, UpdateJob's priority, and the requests' argument checks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import grpc
import pytest
from dsa110.contimg.v1 import jobs_pb2
from google.protobuf import duration_pb2, field_mask_pb2

from conftest import RunningServer, ServerFactory, Stubs, make_stubs
from helpers_jobs import expect_error, make_ms

ENGINES = ("sqlite", "postgres")

Job = jobs_pb2.Job
S = Job.State
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def seconds(s: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(s * 1e9))
    return d


def micros(ts: Any) -> int:
    return int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1000


async def create(stubs: Stubs, type_: int = Job.TYPE_IMAGE, **fields: Any) -> Job:
    return await stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=Job(type=type_, **fields)))


async def claim(stubs: Stubs, worker: str = "w1", **fields: Any) -> jobs_pb2.ClaimJobResponse:
    return await stubs.jobs.ClaimJob(jobs_pb2.ClaimJobRequest(worker=worker, **fields))


async def get(stubs: Stubs, name: str) -> Job:
    return await stubs.jobs.GetJob(jobs_pb2.GetJobRequest(name=name))


def fast_sweep(*servers: RunningServer, every_s: float = 0.05) -> None:
    for s in servers:
        s.server.leases.every_s = every_s


async def second_server(server_factory: ServerFactory, first: RunningServer) -> RunningServer:
    """Another server process on the first one's database (PostgreSQL: the test's shared one)."""
    if first.config.postgres:
        return await server_factory()
    return await server_factory(database=first.config.database)


async def until(predicate: Any, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


# ---- claims ------------------------------------------------------------------------------------


async def test_every_job_is_claimed_once_by_many_claimers_through_two_servers(server_factory: ServerFactory) -> None:
    a = await server_factory()
    b = await second_server(server_factory, a)
    jobs = 240
    channels = [grpc.aio.insecure_channel(s.target) for s in (a, b, a, b)]
    try:
        stubs = [make_stubs(ch) for ch in channels]
        created = [await create(stubs[i % 4], priority=i % 3) for i in range(jobs)]
        claimed: list[str] = []

        async def claimer(k: int) -> None:
            st = stubs[k % len(stubs)]
            while True:
                reply = await claim(st, worker=f"w{k}", wait=seconds(0.2))
                if not reply.HasField("job"):
                    return
                assert reply.lease_token and reply.job.state == S.STATE_RUNNING
                assert reply.job.lease_holder == f"w{k}" and reply.job.attempt == 1
                claimed.append(reply.job.name)
                done = await st.jobs.SucceedJob(
                    jobs_pb2.SucceedJobRequest(name=reply.job.name, lease_token=reply.lease_token)
                )
                assert done.state == S.STATE_SUCCEEDED and not done.lease_holder

        await asyncio.gather(*(claimer(k) for k in range(20)))
        counts = Counter(claimed)
        assert not [n for n, c in counts.items() if c > 1], "a job was claimed twice"
        assert set(counts) == {j.name for j in created}, "a job was never claimed"
        for j in created[:20]:
            job = await get(stubs[0], j.name)
            assert job.state == S.STATE_SUCCEEDED and job.attempt == 1
            assert [t.to_state for t in job.transitions] == [S.STATE_PENDING, S.STATE_RUNNING, S.STATE_SUCCEEDED]
            assert job.transitions[1].actor == "anonymous"
    finally:
        for ch in channels:
            await ch.close()


async def test_claim_order_is_priority_then_age_and_filters_apply(stubs: Stubs) -> None:
    ms = await make_ms(stubs)
    low = await create(stubs, priority=-5)
    old = await create(stubs)
    new = await create(stubs)
    high = await create(stubs, priority=10)
    convert = await create(stubs, Job.TYPE_CONVERT, priority=100)
    of_ms = await create(stubs, measurement_set=ms.name, priority=1)
    assert high.priority == 10 and low.priority == -5

    first = await claim(stubs, types=[Job.TYPE_IMAGE])
    assert first.job.name == high.name
    assert (await claim(stubs, types=[Job.TYPE_IMAGE], min_priority=11)).HasField("job") is False
    assert (await claim(stubs, measurement_set=ms.name)).job.name == of_ms.name
    assert (await claim(stubs, types=[Job.TYPE_IMAGE, Job.TYPE_PHOTOMETRY])).job.name == old.name
    assert (await claim(stubs)).job.name == convert.name
    assert (await claim(stubs, min_priority=0)).job.name == new.name
    assert (await claim(stubs, min_priority=0)).HasField("job") is False
    last = await claim(stubs)
    assert last.job.name == low.name
    empty = await claim(stubs)
    assert not empty.HasField("job") and empty.lease_token == ""


async def test_update_job_changes_priority_and_so_the_claim_order(stubs: Stubs) -> None:
    a = await create(stubs)
    b = await create(stubs)
    updated = await stubs.jobs.UpdateJob(
        jobs_pb2.UpdateJobRequest(
            job=Job(name=b.name, priority=7), update_mask=field_mask_pb2.FieldMask(paths=["priority"])
        )
    )
    assert updated.priority == 7 and updated.state == S.STATE_PENDING
    assert micros(updated.update_time) > micros(b.update_time)
    assert (await get(stubs, b.name)).priority == 7
    assert (await claim(stubs)).job.name == b.name
    assert (await claim(stubs)).job.name == a.name
    await expect_error(
        stubs.jobs.UpdateJob(
            jobs_pb2.UpdateJobRequest(
                job=Job(name=a.name, priority=1), update_mask=field_mask_pb2.FieldMask(paths=["state"])
            )
        ),
        INVALID,
        field="update_mask.paths[0]",
    )
    await expect_error(
        stubs.jobs.UpdateJob(jobs_pb2.UpdateJobRequest(job=Job(name=a.name, priority=1))), INVALID, field="update_mask"
    )
    await expect_error(
        stubs.jobs.UpdateJob(
            jobs_pb2.UpdateJobRequest(
                job=Job(name="jobs/nope", priority=1), update_mask=field_mask_pb2.FieldMask(paths=["*"])
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_update_job_is_an_event_watchers_see_with_its_actor(stubs: Stubs) -> None:
    job = await create(stubs)
    watch = stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name))
    snapshot = await watch.read()
    assert snapshot.type == jobs_pb2.JobEvent.TYPE_SNAPSHOT
    mask = field_mask_pb2.FieldMask(paths=["priority"])
    request = jobs_pb2.UpdateJobRequest(
        job=Job(name=job.name, priority=5), update_mask=mask, request_id=str(uuid.uuid4())
    )
    await stubs.jobs.UpdateJob(request)
    await stubs.jobs.UpdateJob(request)  # the same request again: no second change, no second event
    same = jobs_pb2.UpdateJobRequest(job=Job(name=job.name, priority=5), update_mask=mask)
    unchanged = await stubs.jobs.UpdateJob(same)  # the priority it has: nothing to tell
    await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name))
    updated = await watch.read()
    assert updated.type == jobs_pb2.JobEvent.TYPE_UPDATED
    assert updated.job.priority == 5 and updated.job.state == S.STATE_PENDING
    t = updated.transition
    assert (t.from_state, t.to_state, t.message) == (S.STATE_PENDING, S.STATE_PENDING, "priority 0 -> 5")
    assert t.actor == "anonymous" and t.sequence == updated.sequence
    assert micros(unchanged.update_time) == micros(updated.job.update_time)
    started = await watch.read()  # next comes the start: the repeats made no event
    assert started.type == jobs_pb2.JobEvent.TYPE_STATE_CHANGED and started.transition.to_state == S.STATE_RUNNING
    watch.cancel()
    history = (await get(stubs, job.name)).transitions
    assert [(h.to_state, h.message) for h in history][:2] == [
        (S.STATE_PENDING, ""),
        (S.STATE_PENDING, "priority 0 -> 5"),
    ]


async def test_a_waiting_claim_wakes_when_a_job_is_raised_to_its_priority(
    stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Woken by the UPDATED event: with the claim's re-poll put out of reach, only the event can."""
    from dsa110.contimg.server.servicers import jobs as job_servicer

    monkeypatch.setattr(job_servicer, "CLAIM_REPOLL_S", 3600.0)
    low = await create(stubs, priority=1)
    waiting = asyncio.ensure_future(claim(stubs, worker="urgent", min_priority=5, wait=seconds(60)))
    await asyncio.sleep(0.2)  # the claim has looked once and waits
    assert not waiting.done()
    mask = field_mask_pb2.FieldMask(paths=["priority"])
    await stubs.jobs.UpdateJob(jobs_pb2.UpdateJobRequest(job=Job(name=low.name, priority=9), update_mask=mask))
    reply = await asyncio.wait_for(waiting, 30)
    assert reply.job.name == low.name and reply.job.priority == 9


# ---- leases ------------------------------------------------------------------------------------


async def test_the_token_is_given_once_and_never_shown(stubs: Stubs) -> None:
    job = await create(stubs)
    started = await stubs.jobs.StartJob(
        jobs_pb2.StartJobRequest(name=job.name, worker="host:42", lease_duration=seconds(30))
    )
    assert started.lease_token and started.lease_holder == "host:42"
    assert 29e6 < micros(started.lease_expire_time) - micros(started.update_time) <= 30e6
    again = await get(stubs, job.name)
    assert again.lease_token == "" and again.lease_holder == "host:42"
    listed = await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest())
    assert all(j.lease_token == "" for j in listed.jobs)
    # Events carry the holder, never the token: the replayed start, and a watch's snapshot.
    call = stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(after_sequence=1))
    replayed = await anext(aiter(call))
    call.cancel()
    assert replayed.type == jobs_pb2.JobEvent.TYPE_STATE_CHANGED and replayed.job.name == job.name
    assert replayed.job.lease_holder == "host:42" and replayed.job.lease_token == ""
    call = stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name))
    snapshot = await anext(aiter(call))
    call.cancel()
    assert snapshot.job.lease_holder == "host:42" and snapshot.job.lease_token == ""
    # A retry of a start (same request_id) replays the first result, without the token.
    other = await create(stubs)
    request = jobs_pb2.StartJobRequest(name=other.name, worker="w", request_id=str(uuid.uuid4()))
    first = await stubs.jobs.StartJob(request)
    replayed = await stubs.jobs.StartJob(request)
    assert first.lease_token and replayed.lease_token == ""
    assert replayed.lease_expire_time == first.lease_expire_time and replayed.attempt == 1
    # A start without a worker grants no lease, as before leases existed.
    plain = await create(stubs)
    started = await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=plain.name))
    assert started.lease_token == "" and started.lease_holder == "" and not started.HasField("lease_expire_time")


async def test_a_stale_lease_token_is_refused_and_changes_nothing(stubs: Stubs) -> None:
    await create(stubs)
    reply = await claim(stubs)
    name, token = reply.job.name, reply.lease_token
    before = await get(stubs, name)
    writes = {
        "heartbeat": stubs.jobs.HeartbeatJob(jobs_pb2.HeartbeatJobRequest(name=name, lease_token="stale")),
        "progress": stubs.jobs.ReportJobProgress(
            jobs_pb2.ReportJobProgressRequest(name=name, progress_percent=50, lease_token="stale")
        ),
        "succeed": stubs.jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=name, lease_token="stale")),
        "fail": stubs.jobs.FailJob(jobs_pb2.FailJobRequest(name=name, error_message="x", lease_token="stale")),
    }
    for what, call in writes.items():
        err = await expect_error(call, PRECONDITION, "LEASE_LOST")
        assert err.metadata["lease_holder"] == "w1", what
    assert await get(stubs, name) == before
    # The right token works; without a token the old behaviour holds.
    progressed = await stubs.jobs.ReportJobProgress(
        jobs_pb2.ReportJobProgressRequest(name=name, progress_percent=50, lease_token=token)
    )
    assert progressed.progress_percent == 50
    untokened = await stubs.jobs.ReportJobProgress(jobs_pb2.ReportJobProgressRequest(name=name, progress_percent=60))
    assert untokened.progress_percent == 60 and untokened.lease_holder == "w1"
    done = await stubs.jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=name, lease_token=token))
    assert done.state == S.STATE_SUCCEEDED and done.lease_holder == "" and not done.HasField("lease_expire_time")
    # Finished: the lease is gone, so its token is refused too.
    await expect_error(
        stubs.jobs.HeartbeatJob(jobs_pb2.HeartbeatJobRequest(name=name, lease_token=token)), PRECONDITION, "LEASE_LOST"
    )
    await expect_error(
        stubs.jobs.HeartbeatJob(jobs_pb2.HeartbeatJobRequest(name="jobs/nope", lease_token=token)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_heartbeat_and_progress_extend_the_lease(stubs: Stubs) -> None:
    await create(stubs)
    reply = await claim(stubs, lease_duration=seconds(5))
    name, token = reply.job.name, reply.lease_token
    first = micros(reply.job.lease_expire_time)
    await asyncio.sleep(0.05)
    beat = await stubs.jobs.HeartbeatJob(jobs_pb2.HeartbeatJobRequest(name=name, lease_token=token))
    assert micros(beat.lease_expire_time) > first
    longer = await stubs.jobs.HeartbeatJob(
        jobs_pb2.HeartbeatJobRequest(name=name, lease_token=token, lease_duration=seconds(600))
    )
    assert micros(longer.lease_expire_time) - micros(beat.lease_expire_time) > 590e6
    job = await get(stubs, name)
    assert micros(job.lease_expire_time) == micros(longer.lease_expire_time)
    assert job.update_time == reply.job.update_time, "a heartbeat is not a change of the job"
    await asyncio.sleep(0.05)
    progressed = await stubs.jobs.ReportJobProgress(
        jobs_pb2.ReportJobProgressRequest(name=name, stage=Job.STAGE_IMAGING, lease_token=token)
    )
    # Renewed by its current length (600 s since the heartbeat that set it).
    assert micros(progressed.lease_expire_time) > micros(longer.lease_expire_time)


async def test_an_expired_lease_returns_the_job_and_the_old_worker_is_refused(
    server: RunningServer, stubs: Stubs
) -> None:
    fast_sweep(server)
    job = await create(stubs)
    old = await claim(stubs, worker="dead", lease_duration=seconds(1))

    async def pending() -> bool:
        return (await get(stubs, job.name)).state == S.STATE_PENDING

    await until(pending)
    expired = await get(stubs, job.name)
    assert expired.lease_holder == "" and expired.attempt == 1
    fail, retry = expired.transitions[-2:]
    assert (fail.from_state, fail.to_state) == (S.STATE_RUNNING, S.STATE_FAILED)
    assert fail.message.startswith("LEASE_EXPIRED") and "dead" in fail.message
    assert (retry.from_state, retry.to_state) == (S.STATE_FAILED, S.STATE_PENDING)
    assert fail.actor == retry.actor == "lease-expiry"
    assert expired.error_message.startswith("LEASE_EXPIRED")

    new = await claim(stubs, worker="alive")
    assert new.job.name == job.name and new.job.attempt == 2
    for call in (
        stubs.jobs.HeartbeatJob(jobs_pb2.HeartbeatJobRequest(name=job.name, lease_token=old.lease_token)),
        stubs.jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=job.name, lease_token=old.lease_token)),
    ):
        err = await expect_error(call, PRECONDITION, "LEASE_LOST")
        assert err.metadata["lease_holder"] == "alive"
    done = await stubs.jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=job.name, lease_token=new.lease_token))
    assert done.state == S.STATE_SUCCEEDED


async def test_a_job_out_of_attempts_stays_failed_and_an_override_reruns_it(
    server: RunningServer, stubs: Stubs
) -> None:
    fast_sweep(server)
    job = await create(stubs, max_attempts=1)
    await claim(stubs, lease_duration=seconds(1))

    async def failed() -> bool:
        return (await get(stubs, job.name)).state == S.STATE_FAILED

    await until(failed)
    await asyncio.sleep(0.3)  # more sweeps: nothing more happens
    stays = await get(stubs, job.name)
    assert stays.state == S.STATE_FAILED and stays.transitions[-1].message.startswith("LEASE_EXPIRED")
    assert len(stays.transitions) == 3
    assert not (await claim(stubs)).HasField("job")

    await expect_error(stubs.jobs.RetryJob(jobs_pb2.RetryJobRequest(name=job.name)), PRECONDITION, "RETRIES_EXHAUSTED")
    retried = await stubs.jobs.RetryJob(jobs_pb2.RetryJobRequest(name=job.name, ignore_attempt_limit=True))
    assert retried.state == S.STATE_PENDING
    last = retried.transitions[-1]
    assert "ignore_attempt_limit" in last.message and last.actor == "anonymous"
    again = await claim(stubs)
    assert again.job.name == job.name and again.job.attempt == 2


async def test_two_servers_expire_a_lease_once(server_factory: ServerFactory) -> None:
    a = await server_factory()
    b = await second_server(server_factory, a)
    fast_sweep(a, b, every_s=0.01)
    async with grpc.aio.insecure_channel(a.target) as channel:
        stubs = make_stubs(channel)
        jobs = [await create(stubs) for _ in range(10)]
        for _ in jobs:
            await claim(stubs, lease_duration=seconds(1))

        async def all_pending() -> bool:
            return all([(await get(stubs, j.name)).state == S.STATE_PENDING for j in jobs])

        await until(all_pending)
        await asyncio.sleep(0.2)
        for j in jobs:
            job = await get(stubs, j.name)
            assert [t.to_state for t in job.transitions] == [
                S.STATE_PENDING,
                S.STATE_RUNNING,
                S.STATE_FAILED,
                S.STATE_PENDING,
            ], job.name
    assert a.server.leases.expired + b.server.leases.expired == len(jobs)


# ---- long-poll ---------------------------------------------------------------------------------


async def test_a_waiting_claim_wakes_for_a_job_created_elsewhere(server: RunningServer, stubs: Stubs) -> None:
    waiting = asyncio.ensure_future(claim(stubs, worker="waiter", types=[Job.TYPE_CALIBRATE], wait=seconds(30)))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    async with grpc.aio.insecure_channel(server.target) as other:
        others = make_stubs(other)
        await create(others, Job.TYPE_IMAGE)  # not of the waiter's type
        await asyncio.sleep(0.2)
        assert not waiting.done()
        wanted = await create(others, Job.TYPE_CALIBRATE)
    reply = await asyncio.wait_for(waiting, 10)
    assert reply.job.name == wanted.name and reply.lease_token and reply.job.lease_holder == "waiter"


async def test_a_waiting_claim_wakes_for_a_job_created_through_another_server(server_factory: ServerFactory) -> None:
    a = await server_factory()
    b = await second_server(server_factory, a)
    async with grpc.aio.insecure_channel(a.target) as ca, grpc.aio.insecure_channel(b.target) as cb:
        waiting = asyncio.ensure_future(claim(make_stubs(ca), wait=seconds(30)))
        await asyncio.sleep(0.3)
        wanted = await create(make_stubs(cb))
        reply = await asyncio.wait_for(waiting, 10)
        assert reply.job.name == wanted.name


async def test_a_waiting_claim_ends_empty_at_its_wait_or_deadline(stubs: Stubs) -> None:
    start = time.monotonic()
    reply = await claim(stubs, wait=seconds(0.3))
    assert not reply.HasField("job") and reply.lease_token == ""
    assert time.monotonic() - start >= 0.25
    reply = await stubs.jobs.ClaimJob(jobs_pb2.ClaimJobRequest(worker="w", wait=seconds(60)), timeout=0.5)
    assert not reply.HasField("job")
    # Cancelled by its caller: nothing is claimed afterwards by the abandoned call.
    call = stubs.jobs.ClaimJob(jobs_pb2.ClaimJobRequest(worker="gone", wait=seconds(60)))
    await asyncio.sleep(0.2)
    call.cancel()
    await asyncio.sleep(0.2)
    job = await create(stubs)
    assert (await claim(stubs, worker="here")).job.name == job.name


# ---- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"worker": ""}, "worker"),
        ({"worker": "x" * 257}, "worker"),
        ({"lease_duration": duration_pb2.Duration(seconds=-1)}, "lease_duration"),
        ({"lease_duration": duration_pb2.Duration(nanos=1000)}, "lease_duration"),
        ({"lease_duration": duration_pb2.Duration(seconds=3601)}, "lease_duration"),
        ({"wait": duration_pb2.Duration(seconds=-1)}, "wait"),
        ({"wait": duration_pb2.Duration(seconds=301)}, "wait"),
        ({"types": [99]}, "types[0]"),
        ({"types": [Job.TYPE_IMAGE, 0]}, "types[1]"),
        ({"measurement_set": "images/1"}, "measurement_set"),
    ],
)
async def test_claim_arguments(stubs: Stubs, request_fields: dict[str, Any], field: str) -> None:
    fields = {"worker": "w", **request_fields}
    await expect_error(stubs.jobs.ClaimJob(jobs_pb2.ClaimJobRequest(**fields)), INVALID, field=field)


async def test_lease_arguments_of_the_other_methods(stubs: Stubs) -> None:
    job = await create(stubs)
    err = await expect_error(
        stubs.jobs.ClaimJob(jobs_pb2.ClaimJobRequest(wait=duration_pb2.Duration(seconds=-1))), INVALID
    )
    assert {"worker", "wait"} <= set(err.fields)
    await expect_error(
        stubs.jobs.HeartbeatJob(jobs_pb2.HeartbeatJobRequest(name=job.name)), INVALID, field="lease_token"
    )
    await expect_error(
        stubs.jobs.HeartbeatJob(
            jobs_pb2.HeartbeatJobRequest(name="bad", lease_token="t", lease_duration=duration_pb2.Duration(seconds=-5))
        ),
        INVALID,
        field="lease_duration",
    )
    await expect_error(
        stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name, lease_duration=seconds(10))),
        INVALID,
        field="lease_duration",
    )
    await expect_error(
        stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name, worker="w", lease_duration=seconds(0.5))),
        INVALID,
        field="lease_duration",
    )
    assert (await get(stubs, job.name)).state == S.STATE_PENDING


# ---- a claim whose caller leaves -----------------------------------------------------------------


async def test_a_claim_whose_caller_left_mid_write_is_given_back() -> None:
    """The claim's write finishes after its caller was cancelled: the servicer gives the job back
    (PENDING, the attempt returned) instead of leaving it leased to nobody until the lease expires.
    In process, against a repository whose claim waits for a gate: the window is too narrow to hit
    through a real server on purpose."""
    from dsa110.contimg.server.domain import records
    from dsa110.contimg.server.events.local import LocalEventBus
    from dsa110.contimg.server.events.watch import JobWatcher
    from dsa110.contimg.server.servicers.jobs import JobServicer

    pending = records.Job(id="j", type=records.JobType.IMAGE, state=records.JobState.PENDING, max_attempts=3)

    class Repo:
        def __init__(self) -> None:
            self.gate = asyncio.Event()
            self.job = pending
            self.actors: list[str] = []
            self.messages: list[str] = []

        async def claim(self, spec: Any, mutate: Any, *, actor: str = "") -> records.Job | None:
            await self.gate.wait()
            self.job, _, _ = mutate(self.job, 1_000)
            return self.job

        async def transition(self, job_id: str, mutate: Any, idem: Any, *, actor: str = "") -> records.Job:
            self.job, transition, _ = mutate(self.job, 2_000)
            self.actors.append(actor)
            self.messages.append(transition.message)
            return self.job

    class Context:
        def invocation_metadata(self) -> tuple[()]:
            return ()

        def time_remaining(self) -> None:
            return None

    repo = Repo()
    servicer = JobServicer(repo, None, JobWatcher(repo, LocalEventBus()))  # type: ignore[arg-type]
    claim_fn = JobServicer.ClaimJob.__wrapped__  # type: ignore[attr-defined]
    call = asyncio.ensure_future(claim_fn(servicer, jobs_pb2.ClaimJobRequest(worker="w"), Context()))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    repo.gate.set()
    await until(lambda: _async(repo.job.state == records.JobState.PENDING and bool(repo.messages)))
    assert repo.job.attempt == 0 and repo.job.lease_token_hash == "" and repo.job.lease_holder == ""
    assert repo.actors == ["anonymous"] and "claim abandoned" in repo.messages[0]


async def _async(value: bool) -> bool:
    return value


async def test_list_jobs_filters_on_priority_and_lease_holder(stubs: Stubs) -> None:
    low = await create(stubs, priority=1)
    high = await create(stubs, priority=9)
    await claim(stubs, worker="host:42")  # takes `high`

    async def names(filter_: str) -> set[str]:
        reply = await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(filter=filter_))
        return {j.name for j in reply.jobs}

    assert await names("priority >= 5") == {high.name}
    assert await names("priority < 5") == {low.name}
    assert await names('lease_holder = "host:42"') == {high.name}
    assert await names('lease_holder = ""') == {low.name}

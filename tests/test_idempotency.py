"""What a write returns: the state that call committed, and for a replayed request_id, the first
result as it was then (AIP-155), for as long as request ids are remembered (the crash-proof issue,
item 3).

Before: a job transition re-read the job after its commit and could return another call's state (6
of 56 tries), and a replay returned the resource as it is now.
"""

from __future__ import annotations

import asyncio

import grpc
from dsa110.contimg.server.storage.clock import now_us
from dsa110.contimg.server.storage.request_ids import REQUEST_ID_RETENTION_US
from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2

from conftest import RunningServer, Stubs
from helpers import image_message, make_image, make_ms, new_request_id
from helpers_stress import DirectSQL, is_postgres

Job = jobs_pb2.Job
ENGINES = ("sqlite", "postgres")


async def test_each_concurrent_transition_returns_its_own_state(stubs: Stubs) -> None:
    job = await stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=Job(type=Job.TYPE_IMAGE)))
    await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name))
    percents = [float(p) for p in range(1, 61)]
    replies = await asyncio.gather(
        *(
            stubs.jobs.ReportJobProgress(jobs_pb2.ReportJobProgressRequest(name=job.name, progress_percent=p))
            for p in percents
        )
    )
    assert [r.progress_percent for r in replies] == percents
    for reply in replies:  # its own transition is its last one
        assert reply.transitions[-1].sequence == max(t.sequence for t in reply.transitions)
    assert len({r.transitions[-1].sequence for r in replies}) == len(replies)


async def test_a_replayed_job_request_returns_the_first_result(stubs: Stubs) -> None:
    rid = new_request_id()
    create = jobs_pb2.CreateJobRequest(job=Job(type=Job.TYPE_IMAGE), request_id=rid)
    first = await stubs.jobs.CreateJob(create)
    start_rid = new_request_id()
    started = await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=first.name, request_id=start_rid))
    await stubs.jobs.ReportJobProgress(jobs_pb2.ReportJobProgressRequest(name=first.name, progress_percent=50))
    assert await stubs.jobs.CreateJob(create) == first  # PENDING with one transition, as then
    again = await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=first.name, request_id=start_rid))
    assert again == started and again.progress_percent == 0.0


async def test_a_replayed_image_or_ms_request_returns_the_first_result(stubs: Stubs) -> None:
    ms = await make_ms(stubs)
    rid = new_request_id()
    first = await make_image(stubs, ms.name, request_id=rid, noise_jy=0.001)
    noisier = images_pb2.Image(name=first.name, noise_jy=0.5)
    await stubs.images.UpdateImage(images_pb2.UpdateImageRequest(image=noisier, update_mask={"paths": ["noise_jy"]}))
    again = await stubs.images.CreateImage(  # the same request as the first: its fingerprint matches
        images_pb2.CreateImageRequest(image=image_message(ms.name, first.path, noise_jy=0.001), request_id=rid)
    )
    assert again == first and again.noise_jy == 0.001

    update_rid = new_request_id()
    update = measurement_sets_pb2.UpdateMeasurementSetRequest(
        measurement_set=measurement_sets_pb2.MeasurementSet(name=ms.name, field_name="first"),
        update_mask={"paths": ["field_name"]},
        request_id=update_rid,
    )
    updated = await stubs.ms.UpdateMeasurementSet(update)
    await stubs.ms.UpdateMeasurementSet(
        measurement_sets_pb2.UpdateMeasurementSetRequest(
            measurement_set=measurement_sets_pb2.MeasurementSet(name=ms.name, field_name="second"),
            update_mask={"paths": ["field_name"]},
        )
    )
    assert await stubs.ms.UpdateMeasurementSet(update) == updated and updated.field_name == "first"


async def test_request_ids_are_forgotten_after_their_retention(server: RunningServer, stubs: Stubs) -> None:
    db = server.server.storage.db
    job_rid, old_rid = new_request_id(), new_request_id()
    create = jobs_pb2.CreateJobRequest(job=Job(type=Job.TYPE_IMAGE), request_id=job_rid)
    first = await stubs.jobs.CreateJob(create)
    old = await stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=Job(type=Job.TYPE_IMAGE), request_id=old_rid))
    sql = await DirectSQL.connect(server.config.database)
    try:  # the second as if stored 8 days ago
        await sql.execute(
            "UPDATE request_ids SET create_time = ? WHERE request_id = ?",
            now_us() - REQUEST_ID_RETENTION_US - 86_400_000_000,
            old_rid,
        )
        if is_postgres(server.config.database):
            await sql.execute("SET enable_seqscan = off")  # two rows: whether the index can serve, not the cost
            explain = "EXPLAIN SELECT 1 FROM request_ids WHERE create_time < 5"
        else:
            explain = "EXPLAIN QUERY PLAN SELECT 1 FROM request_ids WHERE create_time < 5"
        plan = " ".join(str(r) for r in await sql.fetch(explain))
    finally:
        await sql.close()
    assert "request_ids_by_time" in plan  # expiry walks an index, not the table
    assert await db.expire_request_ids() == 1
    assert await stubs.jobs.CreateJob(create) == first  # within the retention: the first result
    renewed = await stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=Job(type=Job.TYPE_IMAGE), request_id=old_rid))
    assert renewed.name != old.name  # forgotten: a new request


async def test_a_replay_after_the_resource_changed_never_fails(stubs: Stubs) -> None:
    """A transition replayed after later transitions is answered from its first result, not refused
    by the state machine (the job has moved on)."""
    job = await stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=Job(type=Job.TYPE_IMAGE)))
    rid = new_request_id()
    started = await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name, request_id=rid))
    await stubs.jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=job.name))
    try:
        again = await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name, request_id=rid))
    except grpc.aio.AioRpcError as err:  # pragma: no cover - the assertion below says what went wrong
        raise AssertionError(f"a replay was refused: {err.code()} {err.details()}") from err
    assert again == started and again.state == Job.STATE_RUNNING

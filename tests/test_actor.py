"""Named callers recorded with every write (JobTransition.actor; Image and MeasurementSet
`creator` and `last_modifier`), on both engines.

The tokens file names callers (`write pipeline-imaging TOKEN`); every job transition records the
caller name of the call that made it (`anonymous` without a token, `unnamed-token` for a token the
file does not name), in GetJob, in the reply of the write itself, in WatchJob/WatchJobs events live
(the writing server's bus), from a replica (its tail of the event log) and on replay (`after_sequence`);
the token never appears in a reply. Images and measurement sets name who registered them and who last
changed them (RecordPhotometry included; changes derived from other resources' writes not). A
database from before the columns existed upgrades with '' for the rows it already had.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from dsa110.contimg.server.domain.records import Job as JobRecord
from dsa110.contimg.server.domain.records import JobState, JobType
from dsa110.contimg.server.storage import rows
from dsa110.contimg.server.storage.postgres.migrations import MIGRATIONS as PG_MIGRATIONS
from dsa110.contimg.server.storage.sqlite.migrations import MIGRATIONS as SQLITE_MIGRATIONS
from dsa110.contimg.server.storage.sqlite.schema import split_sql
from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2
from google.protobuf import field_mask_pb2

from conftest import POSTGRES_URL, ServerFactory, make_stubs
from helpers import image_message, ms_message

ENGINES = ("sqlite", "postgres")

Job = jobs_pb2.Job
JobEvent = jobs_pb2.JobEvent
READ_TIMEOUT = 10.0

IMAGING = "tok-imaging-7f3a9c"
OPS = "tok-ops-2b81e0"
UNNAMED = "tok-unnamed-55d2"
READER = "tok-reader-c0ffee"
TOKENS = (IMAGING, OPS, UNNAMED, READER)


def auth(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def tokens_file(tmp_path: Path) -> str:
    path = tmp_path / "tokens"
    path.write_text(
        f"# callers of this test\nwrite pipeline-imaging {IMAGING}\nwrite pipeline-ops {OPS}\n"
        f"write {UNNAMED}\nread {READER}\n"
    )
    return str(path)


def assert_no_token(*replies: Any) -> None:
    for reply in replies:
        data = reply.SerializeToString()
        for token in TOKENS:
            assert token.encode() not in data, f"a reply carries the token {token!r}"


async def read(call: Any) -> Any:
    return await asyncio.wait_for(call.read(), READ_TIMEOUT)


async def events_of(call: Any, count: int) -> list[JobEvent]:
    """The next `count` job events of a stream (heartbeats skipped)."""
    got: list[JobEvent] = []
    while len(got) < count:
        event = await read(call)
        assert event is not grpc.aio.EOF, f"the stream ended after {len(got)} of {count} events"
        if event.type != JobEvent.TYPE_HEARTBEAT:
            got.append(event)
    return got


async def test_each_transition_names_its_caller(server_factory: ServerFactory, tmp_path: Path) -> None:
    settings = {"tokens_file": tokens_file(tmp_path), "allow_anonymous_writes": True}
    server = await server_factory(**settings)
    replica = await server_factory(**settings)  # shares the database: sees the events by its log
    async with (
        grpc.aio.insecure_channel(server.target) as channel,
        grpc.aio.insecure_channel(replica.target) as replica_channel,
    ):
        jobs = make_stubs(channel).jobs
        replica_jobs = make_stubs(replica_channel).jobs
        created = await jobs.CreateJob(
            jobs_pb2.CreateJobRequest(job=Job(type=Job.TYPE_PIPELINE)), metadata=auth(IMAGING)
        )
        assert [t.actor for t in created.transitions] == ["pipeline-imaging"]
        live = jobs.WatchJob(jobs_pb2.WatchJobRequest(name=created.name))
        from_replica = replica_jobs.WatchJob(jobs_pb2.WatchJobRequest(name=created.name), metadata=auth(READER))
        for call in (live, from_replica):
            snapshot = await read(call)
            assert snapshot.type == JobEvent.TYPE_SNAPSHOT and not snapshot.HasField("transition")

        started = await jobs.StartJob(jobs_pb2.StartJobRequest(name=created.name), metadata=auth(OPS))
        assert started.transitions[-1].actor == "pipeline-ops"
        progressed = await jobs.ReportJobProgress(
            jobs_pb2.ReportJobProgressRequest(name=created.name, stage=Job.STAGE_IMAGING, progress_percent=50),
            metadata=auth(UNNAMED),
        )
        assert progressed.transitions[-1].actor == "unnamed-token"
        succeeded = await jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=created.name))  # no token
        assert succeeded.transitions[-1].actor == "anonymous"

        expected = ["pipeline-imaging", "pipeline-ops", "unnamed-token", "anonymous"]
        got = await jobs.GetJob(jobs_pb2.GetJobRequest(name=created.name), metadata=auth(READER))
        assert [t.actor for t in got.transitions] == expected
        from_other = await replica_jobs.GetJob(jobs_pb2.GetJobRequest(name=created.name))
        assert [t.actor for t in from_other.transitions] == expected

        streamed: list[JobEvent] = []
        for call in (live, from_replica):
            events = await events_of(call, 3)
            assert await read(call) is grpc.aio.EOF  # ended with the final state
            assert [e.transition.actor for e in events] == expected[1:]
            assert [e.transition for e in events] == list(got.transitions[1:])
            streamed += events
        replay = jobs.WatchJobs(jobs_pb2.WatchJobsRequest(after_sequence=created.transitions[0].sequence))
        replayed = await events_of(replay, 3)
        replay.cancel()
        assert [e.transition.actor for e in replayed] == expected[1:]
        one_job = replica_jobs.WatchJob(jobs_pb2.WatchJobRequest(name=created.name, after_sequence=1))
        replayed_there = await events_of(one_job, 3)
        assert [e.transition.actor for e in replayed_there] == expected[1:]

        listed = await jobs.ListJobs(jobs_pb2.ListJobsRequest())
        assert_no_token(created, started, progressed, succeeded, got, from_other, listed, *streamed, *replayed)


async def test_a_replayed_request_returns_its_first_actor(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = await server_factory(tokens_file=tokens_file(tmp_path))
    async with grpc.aio.insecure_channel(server.target) as channel:
        jobs = make_stubs(channel).jobs
        rid = str(uuid.uuid4())
        request = jobs_pb2.CreateJobRequest(job=Job(type=Job.TYPE_IMAGE), request_id=rid)
        first = await jobs.CreateJob(request, metadata=auth(IMAGING))
        again = await jobs.CreateJob(request, metadata=auth(OPS))  # the same write, retried: not a new one
        assert again == first and [t.actor for t in again.transitions] == ["pipeline-imaging"]
        start = jobs_pb2.StartJobRequest(name=first.name, request_id=str(uuid.uuid4()))
        await jobs.StartJob(start, metadata=auth(OPS))
        retried = await jobs.StartJob(start, metadata=auth(UNNAMED))
        assert [t.actor for t in retried.transitions] == ["pipeline-imaging", "pipeline-ops"]
        # Refused writes record nothing: a read-only token, then a token the server does not know.
        for token, code in ((READER, grpc.StatusCode.PERMISSION_DENIED), ("forged", grpc.StatusCode.UNAUTHENTICATED)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await jobs.CancelJob(jobs_pb2.CancelJobRequest(name=first.name), metadata=auth(token))
            assert refused.value.code() == code
        got = await jobs.GetJob(jobs_pb2.GetJobRequest(name=first.name))
        assert [t.actor for t in got.transitions] == ["pipeline-imaging", "pipeline-ops"]


async def test_images_and_measurement_sets_name_their_creator_and_last_modifier(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = await server_factory(tokens_file=tokens_file(tmp_path))
    async with grpc.aio.insecure_channel(server.target) as channel:
        stubs = make_stubs(channel)
        ms = await stubs.ms.UpdateMeasurementSet(
            measurement_sets_pb2.UpdateMeasurementSetRequest(
                measurement_set=ms_message(creator="forged", last_modifier="forged"), allow_missing=True
            ),
            metadata=auth(IMAGING),
        )
        assert (ms.creator, ms.last_modifier) == ("pipeline-imaging", "pipeline-imaging")  # output only
        ms = await stubs.ms.AdvanceMeasurementSetStage(
            measurement_sets_pb2.AdvanceMeasurementSetStageRequest(
                name=ms.name, stage=measurement_sets_pb2.MeasurementSet.STAGE_IMAGED
            ),
            metadata=auth(OPS),
        )
        assert (ms.creator, ms.last_modifier) == ("pipeline-imaging", "pipeline-ops")
        other = await stubs.ms.CreateMeasurementSet(
            measurement_sets_pb2.CreateMeasurementSetRequest(measurement_set=ms_message()), metadata=auth(OPS)
        )
        assert (other.creator, other.last_modifier) == ("pipeline-ops", "pipeline-ops")

        image = await stubs.images.CreateImage(
            images_pb2.CreateImageRequest(image=image_message(ms.name, creator="forged")), metadata=auth(UNNAMED)
        )
        assert (image.creator, image.last_modifier) == ("unnamed-token", "unnamed-token")
        image.noise_jy = 0.0009
        updated = await stubs.images.UpdateImage(
            images_pb2.UpdateImageRequest(image=image, update_mask=field_mask_pb2.FieldMask(paths=["noise_jy"]))
        )  # anonymous
        assert (updated.creator, updated.last_modifier) == ("unnamed-token", "anonymous")
        measured = sources_pb2.PhotometryMeasurement(
            source="sources/J081348.0+543412", ra_deg=123.45, dec_deg=54.57, peak_flux_jy=0.5, peak_flux_err_jy=0.001
        )
        await stubs.sources.RecordPhotometry(
            sources_pb2.RecordPhotometryRequest(image=image.name, measurements=[measured]), metadata=auth(IMAGING)
        )

        got = await stubs.images.GetImage(images_pb2.GetImageRequest(name=image.name))
        assert (got.creator, got.last_modifier, got.photometry_count) == ("unnamed-token", "pipeline-imaging", 1)
        listed = await stubs.images.ListImages(images_pb2.ListImagesRequest())
        assert [(i.creator, i.last_modifier) for i in listed.images] == [("unnamed-token", "pipeline-imaging")]
        # Registering an image changed its MS's image_count, not who last changed the MS.
        got_ms = await stubs.ms.GetMeasurementSet(measurement_sets_pb2.GetMeasurementSetRequest(name=ms.name))
        assert (got_ms.creator, got_ms.last_modifier, got_ms.image_count) == ("pipeline-imaging", "pipeline-ops", 1)
        all_ms = await stubs.ms.ListMeasurementSets(measurement_sets_pb2.ListMeasurementSetsRequest())
        assert sorted((m.creator, m.last_modifier) for m in all_ms.measurement_sets) == [
            ("pipeline-imaging", "pipeline-ops"),
            ("pipeline-ops", "pipeline-ops"),
        ]
        assert_no_token(ms, other, image, updated, got, listed, got_ms, all_ms)


# ---- a database from before actors -------------------------------------------------------------

OLD_JOB = JobRecord(id="old-job", type=JobType.IMAGE, create_time=1_000_000, update_time=1_000_000)
OLD_MS = "/data/ms/old.ms"
OLD_ROWS = (
    "INSERT INTO measurement_sets (path, create_time, update_time, image_count) VALUES ('/data/ms/old.ms', 1, 1, 1)",
    "INSERT INTO images (id, path, ms_path, create_time, update_time) "
    "VALUES (1, '/data/images/old.fits', '/data/ms/old.ms', 1, 1)",
)


# The jobs table's columns before the lease columns (SQLite migration 6, PostgreSQL 3).
OLD_JOB_COLUMNS = rows.JOB_COLUMNS[: rows.JOB_COLUMNS.index("log_line_count") + 1]


def _old_sqlite(path: Path) -> None:
    """A database at schema version 4 (the last without actors) holding one created job."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.execute(
            "CREATE TABLE schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_time INTEGER NOT NULL)"
        )
        for version, name, sql in SQLITE_MIGRATIONS[:4]:
            for statement in split_sql(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (version, name))
        assert max(v for v, _, _ in SQLITE_MIGRATIONS[:4]) == 4
        for statement in OLD_ROWS:
            conn.execute(statement)
        conn.execute(
            f"INSERT INTO jobs ({', '.join(OLD_JOB_COLUMNS)}) VALUES ({', '.join('?' * len(OLD_JOB_COLUMNS))})",
            rows.job_values(OLD_JOB)[: len(OLD_JOB_COLUMNS)],
        )
        conn.execute(
            "INSERT INTO job_events (job_id, type, from_state, to_state, stage, message, time, snapshot) "
            "VALUES (?, 2, 0, ?, 0, '', ?, ?)",
            (OLD_JOB.id, int(JobState.PENDING), OLD_JOB.create_time, rows.job_snapshot(OLD_JOB)),
        )
        conn.execute("COMMIT")


async def _old_postgres(url: str) -> None:
    """The same on PostgreSQL: schema version 1, one created job."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(
                "CREATE TABLE schema_migrations "
                "(version integer PRIMARY KEY, name text NOT NULL, applied_time bigint NOT NULL)"
            )
            version, name, sql = PG_MIGRATIONS[0]
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, 0)", version, name)
            for statement in OLD_ROWS:
                await conn.execute(statement)
            await conn.execute("SELECT setval(pg_get_serial_sequence('images', 'id'), 1)")
            values = rows.job_values(OLD_JOB)[: len(OLD_JOB_COLUMNS)]
            await conn.execute(
                f"INSERT INTO jobs ({', '.join(OLD_JOB_COLUMNS)}) "
                f"VALUES ({', '.join(f'${i + 1}' for i in range(len(values)))})",
                *values,
            )
            await conn.execute(
                "INSERT INTO job_events (sequence, job_id, type, from_state, to_state, stage, message, time, snapshot) "
                "VALUES (1, $1, 2, 0, $2, 0, '', $3, $4)",
                OLD_JOB.id,
                int(JobState.PENDING),
                OLD_JOB.create_time,
                rows.job_snapshot(OLD_JOB),
            )
            await conn.execute("UPDATE job_event_counter SET last = 1")
    finally:
        await conn.close()


@asynccontextmanager
async def _scratch_postgres() -> AsyncIterator[str]:
    """An empty PostgreSQL database (no schema at all), dropped afterwards."""
    if os.environ.get("CONTIMG_TEST_SKIP_POSTGRES") == "1" and not os.environ.get("CI"):
        pytest.skip("CONTIMG_TEST_SKIP_POSTGRES=1 (never in CI)")
    name = f"contimg_old_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_an_old_database_upgrades_with_unknown_actors(
    server_factory: ServerFactory, engine: str, tmp_path: Path
) -> None:
    async def run(database: Path | str) -> None:
        server = await server_factory(database=database)
        assert await server.server.storage.db.schema_version() == max(
            v for v, _, _ in (SQLITE_MIGRATIONS if engine == "sqlite" else PG_MIGRATIONS)
        )
        async with grpc.aio.insecure_channel(server.target) as channel:
            jobs = make_stubs(channel).jobs
            name = f"jobs/{OLD_JOB.id}"
            old = await jobs.GetJob(jobs_pb2.GetJobRequest(name=name))
            assert [(t.to_state, t.actor) for t in old.transitions] == [(Job.STATE_PENDING, "")]
            started = await jobs.StartJob(jobs_pb2.StartJobRequest(name=name))
            assert [t.actor for t in started.transitions] == ["", "anonymous"]
            replay = jobs.WatchJob(jobs_pb2.WatchJobRequest(name=name, after_sequence=0))
            assert (await read(replay)).type == JobEvent.TYPE_SNAPSHOT
            replay.cancel()
            events = jobs.WatchJobs(jobs_pb2.WatchJobsRequest(after_sequence=1))
            [event] = await events_of(events, 1)
            events.cancel()
            assert event.transition.actor == "anonymous"

            stubs = make_stubs(channel)
            ms_name = f"measurementSets/{OLD_MS.replace('/', '%2F')}"
            old_ms = await stubs.ms.GetMeasurementSet(measurement_sets_pb2.GetMeasurementSetRequest(name=ms_name))
            old_image = await stubs.images.GetImage(images_pb2.GetImageRequest(name="images/1"))
            assert (old_ms.creator, old_ms.last_modifier, old_image.creator, old_image.last_modifier) == ("",) * 4
            changed = await stubs.ms.AdvanceMeasurementSetStage(
                measurement_sets_pb2.AdvanceMeasurementSetStageRequest(
                    name=ms_name, stage=measurement_sets_pb2.MeasurementSet.STAGE_IMAGED
                )
            )
            assert (changed.creator, changed.last_modifier) == ("", "anonymous")
            new_image = await stubs.images.CreateImage(images_pb2.CreateImageRequest(image=image_message(ms_name)))
            assert new_image.name == "images/2" and new_image.creator == "anonymous"
        await server.stop(0.5)

    if engine == "sqlite":
        path = tmp_path / "v4.sqlite3"
        _old_sqlite(path)
        await run(path)
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("SELECT actor FROM job_events ORDER BY sequence").fetchall() == [("",), ("anonymous",)]
    else:
        async with _scratch_postgres() as url:
            await _old_postgres(url)
            await run(url)
            conn = await asyncpg.connect(url)
            try:
                found = await conn.fetch("SELECT actor FROM job_events ORDER BY sequence")
            finally:
                await conn.close()
        assert [r[0] for r in found] == ["", "anonymous"]

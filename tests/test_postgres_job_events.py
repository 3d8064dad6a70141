"""Job events on PostgreSQL are numbered in commit order across replicas (storage/postgres/jobs.py).

A tailer (events/tail.py) reads `events_after(last)` and moves `last` to the newest sequence it saw;
if an event numbered S could commit after one numbered S+1 it would be skipped forever. These tests
commit many events from several replicas at once while a reader tails the log, and check that the
reader sees every sequence exactly once, with no gaps, in order; then the same through two servers
sharing one database, without Redis.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from dsa110.contimg.server.domain import jobs as rules
from dsa110.contimg.server.domain.errors import FailedPrecondition
from dsa110.contimg.server.domain.records import Job, JobEvent, JobState, JobType
from dsa110.contimg.server.repositories.protocols import Idempotency, ListQuery
from dsa110.contimg.server.storage.postgres import jobs as pgjobs
from dsa110.contimg.server.storage.postgres.database import Database, PostgresSettings
from dsa110.contimg.server.storage.postgres.jobs import PostgresJobs
from dsa110.contimg.v1 import jobs_pb2

from conftest import PostgresDatabases, ServerFactory, make_stubs

ENGINES = ("postgres",)

REPLICAS = 4
JOBS = 24
PROGRESS_PER_JOB = 20
READ_TIMEOUT = 10.0


class Recorder:
    """An EventPublisher that keeps what its replica committed."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    def publish(self, event: JobEvent) -> None:
        self.events.append(event)


@pytest.fixture
async def replicas(postgres_databases: PostgresDatabases) -> AsyncIterator[list[tuple[PostgresJobs, Recorder]]]:
    """Several Database instances on one new database, as separate server replicas would hold."""
    url = await postgres_databases.new()
    opened: list[Database] = []
    out: list[tuple[PostgresJobs, Recorder]] = []
    try:
        for _ in range(REPLICAS):
            db = Database(PostgresSettings(url, pool_min=1, pool_max=6))
            await db.open()
            opened.append(db)
            recorder = Recorder()
            out.append((PostgresJobs(db, recorder), recorder))
        yield out
    finally:
        for db in opened:
            await db.close()


def _progress(percent: float) -> Any:
    return lambda job, now: rules.apply(job, rules.Action.PROGRESS, now, progress=percent)


def _start(job: Job, now: int) -> Any:
    return rules.apply(job, rules.Action.START, now)


async def test_a_tailing_reader_sees_every_sequence_once_in_order(
    replicas: list[tuple[PostgresJobs, Recorder]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pause between numbering the event and COMMIT (a slow network, a busy server) widens the
    # window in which a later number could commit first. Without it, numbers from a plain SEQUENCE
    # passed this test too: the window was too short to be hit; with it they fail every run.
    remember = pgjobs.remember_request_id

    async def slow_commit(conn: Any, idem: Any, result: Any) -> None:
        await asyncio.sleep(random.uniform(0, 0.002))
        await remember(conn, idem, result)

    monkeypatch.setattr(pgjobs, "remember_request_id", slow_commit)
    reader = replicas[0][0]
    seen: list[int] = []
    stop = asyncio.Event()

    async def tail() -> None:
        # As events/tail.py does, with small batches so that it reads while the writers commit.
        last = 0
        while True:
            batch = await reader.events_after(last, None, 7)
            for event in batch:
                seen.append(event.sequence)
                last = event.sequence
            if not batch:
                if stop.is_set():
                    return
                await asyncio.sleep(0)

    async def work(job_id: str) -> None:
        # Each step through a replica picked at random: the job's writers are on every replica.
        def repo() -> PostgresJobs:
            return random.choice(replicas)[0]

        await repo().create(Job(id=job_id, type=JobType.IMAGE), None)
        await repo().transition(job_id, _start, None)
        for i in range(PROGRESS_PER_JOB):
            await repo().transition(job_id, _progress(float(i)), None)

    tailing = asyncio.create_task(tail())
    try:
        await asyncio.gather(*(work(f"job-{i}") for i in range(JOBS)))
    finally:
        stop.set()
        await asyncio.wait_for(tailing, READ_TIMEOUT)

    total = JOBS * (2 + PROGRESS_PER_JOB)
    assert await reader.last_sequence() == total
    assert seen == list(range(1, total + 1)), "the reader missed, repeated or reordered an event"

    # What each replica published after its commits is exactly what was recorded, once.
    published = sorted(e.sequence for _, recorder in replicas for e in recorder.events)
    assert published == seen
    # And each job's history (GetJob) holds the same events, in its own order.
    by_job: dict[str, list[int]] = {}
    for event in await reader.events_after(0, None, total + 1):
        by_job.setdefault(event.job.id, []).append(event.sequence)
    for i in range(JOBS):
        job = await reader.get(f"job-{i}")
        assert job is not None and job.state == JobState.RUNNING
        assert [t.sequence for t in job.transitions] == by_job[job.id]
        assert len(job.transitions) == 2 + PROGRESS_PER_JOB
        assert [e.sequence for e in await reader.events_after(0, job.id, total)] == by_job[job.id]


async def test_concurrent_writers_of_one_job_take_turns(replicas: list[tuple[PostgresJobs, Recorder]]) -> None:
    """The job row is locked before it is read: no lost update between replicas."""
    first = replicas[0][0]
    await first.create(Job(id="contended", type=JobType.CALIBRATE), None)
    results = await asyncio.gather(
        *(repo.transition("contended", _start, None) for repo, _ in replicas), return_exceptions=True
    )
    started = [r for r in results if isinstance(r, Job)]
    refused = [r for r in results if isinstance(r, FailedPrecondition)]
    assert len(started) == 1 and len(refused) == REPLICAS - 1, results
    job = await first.get("contended")
    assert job is not None and job.attempt == 1 and len(job.transitions) == 2

    # Log lines appended through every replica at once are numbered 1..n, none lost.
    counts = await asyncio.gather(
        *(repo.append_log("contended", [f"{r}-{i}" for i in range(5)], None) for r, (repo, _) in enumerate(replicas))
    )
    assert sorted(counts) == [5 * (i + 1) for i in range(REPLICAS)]
    page = await first.list_logs("contended", 1000, 0)
    assert [e.line_number for e in page.items] == list(range(1, 5 * REPLICAS + 1)) and page.total_size == 5 * REPLICAS


async def test_one_request_id_sent_through_every_replica_at_once(
    replicas: list[tuple[PostgresJobs, Recorder]],
) -> None:
    """A request_id is honoured across replicas: one job, one transition, every caller the first result."""
    create = Idempotency(str(uuid.uuid4()), "CreateJob", "same body")
    made = await asyncio.gather(
        *(repo.create(Job(id=f"attempt-{r}", type=JobType.PIPELINE), create) for r, (repo, _) in enumerate(replicas))
    )
    assert len({job.id for job in made}) == 1 and all(job == made[0] for job in made)
    first = replicas[0][0]
    listed = await first.list_page(ListQuery((), (), 100, None))
    assert [job.id for job in listed.items] == [made[0].id] and listed.total_size == 1

    start = Idempotency(str(uuid.uuid4()), "StartJob", "same body")
    started = await asyncio.gather(*(repo.transition(made[0].id, _start, start) for repo, _ in replicas))
    assert all(job == started[0] for job in started) and started[0].attempt == 1
    job = await first.get(made[0].id)
    assert job is not None and job.transitions == started[0].transitions and len(job.transitions) == 2
    assert sum(len(recorder.events) for _, recorder in replicas) == 2  # published once each


async def test_a_watcher_on_one_server_gets_every_event_made_through_another(server_factory: ServerFactory) -> None:
    """Two servers on one PostgreSQL database, no Redis: the LISTEN session wakes B's tailer."""
    server_a = await server_factory()
    server_b = await server_factory()
    assert server_b.config.database == server_a.config.database and not server_b.config.redis_url
    # No periodic reads either: B's tailer drains only when its change version moves, i.e. when its
    # LISTEN session hears another replica's commit.
    server_b.server.tailer.poll_s = 3600.0
    async with (
        grpc.aio.insecure_channel(server_a.target) as channel_a,
        grpc.aio.insecure_channel(server_b.target) as channel_b,
    ):
        a, b = make_stubs(channel_a), make_stubs(channel_b)
        call = b.jobs.WatchJobs(jobs_pb2.WatchJobsRequest())
        heartbeat = await asyncio.wait_for(call.read(), READ_TIMEOUT)  # subscribed from here on
        assert heartbeat.type == jobs_pb2.JobEvent.TYPE_HEARTBEAT

        async def lifecycle(i: int) -> str:
            job = await a.jobs.CreateJob(
                jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE), job_id=f"watched-{i}")
            )
            await a.jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name, request_id=str(uuid.uuid4())))
            for p in range(5):
                await a.jobs.ReportJobProgress(jobs_pb2.ReportJobProgressRequest(name=job.name, progress_percent=p))
            await a.jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=job.name))
            return str(job.name)

        names = await asyncio.gather(*(lifecycle(i) for i in range(12)))
        expected: list[tuple[int, str, int]] = []
        for name in names:
            job = await a.jobs.GetJob(jobs_pb2.GetJobRequest(name=name))
            expected.extend((t.sequence, name, t.to_state) for t in job.transitions)
        expected.sort()

        got: list[tuple[int, str, int]] = []
        while len(got) < len(expected):
            event = await asyncio.wait_for(call.read(), READ_TIMEOUT)
            assert event is not grpc.aio.EOF
            if event.type != jobs_pb2.JobEvent.TYPE_HEARTBEAT:
                got.append((event.sequence, event.job.name, event.transition.to_state))
        assert got == expected
        assert [s for s, _, _ in got] == list(range(heartbeat.sequence + 1, heartbeat.sequence + len(got) + 1))

        # Nothing more was queued: the next event B sends is a new one.
        marker = await a.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_CONVERT)))
        while True:
            event = await asyncio.wait_for(call.read(), READ_TIMEOUT)
            if event.type != jobs_pb2.JobEvent.TYPE_HEARTBEAT:
                break
        assert event.job.name == marker.name and event.sequence == marker.transitions[-1].sequence
        call.cancel()

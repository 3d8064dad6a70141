"""Three `contimg-server serve` replicas on one PostgreSQL database, as real processes over real channels.

Eight writers drive jobs through CreateJob, StartJob, ReportJobProgress... and SucceedJob through
all three replicas while a WatchJobs watcher on every replica, started before the first write,
records what it is sent. Then, in turn:

* every watcher got every event exactly once, in sequence order, with no gap, and exactly what the
  `job_events` table holds afterwards;
* a replica killed with SIGKILL in the middle of the writes: the writers of the other two go on
  succeeding, every acknowledged transition (through the dead one too) is in the database, and no
  job is half-written (its state is its last recorded event's `to_state`);
* PostgreSQL itself stopped and started again under the load: clients get UNAVAILABLE (never
  INTERNAL) while it is down, health is NOT_SERVING then and SERVING after, the replicas reconnect
  by themselves, and no acknowledged write is lost or applied twice (writers retry with their
  request_id, as the Python client does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from dsa110.contimg.v1 import jobs_pb2, jobs_pb2_grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from conftest import PostgresDatabases
from helpers_stress import ServerProcess, health_status

ENGINES = ("postgres",)

# Transitions made in each test: 8 writers x 21 jobs x 9 transitions (create, start, 6 progress
# reports, succeed). About 1,500 keeps each test well under a minute on two cores.
TRANSITIONS = 1_512
WRITERS = 8
REPLICAS = 3
PROGRESS_REPORTS = 6
STEPS_PER_JOB = 3 + PROGRESS_REPORTS
JOBS_PER_WRITER = TRANSITIONS // (WRITERS * STEPS_PER_JOB)
assert JOBS_PER_WRITER * WRITERS * STEPS_PER_JOB == TRANSITIONS

WRITE_TOKEN = "replica-test-write-token"
AUTH = (("authorization", f"Bearer {WRITE_TOKEN}"),)
CALL_TIMEOUT_S = 30.0
WAIT_S = 60.0  # deadline for conditions awaited (every watcher caught up, health changed)
RETRY_PAUSE_S = 0.05  # between a writer's retries of an UNAVAILABLE call (not a timing assertion)
RETRY_FOR_S = 90.0  # how long a writer keeps retrying one call through a database outage

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEARTBEAT = jobs_pb2.JobEvent.TYPE_HEARTBEAT
CREATED = jobs_pb2.JobEvent.TYPE_CREATED
PENDING = jobs_pb2.Job.STATE_PENDING
SUCCEEDED = jobs_pb2.Job.STATE_SUCCEEDED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
STAGES = [jobs_pb2.Job.STAGE_CONVERTING, jobs_pb2.Job.STAGE_FLAGGING_RFI, jobs_pb2.Job.STAGE_SOLVING_CAL,
          jobs_pb2.Job.STAGE_IMAGING, jobs_pb2.Job.STAGE_PHOTOMETRY]  # fmt: skip

# The cluster behind CONTIMG_TEST_POSTGRES that the restart test stops and starts.
PG_CLUSTER = os.environ.get("CONTIMG_TEST_PG_CLUSTER", "15 main").split()
PG_CTLCLUSTER = ["pg_ctlcluster", "--skip-systemctl-redirect", *PG_CLUSTER]

# (sequence, job name, event type, from_state, to_state): one event as a watcher got it, or as stored.
Event = tuple[int, str, int, int, int]


# ---- replicas ----------------------------------------------------------------------------------------


class Replica(ServerProcess):
    """`contimg-server serve --database postgresql://...`, otherwise as in production: writes need a
    token, default pool, read cache, limits and logging."""

    def __init__(self, data_dir: Path, url: str, name: str):
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(data_dir, name=name, write_token=WRITE_TOKEN)
        self.url = url

    def command(self, port: int) -> list[str]:
        command = super().command(port)
        command[command.index("--database") + 1] = self.url
        return command


@dataclasses.dataclass
class Cluster:
    url: str
    replicas: list[Replica]
    channels: list[grpc.aio.Channel]
    stubs: list[jobs_pb2_grpc.JobServiceAsyncStub]


@pytest.fixture
async def cluster(tmp_path: Path, postgres_databases: PostgresDatabases) -> AsyncIterator[Cluster]:
    url = await postgres_databases.new()
    replicas = [Replica(tmp_path / f"replica-{i}", url, f"replica-{i}") for i in range(REPLICAS)]
    channels: list[grpc.aio.Channel] = []
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        channels = [grpc.aio.insecure_channel(r.target) for r in replicas]
        yield Cluster(url, replicas, channels, [jobs_pb2_grpc.JobServiceStub(c) for c in channels])
    finally:
        for channel in channels:
            await channel.close()
        await asyncio.gather(*(asyncio.to_thread(r.terminate) for r in replicas))


def logs(cluster: Cluster) -> str:
    return "\n".join(f"---- {r.log_path.name}\n{r.log_tail(15)}" for r in cluster.replicas)


# ---- watchers ----------------------------------------------------------------------------------------


class Watcher:
    """One WatchJobs stream on one replica, recording every job event it is sent.

    With `resume`, a stream broken by UNAVAILABLE is reopened with `after_sequence` = the last
    sequence received (or the first heartbeat's), as the Python client's watch_jobs does."""

    def __init__(self, target: str, *, resume: bool = False):
        self.target = target
        self.resume = resume
        self.events: list[Event] = []
        self.start_sequence = -1
        self.resumes = 0
        self.failure: BaseException | None = None  # why the stream stopped (it only stops on errors)
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = jobs_pb2_grpc.JobServiceStub(self.channel)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the stream and wait for its first heartbeat: every later commit is sent to it."""
        call = self.stub.WatchJobs(jobs_pb2.WatchJobsRequest())
        first = await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
        assert isinstance(first, jobs_pb2.JobEvent) and first.type == HEARTBEAT, first
        self.start_sequence = first.sequence
        self._task = asyncio.create_task(self._guarded(call))

    @property
    def last(self) -> int:
        return self.events[-1][0] if self.events else self.start_sequence

    async def _guarded(self, call: Any) -> None:
        try:
            await self._follow(call)
        except Exception as exc:  # kept for the assertions, not lost in a task nobody awaits
            self.failure = exc

    async def _follow(self, call: Any) -> None:
        while True:
            try:
                while True:  # read(), not `async for`: start() read the first message (no mixing)
                    event = await call.read()
                    if event is grpc.aio.EOF:
                        raise AssertionError("WatchJobs ended without an error")  # it never ends by itself
                    if event.type != HEARTBEAT:
                        t = event.transition
                        self.events.append((event.sequence, event.job.name, event.type, t.from_state, t.to_state))
            except grpc.aio.AioRpcError as exc:
                if not (self.resume and exc.code() == UNAVAILABLE):
                    self.failure = exc
                    return
            while True:  # reopen where the stream broke off
                await asyncio.sleep(RETRY_PAUSE_S)
                call = self.stub.WatchJobs(jobs_pb2.WatchJobsRequest(after_sequence=self.last))
                try:
                    await call.initial_metadata()
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != UNAVAILABLE:
                        self.failure = exc
                        return
            self.resumes += 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.channel.close()


async def start_watchers(targets: Iterable[str], *, resume: bool = False) -> list[Watcher]:
    watchers = [Watcher(t, resume=resume) for t in targets]
    await asyncio.gather(*(w.start() for w in watchers))
    return watchers


async def eventually(condition: Callable[[], Awaitable[bool] | bool], what: str, wait_s: float = WAIT_S) -> None:
    """Wait (polling) until `condition` holds; fail naming `what` after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, f"not within {wait_s:.0f} s: {what}"
        await asyncio.sleep(0.02)


async def fence(stub: jobs_pb2_grpc.JobServiceAsyncStub, watchers: list[Watcher]) -> int:
    """Create one more job after all the writes and wait until every watcher has its event. Each
    stream is in order, so a watcher that has the fence has been sent everything before it: any
    duplicate or late event would already be in its list."""
    job = await stub.CreateJob(
        jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_CONVERT), job_id="fence"),
        metadata=AUTH,
        timeout=CALL_TIMEOUT_S,
    )
    sequence = int(job.transitions[-1].sequence)
    try:
        await eventually(lambda: all(w.last >= sequence for w in watchers), "every watcher received the fence event")
    except AssertionError as exc:
        got = [(w.target, len(w.events), w.last, repr(w.failure)[:200]) for w in watchers]
        raise AssertionError(f"{exc}: fence {sequence}; (watcher, events, last, failure): {got}") from None
    return sequence


# ---- writers ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ack:
    """One transition acknowledged to a client: the reply's last transition."""

    sequence: int
    job: str
    to_state: int
    replica: int
    at: float  # time.monotonic() when the reply arrived


@dataclasses.dataclass(frozen=True)
class CallError:
    writer: int
    replica: int
    method: str
    code: grpc.StatusCode
    details: str
    at: float


def lifecycle(job_id: str) -> list[tuple[str, Message]]:
    """The calls that take one job from creation to SUCCEEDED, each with its own request_id (so a
    retry, through any replica, returns the first result instead of applying it again)."""
    name = f"jobs/{job_id}"

    def rid() -> str:
        return str(uuid.uuid4())

    steps: list[tuple[str, Message]] = [
        (
            "CreateJob",
            jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE), job_id=job_id, request_id=rid()),
        ),
        ("StartJob", jobs_pb2.StartJobRequest(name=name, request_id=rid())),
    ]
    for p in range(PROGRESS_REPORTS):
        steps.append(
            (
                "ReportJobProgress",
                jobs_pb2.ReportJobProgressRequest(
                    name=name,
                    stage=STAGES[p % len(STAGES)],
                    progress_percent=100.0 * (p + 1) / (PROGRESS_REPORTS + 1),
                    request_id=rid(),
                ),
            )
        )
    steps.append(("SucceedJob", jobs_pb2.SucceedJobRequest(name=name, artifacts=["/data/out.fits"], request_id=rid())))
    assert len(steps) == STEPS_PER_JOB
    return steps


@dataclasses.dataclass
class Load:
    """Writers' shared record: what was acknowledged, and every call that failed."""

    stubs: list[jobs_pb2_grpc.JobServiceAsyncStub]
    route: Callable[[int, int], int]  # (writer, its call number) -> replica
    retry_unavailable: bool = False
    acks: list[Ack] = dataclasses.field(default_factory=list)
    errors: list[CallError] = dataclasses.field(default_factory=list)

    async def writer(self, w: int) -> None:
        """JOBS_PER_WRITER jobs, one call at a time. Raises the first error it does not retry."""
        calls = 0
        for k in range(JOBS_PER_WRITER):
            for method, request in lifecycle(f"w{w}-j{k:03d}"):
                deadline = time.monotonic() + RETRY_FOR_S
                while True:
                    replica = self.route(w, calls)
                    calls += 1
                    try:
                        job = await getattr(self.stubs[replica], method)(request, metadata=AUTH, timeout=CALL_TIMEOUT_S)
                    except grpc.aio.AioRpcError as exc:
                        code = exc.code()
                        self.errors.append(CallError(w, replica, method, code, exc.details() or "", time.monotonic()))
                        if self.retry_unavailable and code == UNAVAILABLE and time.monotonic() < deadline:
                            await asyncio.sleep(RETRY_PAUSE_S)
                            continue
                        raise
                    last = job.transitions[-1]
                    self.acks.append(Ack(last.sequence, job.name, last.to_state, replica, time.monotonic()))
                    break


def rotating(w: int, call: int) -> int:
    """Each writer's consecutive calls go through the replicas in turn: every job is moved through
    all of them."""
    return (w + call) % REPLICAS


def pinned(w: int, call: int) -> int:
    return w % REPLICAS


# ---- the database afterwards ----------------------------------------------------------------------


async def stored(url: str) -> tuple[list[Event], dict[str, int]]:
    """Every job event (in sequence order) and every job's state, read straight from PostgreSQL."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):  # one snapshot
            events = [
                (int(r[0]), f"jobs/{r[1]}", int(r[2]), int(r[3]), int(r[4]))
                for r in await conn.fetch(
                    "SELECT sequence, job_id, type, from_state, to_state FROM job_events ORDER BY sequence"
                )
            ]
            states = {f"jobs/{r[0]}": int(r[1]) for r in await conn.fetch("SELECT id, state FROM jobs")}
    finally:
        await conn.close()
    return events, states


def inconsistencies(events: list[Event], states: dict[str, int]) -> list[str]:
    """What is wrong with the stored log: a gap or repeat in the sequences, a job without its
    CREATED event, a broken from/to chain, a job whose state is not its last event's to_state."""
    problems: list[str] = []
    sequences = [e[0] for e in events]
    if sequences != list(range(1, len(events) + 1)):
        problems.append(f"sequences are not 1..{len(events)} without gaps: {sequences[:20]}...")
    by_job: dict[str, list[Event]] = {}
    for event in events:
        by_job.setdefault(event[1], []).append(event)
    if set(by_job) != set(states):
        problems.append(f"jobs without events: {sorted(set(states) - set(by_job))[:10]}, "
                        f"events of no job: {sorted(set(by_job) - set(states))[:10]}")  # fmt: skip
    for job, history in by_job.items():
        if history[0][2:] != (CREATED, 0, PENDING):
            problems.append(f"{job}: first event {history[0]} is not its creation")
        for before, after in itertools.pairwise(history):
            if after[3] != before[4]:
                problems.append(f"{job}: event {after} does not start where {before} ended")
        if job in states and states[job] != history[-1][4]:
            problems.append(f"{job}: state {states[job]} but its last event {history[-1]} ends in {history[-1][4]}")
    return problems


def lost(acks: Iterable[Ack], events: list[Event]) -> list[Ack]:
    """Acknowledged transitions that the database does not hold as acknowledged."""
    recorded = {e[0]: (e[1], e[4]) for e in events}
    return [a for a in acks if recorded.get(a.sequence) != (a.job, a.to_state)]


# ---- the tests ----------------------------------------------------------------------------------------


async def test_every_watcher_on_every_replica_gets_every_event_once_in_order(cluster: Cluster) -> None:
    watchers = await start_watchers(r.target for r in cluster.replicas)
    try:
        assert [w.start_sequence for w in watchers] == [0] * REPLICAS
        load = Load(cluster.stubs, rotating)
        await asyncio.gather(*(load.writer(w) for w in range(WRITERS)))
        fenced = await fence(cluster.stubs[1], watchers)
    finally:
        for w in watchers:
            await w.close()

    assert not load.errors, load.errors[:5]
    assert len(load.acks) == TRANSITIONS
    assert {a.replica for a in load.acks} == set(range(REPLICAS))
    events, states = await stored(cluster.url)
    assert len(events) == TRANSITIONS + 1 and events[-1][0] == fenced
    assert not inconsistencies(events, states), inconsistencies(events, states)[:10]
    assert not lost(load.acks, events)
    assert sorted(a.sequence for a in load.acks) == list(range(1, TRANSITIONS + 1))
    assert sum(state == SUCCEEDED for state in states.values()) == WRITERS * JOBS_PER_WRITER
    for i, w in enumerate(watchers):
        assert w.failure is None and w.resumes == 0, (i, w.failure)
        sequences = [e[0] for e in w.events]
        assert len(sequences) == len(set(sequences)), f"replica {i}'s watcher got an event twice"
        assert sequences == list(range(1, TRANSITIONS + 2)), f"replica {i}'s watcher missed or reordered events"
        assert w.events == events, f"replica {i}'s watcher got events that differ from job_events"


async def test_a_replica_killed_during_writes_loses_no_acknowledged_transition(cluster: Cluster) -> None:
    """Writers pinned to replicas (w % 3); replica 0 gets SIGKILL once its writers are a quarter done."""
    victim = 0
    victim_writers = [w for w in range(WRITERS) if pinned(w, 0) == victim]
    kill_after = len(victim_writers) * JOBS_PER_WRITER * STEPS_PER_JOB // 4
    watchers = await start_watchers(r.target for r in cluster.replicas)
    load = Load(cluster.stubs, pinned)
    killed_at: list[float] = []

    async def kill_when_due() -> None:
        await eventually(
            lambda: sum(a.replica == victim for a in load.acks) >= kill_after,
            f"{kill_after} transitions acknowledged through replica {victim}",
        )
        await asyncio.to_thread(cluster.replicas[victim].kill)
        killed_at.append(time.monotonic())

    try:
        killer = asyncio.create_task(kill_when_due())
        results = await asyncio.gather(*(load.writer(w) for w in range(WRITERS)), return_exceptions=True)
        await killer
        fenced = await fence(cluster.stubs[1], watchers[1:])
    finally:
        for w in watchers:
            await w.close()

    # The writers of the other replicas all finished, without one failed call.
    for writer, result in enumerate(results):
        if writer in victim_writers:
            assert isinstance(result, grpc.aio.AioRpcError), f"writer {writer} finished though its replica was killed"
            assert result.code() == UNAVAILABLE, (writer, result.code(), result.details())
        else:
            assert result is None, (writer, result, logs(cluster))
    assert all(e.replica == victim and e.code == UNAVAILABLE for e in load.errors), load.errors[:5]
    survivors_after_kill = {a.replica for a in load.acks if a.at > killed_at[0]}
    assert survivors_after_kill == set(range(REPLICAS)) - {victim}, "the other replicas stopped taking writes"
    through_victim = [a for a in load.acks if a.replica == victim]
    assert len(through_victim) >= kill_after

    events, states = await stored(cluster.url)
    assert not lost(load.acks, events), lost(load.acks, events)[:5]  # those through the dead replica included
    assert not inconsistencies(events, states), inconsistencies(events, states)[:10]
    survivor_jobs = {f"jobs/w{w}-j{k:03d}" for w in range(WRITERS) if w not in victim_writers
                     for k in range(JOBS_PER_WRITER)}  # fmt: skip
    assert all(states[job] == SUCCEEDED for job in survivor_jobs)
    # At most one unacknowledged transition per victim writer can have committed (the call in
    # flight when its replica died): the log holds nothing else that nobody asked for.
    assert len(load.acks) <= len(events) - 1 <= len(load.acks) + len(victim_writers)
    assert events[-1][0] == fenced

    # The survivors' watchers got everything, once, in order; the dead one's a gapless prefix.
    for i, w in enumerate(watchers):
        if i == victim:
            assert isinstance(w.failure, grpc.aio.AioRpcError) and w.failure.code() == UNAVAILABLE, w.failure
            assert w.events == events[: len(w.events)]
        else:
            assert w.failure is None, (i, w.failure)
            assert w.events == events, f"replica {i}'s watcher missed, repeated or reordered events"


def _postgres_running() -> bool:
    return subprocess.run([*PG_CTLCLUSTER, "status"], capture_output=True).returncode == 0


def _pg_ctl(action: str) -> None:
    done = subprocess.run([*PG_CTLCLUSTER, action], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"pg_ctlcluster {action}: {done.stdout}{done.stderr}"


async def _ensure_postgres_running(url: str) -> None:
    if not await asyncio.to_thread(_postgres_running):
        await asyncio.to_thread(_pg_ctl, "start")

    async def accepts() -> bool:
        try:
            await (await asyncpg.connect(url, timeout=2)).close()
        except (OSError, asyncpg.PostgresError):
            return False
        return True

    await eventually(accepts, "PostgreSQL accepts connections again")


async def test_postgresql_restarted_under_load(cluster: Cluster) -> None:
    """PostgreSQL is stopped once a fifth of the transitions are acknowledged and started again as
    soon as every replica has reported NOT_SERVING and a client has been refused (a restart, in two
    steps, so that the down state is observed rather than raced: a `restart` can be shorter than the
    health monitor's one-second check)."""
    if os.geteuid() != 0:
        message = "stopping and starting PostgreSQL (pg_ctlcluster) needs root"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run this test)")
        pytest.skip(message)

    watchers = await start_watchers((r.target for r in cluster.replicas), resume=True)
    load = Load(cluster.stubs, rotating, retry_unavailable=True)
    marks: dict[str, float] = {}
    health_while_down: list[list[int]] = []

    async def restart_when_due() -> None:
        await eventually(lambda: len(load.acks) >= TRANSITIONS // 5, "a fifth of the transitions acknowledged")
        marks["stop"] = time.monotonic()
        try:
            await asyncio.to_thread(_pg_ctl, "stop")
            marks["stopped"] = time.monotonic()

            async def all_not_serving() -> bool:
                statuses = [await health_status(r.target) for r in cluster.replicas]
                health_while_down.append(statuses)
                return all(s == NOT_SERVING for s in statuses)

            await eventually(all_not_serving, "every replica reports NOT_SERVING with PostgreSQL down", 20.0)
            await eventually(
                lambda: any(e.code == UNAVAILABLE and e.at > marks["stopped"] for e in load.errors),
                "a write refused while PostgreSQL is down",
                20.0,
            )
        finally:
            marks["start"] = time.monotonic()
            await asyncio.to_thread(_pg_ctl, "start")
            marks["started"] = time.monotonic()

        async def all_serving() -> bool:
            return all([await health_status(r.target) == SERVING for r in cluster.replicas])

        await eventually(all_serving, "every replica reports SERVING again by itself")
        marks["serving"] = time.monotonic()

    try:
        restarter = asyncio.create_task(restart_when_due())
        results = await asyncio.gather(*(load.writer(w) for w in range(WRITERS)), return_exceptions=True)
        await restarter
        fenced = await fence(cluster.stubs[0], watchers)
    finally:
        for w in watchers:
            await w.close()
        await _ensure_postgres_running(cluster.url)

    # Clients were refused with UNAVAILABLE only (never INTERNAL), and every writer finished.
    codes = {e.code for e in load.errors}
    assert codes == {UNAVAILABLE}, [e for e in load.errors if e.code != UNAVAILABLE][:5]
    assert all(r is None for r in results), ([r for r in results if r is not None][:3], logs(cluster))
    assert health_while_down[-1] == [NOT_SERVING] * REPLICAS
    refused = [e for e in load.errors if marks["stopped"] < e.at < marks["start"]]
    assert refused, "no write was refused while PostgreSQL was down"
    # Every replica took writes again after the restart, by itself.
    assert {a.replica for a in load.acks if a.at > marks["serving"]} == set(range(REPLICAS))

    # Nothing acknowledged was lost, nothing retried was applied twice, nothing is half-written.
    events, states = await stored(cluster.url)
    assert not lost(load.acks, events), lost(load.acks, events)[:5]
    assert not inconsistencies(events, states), inconsistencies(events, states)[:10]
    assert len(load.acks) == TRANSITIONS and len(events) == TRANSITIONS + 1 and events[-1][0] == fenced
    assert sorted(a.sequence for a in load.acks) == list(range(1, TRANSITIONS + 1))
    assert all(state == SUCCEEDED for job, state in states.items() if job != "jobs/fence")
    # Watchers (resuming with after_sequence if their stream broke) got every event once, in order.
    for i, w in enumerate(watchers):
        assert w.failure is None, (i, w.failure)
        assert w.events == events, f"replica {i}'s watcher missed, repeated or reordered events"
    print(
        f"PostgreSQL down {marks['started'] - marks['stop']:.2f} s; replicas SERVING "
        f"{marks['serving'] - marks['started']:.2f} s after start; {len(refused)} calls refused while down; "
        f"watcher resumes {[w.resumes for w in watchers]}"
    )

"""Redis: job events across replicas, fail-open and recovery; and that no read depends on Redis.

Replicas are real `contimg-server serve` processes on one SQLite file and one redis-server, both
started here on free ports. Reads are reused in each process only while the database has not
changed (readcache.py), so a change shows on every replica at once, whether it came through a
replica's API or was written to the SQLite file directly, and whatever state Redis is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from dsa110.contimg.server.app import ContimgServer
from dsa110.contimg.server.config import ServerConfig
from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import Stubs, make_stubs

REDIS_HEALTH = "contimg.redis"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
Event = jobs_pb2.JobEvent
HEARTBEAT = getattr(Event, "TYPE_HEARTBEAT", 5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class RedisProcess:
    """A redis-server this test owns: it can be killed, frozen and restarted on the same port."""

    def __init__(self, binary: str):
        self.binary = binary
        self.port = _free_port()
        self.workdir = tempfile.mkdtemp(prefix="contimg-redis-test-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [*args, "--dir", self.workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None:
            self.thaw()
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def redis_proc() -> Iterator[RedisProcess]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); .ci/run installs it")
    proc = RedisProcess(binary)
    proc.start()
    yield proc
    proc.close()


def _spawn(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)


@dataclass
class Replica:
    """One `contimg-server serve` process and a channel to it."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    channel: grpc.aio.Channel
    stubs: Stubs
    health: health_pb2_grpc.HealthStub

    async def health_status(self, service: str) -> int:
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(reply.status)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Any]:
    """Start replicas: `await start(name, redis_url)`; all share tmp_path/contimg.sqlite3."""
    started: list[Replica] = []
    database = tmp_path / "contimg.sqlite3"

    async def start(name: str, redis_url: str, *, wait_redis: bool = True) -> Replica:
        port = _free_port()
        log_path = tmp_path / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
        args = [
            sys.executable,
            "-m",
            "dsa110.contimg.server.cli",
            "serve",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--database={database}",
            f"--redis-url={redis_url}",
            "--synchronous=NORMAL",
            "--allow-anonymous-writes",
            "--grace-s=1",
        ]
        proc = _spawn(args, log_path, env)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        replica = Replica(name, port, proc, log_path, channel, make_stubs(channel), health_pb2_grpc.HealthStub(channel))
        started.append(replica)
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"replica {name} exited:\n{replica.log()}"
            try:
                if await replica.health_status("") == SERVING and (
                    not wait_redis or await replica.health_status(REDIS_HEALTH) == SERVING
                ):
                    return replica
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < deadline, f"replica {name} did not become ready:\n{replica.log()}"
            await asyncio.sleep(0.1)

    yield start
    for replica in started:
        await replica.channel.close()
        if replica.proc.poll() is None:
            replica.proc.send_signal(signal.SIGTERM)
    for replica in started:
        try:
            replica.proc.wait(15)
        except subprocess.TimeoutExpired:
            replica.proc.kill()
            replica.proc.wait()


# ---- builders -------------------------------------------------------------------------------------

MS_PATH = "/data/dsa110/redis-test/2025-10-28T13:30:07.ms"


async def make_ms(stubs: Stubs, path: str = MS_PATH) -> None:
    ms = measurement_sets_pb2.MeasurementSet(
        path=path, group_id="2025-10-28T13:30:07", field_name="drift_54.57", start_mjd=60976.5625,
        mid_mjd=60976.56429, end_mjd=60976.56608, pointing_ra_deg=123.4, pointing_dec_deg=54.57,
    )  # fmt: skip
    await stubs.ms.CreateMeasurementSet(measurement_sets_pb2.CreateMeasurementSetRequest(measurement_set=ms))


async def make_image(stubs: Stubs, n: int, ms_path: str = MS_PATH) -> images_pb2.Image:
    image = images_pb2.Image(
        path=f"/data/dsa110/redis-test/images/{n:05d}.fits", measurement_set=ms_path,
        type=images_pb2.Image.TYPE_CONTINUUM, mid_mjd=60976.5 + n * 0.01, noise_jy=0.001, center_ra_deg=123.45,
        center_dec_deg=54.57, size_x_px=2048, size_y_px=2048, cell_size_arcsec=6.0, frequency_ghz=1.405,
    )  # fmt: skip
    return await stubs.images.CreateImage(images_pb2.CreateImageRequest(image=image))  # type: ignore[no-any-return]


async def record(stubs: Stubs, image: str, fluxes: dict[str, float]) -> None:
    measurements = [
        sources_pb2.PhotometryMeasurement(
            source=f"sources/{sid}",
            ra_deg=123.45 + i * 0.01,
            dec_deg=54.57,
            peak_flux_jy=flux,
            peak_flux_err_jy=0.001,
            integrated_flux_jy=flux,
            snr=flux / 0.001,
            quality_flag="good",
        )
        for i, (sid, flux) in enumerate(fluxes.items())
    ]
    await stubs.sources.RecordPhotometry(sources_pb2.RecordPhotometryRequest(image=image, measurements=measurements))


async def seed(stubs: Stubs, images: int = 3) -> list[images_pb2.Image]:
    await make_ms(stubs)
    made = []
    for n in range(images):
        image = await make_image(stubs, n)
        await record(stubs, image.name, {"NVSS-A": 0.1 + n * 0.01, "NVSS-B": 0.2})
        made.append(image)
    return made


def sql(database: Path, statement: str, *params: object) -> None:
    """An out-of-band write no server hears about (stands in for any writer that bypasses the API).

    Like every API write it moves the row's update_time (the servers reuse a record's encoded
    message while its update_time is unchanged).
    """
    conn = sqlite3.connect(database, timeout=10)
    try:
        conn.execute(statement, params)
        conn.commit()
    finally:
        conn.close()


async def list_images(r: Replica) -> dict[str, float]:
    page = await r.stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=50), timeout=5)
    return {i.name: i.noise_jy for i in page.images}


async def search_sources(r: Replica) -> dict[str, float]:
    page = await r.stubs.sources.SearchSources(
        sources_pb2.SearchSourcesRequest(ra_deg=123.45, dec_deg=54.57, radius_deg=1.0), timeout=5
    )
    return {m.source.name: m.source.catalog_flux_mjy for m in page.matches}


async def list_sources(r: Replica) -> dict[str, float]:
    page = await r.stubs.sources.ListSources(sources_pb2.ListSourcesRequest(page_size=50), timeout=5)
    return {s.name: s.catalog_flux_mjy for s in page.sources}


async def lightcurve_flags(r: Replica, source: str = "NVSS-A") -> list[str]:
    flags: list[str] = []
    call = r.stubs.sources.GetLightcurve(sources_pb2.GetLightcurveRequest(name=f"sources/{source}"), timeout=5)
    async for message in call:
        flags.extend(p.quality_flag for p in message.points)
    return flags


async def eventually(check: Any, within: float = 10.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)


class Collector:
    """Reads a Watch stream in the background and records (event, arrival time)."""

    def __init__(self, call: Any):
        self.call = call
        self.events: list[tuple[Event, float]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for event in self.call:
                if event.type != HEARTBEAT:  # stream positions, not job events
                    self.events.append((event, time.monotonic()))

    @property
    def sequences(self) -> list[int]:
        return [e.sequence for e, _ in self.events]

    def for_job(self, job: str) -> list[Event]:
        return [e for e, _ in self.events if e.job.name == job]

    async def close(self) -> None:
        self.call.cancel()
        await self.task


async def started_watch(replica: Replica, **kwargs: Any) -> Collector:
    collector = Collector(replica.stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(**kwargs)))
    await asyncio.sleep(0.3)  # the server has subscribed before anything is written
    return collector


async def run_job(stubs: Stubs, job_id: str, progress_steps: int = 3) -> list[float]:
    """Create, start, report progress, succeed; return the time each write returned."""
    job = jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)
    await stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=job, job_id=job_id))
    return [time.monotonic(), *await advance_job(stubs, job_id, progress_steps)]


async def advance_job(stubs: Stubs, job_id: str, progress_steps: int) -> list[float]:
    """Start, report progress, succeed; return the time each write returned."""
    jobs = stubs.jobs
    name = f"jobs/{job_id}"
    done = []
    await jobs.StartJob(jobs_pb2.StartJobRequest(name=name))
    done.append(time.monotonic())
    for step in range(progress_steps):
        percent = 100.0 * (step + 1) / (progress_steps + 1)
        await jobs.ReportJobProgress(jobs_pb2.ReportJobProgressRequest(name=name, progress_percent=percent))
        done.append(time.monotonic())
    await jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=name))
    done.append(time.monotonic())
    return done


def expected_types(progress_steps: int) -> list[int]:
    progress = [Event.TYPE_PROGRESS] * progress_steps
    return [Event.TYPE_CREATED, Event.TYPE_STATE_CHANGED, *progress, Event.TYPE_STATE_CHANGED]


# ---- job events across replicas -------------------------------------------------------------------


async def test_watcher_on_b_sees_transitions_made_through_a_in_order_exactly_once(
    replicas: Any, redis_proc: RedisProcess
) -> None:
    a = await replicas("a", redis_proc.url)
    b = await replicas("b", redis_proc.url)
    watch_all_b = await started_watch(b)
    watch_all_a = await started_watch(a)

    steps = 5
    returned = await run_job(a.stubs, "cross-replica-1", steps)
    # WatchJob on B for a job created through A: a snapshot, then the live transitions to the end.
    job = jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)
    await a.stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=job, job_id="cross-replica-2"))
    single = Collector(b.stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name="jobs/cross-replica-2")))
    await asyncio.sleep(0.3)
    await advance_job(a.stubs, "cross-replica-2", 0)
    await asyncio.wait_for(single.task, 10)  # the stream ends by itself after the final state
    assert [e.type for e, _ in single.events] == [
        Event.TYPE_SNAPSHOT,
        Event.TYPE_STATE_CHANGED,
        Event.TYPE_STATE_CHANGED,
    ]
    assert [e.job.state for e, _ in single.events] == [
        jobs_pb2.Job.STATE_PENDING,
        jobs_pb2.Job.STATE_RUNNING,
        jobs_pb2.Job.STATE_SUCCEEDED,
    ]

    async def all_arrived() -> None:
        assert len(watch_all_b.events) == 2 * 2 + steps + 2
        assert len(watch_all_a.events) == 2 * 2 + steps + 2

    await eventually(all_arrived)
    await asyncio.sleep(1.5)  # well past a tailer poll: nothing arrives twice or late
    assert len(watch_all_b.events) == 2 * 2 + steps + 2

    got = watch_all_b.for_job("jobs/cross-replica-1")
    assert [e.type for e in got] == expected_types(steps)
    assert [e.job.state for e in got][-1] == jobs_pb2.Job.STATE_SUCCEEDED
    progress = [e.job.progress_percent for e in got if e.type == Event.TYPE_PROGRESS]
    assert progress == sorted(progress) and len(progress) == steps
    # Server-wide sequence numbers: strictly increasing, identical on both replicas.
    assert watch_all_b.sequences == sorted(set(watch_all_b.sequences))
    assert watch_all_b.sequences == watch_all_a.sequences
    # And identical to the durable log, replayed through B.
    replay = Collector(b.stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(after_sequence=1)))
    await eventually(lambda: _assert_len(replay, len(watch_all_b.events) - 1))
    assert replay.sequences == watch_all_b.sequences[1:]
    assert len(returned) == steps + 3
    for collector in (watch_all_a, watch_all_b, replay):
        await collector.close()


async def _assert_len(collector: Collector, n: int) -> None:
    assert len(collector.events) == n


async def test_interleaved_writers_on_both_replicas_are_seen_identically(
    replicas: Any, redis_proc: RedisProcess
) -> None:
    a = await replicas("a", redis_proc.url)
    b = await replicas("b", redis_proc.url)
    watchers = [await started_watch(a), await started_watch(b)]
    steps = 4
    jobs_per_side = 4
    await asyncio.gather(
        *(run_job(a.stubs, f"from-a-{i}", steps) for i in range(jobs_per_side)),
        *(run_job(b.stubs, f"from-b-{i}", steps) for i in range(jobs_per_side)),
    )
    total = 2 * jobs_per_side * (steps + 3)

    async def complete() -> None:
        for w in watchers:
            assert len(w.events) == total

    await eventually(complete, within=20)
    await asyncio.sleep(1.2)
    seq_a, seq_b = watchers[0].sequences, watchers[1].sequences
    assert len(seq_a) == total and seq_a == sorted(set(seq_a))
    assert seq_a == seq_b
    for w in watchers:
        for side in ("a", "b"):
            for i in range(jobs_per_side):
                assert [e.type for e in w.for_job(f"jobs/from-{side}-{i}")] == expected_types(steps)
        await w.close()


# ---- reads across replicas ------------------------------------------------------------------------


async def test_every_change_shows_on_every_replica_at_once(
    replicas: Any, redis_proc: RedisProcess, tmp_path: Path
) -> None:
    a = await replicas("a", redis_proc.url)
    b = await replicas("b", redis_proc.url)
    database = tmp_path / "contimg.sqlite3"
    images = await seed(a.stubs)
    first = images[0].name
    first_id = int(first.split("/")[1])

    # Each read asked twice on B: the second answer is a reused one.
    for _ in range(2):
        assert (await list_images(b))[first] == pytest.approx(0.001)
        assert set(await search_sources(b)) == {"sources/NVSS-A", "sources/NVSS-B"}
        assert set(await list_sources(b)) == {"sources/NVSS-A", "sources/NVSS-B"}
        assert await lightcurve_flags(b, "NVSS-B") == ["good"] * 3

    # Changes written to the file directly, without update_time: shown at once.
    sql(database, "UPDATE images SET noise_jy = 0.5 WHERE id = ?", first_id)
    sql(database, "UPDATE sources SET catalog_flux_mjy = 77 WHERE id = 'NVSS-A'")
    sql(database, "UPDATE photometry SET quality_flag = 'edge'")
    assert (await list_images(b))[first] == pytest.approx(0.5)
    assert (await search_sources(b))["sources/NVSS-A"] == 77.0
    assert (await list_sources(b))["sources/NVSS-A"] == 77.0
    assert await lightcurve_flags(b, "NVSS-B") == ["edge"] * 3
    got = await b.stubs.images.GetImage(images_pb2.GetImageRequest(name=first))
    assert got.noise_jy == pytest.approx(0.5)

    # Writes through A: the very next read on B sees them.
    update = images_pb2.UpdateImageRequest(
        image=images_pb2.Image(name=first, dynamic_range=123.0),
        update_mask=field_mask_pb2.FieldMask(paths=["dynamic_range"]),
    )
    await a.stubs.images.UpdateImage(update)
    assert (await b.stubs.images.GetImage(images_pb2.GetImageRequest(name=first))).dynamic_range == 123.0
    new_image = await make_image(a.stubs, 99)
    await record(a.stubs, new_image.name, {"NVSS-A": 0.3, "NVSS-C": 0.05})
    assert set(await list_sources(b)) == {"sources/NVSS-A", "sources/NVSS-B", "sources/NVSS-C"}
    assert await lightcurve_flags(b, "NVSS-A") == ["edge"] * 3 + ["good"]
    await record(a.stubs, (await make_image(a.stubs, 98)).name, {"NVSS-B": 0.21})
    assert await lightcurve_flags(b, "NVSS-B") == ["edge"] * 3 + ["good"]
    # Writes through B itself are visible on both at once, too.
    await record(b.stubs, (await make_image(b.stubs, 100)).name, {"NVSS-D": 0.07})
    assert "sources/NVSS-D" in await list_sources(b)
    assert "sources/NVSS-D" in await list_sources(a)


async def test_list_total_size_is_exact_on_the_other_replica_right_after_a_write(
    replicas: Any, redis_proc: RedisProcess
) -> None:
    a = await replicas("a", redis_proc.url)
    b = await replicas("b", redis_proc.url)
    await make_ms(a.stubs)
    for n in range(3):
        image = await make_image(a.stubs, n)
        page = await b.stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=1))
        assert page.total_size == n + 1
        await record(a.stubs, image.name, {f"NVSS-T{n}": 0.1})
        listed = await b.stubs.sources.ListSources(sources_pb2.ListSourcesRequest(page_size=1))
        assert listed.total_size == n + 1
        jobs = await b.stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest())
        assert jobs.total_size == n
        await a.stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)))
        jobs = await b.stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest())
        assert jobs.total_size == n + 1


# ---- fail-open ------------------------------------------------------------------------------------


async def exercise_every_read_and_write(r: Replica, n: int, deadline_s: float = 3.0) -> None:
    """One of each kind of RPC, each answered within `deadline_s` (the database answers alone)."""
    start = time.monotonic()
    image = await make_image(r.stubs, 1000 + n)
    await record(r.stubs, image.name, {"NVSS-A": 0.1, f"NVSS-N{n}": 0.2})
    await r.stubs.images.GetImage(images_pb2.GetImageRequest(name=image.name), timeout=deadline_s)
    await list_images(r)
    await list_sources(r)
    await search_sources(r)
    await lightcurve_flags(r)
    await r.stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/NVSS-A"), timeout=deadline_s)
    await r.stubs.ms.ListMeasurementSets(measurement_sets_pb2.ListMeasurementSetsRequest(), timeout=deadline_s)
    job_id = f"failopen-{r.name}-{n}"
    await r.stubs.jobs.CreateJob(
        jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE), job_id=job_id), timeout=deadline_s
    )
    await r.stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=f"jobs/{job_id}"), timeout=deadline_s)
    await r.stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(), timeout=deadline_s)
    assert time.monotonic() - start < 4 * deadline_s


async def assert_reads_current(b: Replica, database: Path, marker: float) -> None:
    """B's reads follow a change written to the file directly, at once, even for a reply it reused."""
    await list_images(b)
    await list_images(b)
    page = await b.stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=50))
    target = page.images[0]
    sql(database, "UPDATE images SET noise_jy = ? WHERE id = ?", marker, int(target.name.split("/")[1]))
    assert (await list_images(b))[target.name] == pytest.approx(marker)


async def test_redis_killed_mid_test_then_restarted(replicas: Any, redis_proc: RedisProcess, tmp_path: Path) -> None:
    database = tmp_path / "contimg.sqlite3"
    a = await replicas("a", redis_proc.url)
    b = await replicas("b", redis_proc.url)
    await seed(a.stubs)
    await assert_reads_current(b, database, 0.25)
    watch_b = await started_watch(b)

    redis_proc.kill()
    # Health shows the degradation; the server as a whole keeps serving.
    for r in (a, b):

        async def degraded(r: Replica = r) -> None:
            assert await r.health_status(REDIS_HEALTH) == NOT_SERVING
            assert await r.health_status("") == SERVING

        await eventually(degraded, within=5)
    # Every RPC still answers, from the database.
    for n in range(3):
        await exercise_every_read_and_write(a, n)
        await exercise_every_read_and_write(b, 10 + n)
    # Reads are as current as ever while Redis is away.
    await assert_reads_current(b, database, 0.75)
    # Job events still cross replicas (the tailer polls the event log).
    before = len(watch_b.events)
    await run_job(a.stubs, "during-outage", 1)
    await eventually(lambda: _assert_len(watch_b, before + 4), within=5)
    assert [e.type for e in watch_b.for_job("jobs/during-outage")] == expected_types(1)

    # Redis comes back on the same port: both replicas reconnect by themselves.
    redis_proc.start()
    for r in (a, b):

        async def recovered(r: Replica = r) -> None:
            assert await r.health_status(REDIS_HEALTH) == SERVING

        await eventually(recovered, within=10)
    await assert_reads_current(b, database, 0.5)
    # Events keep flowing (exactly once, in order); that they are pushed through Redis again is
    # test_events_are_pushed_through_redis_not_polled's business.
    before = len(watch_b.events)
    await run_job(a.stubs, "after-outage", 2)
    await eventually(lambda: _assert_len(watch_b, before + 5), within=5)
    assert [e.type for e in watch_b.for_job("jobs/after-outage")] == expected_types(2)
    assert watch_b.sequences == sorted(set(watch_b.sequences))
    await watch_b.close()


async def test_frozen_redis_costs_bounded_latency_and_recovers(
    replicas: Any, redis_proc: RedisProcess, tmp_path: Path
) -> None:
    """A Redis that stops answering (SIGSTOP) is as good as down: bounded waits, then no waits at all."""
    a = await replicas("a", redis_proc.url)
    b = await replicas("b", redis_proc.url)
    await seed(a.stubs)
    redis_proc.freeze()
    try:
        slowest = 0.0
        for n in range(3):
            t0 = time.monotonic()
            await exercise_every_read_and_write(a, n, deadline_s=2.0)
            slowest = max(slowest, time.monotonic() - t0)
        for r in (a, b):

            async def degraded(r: Replica = r) -> None:
                assert await r.health_status(REDIS_HEALTH) == NOT_SERVING

            await eventually(degraded, within=5)
        # Once the link is known to be down no RPC touches Redis: a full round is fast again.
        t0 = time.monotonic()
        await exercise_every_read_and_write(a, 50)
        await exercise_every_read_and_write(b, 51)
        assert time.monotonic() - t0 < 2.0
    finally:
        redis_proc.thaw()
    for r in (a, b):

        async def recovered(r: Replica = r) -> None:
            assert await r.health_status(REDIS_HEALTH) == SERVING

        await eventually(recovered, within=10)
    await assert_reads_current(b, tmp_path / "contimg.sqlite3", 0.125)


async def test_server_starts_and_serves_while_redis_is_down(replicas: Any, redis_proc: RedisProcess) -> None:
    url = redis_proc.url
    redis_proc.kill()
    a = await replicas("a", url, wait_redis=False)
    assert await a.health_status(REDIS_HEALTH) == NOT_SERVING
    await make_ms(a.stubs)
    await exercise_every_read_and_write(a, 0)
    redis_proc.start()

    async def recovered() -> None:
        assert await a.health_status(REDIS_HEALTH) == SERVING

    await eventually(recovered, within=10)
    await exercise_every_read_and_write(a, 1)


def in_process_config(database: Path, redis_url: str) -> ServerConfig:
    return ServerConfig(
        host="127.0.0.1", port=0, database=str(database), synchronous="NORMAL",
        allow_anonymous_writes=True, redis_url=redis_url,
    )  # fmt: skip


async def test_events_are_pushed_through_redis_not_polled(redis_proc: RedisProcess, tmp_path: Path) -> None:
    """With the tailer's own wake-ups (database change check, fallback poll) set to a minute, events
    still cross replicas at once: Redis woke the tailer.

    In-process replicas (one SQLite file, one Redis) so the poll interval can be set; the same
    again after Redis was killed and restarted on its port.
    """
    servers = [ContimgServer(in_process_config(tmp_path / "shared.sqlite3", redis_proc.url)) for _ in range(2)]
    for server in servers:
        assert server.redis is not None
        server.tailer.poll_s = server.tailer.check_s = 60.0
        await server.start()
    a, b = servers
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as channel_a,
            grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as channel_b,
        ):
            stubs_a, stubs_b = make_stubs(channel_a), make_stubs(channel_b)
            watch = Collector(stubs_b.jobs.WatchJobs(jobs_pb2.WatchJobsRequest()))
            await asyncio.sleep(0.3)
            await run_job(stubs_a, "pushed-1", 2)
            await eventually(lambda: _assert_len(watch, 5), within=5)

            redis_proc.kill()
            await eventually(lambda: _assert_down(servers), within=5)
            redis_proc.start()
            await eventually(lambda: _assert_up(servers), within=10)
            await run_job(stubs_a, "pushed-2", 2)
            await eventually(lambda: _assert_len(watch, 10), within=5)
            assert [e.type for e in watch.for_job("jobs/pushed-2")] == expected_types(2)
            assert watch.sequences == sorted(set(watch.sequences))
            await watch.close()
    finally:
        for server in servers:
            await server.stop(0.5)


async def _assert_down(servers: list[ContimgServer]) -> None:
    assert all(s.redis is not None and not s.redis.link.up for s in servers)


async def _assert_up(servers: list[ContimgServer]) -> None:
    assert all(s.redis is not None and s.redis.link.usable for s in servers)


# ---- without Redis --------------------------------------------------------------------------------


async def test_without_redis_the_in_process_bus_serves_a_single_server(tmp_path: Path) -> None:
    config = ServerConfig(
        host="127.0.0.1", port=0, database=str(tmp_path / "solo.sqlite3"),
        synchronous="NORMAL", allow_anonymous_writes=True,
    )  # fmt: skip
    server = ContimgServer(config)
    await server.start()
    try:
        assert server.redis is None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stubs = make_stubs(channel)
            watch = Collector(stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest()))
            await asyncio.sleep(0.2)
            await run_job(stubs, "solo", 2)
            await eventually(lambda: _assert_len(watch, 5), within=5)
            assert [e.type for e in watch.for_job("jobs/solo")] == expected_types(2)
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health.Check(health_pb2.HealthCheckRequest(service=REDIS_HEALTH))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            await watch.close()
    finally:
        await server.stop(0.5)

"""End to end: the `contimg-server` console script as a user runs it, then SIGTERM while a call is in flight.

The in-flight call is made slow deterministically, not by timing: the test holds a lock from its
own connection (SQLite's write lock; on PostgreSQL, the image's row), so the server's
RecordPhotometry waits inside its transaction until the test lets go, which it does only after the
shutdown has begun. On both engines (ENGINES).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
from dsa110.contimg.v1 import (
    images_pb2,
    images_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    measurement_sets_pb2,
    measurement_sets_pb2_grpc,
    sources_pb2,
    sources_pb2_grpc,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import PostgresDatabases
from helpers_jobs import measurement
from helpers_stress import alive, write_processes_of

ENGINES = ("sqlite", "postgres")

SERVICES = {
    "dsa110.contimg.v1.ImageService",
    "dsa110.contimg.v1.SourceService",
    "dsa110.contimg.v1.JobService",
    "dsa110.contimg.v1.MSService",
}
GRACE_S = 5.0
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
LOG_LINE = re.compile(
    r"rpc method=(?P<method>/\S+) code=(?P<code>[A-Z_]+) duration_ms=(?P<ms>\d+\.\d+) "
    r"peer=(?P<peer>\S+)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    exe: Path, port: int, data_dir: Path, log: Path, env: dict[str, str], database: str = ""
) -> subprocess.Popen[bytes]:
    """`contimg-server serve` as a user types it; stderr (the server's log) goes to `log`."""
    with log.open("wb") as err:
        return subprocess.Popen(
            [
                str(exe),
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--demo-images",
                "0",
                "--grace-s",
                str(GRACE_S),
                *(["--database", database] if database else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )


def read_log(log: Path) -> str:
    return log.read_text()


async def wait_until_serving(channel: grpc.aio.Channel, proc: subprocess.Popen[bytes], log: Path) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{read_log(log)}"
        try:
            resp = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if resp.status == SERVING:
                return
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
        assert time.monotonic() < deadline, f"not SERVING within 30 s:\n{read_log(log)}"
        await asyncio.sleep(0.05)


async def list_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names: set[str] = set()
    async for resp in call:
        names.update(s.name for s in resp.list_services_response.service)
    return names


async def test_serve_reflect_call_and_graceful_sigterm(tmp_path, engine, postgres_databases: PostgresDatabases):
    url = await postgres_databases.new() if engine == "postgres" else ""  # SQLite: DATA_DIR/contimg.sqlite3
    port = free_port()
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    token = uuid.uuid4().hex
    exe = Path(sys.executable).parent / "contimg-server"
    assert exe.exists(), f"console script missing: {exe}"
    env = {**os.environ, "CONTIMG_WRITE_TOKENS": token}  # a token in the environment, not in `ps`
    proc = start_server(exe, port, data_dir, log, env, url)
    lock: sqlite3.Connection | None = None
    pg_lock: asyncpg.Connection | None = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_until_serving(channel, proc, log)
            # SQLite's engine writes photometry from a process of its own; PostgreSQL's has none.
            [writer_pid] = await write_processes_of(proc.pid) if not url else [0]
            assert SERVICES | {"grpc.health.v1.Health"} <= await list_services(channel)
            health = health_pb2_grpc.HealthStub(channel)
            for service in SERVICES:
                assert (await health.Check(health_pb2.HealthCheckRequest(service=service))).status == SERVING

            auth = (("authorization", f"Bearer {token}"),)
            jobs = jobs_pb2_grpc.JobServiceStub(channel)
            ms_stub = measurement_sets_pb2_grpc.MSServiceStub(channel)
            images = images_pb2_grpc.ImageServiceStub(channel)
            sources = sources_pb2_grpc.SourceServiceStub(channel)

            job = await jobs.CreateJob(
                jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)), metadata=auth
            )
            assert (await jobs.GetJob(jobs_pb2.GetJobRequest(name=job.name))).state == jobs_pb2.Job.STATE_PENDING
            for missing in ("jobs/missing-one", "jobs/missing-two"):
                try:
                    await jobs.GetJob(jobs_pb2.GetJobRequest(name=missing))
                    raise AssertionError("expected NOT_FOUND")
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
            ms = await ms_stub.CreateMeasurementSet(
                measurement_sets_pb2.CreateMeasurementSetRequest(
                    measurement_set=measurement_sets_pb2.MeasurementSet(path="/data/ms/e2e.ms", mid_mjd=60000.5)
                ),
                metadata=auth,
            )
            image = await images.CreateImage(
                images_pb2.CreateImageRequest(
                    image=images_pb2.Image(path="/data/images/e2e.fits", measurement_set=ms.name)
                ),
                metadata=auth,
            )

            # Calls in flight at SIGTERM: a watch stream, and a write held up by our lock.
            watch = jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name))
            assert (await watch.read()).type == jobs_pb2.JobEvent.TYPE_SNAPSHOT
            health_watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await health_watch.read()).status == SERVING
            if url:  # the image's row: RecordPhotometry locks it (storage/postgres/sources.py)
                pg_lock = await asyncpg.connect(url)
                await pg_lock.execute("BEGIN")
                await pg_lock.execute("SELECT 1 FROM images WHERE id = $1 FOR UPDATE", int(image.name.split("/")[1]))
            else:
                lock = sqlite3.connect(data_dir / "contimg.sqlite3", isolation_level=None, timeout=10)
                lock.execute("BEGIN IMMEDIATE")
            batch = [measurement(f"E2E{i:04d}", (i * 0.37) % 360, 40.0 + i / 1000) for i in range(200)]
            inflight = asyncio.ensure_future(
                sources.RecordPhotometry(
                    sources_pb2.RecordPhotometryRequest(image=image.name, measurements=batch), metadata=auth
                )
            )
            # A later call on the same connection has been served, so the server has the write too.
            await jobs.ListJobs(jobs_pb2.ListJobsRequest())
            assert not inflight.done()

            proc.send_signal(signal.SIGTERM)
            sigterm_at = time.monotonic()
            update = await asyncio.wait_for(health_watch.read(), 10)
            assert update.status == NOT_SERVING  # load balancers are told first
            health_watch.cancel()
            assert not inflight.done(), "the write is still waiting for the lock"
            if pg_lock is not None:
                await pg_lock.execute("ROLLBACK")
                await pg_lock.close()
                pg_lock = None
            else:
                assert lock is not None
                lock.execute("ROLLBACK")
                lock.close()
                lock = None

            response = await asyncio.wait_for(inflight, 10)  # the in-flight call completes, OK
            assert response.recorded_count == 200 and response.created_source_count == 200

            remaining = GRACE_S + 5 - (time.monotonic() - sigterm_at)
            status = await asyncio.to_thread(proc.wait, remaining)  # TimeoutExpired fails the test
            assert status == 0, f"exit status {status}:\n{read_log(log)}"
            assert not writer_pid or not alive(writer_pid), "the write process outlived the server"
            # The open watch was ended by the shutdown rather than keeping the process alive.
            try:
                leftover = await watch.read()
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), exc
            else:
                raise AssertionError(f"the watch went on after shutdown: {leftover}")
    finally:
        if lock is not None:
            lock.close()
        if pg_lock is not None:
            await pg_lock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    # The write acknowledged during shutdown is on disk.
    if url:
        pg = await asyncpg.connect(url)
        try:
            assert await pg.fetchval("SELECT count(*) FROM photometry") == 200
        finally:
            await pg.close()
    else:
        with sqlite3.connect(data_dir / "contimg.sqlite3") as db:
            assert db.execute("SELECT count(*) FROM photometry").fetchone()[0] == 200

    # One log line per RPC, with method, code, duration and peer; never the token.
    text = read_log(log)
    assert token not in text
    lines = [m for m in (LOG_LINE.search(line) for line in text.splitlines()) if m]
    by_method: dict[str, list[re.Match[str]]] = {}
    for m in lines:
        by_method.setdefault(m["method"].rsplit("/", 1)[-1], []).append(m)
    assert [m["code"] for m in by_method["GetJob"]] == ["OK", "NOT_FOUND", "NOT_FOUND"]
    assert [m["code"] for m in by_method["CreateJob"]] == ["OK"]
    assert [m["code"] for m in by_method["ListJobs"]] == ["OK"]
    assert [m["code"] for m in by_method["RecordPhotometry"]] == ["OK"]
    assert len(by_method["WatchJob"]) == 1
    for m in lines:
        assert m["peer"].startswith("ipv4:127.0.0.1:"), m.group(0)
        assert float(m["ms"]) >= 0.0
    assert by_method["GetJob"][0]["method"] == "/dsa110.contimg.v1.JobService/GetJob"
    assert float(by_method["RecordPhotometry"][0]["ms"]) > float(by_method["ListJobs"][0]["ms"])
    assert "signal received" in text

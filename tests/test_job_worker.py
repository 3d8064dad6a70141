"""The worker loop of clients/examples/job_worker.py, run as real processes against a real server.

* Several workers drain a queue: every job is done by exactly one of them.
* A worker SIGKILLed mid-job: its lease expires, the job returns to PENDING, another worker
  finishes it, and the dead worker's lease token (its --lease-file) is refused, LEASE_LOST, both
  while the successor works and after.
* A long-poll claim ends cleanly at its wait with nothing, and wakes when a job is created.

Each on both engines (SQLite file, PostgreSQL database).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dsa110.contimg.client import AsyncClient, ClientConfig, FailedPreconditionError
from dsa110.contimg.v1 import jobs_pb2
from google.protobuf import struct_pb2

from conftest import PostgresDatabases
from helpers_stress import ServerProcess, until

ENGINES = ("sqlite", "postgres")

Job = jobs_pb2.Job
TOKEN = "worker-token"
EXAMPLE = Path(__file__).resolve().parents[1] / "clients" / "examples" / "job_worker.py"


@pytest.fixture
async def server(tmp_path: Path, engine: str, postgres_databases: PostgresDatabases) -> AsyncIterator[ServerProcess]:
    database = await postgres_databases.new() if engine == "postgres" else None
    process = ServerProcess(tmp_path, database=database, write_token=TOKEN)
    await process.start()
    try:
        yield process
    finally:
        process.terminate()


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(ClientConfig(target=server.target, token=TOKEN)) as c:
        yield c


async def worker(server: ServerProcess, *args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
    env |= {"CONTIMG_TARGET": server.target, "CONTIMG_TOKEN": TOKEN, "GRPC_VERBOSITY": "ERROR"}
    return await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )


async def finished(process: asyncio.subprocess.Process, wait_s: float = 60) -> list[str]:
    out, err = await asyncio.wait_for(process.communicate(), wait_s)
    assert process.returncode == 0, err.decode()
    return out.decode().splitlines()


def parameters(**values: float | bool) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


async def test_workers_do_every_job_once(server: ServerProcess, client: AsyncClient) -> None:
    names = []
    for i in range(24):
        job = Job(type=Job.TYPE_IMAGE, parameters=parameters(seconds=0.02, fail=i % 8 == 7), max_attempts=1)
        names.append((await client.create_job(job)).name)
    other = await client.create_job(Job(type=Job.TYPE_CONVERT))  # not a type the workers take

    workers = [await worker(server, "image", "--wait-s", "1", "--exit-when-idle") for _ in range(3)]
    outputs = [await finished(w) for w in workers]

    done = [line.split()[1].rstrip(":") for out in outputs for line in out if line.split()[0] != "claimed"]
    assert sorted(done) == sorted(names)  # each job exactly once, none lost
    for name in names:
        job = await client.get_job(name)
        failing = "fail" in job.parameters and job.parameters["fail"]
        assert job.state == (Job.STATE_FAILED if failing else Job.STATE_SUCCEEDED), job
        assert job.attempt == 1
        if not failing:
            assert list(job.artifacts) == [f"/stage/products/{name.removeprefix('jobs/')}.fits"]
    assert (await client.get_job(other.name)).state == Job.STATE_PENDING


async def test_sigkilled_worker_loses_its_job_to_another(
    server: ServerProcess, client: AsyncClient, tmp_path: Path
) -> None:
    job = await client.create_job(Job(type=Job.TYPE_IMAGE, max_attempts=3), "doomed")
    lease_file = tmp_path / "first.lease"
    first = await worker(
        server, "image", "--lease-s", "2", "--work-s", "600", "--max-jobs", "1", "--lease-file", str(lease_file)
    )
    try:
        await until(lease_file.exists, "the first worker claims the job", 30)
        old_token = json.loads(lease_file.read_text())["lease_token"]
        running = await client.get_job(job.name)
        assert running.state == Job.STATE_RUNNING and running.attempt == 1
        assert running.lease_holder.endswith(f":{first.pid}") and not running.lease_token
        await asyncio.sleep(1.5)  # mid-job, its heartbeats keeping the lease
        assert (await client.get_job(job.name)).state == Job.STATE_RUNNING
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    killed_at = time.monotonic()

    # The lease expires (2 s after the last heartbeat) and the job is PENDING again.
    deadline = time.monotonic() + 15
    while (current := await client.get_job(job.name)).state != Job.STATE_PENDING:
        assert time.monotonic() < deadline, f"not PENDING again: {current}"
        await asyncio.sleep(0.05)
    assert time.monotonic() - killed_at < 10  # 2 s of lease and a 1 s sweep, with room for a slow host
    expired, requeued = current.transitions[-2:]
    assert (expired.from_state, expired.to_state) == (Job.STATE_RUNNING, Job.STATE_FAILED)
    assert expired.message.startswith("LEASE_EXPIRED") and expired.actor == "lease-expiry"
    assert (requeued.from_state, requeued.to_state) == (Job.STATE_FAILED, Job.STATE_PENDING)
    assert not current.lease_holder

    second_lease = tmp_path / "second.lease"
    second = await worker(
        server, "image", "--lease-s", "5", "--work-s", "2", "--max-jobs", "1", "--lease-file", str(second_lease)
    )
    await until(second_lease.exists, "the second worker claims the job", 30)
    # The dead worker's late writes cannot touch its successor's job...
    for late in (
        client.heartbeat_job(job.name, old_token),
        client.report_job_progress(job.name, Job.STAGE_IMAGING, 90, lease_token=old_token),
        client.succeed_job(job.name, ["/stage/stale.fits"], lease_token=old_token),
        client.fail_job(job.name, "zombie", lease_token=old_token),
    ):
        with pytest.raises(FailedPreconditionError) as refused:
            await late
        assert refused.value.reason == "LEASE_LOST"
    taken = await client.get_job(job.name)
    assert taken.state == Job.STATE_RUNNING and taken.attempt == 2 and taken.lease_holder.endswith(f":{second.pid}")

    assert await finished(second) == [f"claimed {job.name} attempt 2", f"succeeded {job.name}"]
    done = await client.get_job(job.name)
    assert done.state == Job.STATE_SUCCEEDED and list(done.artifacts) == ["/stage/products/doomed.fits"]
    # ... nor the finished one.
    with pytest.raises(FailedPreconditionError) as refused:
        await client.heartbeat_job(job.name, old_token)
    assert refused.value.reason == "LEASE_LOST"
    with pytest.raises(FailedPreconditionError) as refused:
        await client.succeed_job(job.name, lease_token=old_token)
    assert refused.value.reason == "LEASE_LOST"
    assert (await client.get_job(job.name)).transitions[-1].sequence == done.transitions[-1].sequence


async def test_long_poll_claim(client: AsyncClient) -> None:
    started = time.monotonic()
    nothing = await client.claim_job([Job.TYPE_PHOTOMETRY], worker="idle", wait_s=1)
    waited = time.monotonic() - started
    assert not nothing.HasField("job") and not nothing.lease_token
    assert 0.9 <= waited < 3, waited

    # A wait longer than the client's deadline: the client extends its deadline by the wait.
    short = client.with_options(deadline_s=0.5)
    claim = asyncio.create_task(short.claim_job([Job.TYPE_PHOTOMETRY], worker="waiting", wait_s=20))
    await asyncio.sleep(1.0)
    created = await client.create_job(Job(type=Job.TYPE_PHOTOMETRY))
    at = time.monotonic()
    claimed = await claim
    assert time.monotonic() - at < 2.0  # woken, not at its wait's end (bench/job_claims.py measures it)
    assert claimed.job.name == created.name and claimed.job.lease_holder == "waiting" and claimed.lease_token

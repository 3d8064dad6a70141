"""`contimg-server backup` while the server takes writes, then `restore` (storage/sqlite/backup.py).

Four clients create and run jobs and record photometry through a real server process for
CONTIMG_BACKUP_WRITE_S seconds (default 30); halfway, `contimg-server backup` runs from another
process. The copy passes `PRAGMA integrity_check`, holds every write acknowledged before the backup
began and its photometry is all or nothing; restored under a new database, a server serves it, and a
watcher resuming from an event only the original had gets OUT_OF_RANGE.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import grpc
from dsa110.contimg.v1 import jobs_pb2

from conftest import make_stubs
from helpers_jobs import make_image, make_ms, measurement, record
from helpers_stress import CONSOLE_SCRIPT, ServerProcess, env_float, photometry_invariants, ro_connect

WRITE_S = env_float("CONTIMG_BACKUP_WRITE_S", 30.0)
CLIENTS = 4


async def _cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(CONSOLE_SCRIPT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    return int(proc.returncode or 0), out.decode()


async def test_backup_under_writes_then_restore(tmp_path: Path) -> None:
    (tmp_path / "live").mkdir()
    server = ServerProcess(tmp_path / "live")
    await server.start()
    acked: list[tuple[float, str]] = []  # (when acknowledged, job name)
    images: list[tuple[float, str]] = []  # (when acknowledged, image with its photometry)
    stop = asyncio.Event()

    async def client(n: int) -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = make_stubs(channel)
            ms = await make_ms(stubs, f"/data/ms/backup-{n}.ms", mid_mjd=60500.0 + n)
            i = 0
            while not stop.is_set():
                job = await stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=1)))
                await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name))
                acked.append((time.monotonic(), job.name))
                if i % 5 == 0:
                    image = await make_image(stubs, ms.name, f"/data/images/backup-{n}-{i}.fits", 60500.0 + i / 288)
                    batch = [
                        measurement(f"BK{n}{j:03d}", 120.0 + j * 0.01, 54.0, flux=0.01 + j * 1e-4) for j in range(50)
                    ]
                    await record(stubs, image.name, batch)
                    images.append((time.monotonic(), image.name))
                i += 1

    clients = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
    try:
        await asyncio.sleep(WRITE_S / 2)
        began = time.monotonic()
        dest = tmp_path / "copy.sqlite3"
        code, out = await _cli("backup", str(dest), "--database", str(server.database))
        assert code == 0, out
        assert "integrity ok" in out
        await asyncio.sleep(WRITE_S / 2)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    async with grpc.aio.insecure_channel(server.target) as channel:
        newest = (await make_stubs(channel).jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=1))).total_size
    assert server.terminate() == 0, server.log_tail()

    before = {name for t, name in acked if t < began}
    after = {name for t, name in acked if t > began + 60}  # none: a sanity bound on the clock
    assert len(before) > 100 and not after, (len(before), len(acked))
    conn = ro_connect(dest)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        in_copy = {f"jobs/{r[0]}" for r in conn.execute("SELECT id FROM jobs")}
        copied_images = {f"images/{r[0]}" for r in conn.execute("SELECT id FROM images")}
        last_sequence = conn.execute("SELECT max(sequence) FROM job_events").fetchone()[0]
    finally:
        conn.close()
    assert before <= in_copy, f"{len(before - in_copy)} acknowledged jobs missing from the backup"
    assert len(in_copy) < newest, "the backup holds writes made after it (or the clients stopped early)"
    assert {name for t, name in images if t < began} <= copied_images
    assert not photometry_invariants(dest, 50)  # each image's batch is wholly there or wholly absent

    # Restore into a new database and serve it.
    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    restored = restored_dir / "contimg.sqlite3"
    code, out = await _cli("restore", str(dest), "--database", str(restored))
    assert code == 0 and "restored" in out, out
    again = ServerProcess(restored_dir, name="again")
    await again.start()
    try:
        async with grpc.aio.insecure_channel(again.target) as channel:
            stubs = make_stubs(channel)
            for name in sorted(before)[:20]:
                assert (await stubs.jobs.GetJob(jobs_pb2.GetJobRequest(name=name))).state == jobs_pb2.Job.STATE_RUNNING
            # A watcher that had seen events the restored log does not hold is told so.
            call = stubs.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(after_sequence=last_sequence + 1000))
            try:
                await call.read()
                raise AssertionError("a resume past the restored log was accepted")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.OUT_OF_RANGE, err
    finally:
        assert again.terminate() == 0, again.log_tail()


async def test_backup_refuses_an_existing_destination_and_restore_a_bad_file(tmp_path: Path) -> None:
    db = tmp_path / "contimg.sqlite3"
    code, _ = await _cli("migrate", "--database", str(db))
    assert code == 0
    taken = tmp_path / "taken.sqlite3"
    taken.write_bytes(b"mine")
    code, out = await _cli("backup", str(taken), "--database", str(db))
    assert code != 0 and "exists" in out and taken.read_bytes() == b"mine"
    code, out = await _cli("restore", str(taken), "--database", str(db))
    assert code != 0 and "not a usable SQLite database" in out, out
    with sqlite3.connect(db) as conn:  # the database was left as it was
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

"""What the machine under the database does to a server: removed files, a full disk, a read-only
file, a schema from a newer release (the crash-proof issue, items 3 and 4).

Each fault is produced for real on a `contimg-server serve` subprocess with its defaults: the data
directory deleted with `rm -r`; a disk filled on a small tmpfs mounted for the test (root only: CI
runs as root; elsewhere the test is skipped, and under CI=1 it fails instead); a database file made
immutable with `chattr +i` (root) or read-only with chmod (others).
Every fault gets a clear status with an ErrorInfo reason, one log line (never a traceback), a
health status that tells the truth, and nothing acknowledged that is not stored.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from dsa110.contimg.server.storage.sqlite.migrations import MIGRATIONS
from dsa110.contimg.v1 import images_pb2, jobs_pb2, sources_pb2
from grpc_health.v1 import health_pb2

from conftest import make_stubs
from helpers import error_info
from helpers_jobs import make_images, measurement
from helpers_stress import CONSOLE_SCRIPT, SERVING, ServerProcess, health_status, until

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LATEST = max(version for version, _, _ in MIGRATIONS)
IS_ROOT = os.geteuid() == 0


async def _health(target: str, service: str = "") -> int:
    try:
        return await health_status(target, service)
    except grpc.aio.AioRpcError:
        return -1


async def eventually_health(target: str, status: int, service: str = "") -> None:
    for _ in range(200):
        if await _health(target, service) == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health of {service!r} never became {status}")


def _log(server: ServerProcess) -> str:
    return server.log_path.read_text(errors="replace")


# ---- the database removed under the server --------------------------------------------------------


async def test_a_removed_database_refuses_every_write_after_it(tmp_path: Path) -> None:
    """`rm -r` of the data directory: the server once acknowledged 1,335 more writes into the
    unlinked file, stayed SERVING, and a restart found an empty database. Now every write from the
    removal on fails UNAVAILABLE (DATABASE_REPLACED), health turns NOT_SERVING, one line is logged."""
    data = tmp_path / "data"
    server = ServerProcess(tmp_path, database=data / "contimg.sqlite3")  # its log stays outside `data`
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            jobs = make_stubs(channel).jobs
            job = await jobs.CreateJob(jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=1)))
            append = jobs_pb2.AppendJobLogRequest(name=job.name, lines=["before"])
            for _ in range(20):
                await jobs.AppendJobLog(append)
            shutil.rmtree(data)
            acknowledged_after = 0
            refused = None
            for _ in range(50):
                try:
                    await jobs.AppendJobLog(append)
                    acknowledged_after += 1
                except grpc.aio.AioRpcError as err:
                    refused = err
            assert acknowledged_after == 0
            assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(refused).reason == "DATABASE_REPLACED" and "restart" in refused.details()
            with pytest.raises(grpc.aio.AioRpcError) as other:  # every kind of write, not one table's
                await make_images(make_stubs(channel), [60000.0], "after-removal")
            assert error_info(other.value).reason == "DATABASE_REPLACED"
        await eventually_health(server.target, NOT_SERVING)
        await eventually_health(server.target, NOT_SERVING, "contimg.storage")
        log = _log(server)
        assert log.count("writes fail") == 1 and "Traceback" not in log, server.log_tail()
    finally:
        server.terminate()


# ---- a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs: a disk that really fills up."""
    if not IS_ROOT or shutil.which("mount") is None:
        if os.environ.get("CI"):
            pytest.fail("the disk-full test needs root to mount a tmpfs (CI runs as root)")
        pytest.skip("needs root to mount a small tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave_bytes: int) -> Path:
    """A file taking all the disk's free space but `leave_bytes`."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as out:
        out.write(b"\0" * max(free - leave_bytes, 0))
    return filler


async def test_a_full_disk_refuses_writes_clearly_and_recovers_without_losing_any(
    tmp_path: Path, small_disk: Path
) -> None:
    """Photometry until the disk is full: RESOURCE_EXHAUSTED with reason STORAGE_FULL (it was
    INTERNAL with three tracebacks a call, which clients do not retry), one log line, health
    NOT_SERVING; space freed: health SERVING again by itself, writes succeed, and every batch that
    was acknowledged is there."""
    server = ServerProcess(tmp_path, database=small_disk / "contimg.sqlite3")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = make_stubs(channel)
            images = await make_images(stubs, [60000.0 + i for i in range(60)], "full")
            filler = _fill(small_disk, 2 * 1024 * 1024)
            acknowledged: list[str] = []
            full = None
            for n, image in enumerate(images):
                batch = [measurement(f"F{n:02d}x{i:04d}", 10.0 + i * 0.001, 20.0) for i in range(1000)]
                try:
                    await stubs.sources.RecordPhotometry(
                        sources_pb2.RecordPhotometryRequest(image=image.name, measurements=batch)
                    )
                    acknowledged.append(image.name)
                except grpc.aio.AioRpcError as err:
                    full = err
                    break
            assert full is not None, "the disk never filled"
            assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, full.details()
            assert error_info(full).reason == "STORAGE_FULL" and "full" in full.details()
            await eventually_health(server.target, NOT_SERVING)
            for n, image in enumerate(images[len(acknowledged) : len(acknowledged) + 3]):  # refused, one line
                batch = [measurement(f"G{n:02d}x{i:04d}", 10.0 + i * 0.001, 21.0) for i in range(1000)]
                with pytest.raises(grpc.aio.AioRpcError) as again:
                    await stubs.sources.RecordPhotometry(
                        sources_pb2.RecordPhotometryRequest(image=image.name, measurements=batch)
                    )
                assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            log = _log(server)
            assert log.count("writes fail") == 1 and "Traceback" not in log, server.log_tail()

            filler.unlink()
            await eventually_health(server.target, SERVING)  # the monitor's probe write got through
            last = images[-1]
            reply = await stubs.sources.RecordPhotometry(
                sources_pb2.RecordPhotometryRequest(image=last.name, measurements=[measurement("H", 1.0, 2.0)])
            )
            assert reply.recorded_count == 1
            for name in acknowledged:
                got = await stubs.images.GetImage(images_pb2.GetImageRequest(name=name))
                assert got.photometry_count == 1000
        assert "writes succeed again" in _log(server)
    finally:
        server.terminate()
    with sqlite3.connect(small_disk / "contimg.sqlite3") as conn:
        counted = conn.execute("SELECT count(*) FROM photometry").fetchone()[0]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    assert counted == 1000 * len(acknowledged) + 1


# ---- startup: a read-only file, a newer schema ------------------------------------------------------


def _serve_once(database: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args, "--database", str(database), "--port", "0"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip


def _one_clear_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("contimg-server: ") and all(w in last for w in words), result.stderr


def test_a_read_only_database_stops_startup_with_one_clear_line(tmp_path: Path) -> None:
    database = tmp_path / "contimg.sqlite3"
    assert _serve_once(database, "migrate").returncode == 0
    if IS_ROOT:  # root writes through file modes: make the file immutable instead
        subprocess.run(["chattr", "+i", str(database)], check=True)
    else:
        database.chmod(0o444)
    try:
        result = _serve_once(database, "serve")
    finally:
        if IS_ROOT:
            subprocess.run(["chattr", "-i", str(database)], check=True)
    _one_clear_line(result, str(database), "readonly")


def test_a_database_migrated_by_a_newer_release_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "contimg.sqlite3"
    assert _serve_once(database, "migrate").returncode == 0
    with sqlite3.connect(database) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
    conn.close()
    for command in ("serve", "migrate"):
        _one_clear_line(_serve_once(database, command), "schema version 99", f"this server's {LATEST}")
    with sqlite3.connect(database) as conn:  # and nothing was changed
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (99,)
    conn.close()


async def test_health_reports_storage_faults_under_its_own_name_too(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    await server.start()
    try:
        assert await health_status(server.target, "contimg.storage") == SERVING
    finally:
        server.terminate()
    await until(lambda: server.proc is not None and server.proc.poll() is not None, "the server to stop")


# ---- the database made read-only while served -----------------------------------------------------


@pytest.mark.skipif(not IS_ROOT and not os.environ.get("CI"), reason="chattr +i needs root (CI runs as root)")
async def test_health_flips_on_a_read_only_database_and_back(tmp_path: Path) -> None:
    """The file and its WAL made immutable under a serving server: the write fails UNAVAILABLE and
    leaves nothing, health turns NOT_SERVING; writable again, health comes back by itself (the
    monitor's own probe write, health.py) and writes succeed."""
    assert IS_ROOT, "CI runs as root: chattr needs it"
    server = ServerProcess(tmp_path)
    await server.start()
    database = tmp_path / "contimg.sqlite3"
    files = [str(database), f"{database}-wal"]
    job = jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE))
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            jobs = make_stubs(channel).jobs
            await jobs.CreateJob(job)
            await asyncio.to_thread(subprocess.run, ["chattr", "+i", *files], check=True)
            try:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await jobs.CreateJob(job)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                await eventually_health(server.target, NOT_SERVING)
                await eventually_health(server.target, NOT_SERVING, "contimg.storage")
            finally:
                await asyncio.to_thread(subprocess.run, ["chattr", "-i", *files], check=True)
            await eventually_health(server.target, SERVING)
            await eventually_health(server.target, SERVING, "contimg.storage")
            await jobs.CreateJob(job)
            listed = await jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=10))
            assert len(listed.jobs) == 2  # the refused write left nothing
        assert "Traceback" not in _log(server)
    finally:
        await asyncio.to_thread(subprocess.run, ["chattr", "-i", *files], check=False)
        assert server.terminate() == 0, server.log_tail()

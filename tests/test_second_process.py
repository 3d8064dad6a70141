"""Another process on the same database files never takes the server down (crash-proof issue, item 2).

SQLite's locks on the `-shm` file are POSIX (fcntl) locks, which a process loses when it closes ANY
descriptor of that file. The server once mapped the WAL index through a descriptor it then
closed: its locks vanished, and the next process to open the database believed it was alone and
reset the WAL index under the running server (SIGBUS, or "database disk image is malformed").
Here a server serves reads and writes while another process opens and closes the database a
thousand times, checkpoints with TRUNCATE and takes backups with SQLite's backup API.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import grpc
from dsa110.contimg.v1 import images_pb2, jobs_pb2

from conftest import make_stubs
from helpers_jobs import make_images, measurement, record
from helpers_stress import SERVING, ServerProcess, alive, env_int, health_status, until, write_processes_of

OPENS = env_int("CONTIMG_SECOND_PROCESS_OPENS", 1000)

# The other process: plain sqlite3 from the standard library, as an operator's script, a backup
# tool or `sqlite3` on the file would be. Prints one line per thing it did.
OTHER = r"""
import sqlite3, sys
database, backups, opens = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(opens):
    conn = sqlite3.connect(database, timeout=10)
    try:
        conn.execute("SELECT count(*) FROM images").fetchone()
        if i % 100 == 50:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        if i % 250 == 125:
            with sqlite3.connect(f"{backups}/backup-{i}.sqlite3") as copy:
                conn.backup(copy)
            copy.close()
    finally:
        conn.close()
print("opened", opens)
"""


async def test_other_processes_opening_the_database_never_break_the_server(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)  # the defaults
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = make_stubs(channel)
            images = await make_images(stubs, [60000.0 + i for i in range(20)])
            # The write process holds the database open beside the server; killed (it is started
            # again on the next ingest), it leaves the server as the only holder: the state in which
            # an opener that cannot see the server's locks believes it is alone.
            [writer] = await write_processes_of(server.pid)
            os.kill(writer, signal.SIGKILL)
            await until(lambda: not alive(writer), "the write process to exit")
            expected = {img.name: img for img in images}
            backups = tmp_path / "backups"
            backups.mkdir()
            other = await asyncio.create_subprocess_exec(
                sys.executable, "-c", OTHER, str(server.database), str(backups), str(OPENS),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            reads = writes = 0

            async def load() -> None:
                nonlocal reads, writes
                job = await stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=1)))
                while other.returncode is None:
                    for name, image in expected.items():
                        got = await stubs.images.GetImage(images_pb2.GetImageRequest(name=name), timeout=10)
                        assert got == image
                        reads += 1
                    page = await stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=100), timeout=10)
                    assert sorted(i.name for i in page.images) == sorted(expected) and page.total_size == len(expected)
                    # Writes keep the WAL growing (and the WAL index changing) between the checkpoints.
                    await stubs.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=job.name, lines=["x"]), timeout=10)
                    writes += 1
                    assert server.proc is not None and server.proc.poll() is None, server.log_tail()

            loader = asyncio.ensure_future(load())
            out, err = await other.communicate()
            await loader
        assert other.returncode == 0, err.decode()
        assert out.decode().strip() == f"opened {OPENS}"
        assert reads > 0 and writes > 0
        assert server.proc is not None and server.proc.poll() is None, server.log_tail()
        assert await health_status(server.target) == SERVING
        copies = sorted(backups.iterdir())
        assert len(copies) == len(range(125, OPENS, 250))
        for copy in copies:
            with sqlite3.connect(copy) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                assert conn.execute("SELECT count(*) FROM images").fetchone() == (len(expected),)
            conn.close()
        async with grpc.aio.insecure_channel(server.target) as channel:  # the write process starts again
            reply = await record(make_stubs(channel), images[0].name, [measurement("J000001.0+000001", 0.25, 0.28)])
            assert reply.recorded_count == 1
        log = server.log_path.read_text(errors="replace")
        assert "malformed" not in log and "Traceback" not in log, server.log_tail(80)
    finally:
        assert server.terminate() == 0, server.log_tail()

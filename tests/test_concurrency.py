"""Concurrent writers across processes, deadlines and cancellation, on both engines (ENGINES).

* Two `contimg-server serve` processes on one database take many concurrent writes (jobs and
  their transitions, images, log appends to one shared job) from clients that alternate between
  them: every call succeeds (never UNAVAILABLE / "database is locked"), and the final state is
  exactly the sum of the writes (no lost update of a counter, no duplicate log line number).
* A client deadline on a slow read (a cone search over ~50k sources) returns DEADLINE_EXCEEDED,
  and afterwards the server holds no transaction, its reader pool is intact, and a write succeeds
  at once.
* A RecordPhotometry whose client hits its deadline, or cancels, is either stored in full or not
  at all, at every instant (read-only snapshots of the database while it runs); afterwards no write
  transaction is left open.

Sizes: CONTIMG_CONC_CLIENTS (8), CONTIMG_CONC_WRITES (50 per client), CONTIMG_SLOW_SOURCES
(50000), CONTIMG_DEADLINE_ROWS (20000; the issue's 100000 in a manual run).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import sqlite3
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from dsa110.contimg.server.domain import sky
from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2
from grpc_health.v1 import health_pb2

from conftest import PostgresDatabases, Stubs, make_stubs
from helpers import error_info
from helpers_stress import (
    DirectSQL,
    ServerProcess,
    env_int,
    health_status,
    is_postgres,
    no_transaction_open,
    photometry_problems,
)

CLIENTS = env_int("CONTIMG_CONC_CLIENTS", 8)
WRITES = env_int("CONTIMG_CONC_WRITES", 50)
SLOW_SOURCES = env_int("CONTIMG_SLOW_SOURCES", 50_000)
DEADLINE_ROWS = env_int("CONTIMG_DEADLINE_ROWS", 20_000)
Job = jobs_pb2.Job
MS = measurement_sets_pb2.MeasurementSet
SHARED_JOB = "jobs/shared-log"
ENGINES = ("sqlite", "postgres")


async def _database(engine: str, tmp_path: Path, postgres_databases: PostgresDatabases) -> Path | str:
    """A new database for the test's server processes: a SQLite file, or a PostgreSQL URL."""
    return await postgres_databases.new() if engine == "postgres" else tmp_path / "contimg.sqlite3"


async def _ok(call: Awaitable[Any], what: str) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        raise AssertionError(f"{what}: {err.code()} {err.details()}") from None


async def _writer(k: int, targets: list[Stubs], ms_name: str) -> dict[str, int]:
    """WRITES writes, alternating between the two processes: create/start/succeed a job, an image, a log append."""
    done = {"jobs": 0, "succeeded": 0, "images": 0, "log_lines": 0}
    job = ""
    for i in range(WRITES):
        stubs = targets[(i + k) % 2]
        op = i % 5
        what = f"client {k} write {i} (op {op})"
        if op == 0:
            job = f"jobs/c{k}-j{i}"
            await _ok(
                stubs.jobs.CreateJob(
                    jobs_pb2.CreateJobRequest(
                        job=Job(type=Job.TYPE_IMAGE, measurement_set=ms_name), job_id=job.removeprefix("jobs/")
                    ),
                    timeout=30,
                ),
                what,
            )
            done["jobs"] += 1
        elif op == 1:
            started = await _ok(stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=job), timeout=30), what)
            assert started.state == Job.STATE_RUNNING and started.attempt == 1
        elif op == 2:
            ended = await _ok(stubs.jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=job), timeout=30), what)
            assert ended.state == Job.STATE_SUCCEEDED
            done["succeeded"] += 1
        elif op == 3:
            await _ok(
                stubs.images.CreateImage(
                    images_pb2.CreateImageRequest(
                        image=images_pb2.Image(path=f"/conc/c{k}/img{i}.fits", measurement_set=ms_name)
                    ),
                    timeout=30,
                ),
                what,
            )
            done["images"] += 1
        else:
            lines = [f"c{k} w{i} line {n}" for n in range(2)]
            await _ok(
                stubs.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=SHARED_JOB, lines=lines), timeout=30), what
            )
            done["log_lines"] += len(lines)
    return done


async def test_two_processes_share_one_database(
    tmp_path: Path, engine: str, postgres_databases: PostgresDatabases
) -> None:
    database = await _database(engine, tmp_path, postgres_databases)
    servers = [
        ServerProcess(
            tmp_path,
            database=database,
            name=f"server{n}",
        )
        for n in range(2)
    ]
    try:
        for server in servers:
            await server.start()
        async with (
            grpc.aio.insecure_channel(servers[0].target) as ch0,
            grpc.aio.insecure_channel(servers[1].target) as ch1,
        ):
            targets = [make_stubs(ch0), make_stubs(ch1)]
            ms_names = []
            for k in range(CLIENTS):
                ms = await targets[k % 2].ms.CreateMeasurementSet(
                    measurement_sets_pb2.CreateMeasurementSetRequest(measurement_set=MS(path=f"/conc/c{k}.ms"))
                )
                ms_names.append(ms.name)
            await targets[1].jobs.CreateJob(
                jobs_pb2.CreateJobRequest(job=Job(type=Job.TYPE_PIPELINE), job_id=SHARED_JOB.removeprefix("jobs/"))
            )
            started = time.monotonic()
            results = await asyncio.gather(*(_writer(k, targets, ms_names[k]) for k in range(CLIENTS)))
            elapsed = time.monotonic() - started
            jobs = sum(r["jobs"] for r in results)
            succeeded = sum(r["succeeded"] for r in results)
            images = sum(r["images"] for r in results)
            log_lines = sum(r["log_lines"] for r in results)
            print(f"\n{CLIENTS} clients x {WRITES} writes through 2 processes in {elapsed:.2f} s, all OK")

            # The database: exact counts, no lost counter update, no duplicate or missing log line.
            sql = await DirectSQL.connect(database, read_only=True)
            try:
                tables = ("jobs", "images", "job_logs")
                counts = {t: (await sql.fetch(f"SELECT count(*) FROM {t}"))[0][0] for t in tables}
                assert counts["jobs"] == jobs + 1
                assert counts["images"] == images
                assert counts["job_logs"] == log_lines
                numbers = [r[0] for r in await sql.fetch("SELECT line_number FROM job_logs ORDER BY line_number")]
                assert numbers == list(range(1, log_lines + 1))
                assert (await sql.fetch("SELECT log_line_count FROM jobs WHERE id = 'shared-log'"))[0][0] == log_lines
                per_ms = dict(await sql.fetch("SELECT path, image_count FROM measurement_sets"))
                by_ms = dict(await sql.fetch("SELECT ms_path, count(*) FROM images GROUP BY ms_path"))
                assert per_ms == {p: by_ms.get(p, 0) for p in per_ms}, "an image_count increment was lost"
                sequences = [r[0] for r in await sql.fetch("SELECT sequence FROM job_events ORDER BY sequence")]
                assert len(sequences) == len(set(sequences)) == 1 + jobs + 2 * succeeded
            finally:
                await sql.close()

            # Both processes agree through the API at once: reused totals end with any commit.
            for stubs in targets:
                listing = await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(filter="state = SUCCEEDED"))
                assert listing.total_size == succeeded
                assert (await stubs.images.ListImages(images_pb2.ListImagesRequest())).total_size == images
                shared = await stubs.jobs.GetJob(jobs_pb2.GetJobRequest(name=SHARED_JOB))
                assert shared.log_line_count == log_lines
                for k, name in enumerate(ms_names):
                    ms = await stubs.ms.GetMeasurementSet(measurement_sets_pb2.GetMeasurementSetRequest(name=name))
                    assert ms.image_count == results[k]["images"]
        for server in servers:
            assert server.terminate() == 0, server.log_tail()
    finally:
        for server in servers:
            server.kill()


# ---- deadlines on a slow read -------------------------------------------------------------------


def _scattered_sources(n: int, ra: float, dec: float, radius: float) -> list[tuple[int, str, float, float, int, int]]:
    """n sources scattered within `radius` of (ra, dec): (sid, id, ra, dec, create_time, update_time)."""
    rng = random.Random(110)
    now = time.time_ns() // 1000
    rows = []
    for sid in range(1, n + 1):
        r = radius * math.sqrt(rng.random())
        theta = rng.uniform(0, 2 * math.pi)
        s_dec = dec + r * math.sin(theta)
        s_ra = (ra + r * math.cos(theta) / math.cos(math.radians(dec))) % 360.0
        rows.append((sid, f"SLOW{sid:06d}", s_ra, s_dec, now, now))
    return rows


async def _insert_sources(database: Path | str, n: int, ra: float, dec: float, radius: float) -> None:
    """n sources scattered within `radius` of (ra, dec), written straight into the database (fast)."""
    rows = _scattered_sources(n, ra, dec, radius)
    if is_postgres(database):  # the position index is the table's own (storage/postgres/sky.py)
        pg = await asyncpg.connect(str(database))
        try:
            columns = ["id", "ra_deg", "dec_deg", "create_time", "update_time"]
            await pg.copy_records_to_table("sources", records=[r[1:] for r in rows], columns=columns)
            await pg.execute("VACUUM ANALYZE sources")  # as autovacuum would after a bulk load: plans use the indexes
        finally:
            await pg.close()
        return
    conn = sqlite3.connect(str(database))
    try:
        with conn:
            conn.executemany(
                "INSERT INTO sources (sid, id, ra_deg, dec_deg, create_time, update_time) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.executemany(
                "INSERT INTO source_positions VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r[0], *sky.point_box(r[2], r[3])) for r in rows],
            )
    finally:
        conn.close()


async def _expect_deadline(call: Awaitable[Any]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value.details()


async def test_deadline_on_a_slow_read_leaves_nothing_behind(
    tmp_path: Path, engine: str, postgres_databases: PostgresDatabases
) -> None:
    database = await _database(engine, tmp_path, postgres_databases)
    server = ServerProcess(tmp_path, database=database, args=["--readers", "4"])
    try:
        await server.start()  # creates the schema
        assert server.terminate() == 0
        await _insert_sources(database, SLOW_SOURCES, 180.0, 45.0, 5.0)
        await server.start()
        cone = sources_pb2.SearchSourcesRequest(ra_deg=180.0, dec_deg=45.0, radius_deg=10.0, page_size=1000)
        # Results are reused until the next commit (Database.cached): every slow call below asks for
        # a cone of its own, so each one really runs the query.
        cones = (
            sources_pb2.SearchSourcesRequest(ra_deg=180.0, dec_deg=45.0, radius_deg=10.0 - k * 1e-9, page_size=1000)
            for k in itertools.count(1)
        )
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = make_stubs(channel)
            t0 = time.monotonic()
            full = await stubs.sources.SearchSources(cone, timeout=60)
            slow_s = time.monotonic() - t0
            assert full.total_size == SLOW_SOURCES
            # Three times as many timed-out searches as reader connections, some at once.
            for _ in range(4):
                await _expect_deadline(stubs.sources.SearchSources(next(cones), timeout=0.01))
            await asyncio.gather(
                *(_expect_deadline(stubs.sources.SearchSources(next(cones), timeout=0.02)) for _ in range(8))
            )
            listing = sources_pb2.ListSourcesRequest(filter="catalog_flux_mjy >= 0", order_by="v desc", page_size=1000)
            await _expect_deadline(stubs.sources.ListSources(listing, timeout=0.001))
            # Nothing leaked: a write at once, no transaction held, every reader back in the pool.
            t0 = time.monotonic()
            await stubs.ms.CreateMeasurementSet(
                measurement_sets_pb2.CreateMeasurementSetRequest(measurement_set=MS(path="/after/deadline.ms")),
                timeout=5,
            )
            assert time.monotonic() - t0 < 2.0
            if is_postgres(database):
                # A cancelled statement ends on the server when its cancel request lands, a moment
                # after the client gave up: wait for that, within a deadline.
                await until_settled(database)
            assert await no_transaction_open(database)
            again = await asyncio.gather(*(stubs.sources.SearchSources(next(cones), timeout=60) for _ in range(8)))
            assert all(r.total_size == SLOW_SOURCES for r in again)
            assert await health_status(server.target) == health_pb2.HealthCheckResponse.SERVING
            print(
                f"\ncone search over {SLOW_SOURCES} sources: {slow_s * 1000:.0f} ms; "
                "13 deadline-exceeded calls, nothing leaked"
            )
        assert server.terminate() == 0, server.log_tail()

        # The server's own statement timeout interrupts the query the same way: afterwards every
        # pooled reader still works (an interrupted connection once stayed "interrupted" for good).
        # Shorter than the cone search's queries on either engine (~100 ms), longer than a small
        # page's (its total counted over a band of ~1,000 sources by the dec_deg index). PostgreSQL
        # gets more: a statement's first run there costs a few ms more than SQLite's.
        timeout_s = "0.03" if is_postgres(database) else "0.005"
        server.args += ["--statement-timeout-s", timeout_s]
        await server.start()
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = make_stubs(channel)
            timed_out = 0
            for _ in range(8):
                try:
                    await stubs.sources.SearchSources(next(cones), timeout=60)
                except grpc.aio.AioRpcError as err:
                    # Not UNAVAILABLE, which clients retry: the same query would time out again.
                    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
                    assert error_info(err).reason == "QUERY_TIMEOUT"
                    timed_out += 1
            print(f"statement timeout {timeout_s} s: {timed_out} of 8 cone searches timed out")
            assert timed_out > 0, "the statement timeout never fired"
            small = sources_pb2.ListSourcesRequest(page_size=5, filter="dec_deg < 40.5")
            pages = await asyncio.gather(*(stubs.sources.ListSources(small, timeout=30) for _ in range(16)))
            assert all(len(p.sources) == 5 for p in pages)
        assert server.terminate() == 0, server.log_tail()
    finally:
        server.kill()


# ---- an interrupted RecordPhotometry is all or nothing ------------------------------------------


def _batch(n: int, image: str, tag: str) -> sources_pb2.RecordPhotometryRequest:
    return sources_pb2.RecordPhotometryRequest(
        image=image,
        measurements=[
            sources_pb2.PhotometryMeasurement(
                source=f"sources/{tag}{i:06d}",
                ra_deg=100.0 + (i % 300) * 0.01,
                dec_deg=30.0 + (i // 300) * 0.01,
                peak_flux_jy=0.01 + (i % 7) * 0.001,
                peak_flux_err_jy=0.001,
                quality_flag="good",
            )
            for i in range(n)
        ],
    )


async def _image_rows(sql: DirectSQL, image_id: int) -> tuple[int, int]:
    """The image's photometry_count and its photometry rows, in one statement (one snapshot)."""
    [(stored, rows)] = await sql.fetch(
        "SELECT (SELECT photometry_count FROM images WHERE id = ?), "
        "(SELECT count(*) FROM photometry WHERE image_id = ?)",
        image_id,
        image_id,
    )
    return int(stored), int(rows)


async def _watch_all_or_nothing(database: Path | str, image_id: int, n: int, stop: asyncio.Event) -> int:
    """Snapshot the image's photometry until `stop`: every snapshot has 0 or n rows, matching the count."""
    snapshots = 0
    sql = await DirectSQL.connect(database, read_only=True)
    try:
        while not stop.is_set():
            stored, rows = await _image_rows(sql, image_id)
            assert rows in (0, n) and stored == rows, f"partial batch visible: photometry_count {stored}, {rows} rows"
            snapshots += 1
            await asyncio.sleep(0.02)
    finally:
        await sql.close()
    return snapshots


async def until_settled(database: Path | str, quiet_s: float = 0.25, wait_s: float = 60.0) -> None:
    """Wait until no server has held a transaction open on the database for `quiet_s` (a write
    still being decoded has not begun one yet)."""
    deadline = time.monotonic() + wait_s
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        if not await no_transaction_open(database):
            assert time.monotonic() < deadline, f"a transaction still open after {wait_s:.0f} s"
            quiet_since = time.monotonic()
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("interruption", ["deadline", "cancel"])
async def test_interrupted_record_photometry_is_all_or_nothing(
    tmp_path: Path, interruption: str, engine: str, postgres_databases: PostgresDatabases
) -> None:
    database = await _database(engine, tmp_path, postgres_databases)
    server = ServerProcess(tmp_path, database=database)
    try:
        await server.start()
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = make_stubs(channel)
            ms = await stubs.ms.CreateMeasurementSet(
                measurement_sets_pb2.CreateMeasurementSetRequest(measurement_set=MS(path="/cut/a.ms", mid_mjd=60976.5))
            )
            image = await stubs.images.CreateImage(
                images_pb2.CreateImageRequest(image=images_pb2.Image(path="/cut/a.fits", measurement_set=ms.name))
            )
            image_id = int(image.name.removeprefix("images/"))
            request = _batch(DEADLINE_ROWS, image.name, "CUT")
            stop = asyncio.Event()
            watcher = asyncio.create_task(_watch_all_or_nothing(database, image_id, DEADLINE_ROWS, stop))
            t0 = time.monotonic()
            if interruption == "deadline":
                await _expect_deadline(stubs.sources.RecordPhotometry(request, timeout=0.3))
            else:
                call = stubs.sources.RecordPhotometry(request)
                await asyncio.sleep(0.3)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
            # On SQLite the next write queues behind the interrupted one (writes are serialized) and
            # then runs; on PostgreSQL writes run side by side: the interrupted one ends on its own.
            await stubs.ms.CreateMeasurementSet(
                measurement_sets_pb2.CreateMeasurementSetRequest(measurement_set=MS(path="/cut/next.ms")), timeout=120
            )
            if is_postgres(database):
                await until_settled(database)
            settled_s = time.monotonic() - t0
            stop.set()
            snapshots = await watcher
            sql = await DirectSQL.connect(database, read_only=True)
            try:
                stored, rows = await _image_rows(sql, image_id)
            finally:
                await sql.close()
            assert rows in (0, DEADLINE_ROWS) and stored == rows
            assert not await photometry_problems(database)
            assert await no_transaction_open(database), "a write transaction is still open"
            t0 = time.monotonic()
            await stubs.ms.CreateMeasurementSet(
                measurement_sets_pb2.CreateMeasurementSetRequest(measurement_set=MS(path="/cut/immediate.ms")),
                timeout=5,
            )
            assert time.monotonic() - t0 < 2.0, "the write after an interrupted call was not immediate"
            # The outcome is final and readable through the API.
            got = await stubs.images.GetImage(images_pb2.GetImageRequest(name=image.name))
            assert got.photometry_count == rows
            if rows:  # a retry is refused: the interrupted call counts
                with pytest.raises(grpc.aio.AioRpcError) as retry:
                    await stubs.sources.RecordPhotometry(request, timeout=120)
                assert retry.value.code() == grpc.StatusCode.ALREADY_EXISTS
            else:  # nothing was stored: a retry records the whole batch
                assert (await stubs.sources.RecordPhotometry(request, timeout=120)).recorded_count == DEADLINE_ROWS
            outcome = "stored in full" if rows else "not stored"
            print(
                f"\n{interruption}: RecordPhotometry of {DEADLINE_ROWS} rows {outcome}; "
                f"settled after {settled_s:.1f} s; {snapshots} snapshots, none partial"
            )
        assert server.terminate() == 0, server.log_tail()
    finally:
        server.kill()

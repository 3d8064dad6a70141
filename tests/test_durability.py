"""Durability: acknowledged writes survive SIGKILL, and no half-written batch is ever visible.

Several clients drive acknowledged writes (measurement-set upserts and creates, images,
photometry batches, job creation and transitions) against `contimg-server serve` running as a
real subprocess with its default `--synchronous FULL`. The server is SIGKILLed at a random moment
(no shutdown code runs), restarted on the same file, and then:

* every write a client saw acknowledged is there, read back through the API;
* a write that was in flight at the kill is either entirely there or entirely absent;
* for every image, photometry_count is 0 or the full batch size and equals its photometry rows,
  and every source's detection_count equals its photometry rows (read directly from the database).

On SQLite and on PostgreSQL.

CONTIMG_KILL_ROUNDS (default 3) sets the number of kill/restart rounds; CONTIMG_DURABILITY_CLIENTS,
CONTIMG_DURABILITY_BATCH and CONTIMG_KILL_MAX_S the load; CONTIMG_SEED replays a run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from pathlib import Path

import grpc
import pytest
from dsa110.contimg.server.config import ServerConfig
from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2

from conftest import PostgresDatabases, make_stubs
from helpers_stress import ServerProcess, env_float, env_int, photometry_problems, ro_connect

pytestmark = pytest.mark.slow
ENGINES = ("sqlite", "postgres")

ROUNDS = env_int("CONTIMG_KILL_ROUNDS", 3)
CLIENTS = env_int("CONTIMG_DURABILITY_CLIENTS", 4)
BATCH = env_int("CONTIMG_DURABILITY_BATCH", 300)
KILL_MIN_S = env_float("CONTIMG_KILL_MIN_S", 0.3)
KILL_MAX_S = env_float("CONTIMG_KILL_MAX_S", 1.5)
SOURCE_POOL = 3 * BATCH
MS = measurement_sets_pb2.MeasurementSet
Job = jobs_pb2.Job

# Job states in the order a job moves through them here.
_JOB_ORDER = [Job.STATE_PENDING, Job.STATE_RUNNING, Job.STATE_SUCCEEDED]


@dataclasses.dataclass
class Ledger:
    """What the clients were told: acknowledged writes, and the one write per client in flight at the kill."""

    ms_created: set[str] = dataclasses.field(default_factory=set)
    # Counter MS per client: path -> last acknowledged iteration, and the one in flight (if any).
    upserts: dict[str, int] = dataclasses.field(default_factory=dict)
    upsert_in_flight: dict[str, int] = dataclasses.field(default_factory=dict)
    images: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> path
    image_in_flight: set[str] = dataclasses.field(default_factory=set)  # paths
    photometry: set[str] = dataclasses.field(default_factory=set)  # image names with an acknowledged batch
    jobs: dict[str, int] = dataclasses.field(default_factory=dict)  # name -> acknowledged state
    job_in_flight: dict[str, int] = dataclasses.field(default_factory=dict)  # name -> state being entered
    acked_calls: int = 0
    unknown_calls: int = 0


def _measurements(rng: random.Random) -> list[sources_pb2.PhotometryMeasurement]:
    chosen = rng.sample(range(SOURCE_POOL), BATCH)
    return [
        sources_pb2.PhotometryMeasurement(
            source=f"sources/DUR{i:06d}",
            ra_deg=120.0 + (i % 100) * 0.01,
            dec_deg=54.0 + (i // 100) * 0.01,
            catalog_flux_mjy=12.5,
            peak_flux_jy=rng.uniform(0.001, 1.0),
            peak_flux_err_jy=0.001,
            integrated_flux_jy=0.01,
            snr=10.0,
            local_rms_jy=0.001,
            quality_flag="good",
        )
        for i in chosen
    ]


async def _client(target: str, round_no: int, client_no: int, ledger: Ledger, seed: int) -> None:
    """Write until the server dies; every acknowledged result goes into the ledger at once."""
    rng = random.Random(seed)
    counter_path = f"/durability/c{client_no}/counter.ms"
    async with grpc.aio.insecure_channel(target) as channel:
        stubs = make_stubs(channel)
        iteration = ledger.upserts.get(counter_path, 0)
        try:
            while True:
                iteration += 1
                tag = f"r{round_no}-c{client_no}-{iteration}"
                # 1. Upsert of the client's counter MS (the pipeline's UpdateMeasurementSet pattern).
                ledger.upsert_in_flight[counter_path] = iteration
                await stubs.ms.UpdateMeasurementSet(
                    measurement_sets_pb2.UpdateMeasurementSetRequest(
                        measurement_set=MS(path=counter_path, field_name=f"iter-{iteration}", mid_mjd=60976.5),
                        update_mask={"paths": ["field_name", "mid_mjd"]},
                        allow_missing=True,
                    ),
                    timeout=30,
                )
                ledger.upserts[counter_path] = iteration
                del ledger.upsert_in_flight[counter_path]
                ledger.acked_calls += 1
                # 2. A new MS, 3. an image of it, 4. its photometry batch.
                ms_path = f"/durability/ms/{tag}.ms"
                ms = await stubs.ms.CreateMeasurementSet(
                    measurement_sets_pb2.CreateMeasurementSetRequest(
                        measurement_set=MS(path=ms_path, mid_mjd=60976.5 + iteration / 1e4, stage=MS.STAGE_CONVERTED)
                    ),
                    timeout=30,
                )
                ledger.ms_created.add(ms_path)
                ledger.acked_calls += 1
                image_path = f"/durability/images/{tag}.fits"
                ledger.image_in_flight.add(image_path)
                image = await stubs.images.CreateImage(
                    images_pb2.CreateImageRequest(
                        image=images_pb2.Image(
                            path=image_path,
                            measurement_set=ms.name,
                            center_ra_deg=120.5,
                            center_dec_deg=54.5,
                            size_x_px=512,
                            size_y_px=512,
                            cell_size_arcsec=6.0,
                        )
                    ),
                    timeout=30,
                )
                ledger.images[image.name] = image_path
                ledger.image_in_flight.discard(image_path)
                ledger.acked_calls += 1
                reply = await stubs.sources.RecordPhotometry(
                    sources_pb2.RecordPhotometryRequest(image=image.name, measurements=_measurements(rng)), timeout=60
                )
                assert reply.recorded_count == BATCH
                ledger.photometry.add(image.name)
                ledger.acked_calls += 1
                # 5. A job through PENDING -> RUNNING -> SUCCEEDED.
                job_name = f"jobs/dur-{tag}"
                ledger.job_in_flight[job_name] = Job.STATE_PENDING
                await stubs.jobs.CreateJob(
                    jobs_pb2.CreateJobRequest(
                        job=Job(type=Job.TYPE_IMAGE, measurement_set=ms.name), job_id=job_name.removeprefix("jobs/")
                    ),
                    timeout=30,
                )
                ledger.jobs[job_name] = Job.STATE_PENDING
                ledger.acked_calls += 1
                ledger.job_in_flight[job_name] = Job.STATE_RUNNING
                await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=job_name), timeout=30)
                ledger.jobs[job_name] = Job.STATE_RUNNING
                ledger.acked_calls += 1
                ledger.job_in_flight[job_name] = Job.STATE_SUCCEEDED
                await stubs.jobs.SucceedJob(
                    jobs_pb2.SucceedJobRequest(name=job_name, artifacts=[image.name]), timeout=30
                )
                ledger.jobs[job_name] = Job.STATE_SUCCEEDED
                del ledger.job_in_flight[job_name]
                ledger.acked_calls += 1
        except grpc.aio.AioRpcError as err:
            # The kill: the call in flight has an unknown outcome. Anything else is a failure.
            assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), (
                f"client {client_no}: unexpected {err.code()} {err.details()}"
            )
            ledger.unknown_calls += 1


async def _list_all(call: object, request: object, field: str) -> list[object]:
    out: list[object] = []
    token = ""
    while True:
        request.page_token = token  # type: ignore[attr-defined]
        page = await call(request, timeout=60)  # type: ignore[operator]
        out.extend(getattr(page, field))
        token = page.next_page_token
        if not token:
            return out


async def _verify(target: str, database: Path | str, ledger: Ledger) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stubs = make_stubs(channel)
        ms_list = await _list_all(
            stubs.ms.ListMeasurementSets,
            measurement_sets_pb2.ListMeasurementSetsRequest(page_size=1000),
            "measurement_sets",
        )
        stored_ms = {m.path: m for m in ms_list}  # type: ignore[attr-defined]
        missing = sorted(ledger.ms_created - stored_ms.keys())
        assert not missing, f"acknowledged CreateMeasurementSet lost: {missing[:5]}"
        for path, acked in ledger.upserts.items():
            allowed = {f"iter-{acked}"}
            if path in ledger.upsert_in_flight:
                allowed.add(f"iter-{ledger.upsert_in_flight[path]}")
            assert stored_ms[path].field_name in allowed, (path, stored_ms[path].field_name, allowed)

        images = await _list_all(stubs.images.ListImages, images_pb2.ListImagesRequest(page_size=1000), "images")
        by_name = {i.name: i for i in images}  # type: ignore[attr-defined]
        by_path = {i.path: i for i in images}  # type: ignore[attr-defined]
        for name, path in ledger.images.items():
            assert name in by_name, f"acknowledged CreateImage lost: {name} {path}"
            assert by_name[name].path == path
            expected = {BATCH} if name in ledger.photometry else {0, BATCH}
            assert by_name[name].photometry_count in expected, (name, by_name[name].photometry_count)
        for path in ledger.image_in_flight:  # in flight at the kill: there or not, never a half image
            if path in by_path:
                assert by_path[path].photometry_count == 0
        # Every registered image belongs to this test's clients (nothing else writes).
        assert set(by_path) <= set(ledger.images.values()) | ledger.image_in_flight

        jobs = await _list_all(stubs.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_size=1000), "jobs")
        job_states = {j.name: j.state for j in jobs}  # type: ignore[attr-defined]
        for name, acked in ledger.jobs.items():
            assert name in job_states, f"acknowledged CreateJob lost: {name}"
            allowed = {acked}
            if name in ledger.job_in_flight:
                allowed.add(ledger.job_in_flight[name])
            assert job_states[name] in allowed, f"{name}: state {job_states[name]}, acknowledged {acked}"
        for name, entering in ledger.job_in_flight.items():
            if name not in ledger.jobs:  # its CreateJob was in flight
                assert job_states.get(name, entering) == Job.STATE_PENDING
        # Every job's history is complete: one transition per state reached, no gaps.
        for job in jobs:
            full = await stubs.jobs.GetJob(jobs_pb2.GetJobRequest(name=job.name), timeout=30)  # type: ignore[attr-defined]
            reached = _JOB_ORDER.index(full.state) + 1
            assert [t.to_state for t in full.transitions] == _JOB_ORDER[:reached], full.name

        # Sources' statistics agree with the photometry rows the API reports.
        total_detections = 0
        sources = await _list_all(stubs.sources.ListSources, sources_pb2.ListSourcesRequest(page_size=1000), "sources")
        for s in sources:
            total_detections += s.detection_count  # type: ignore[attr-defined]
            assert s.variability.epoch_count == s.detection_count  # type: ignore[attr-defined]
        assert total_detections == sum(i.photometry_count for i in images)  # type: ignore[attr-defined]

    problems = await photometry_problems(database, BATCH)
    assert not problems, "\n".join(problems[:20])


async def test_acknowledged_writes_survive_sigkill(
    tmp_path: Path, engine: str, postgres_databases: PostgresDatabases
) -> None:
    assert ServerConfig().synchronous == "FULL", "the README documents FULL as the default; this test relies on it"
    seed = int(os.environ.get("CONTIMG_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    database = await postgres_databases.new() if engine == "postgres" else None
    # The defaults: --synchronous FULL (SQLite), request logging; on PostgreSQL, its own durability.
    server = ServerProcess(tmp_path, database=database)
    ledger = Ledger()
    report: list[str] = []
    try:
        for round_no in range(1, ROUNDS + 1):
            await server.start()
            started = time.monotonic()
            clients = [
                asyncio.create_task(_client(server.target, round_no, c, ledger, rng.randrange(2**32)))
                for c in range(CLIENTS)
            ]
            before = ledger.acked_calls
            await asyncio.sleep(rng.uniform(KILL_MIN_S, KILL_MAX_S))
            server.kill()
            killed_at = time.monotonic() - started
            await asyncio.wait_for(asyncio.gather(*clients), 60)
            await server.start()
            try:
                await _verify(server.target, server.database, ledger)
            except AssertionError as exc:
                raise AssertionError(f"round {round_no} (CONTIMG_SEED={seed}): {exc}") from exc
            report.append(
                f"round {round_no}: killed after {killed_at:.2f} s, {ledger.acked_calls - before} acknowledged writes"
            )
            server.kill()  # the restart itself is killed too, before the next round restarts it
        # A last clean run: graceful shutdown, then the file is intact.
        await server.start()
        await _verify(server.target, server.database, ledger)
        assert server.terminate() == 0, server.log_tail()
        if engine == "sqlite":
            conn = ro_connect(Path(server.database))
            try:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            finally:
                conn.close()
    finally:
        server.kill()
    print(
        f"\ndurability: seed {seed}, {ROUNDS} SIGKILL rounds, {CLIENTS} clients, batch {BATCH}: "
        f"{ledger.acked_calls} acknowledged writes all present, {ledger.unknown_calls} in flight at a kill, "
        f"{len(ledger.images)} images, {len(ledger.jobs)} jobs\n  " + "\n  ".join(report)
    )
    assert ledger.acked_calls > 0 and len(ledger.photometry) > 0, "no write was acknowledged: the test proved nothing"

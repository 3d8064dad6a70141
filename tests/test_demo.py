"""The demo-data generator: a small database checked row by row, then served by the real server."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import grpc
import pytest
from dsa110.contimg import demo
from dsa110.contimg.demo.survey import STRIPS
from dsa110.contimg.server.config import ServerConfig
from dsa110.contimg.server.domain import sky
from dsa110.contimg.server.domain.records import ImageType, JobEventType, JobState, MSStage
from dsa110.contimg.server.domain.variability import FluxSums
from dsa110.contimg.server.storage.sqlite.maintenance import STATS_SET
from dsa110.contimg.server.storage.statistics import stats_values
from dsa110.contimg.v1 import images_pb2, jobs_pb2, sources_pb2

from conftest import ServerFactory, make_stubs

IMAGES = 300
CALIBRATOR = "J083454.9+553421"


def _config(path: Path) -> ServerConfig:
    return ServerConfig(data_dir=path.parent, database=str(path))


@pytest.fixture(scope="module")
async def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "contimg.sqlite3"
    await demo.fill(_config(path), IMAGES)
    return path


def _query(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _one(path: Path, sql: str, params: tuple[object, ...] = ()) -> Any:
    return _query(path, sql, params)[0][0]


async def test_counts_and_denormalized_counts(demo_db: Path) -> None:
    assert _one(demo_db, "SELECT count(*) FROM images") == IMAGES
    assert _one(demo_db, "PRAGMA journal_mode") == "wal"
    assert _query(demo_db, "PRAGMA foreign_key_check") == []
    assert _query(demo_db, "PRAGMA integrity_check") == [("ok",)]
    # image_count of every MS
    assert not _query(
        demo_db,
        """
        SELECT m.path FROM measurement_sets m LEFT JOIN (SELECT ms_path, count(*) n FROM images GROUP BY ms_path) i
        ON i.ms_path = m.path WHERE m.image_count != coalesce(i.n, 0)""",
    )
    per_ms = [r[0] for r in _query(demo_db, "SELECT image_count FROM measurement_sets WHERE image_count > 0")]
    assert all(1 <= n <= 5 for n in per_ms) and sum(per_ms) == IMAGES
    # photometry_count of every image, detection_count of every source
    assert not _query(
        demo_db,
        """
        SELECT i.id FROM images i LEFT JOIN (SELECT image_id, count(*) n FROM photometry GROUP BY image_id) p
        ON p.image_id = i.id WHERE i.photometry_count != coalesce(p.n, 0)""",
    )
    assert not _query(
        demo_db,
        """
        SELECT s.sid FROM sources s LEFT JOIN (SELECT source_sid, count(*) n FROM photometry GROUP BY source_sid) p
        ON p.source_sid = s.sid WHERE s.detection_count != coalesce(p.n, 0) OR s.epoch_count != coalesce(p.n, 0)""",
    )
    # photometry only on continuum images of finished measurement sets
    kinds = _query(
        demo_db,
        """
        SELECT DISTINCT i.type, m.stage FROM photometry p JOIN images i ON i.id = p.image_id
        JOIN measurement_sets m ON m.path = i.ms_path""",
    )
    assert kinds == [(ImageType.CONTINUUM, MSStage.PHOTOMETRY_DONE)]
    assert _one(demo_db, "SELECT count(*) FROM photometry") > 10 * IMAGES / 5
    # every imaged MS has exactly one continuum image; paths follow the pipeline's layout
    assert not _query(
        demo_db,
        """
        SELECT ms_path FROM images GROUP BY ms_path HAVING sum(type = 1) != 1""",
    )
    for (ms_path,) in _query(demo_db, "SELECT path FROM measurement_sets"):
        assert ms_path.startswith("/stage/dsa110-contimg/ms/science/20") and ms_path.endswith(".ms")
    stages = {r[0] for r in _query(demo_db, "SELECT DISTINCT stage FROM measurement_sets")}
    assert stages == set(range(1, 7))
    # no images before imaging
    assert not _query(demo_db, "SELECT path FROM measurement_sets WHERE stage < 5 AND image_count > 0")


async def test_values_in_domain_ranges(demo_db: Path) -> None:
    decs = {r[0] for r in _query(demo_db, "SELECT DISTINCT pointing_dec_deg FROM measurement_sets")}
    assert decs <= set(STRIPS) and 54.57 in decs
    ((lo, hi, noise_lo, noise_hi, freq, bw_lo, bw_hi),) = _query(
        demo_db,
        """
        SELECT min(mid_mjd), max(mid_mjd), min(noise_jy), max(noise_jy), max(frequency_ghz), min(bandwidth_mhz),
        max(bandwidth_mhz) FROM images WHERE type = 1""",
    )
    assert 60000 < lo <= hi < 61100
    assert 0.3e-3 <= noise_lo and noise_hi <= 1.4e-3
    assert freq == 1.405 and 187 <= bw_lo and bw_hi <= 256
    for ra, dec in _query(demo_db, "SELECT pointing_ra_deg, pointing_dec_deg FROM measurement_sets"):
        assert 0 <= ra < 360 and dec in STRIPS
    # consecutive scans 309 s apart advance ~1.29 deg in RA
    ras = [r[0] for r in _query(demo_db, "SELECT pointing_ra_deg FROM measurement_sets ORDER BY start_mjd LIMIT 5")]
    steps = [(b - a) % 360 for a, b in itertools.pairwise(ras)]
    assert all(abs(s - 1.2914) < 0.01 for s in steps)
    grades = dict(_query(demo_db, "SELECT qa_grade, count(*) FROM images WHERE type = 1 GROUP BY 1"))
    assert grades[1] > grades.get(2, 0) + grades.get(3, 0)
    for (metrics,) in _query(demo_db, "SELECT qa_metrics FROM images WHERE type = 1 LIMIT 20"):
        assert json.loads(metrics)["noise_jy"] > 0
        assert metrics == json.dumps(json.loads(metrics), sort_keys=True)  # as the server writes it
    # calibration tables on calibrated measurement sets only, valid at the scan
    for mid, applied, tables in _query(
        demo_db, "SELECT mid_mjd, cal_applied, calibration_tables FROM measurement_sets"
    ):
        parsed = json.loads(tables)
        assert tables == json.dumps(parsed)
        assert bool(parsed) == bool(applied)
        for t in parsed:
            assert set(t) == {"path", "type", "valid_start_mjd", "valid_end_mjd"}
            assert t["valid_start_mjd"] <= mid <= t["valid_end_mjd"]
    # unique image paths per type
    assert _one(demo_db, "SELECT count(DISTINCT path) FROM images") == IMAGES


async def test_every_sized_image_has_its_footprint(demo_db: Path) -> None:
    images = _query(
        demo_db,
        "SELECT id, center_ra_deg, center_dec_deg, size_x_px, size_y_px, cell_size_arcsec "
        "FROM images WHERE size_x_px > 0",
    )
    assert len(images) == IMAGES
    boxes = {r[0]: r[1:] for r in _query(demo_db, "SELECT * FROM image_footprints")}
    assert len(boxes) == IMAGES
    for image_id, ra, dec, nx, ny, cell in images:
        expected = sky.cap_box(ra, dec, sky.footprint_radius_deg(nx, ny, cell))
        assert boxes[image_id] == pytest.approx(expected, abs=1e-6)
    # every measured source lies on the pixel grid of the image that measured it
    for ra, dec, c_ra, c_dec, nx, ny, cell, sep in _query(
        demo_db,
        """
            SELECT p.ra_deg, p.dec_deg, i.center_ra_deg, i.center_dec_deg, i.size_x_px, i.size_y_px,
            i.cell_size_arcsec, p.separation_from_center_deg FROM photometry p JOIN images i ON i.id = p.image_id""",
    ):
        assert sky.footprint_contains(c_ra, c_dec, nx, ny, cell, ra, dec)
        assert sep == pytest.approx(sky.separation_deg(c_ra, c_dec, ra, dec), abs=1e-6)
        assert sep <= 1.75
    assert _one(demo_db, "SELECT count(*) FROM source_positions") == _one(demo_db, "SELECT count(*) FROM sources")


async def test_source_statistics_equal_a_recomputation(demo_db: Path) -> None:
    sums: dict[int, FluxSums] = defaultdict(FluxSums)
    for sid, flux, err, mjd in _query(
        demo_db,
        "SELECT source_sid, peak_flux_jy, peak_flux_err_jy, observation_mjd "
        "FROM photometry ORDER BY source_sid, observation_mjd, image_id",
    ):
        sums[sid].add(flux, err, mjd)
    columns = [part.split(" = ")[0] for part in STATS_SET.split(", ")]
    stored = _query(demo_db, f"SELECT sid, {', '.join(columns)} FROM sources")
    assert len(stored) >= 200
    for sid, *values in stored:
        expected = stats_values(sums[sid]) if sid in sums else stats_values(FluxSums())
        expected = [int(v) if isinstance(v, bool) else v for v in expected]
        assert values == pytest.approx(expected, rel=1e-9, abs=1e-12), sid


async def test_photometry_is_on_observation_time(demo_db: Path) -> None:
    assert not _query(
        demo_db,
        """
        SELECT p.image_id FROM photometry p JOIN images i ON i.id = p.image_id
        JOIN measurement_sets m ON m.path = i.ms_path
        WHERE p.observation_mjd != i.mid_mjd OR i.mid_mjd != m.mid_mjd""",
    )
    # measured after the observation ended (the wall clock never enters)
    assert not _query(
        demo_db,
        """
        SELECT p.image_id FROM photometry p WHERE p.measure_time <= (p.observation_mjd - 40587) * 86400e6""",
    )
    assert not _query(
        demo_db,
        """
        SELECT i.id FROM images i JOIN measurement_sets m ON m.path = i.ms_path
        WHERE i.create_time < m.create_time OR m.create_time <= (m.end_mjd - 40587) * 86400e6""",
    )


async def test_jobs_in_every_state_with_their_history(demo_db: Path) -> None:
    states = dict(_query(demo_db, "SELECT state, count(*) FROM jobs GROUP BY state"))
    assert set(states) == {int(s) for s in JobState if s}
    assert sum(states.values()) <= 300
    assert _one(demo_db, "SELECT count(*) FROM jobs WHERE attempt >= 2") > 0
    assert _one(demo_db, "SELECT count(*) FROM jobs WHERE state = 4 AND attempt >= max_attempts") > 0
    assert not _query(demo_db, "SELECT id FROM jobs WHERE state = 4 AND error_message = ''")
    assert not _query(demo_db, "SELECT id FROM jobs WHERE state = 2 AND stage = 0")
    image_ids = {r[0] for r in _query(demo_db, "SELECT id FROM images")}
    succeeded = _query(demo_db, "SELECT artifacts FROM jobs WHERE state = 3")
    for (artifacts,) in succeeded:
        names = json.loads(str(artifacts))
        assert names and all(int(n.split("/")[1]) in image_ids for n in names)
    columns = ", ".join(
        c
        for c in (
            "id",
            "type",
            "ms_path",
            "state",
            "stage",
            "progress_percent",
            "attempt",
            "update_time",
            "error_message",
            "log_line_count",
        )
    )
    for job_id, *job in _query(demo_db, f"SELECT {columns} FROM jobs"):
        events = _query(
            demo_db,
            "SELECT type, from_state, to_state, time, snapshot FROM job_events WHERE job_id = ? ORDER BY sequence",
            (job_id,),
        )
        assert events[0][:3] == (JobEventType.CREATED, 0, JobState.PENDING)
        assert all(e[0] in (JobEventType.STATE_CHANGED, JobEventType.PROGRESS) for e in events[1:])
        assert [e[3] for e in events] == sorted(e[3] for e in events)
        for (_, _, to_state, _, _), (_, from_state, _, _, _) in itertools.pairwise(events):
            assert from_state == to_state
        last = json.loads(str(events[-1][4]))
        assert [
            last[k]
            for k in (
                "type",
                "ms_path",
                "state",
                "stage",
                "progress_percent",
                "attempt",
                "update_time",
                "error_message",
            )
        ] == job[:-1]
        assert last["log_line_count"] <= job[-1]
        lines = [
            r[0]
            for r in _query(
                demo_db, "SELECT line_number FROM job_logs WHERE job_id = ? ORDER BY line_number", (job_id,)
            )
        ]
        assert lines == list(range(1, len(lines) + 1)) and len(lines) == job[-1]
    # the global event order is the time order
    times = [r[0] for r in _query(demo_db, "SELECT time FROM job_events ORDER BY sequence")]
    assert times == sorted(times)


async def test_variables_and_the_calibrator(demo_db: Path) -> None:
    total = _one(demo_db, "SELECT count(*) FROM sources")
    variable = _one(demo_db, "SELECT count(*) FROM sources WHERE is_variable")
    assert 0 < variable < 0.12 * total
    assert not _query(
        demo_db, "SELECT id FROM sources WHERE is_variable AND (epoch_count < 3 OR (eta <= 2 AND v <= 0.1))"
    )
    ((epochs, mean, catalog, dec),) = _query(
        demo_db, "SELECT epoch_count, mean_flux_jy, catalog_flux_mjy, dec_deg FROM sources WHERE id = ?", (CALIBRATOR,)
    )
    assert epochs >= 2 and mean == pytest.approx(4.85, rel=0.08)
    assert catalog == 4850 and dec == pytest.approx(55.5725, abs=1e-3)
    # ids are unique designations, with a suffix only on collisions
    for source_id, designation in _query(demo_db, "SELECT id, designation FROM sources"):
        assert str(source_id).split("_")[0] == designation
    fluxes = [r[0] for r in _query(demo_db, "SELECT catalog_flux_mjy FROM sources")]
    assert min(fluxes) >= 10 and max(fluxes) > 300


async def test_served_by_the_real_server(demo_db: Path, server_factory: ServerFactory) -> None:
    running = await server_factory(database=demo_db)
    async with grpc.aio.insecure_channel(running.target) as channel:
        stubs = make_stubs(channel)
        cal = await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name=f"sources/{CALIBRATOR}"))
        assert cal.variability.mean_flux_jy == pytest.approx(4.85, rel=0.08)
        assert not cal.variability.is_variable
        listed = await stubs.sources.ListSources(sources_pb2.ListSourcesRequest(filter="is_variable = true"))
        assert listed.total_size == _one(demo_db, "SELECT count(*) FROM sources WHERE is_variable") > 0
        points = [
            p
            async for r in stubs.sources.GetLightcurve(sources_pb2.GetLightcurveRequest(name=f"sources/{CALIBRATOR}"))
            for p in r.points
        ]
        assert len(points) == cal.variability.epoch_count
        found = await stubs.images.SearchImages(
            images_pb2.SearchImagesRequest(ra_deg=cal.ra_deg, dec_deg=cal.dec_deg, page_size=1000)
        )
        covering = {m.image.name: m.image.mid_mjd for m in found.matches}
        for p in points:
            assert covering[p.image] == p.observation_mjd
        for state in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"):
            jobs = await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(filter=f"state = {state}"))
            assert jobs.total_size > 0, state
        retried = str(_one(demo_db, "SELECT id FROM jobs WHERE attempt >= 2 AND state = 3"))
        job = await stubs.jobs.GetJob(jobs_pb2.GetJobRequest(name=f"jobs/{retried}"))
        states = [t.to_state for t in job.transitions]
        assert jobs_pb2.Job.STATE_FAILED in states and states[-1] == jobs_pb2.Job.STATE_SUCCEEDED
        assert job.log_line_count > 0


async def test_refuses_a_database_with_data(demo_db: Path) -> None:
    with pytest.raises(SystemExit, match="not empty"):
        await demo.fill(_config(demo_db), 10)
    await demo.fill_if_empty(_config(demo_db), 10)
    assert _one(demo_db, "SELECT count(*) FROM images") == IMAGES


async def test_fill_if_empty_fills_a_new_database(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    await demo.fill_if_empty(_config(path), 12)
    assert _one(path, "SELECT count(*) FROM images") == 12
    with pytest.raises(SystemExit):
        await demo.fill(_config(path), 0)


def _dump(path: Path) -> list[list[tuple[object, ...]]]:
    tables = (
        "measurement_sets",
        "images",
        "image_footprints",
        "sources",
        "source_positions",
        "photometry",
        "jobs",
        "job_events",
        "job_logs",
    )
    return [_query(path, f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables]


async def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    paths = [tmp_path / f"{n}.sqlite3" for n in range(3)]
    await demo.fill(_config(paths[0]), 60, seed=7)
    await demo.fill(_config(paths[1]), 60, seed=7)
    await demo.fill(_config(paths[2]), 60, seed=8)
    assert _dump(paths[0]) == _dump(paths[1])
    assert _dump(paths[0]) != _dump(paths[2])
    assert _one(paths[2], "SELECT count(*) FROM images") == 60


async def test_catalog_sources_add_unmeasured_faint_sources_and_change_nothing_else(
    tmp_path: Path, server_factory: ServerFactory
) -> None:
    plain, big = tmp_path / "plain.sqlite3", tmp_path / "catalog.sqlite3"
    await demo.fill(_config(plain), 60, seed=7)
    await demo.fill(_config(big), 60, seed=7, catalog_sources=3000)
    measured = _one(plain, "SELECT count(*) FROM sources")
    assert _one(big, "SELECT count(*) FROM sources") == measured + 3000
    assert _one(big, "SELECT count(*) FROM source_positions") == measured + 3000
    extra = _query(big, "SELECT detection_count, catalog_flux_mjy, dec_deg FROM sources WHERE sid > ?", (measured,))
    assert len(extra) == 3000
    assert all(n == 0 and 2.5 <= flux <= 10.0 and dec >= -40.0 for n, flux, dec in extra)
    # Everything else is what the same seed gives without them.
    for table in ("images", "photometry", "jobs", "job_events"):
        assert _query(plain, f"SELECT * FROM {table} ORDER BY 1, 2") == _query(
            big, f"SELECT * FROM {table} ORDER BY 1, 2"
        )
    assert _query(plain, "SELECT * FROM sources ORDER BY sid") == _query(
        big, "SELECT * FROM sources WHERE sid <= ? ORDER BY sid", (measured,)
    )
    # And the server finds them by position like any other source.
    ra, dec = _query(big, "SELECT ra_deg, dec_deg FROM sources WHERE sid = ?", (measured + 1,))[0]
    running = await server_factory(database=big)
    async with grpc.aio.insecure_channel(running.target) as channel:
        found = await make_stubs(channel).sources.SearchSources(
            sources_pb2.SearchSourcesRequest(ra_deg=ra, dec_deg=dec, radius_deg=0.01)
        )
    assert any(m.separation_deg < 1e-6 for m in found.matches)


async def test_leaves_a_database_without_images_but_with_other_data(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    await demo.fill_if_empty(_config(path), 5)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM photometry")
        conn.execute("DELETE FROM image_footprints")
        conn.execute("DELETE FROM images")
    conn.close()
    before = _one(path, "SELECT count(*) FROM measurement_sets")
    await demo.fill_if_empty(_config(path), 5)
    assert _one(path, "SELECT count(*) FROM images") == 0
    assert _one(path, "SELECT count(*) FROM measurement_sets") == before
    with pytest.raises(SystemExit, match="not empty"):
        await demo.fill(_config(path), 5)

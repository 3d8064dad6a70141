"""Realistic demo data: `contimg-server demo-data` and `serve --demo-images`.

The model follows the pipeline's observed behaviour (numbers from the domain brief):

* Drift scans of 309 s, 110 to 279 a day in one block per day, on declination strips 16.27, 50.5,
  54.57 (about two thirds of the days) and 65.72 deg, the strip changing every few days. The
  pointing RA is the local sidereal time at OVRO at mid-scan, so it advances ~1.29 deg a scan. The
  first block starts a little before 0834+555 transits, so even a small database holds the calibrator.
* One measurement set per scan; 3 to 5 images per imaged MS (continuum, pbcor, residual, psf,
  model, sometimes dirty or clean) so that the image total is exactly what was asked for. The
  newest measurement sets are still being processed (no images or no photometry yet) and a few
  failed; everything older is PHOTOMETRY_DONE/COMPLETED.
* A fixed NVSS-like catalog (power-law fluxes from 10 mJy to a few Jy) spread uniformly over the sky
  the scans covered, plus the calibrator. Forced photometry on the continuum image of every
  finished MS measures each catalog source within ~1.73 deg of the centre (1.13 deg on 4096-px
  images: just inside the pixel grid).
  About 4 % of the sources vary (scintillation, a damped random walk, or an extreme scattering
  event); the others scatter by their errors. Source statistics are the running sums that
  incremental ingest keeps (`FluxSums`), written with the same columns as `maintenance.STATS_SET`.
* A few hundred jobs, one per recent MS plus a few extra runs, in every state, with their event
  log (CREATED, STATE_CHANGED, PROGRESS; snapshots as the server writes them) and log lines. The
  transitions go through the server's own state machine (`domain.jobs.apply`).

Every time is derived from the simulated observations (never the wall clock), so one seed and one
image count always give the same rows. The database must be empty: `fill` refuses with SystemExit
when it holds any measurement set, image, source or job (there is no append mode);
`fill_if_empty` skips a database that has data.

Speed: the schema is created through `Database` (migrations), then one plain sqlite3 connection in
a worker thread loads everything in a single transaction (rollback journal on the new file,
synchronous OFF, big cache, secondary indexes dropped during the load and rebuilt from their
stored definitions), then puts WAL back. 100,000 images take ~15 s (0.4 GB), 1,000,000 about three
minutes (4 GB, ~12 M photometry rows).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import math
import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .config import ServerConfig
from .domain import sky
from .domain.jobs import Action, apply
from .domain.records import (
    CalTableType,
    ImageType,
    Job,
    JobEventType,
    JobStage,
    JobState,
    JobTransition,
    JobType,
    MSStage,
    MSStatus,
    QAGrade,
)
from .domain.variability import FluxSums, derive
from .storage.sqlite import rows
from .storage.sqlite.database import Database, SQLiteSettings
from .storage.sqlite.maintenance import STATS_SET, stats_values

log = logging.getLogger(__name__)

# ---- the instrument and the survey ------------------------------------------------------------

STRIPS = (16.27, 50.5, 54.57, 65.72)
MAIN_STRIP = 54.57
STRIP_WEIGHTS = (1.0, 1.0, 6.0, 1.0)  # -> about two thirds of the days on 54.57
SCAN_S = 309
DAY_S = 86_400
SCANS_PER_DAY = (110, 279)  # 279 * 309 s fills a day
STRIP_RUN_DAYS = (3, 20)
OVRO_LON_DEG = -118.2817
SIDEREAL_DEG_PER_DAY = 360.98564736629
UNIX_EPOCH_MJD = 40587
FIRST_DAY_MJD = 60900  # small databases start here ...
LAST_DAY_MJD = 60990  # ... large ones end here (and start earlier)
FREQUENCY_GHZ = 1.405
SUBBAND_MHZ = 15.625
INTEGRATION_S = 12.884901888  # one DSA-110 integration; 24 make a scan

# (pixels, arcsec per pixel): 5040 px at 2.5" (3.5 deg), 4096 px at 2" (2.3 deg)
IMAGING = ((5040, 2.5), (4096, 2.0))
IMAGING_WEIGHTS = (3.0, 1.0)
# Forced photometry radius per imaging setup: a circle just inside the pixel grid.
PHOT_RADIUS_DEG = tuple(0.99 * n * cell / 3600.0 / 2.0 for n, cell in IMAGING)
SOURCE_BAND_DEG = 1.75  # catalog sources lie within this of a strip's declination

# ---- the catalog --------------------------------------------------------------------------------

MIN_SOURCES = 200
CATALOG_FLUX_MIN_MJY = 2.5  # NVSS's completeness limit: fainter than the photometry threshold
SOURCES_PER_IMAGE = 2
MAX_SOURCES = 20_000  # 1,000,000 images -> 20,000 sources, ~60 measured per image, ~15 M rows
FLUX_MIN_MJY = 10.0
FLUX_MAX_MJY = 6_000.0
FLUX_SLOPE = 1.1  # N(>S) ~ S^-slope
VARIABLE_FRACTION = 0.035
CAL_NAME = "0834+555"
CAL_RA_DEG = 128.7289
CAL_DEC_DEG = 55.57254
CAL_FLUX_JY = 4.85
CAL_SCATTER = 0.026
SYSTEMATIC = 0.025  # true fractional scatter of a steady source (flux scale, pointing)
ERROR_SYSTEMATIC = 0.03  # the fractional term in the reported error
THERMAL = 0.8  # true thermal scatter / local rms (reported errors are a little conservative)

# ---- jobs ---------------------------------------------------------------------------------------

MAX_JOB_MS = 200  # the newest measurement sets get a job each
EXTRA_JOB_EVERY = 12

_IMAGE_SUFFIX = {
    ImageType.CONTINUUM: "-image.fits",
    ImageType.PBCOR: "-image-pb.fits",
    ImageType.RESIDUAL: "-residual.fits",
    ImageType.PSF: "-psf.fits",
    ImageType.MODEL: "-model.fits",
    ImageType.DIRTY: "-dirty.fits",
    ImageType.CLEAN: "-clean.fits",
}
_CAL_SUFFIX = {
    CalTableType.K: "kcal",
    CalTableType.BA: "bacal",
    CalTableType.BP: "bpcal",
    CalTableType.GA: "gacal",
    CalTableType.GP: "gpcal",
    CalTableType.G2: "2gcal",
    CalTableType.FLUX: "fluxscale",
}
_STAGE_PROGRESS = {
    JobStage.CONVERTING: 5.0,
    JobStage.CONVERTED: 15.0,
    JobStage.FLAGGING_RFI: 25.0,
    JobStage.SOLVING_CAL: 40.0,
    JobStage.APPLYING_CAL: 55.0,
    JobStage.IMAGING: 65.0,
    JobStage.PHOTOMETRY: 85.0,
}
_ERRORS = (
    "wsclean exited with status 137 (killed: out of memory)",
    "casacore: cannot lock table {ms}/SPECTRAL_WINDOW: lock held by another process",
    "calibration: bandpass solutions flagged for 61 % of antennas",
    "conversion: subband sb07 missing for group {group} after 600 s",
    "aoflagger: more than 80 % of visibilities flagged",
    "NFS timeout writing {ms}/table.f1",
)
_HOSTS = ("lxd110h17", "lxd110h18", "lxd110h19", "lxd110h21", "lxd110h23")

# Explicit column lists, so the rows below never depend on another module's column order.
_MS_COLUMNS = rows.MS_COLUMNS  # the server's own column order
_IMAGE_COLUMNS = rows.IMAGE_COLUMNS  # the server's own column order
_PHOTOMETRY_COLUMNS = (
    "source_sid",
    "image_id",
    "ra_deg",
    "dec_deg",
    "catalog_flux_mjy",
    "peak_flux_jy",
    "peak_flux_err_jy",
    "integrated_flux_jy",
    "integrated_flux_err_jy",
    "normalized_flux",
    "normalized_flux_err",
    "snr",
    "local_rms_jy",
    "separation_from_center_deg",
    "quality_flag",
    "observation_mjd",
    "measure_time",
)
_SOURCE_COLUMNS = (
    "sid",
    "id",
    "designation",
    "ra_deg",
    "dec_deg",
    "catalog",
    "catalog_flux_mjy",
    "create_time",
    "update_time",
)
# QA metrics as json.dumps(..., sort_keys=True) writes them (a float's JSON text is its repr), built
# without the encoder because a million images make it noticeable.
_METRICS_KEYS = (
    "beam_major_arcsec",
    "beam_minor_arcsec",
    "dynamic_range",
    "flagged_fraction",
    "noise_jy",
    "peak_flux_jy",
    "source_count",
)
_METRICS_JSON = "{" + ", ".join(f'"{k}": %r' for k in sorted(_METRICS_KEYS)) + "}"
_BULK_TABLES = ("measurement_sets", "images", "sources", "photometry")


def _insert(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


# ---- public entry points ------------------------------------------------------------------------


async def fill(cfg: ServerConfig, images: int, *, seed: int = 110, catalog_sources: int = 0) -> None:
    """Fill the (empty) database at `cfg.database_path` with `images` demo images and all around them,
    plus `catalog_sources` reference-catalog sources that no image measured (spread over the sky
    NVSS covers; the real catalog holds ~1.6 million).

    Raises SystemExit when the database already holds data.
    """
    summary = await _fill(cfg.database_path, images, seed, only_if_empty=False, catalog_sources=catalog_sources)
    assert summary is not None


async def fill_if_empty(cfg: ServerConfig, images: int) -> None:
    """Fill the database with demo data unless it already has some (then log and leave it alone)."""
    await _fill(cfg.database_path, images, 110, only_if_empty=True)


async def _fill(
    path: Path, images: int, seed: int, *, only_if_empty: bool, catalog_sources: int = 0
) -> dict[str, int] | None:
    if images < 1:
        raise SystemExit("demo data: the number of images must be at least 1")
    db = Database(SQLiteSettings(path))
    await db.open()  # creates or migrates the schema
    await db.close()
    return await asyncio.to_thread(_fill_sync, path, images, seed, only_if_empty, catalog_sources)


# ---- the bulk load ------------------------------------------------------------------------------


def _existing(conn: sqlite3.Connection) -> dict[str, int]:
    found = {}
    for table in ("measurement_sets", "images", "sources", "jobs"):
        found[table] = int(conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 1)").fetchone()[0])
    found["images"] = int(conn.execute("SELECT count(*) FROM images").fetchone()[0]) if found["images"] else 0
    return found


def _fill_sync(
    path: Path, images: int, seed: int, only_if_empty: bool, catalog_sources: int = 0
) -> dict[str, int] | None:
    started = time.perf_counter()
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
    try:
        # A rollback journal on a new file records almost nothing (new pages need no undo) and keeps
        # the load atomic; WAL would write everything twice. If another process holds the file open
        # (several --workers filling at once), stay in WAL: slower, still correct.
        conn.execute("PRAGMA busy_timeout = 5000")
        try:
            conn.execute("PRAGMA journal_mode = DELETE").fetchone()
        except sqlite3.OperationalError:
            log.info("demo data: the database is in use elsewhere; loading in WAL mode")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1048576")  # 1 GiB
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA busy_timeout = 3600000")  # wait for another filler rather than fail
        conn.execute("BEGIN IMMEDIATE")
        try:
            existing = _existing(conn)
            if any(existing.values()):
                conn.execute("ROLLBACK")
                if only_if_empty:
                    if existing["images"]:
                        log.info("demo data: %s already holds %d images; leaving it as it is", path, existing["images"])
                    else:
                        log.warning(
                            "demo data: %s has no images but holds other data (%s); not adding demo data",
                            path,
                            ", ".join(t for t, n in existing.items() if n),
                        )
                    return None
                raise SystemExit(
                    f"demo data: {path} is not empty ({existing['images']} images; data in "
                    f"{', '.join(t for t, n in existing.items() if n)}); demo data only goes into an empty "
                    "database: use another --data-dir/--database or delete the file"
                )
            generator = _Generator(random.Random(seed), images, catalog_sources)
            summary = generator.load(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.execute("PRAGMA synchronous = FULL")
            try:
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
            except sqlite3.OperationalError:
                log.warning("demo data: could not switch %s back to WAL (the server will on open)", path)
    finally:
        conn.close()
    elapsed = time.perf_counter() - started
    log.info("demo data: %s in %.1f s: %s", path, elapsed, ", ".join(f"{n:,} {k}" for k, n in summary.items()))
    return summary


# ---- simulation ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _MS:
    index: int
    day: int
    strip: float
    setup: int  # index into IMAGING
    kind: str  # "photometry", "imaged", "failed", "pending"
    n_images: int = 0
    stage: int = 0
    status: int = 0
    start_s: int = 0
    group_id: str = ""
    path: str = ""
    start_mjd: float = 0.0
    mid_mjd: float = 0.0
    end_mjd: float = 0.0
    ra: float = 0.0
    noise_jy: float = 0.0
    first_image_id: int = 0
    times: list[int] = field(default_factory=list)  # microseconds at which stage 1..6 was reached
    fail_time: int = 0


@dataclass(slots=True)
class _Source:
    sid: int
    id: str
    ra: float
    dec: float
    flux_mjy: float
    extent: float = 1.0
    blended: bool = False
    model: str = ""  # "", "calibrator", "scintillation", "walk", "ese"
    params: tuple[float, ...] = ()
    sums: FluxSums = field(default_factory=FluxSums)
    update_time: int = 0


def _mjd(unix_s: float) -> float:
    return UNIX_EPOCH_MJD + unix_s / DAY_S


def _lst_deg(mjd: float) -> float:
    return (280.46061837 + SIDEREAL_DEG_PER_DAY * (mjd - 51544.5) + OVRO_LON_DEG) % 360.0


def _iso(unix_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix_s))


class _Generator:
    def __init__(self, rng: random.Random, images: int, catalog_sources: int = 0):
        self.rng = rng
        self.images = images
        self.catalog_sources = catalog_sources
        self.ms: list[_MS] = []
        self.sources: list[_Source] = []
        self.unmeasured: list[_Source] = []  # catalog sources no image measured
        self.photometry_count: list[int] = []  # per MS (its continuum image)
        self.photometry_peak: list[float] = []
        self._cal_tables: dict[int, str] = {}

    # -- orchestration

    def load(self, conn: sqlite3.Connection) -> dict[str, int]:
        t0 = time.perf_counter()
        indexes = list(
            conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN "
                f"({', '.join('?' * len(_BULK_TABLES))}) ORDER BY name",
                _BULK_TABLES,
            )
        )
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')

        self._schedule()
        self._place_sources()
        step = _Steps(t0)
        conn.executemany(_insert("measurement_sets", _MS_COLUMNS), self._ms_rows())
        step.done("measurement sets", len(self.ms))
        conn.executemany(_insert("sources", _SOURCE_COLUMNS), self._source_rows())
        step.done("sources", len(self.sources) + len(self.unmeasured))
        n = len(self.ms)
        self.photometry_count = [0] * n
        self.photometry_peak = [0.0] * n
        conn.executemany(_insert("photometry", _PHOTOMETRY_COLUMNS), self._photometry_rows())
        measured = sum(self.photometry_count)
        step.done("photometry rows", measured)
        by_image = conn.execute(
            "INSERT INTO image_photometry (image_id, source_sids) "
            "SELECT image_id, json_group_array(source_sid) FROM photometry GROUP BY image_id"
        )
        step.done("images' photometry lists", by_image.rowcount)
        conn.executemany(
            f"UPDATE sources SET {STATS_SET}, update_time = ? WHERE sid = ?",
            ((*stats_values(s.sums), s.update_time, s.sid) for s in self.sources),
        )
        conn.executemany(
            _insert("source_positions", ("sid", "x0", "x1", "y0", "y1", "z0", "z1")),
            ((s.sid, *sky.point_box(s.ra, s.dec)) for s in [*self.sources, *self.unmeasured]),
        )
        step.done("source statistics and positions", len(self.sources) + len(self.unmeasured))
        conn.executemany(_insert("images", _IMAGE_COLUMNS), self._image_rows())
        step.done("images", self.images)
        conn.executemany(
            _insert("image_footprints", ("id", "x0", "x1", "y0", "y1", "z0", "z1")), self._footprint_rows()
        )
        step.done("image footprints", self.images)
        jobs, events, logs = self._jobs()
        conn.executemany(
            f"INSERT INTO jobs ({rows.JOB_SELECT}) VALUES ({', '.join('?' * len(rows.JOB_COLUMNS))})",
            (rows.job_values(j) for j in jobs),
        )
        conn.executemany(
            _insert("job_events", ("job_id", "type", "from_state", "to_state", "stage", "message", "time", "snapshot")),
            events,
        )
        conn.executemany(_insert("job_logs", ("job_id", "line_number", "time", "text")), logs)
        step.done("jobs", len(jobs))
        for _, sql in indexes:
            conn.execute(sql)
        step.done("indexes", len(indexes))
        variable = sum(1 for s in self.sources if derive(s.sums).is_variable)
        return {
            "measurement sets": len(self.ms),
            "images": self.images,
            "sources": len(self.sources) + len(self.unmeasured),
            "variable sources": variable,
            "photometry rows": measured,
            "jobs": len(jobs),
            "job events": len(events),
            "job log lines": len(logs),
        }

    # -- observations

    def _schedule(self) -> None:
        """Scans day by day until the images are placed, then the newest, unimaged ones."""
        rng = self.rng
        remaining = self.images
        plan: list[tuple[int, float, int, int]] = []  # day, strip, setup, images (-1 failed)
        day_sizes: list[int] = []
        strip, run_left = MAIN_STRIP, rng.randint(*STRIP_RUN_DAYS)
        while remaining > 0:
            day = len(day_sizes)
            if run_left == 0:
                strip = rng.choices(STRIPS, STRIP_WEIGHTS)[0]
                run_left = rng.randint(*STRIP_RUN_DAYS)
            run_left -= 1
            setup = rng.choices(range(len(IMAGING)), IMAGING_WEIGHTS)[0] if day else 0
            scans = rng.randint(*SCANS_PER_DAY)
            day_sizes.append(scans)
            for _ in range(scans):
                if remaining == 0:
                    break
                if rng.random() < 0.005:
                    plan.append((day, strip, setup, -1))
                    continue
                k = min(remaining, rng.choices((3, 4, 5), (0.3, 0.45, 0.25))[0])
                plan.append((day, strip, setup, k))
                remaining -= k
        imaged = [i for i, p in enumerate(plan) if p[3] > 0]
        awaiting_photometry = set(imaged[-min(12, max(1, len(imaged) // 150)) :])
        tail = min(40, max(6, len(plan) // 40))
        day, strip, setup, _ = plan[-1]
        used_today = sum(1 for p in plan if p[0] == day)
        for _ in range(tail):
            if used_today >= day_sizes[day]:
                day += 1
                used_today = 0
                day_sizes.append(rng.randint(*SCANS_PER_DAY))
            plan.append((day, strip, setup, 0))
            used_today += 1

        first_day = min(FIRST_DAY_MJD, LAST_DAY_MJD - len(day_sizes))
        block_end = 0
        image_id = 1
        slot = 0
        previous_day = -1
        for index, (day, strip, setup, k) in enumerate(plan):
            if day != previous_day:
                day_start = (first_day + day - UNIX_EPOCH_MJD) * DAY_S
                if day == 0:
                    # start a little before 0834+555 transits
                    target = CAL_RA_DEG - rng.uniform(4.0, 16.0)
                    offset = int((target - _lst_deg(_mjd(day_start))) % 360.0 / SIDEREAL_DEG_PER_DAY * DAY_S)
                else:
                    offset = rng.randint(0, max(0, DAY_S - day_sizes[day] * SCAN_S))
                block_start = max(day_start + offset, block_end)
                slot = 0
                previous_day = day
            start = block_start + slot * SCAN_S
            slot += 1
            block_end = start + SCAN_S
            if k > 0:
                kind = "imaged" if index in awaiting_photometry else "photometry"
            else:
                kind = "failed" if k < 0 else "pending"
            ms = _MS(index, day, strip, setup, kind, n_images=max(k, 0), start_s=start)
            group = _iso(start)
            ms.group_id = group
            ms.path = f"/stage/dsa110-contimg/ms/science/{group[:10]}/{group}.ms"
            ms.start_mjd = _mjd(start)
            ms.mid_mjd = _mjd(start + SCAN_S / 2)
            ms.end_mjd = _mjd(start + SCAN_S)
            ms.ra = _lst_deg(ms.mid_mjd)
            ms.noise_jy = (0.3 + 1.1 * rng.betavariate(2.0, 5.0)) * 1e-3
            if k > 0:
                ms.first_image_id = image_id
                image_id += k
            t = (start + SCAN_S) * 1_000_000
            times = [0]
            for lo, hi in ((120, 420), (40, 120), (60, 240), (30, 120), (400, 1500), (60, 300)):
                t += rng.randint(lo, hi) * 1_000_000 + rng.randint(0, 999_999)
                times.append(t)
            ms.times = times
            self.ms.append(ms)
        self._assign_stages()

    def _assign_stages(self) -> None:
        rng = self.rng
        for ms in self.ms:
            if ms.kind == "photometry":
                ms.stage, ms.status = MSStage.PHOTOMETRY_DONE, MSStatus.COMPLETED
            elif ms.kind == "imaged":
                ms.stage, ms.status = MSStage.IMAGED, MSStatus.IN_PROGRESS
            elif ms.kind == "failed":
                ms.stage = rng.choice((MSStage.CONVERTED, MSStage.FLAGGED, MSStage.CALIBRATION_SOLVED))
                ms.status = MSStatus.FAILED
        tail = [ms for ms in self.ms if ms.kind == "pending"]
        # oldest first: one failed, then later and later stages of the pipeline, newest still pending
        tail[0].kind = "failed"
        tail[0].stage, tail[0].status = MSStage.FLAGGED, MSStatus.FAILED
        rest = tail[1:]
        ladder = (
            (MSStage.CALIBRATED, MSStatus.IN_PROGRESS),
            (MSStage.CALIBRATION_SOLVED, MSStatus.IN_PROGRESS),
            (MSStage.FLAGGED, MSStatus.IN_PROGRESS),
            (MSStage.CONVERTED, MSStatus.PENDING),
        )
        for i, ms in enumerate(rest):
            ms.stage, ms.status = ladder[min(len(ladder) - 1, i * len(ladder) // len(rest))]
        for ms in self.ms:
            if ms.status == MSStatus.FAILED:
                ms.fail_time = ms.times[ms.stage] + 330_000_000

    def _calibration_json(self, ms: _MS) -> str:
        """Tables solved on the calibrator transit nearest to the scan, valid half a day either side."""
        turn = 360.0 / SIDEREAL_DEG_PER_DAY
        transit = ms.mid_mjd + ((CAL_RA_DEG - ms.ra + 180.0) % 360.0 - 180.0) / SIDEREAL_DEG_PER_DAY
        key = round((transit - FIRST_DAY_MJD) / turn)
        cached = self._cal_tables.get(key)
        if cached is not None:
            return cached
        stamp = _iso(round((transit - UNIX_EPOCH_MJD) * DAY_S))
        types = [CalTableType.K, CalTableType.BP, CalTableType.GA, CalTableType.GP]
        if key % 3 == 0:
            types.append(CalTableType.G2)
        if key % 5 == 0:
            types.append(CalTableType.FLUX)
        tables = [
            {
                "path": f"/stage/dsa110-contimg/caltables/{stamp[:10]}/{stamp}_{CAL_NAME}.{_CAL_SUFFIX[t]}",
                "type": int(t),
                "valid_start_mjd": round(transit - 0.5, 6),
                "valid_end_mjd": round(transit + 0.5, 6),
            }
            for t in types
        ]
        text = json.dumps(tables)
        self._cal_tables[key] = text
        return text

    def _ms_rows(self) -> Iterator[tuple[object, ...]]:
        for ms in self.ms:
            stage_time = ms.times[ms.stage]
            calibrated = ms.stage >= MSStage.CALIBRATED
            done = ms.stage == MSStage.PHOTOMETRY_DONE
            field_name = f"drift_dec{ms.strip:+.2f}"
            yield (
                ms.path,
                ms.group_id,
                field_name,
                ms.start_mjd,
                ms.mid_mjd,
                ms.end_mjd,
                ms.ra,
                ms.strip,
                ms.ra,
                ms.strip,
                int(ms.stage),
                int(ms.status),
                int(calibrated),
                self._calibration_json(ms) if calibrated else "[]",
                ms.times[1],
                ms.fail_time or stage_time,
                stage_time,
                stage_time if done else 0,
                ms.n_images,
            )

    # -- the catalog

    def _coverage(self) -> dict[float, list[tuple[float, float]]]:
        """Per strip, the merged RA intervals that finished scans measured."""
        spans: dict[float, list[tuple[float, float]]] = {}
        for ms in self.ms:
            if ms.kind != "photometry":
                continue
            half = PHOT_RADIUS_DEG[ms.setup] / math.cos(math.radians(ms.strip))
            lo, hi = ms.ra - half, ms.ra + half
            parts = spans.setdefault(ms.strip, [])
            if lo < 0.0:
                parts += [(lo + 360.0, 360.0), (0.0, hi)]
            elif hi > 360.0:
                parts += [(lo, 360.0), (0.0, hi - 360.0)]
            else:
                parts.append((lo, hi))
        merged: dict[float, list[tuple[float, float]]] = {}
        for strip in STRIPS:
            out: list[tuple[float, float]] = []
            for lo, hi in sorted(spans.get(strip, [])):
                if out and lo <= out[-1][1]:
                    out[-1] = (out[-1][0], max(out[-1][1], hi))
                else:
                    out.append((lo, hi))
            if out:
                merged[strip] = out
        return merged or {MAIN_STRIP: [(0.0, 360.0)]}

    def _place_sources(self) -> None:
        rng = self.rng
        coverage = self._coverage()
        strips = list(coverage)
        cumulative = {s: _cumulative([hi - lo for lo, hi in coverage[s]]) for s in strips}
        weights = [cumulative[s][-1] * math.cos(math.radians(s)) for s in strips]
        count = max(MIN_SOURCES, min(SOURCES_PER_IMAGE * self.images, MAX_SOURCES))
        taken: set[str] = set()

        def name(ra: float, dec: float) -> str:
            base = sky.designation(ra, dec)
            candidate, n = base, 1
            while candidate in taken:
                n += 1
                candidate = f"{base}_{n}"
            taken.add(candidate)
            return candidate

        cal = _Source(1, name(CAL_RA_DEG, CAL_DEC_DEG), CAL_RA_DEG, CAL_DEC_DEG, CAL_FLUX_JY * 1e3, model="calibrator")
        self.sources.append(cal)
        span = 1.0 - (FLUX_MIN_MJY / FLUX_MAX_MJY) ** FLUX_SLOPE
        for sid in range(2, count + 2):
            strip = rng.choices(strips, weights)[0]
            cum = cumulative[strip]
            u = rng.random() * cum[-1]
            k = bisect.bisect_right(cum, u) - 1
            ra = (coverage[strip][k][0] + u - cum[k]) % 360.0
            lo = math.sin(math.radians(strip - SOURCE_BAND_DEG))
            hi = math.sin(math.radians(strip + SOURCE_BAND_DEG))
            dec = math.degrees(math.asin(rng.uniform(lo, hi)))
            flux = FLUX_MIN_MJY * (1.0 - rng.random() * span) ** (-1.0 / FLUX_SLOPE)
            src = _Source(sid, name(ra, dec), ra, dec, round(flux, 1))
            if rng.random() < 0.15:
                src.extent = rng.uniform(1.1, 2.0)
            src.blended = rng.random() < 0.01
            self.sources.append(src)
        # The rest of the reference catalog: sources below the 10 mJy photometry threshold, which no
        # image measures, uniform over the sky north of dec -40 (NVSS's). Their own generator, so the
        # rest of the data does not depend on how many there are.
        crng = random.Random(count * 7919 + self.catalog_sources)
        low = math.sin(math.radians(-40.0))
        for sid in range(count + 2, count + 2 + self.catalog_sources):
            ra = crng.random() * 360.0
            dec = math.degrees(math.asin(crng.uniform(low, 1.0)))
            flux = CATALOG_FLUX_MIN_MJY * (FLUX_MIN_MJY / CATALOG_FLUX_MIN_MJY) ** crng.random()
            self.unmeasured.append(_Source(sid, name(ra, dec), ra, dec, round(flux, 1)))
        # variables among the sources bright enough for their variations to show
        bright = [s for s in self.sources[1:] if s.flux_mjy >= 25.0]
        models = ("scintillation", "walk", "ese")
        for n, src in enumerate(rng.sample(bright, min(len(bright), max(3, round(VARIABLE_FRACTION * count))))):
            src.model = models[n % 3]
            if src.model == "scintillation":
                src.params = (rng.uniform(0.12, 0.3),)
            elif src.model == "walk":
                src.params = (rng.uniform(0.15, 0.35), rng.uniform(0.05, 5.0))  # stationary std, days
            else:
                src.params = (rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.2), rng.random())  # depth, width, centre

    def _source_rows(self) -> Iterator[tuple[object, ...]]:
        created = self.ms[0].times[1] - DAY_S * 1_000_000  # the catalog was loaded the day before
        for s in [*self.sources, *self.unmeasured]:
            s.update_time = created
            yield (s.sid, s.id, sky.designation(s.ra, s.dec), s.ra, s.dec, "NVSS", s.flux_mjy, created, created)

    # -- photometry

    def _photometry_rows(self) -> Iterator[tuple[object, ...]]:
        rng = self.rng
        rand = rng.random
        cos, sin, acos, sqrt, log_ = math.cos, math.sin, math.acos, math.sqrt, math.log
        radians, degrees, two_pi = math.radians, math.degrees, 2.0 * math.pi
        thermal, err_sys2 = THERMAL, ERROR_SYSTEMATIC * ERROR_SYSTEMATIC
        groups = self._groups()
        mid = [ms.mid_mjd for ms in self.ms]
        ra_c = [ms.ra for ms in self.ms]
        noise = [ms.noise_jy for ms in self.ms]
        image = [ms.first_image_id for ms in self.ms]
        measured = [ms.times[MSStage.PHOTOMETRY_DONE] for ms in self.ms]
        inv_r2 = [1.0 / PHOT_RADIUS_DEG[ms.setup] ** 2 for ms in self.ms]
        edge = [0.81 * PHOT_RADIUS_DEG[ms.setup] ** 2 for ms in self.ms]
        sin0 = [math.sin(radians(ms.strip)) for ms in self.ms]
        cos0 = [math.cos(radians(ms.strip)) for ms in self.ms]
        count, peak_max = self.photometry_count, self.photometry_peak
        for src in self.sources:
            epochs = _epochs(groups, src.ra, src.dec)
            if not epochs:
                continue
            s_jy = src.flux_mjy * 1e-3
            inv_s = 1.0 / s_jy
            mults = self._variability(src, [mid[i] for i in epochs])
            sys_frac = CAL_SCATTER if src.model == "calibrator" else SYSTEMATIC
            a = math.sin(radians(src.dec))
            b = math.cos(radians(src.dec))
            sid, ra_s, dec_s, cat = src.sid, src.ra, src.dec, src.flux_mjy
            extent, sqrt_extent = src.extent, sqrt(src.extent)
            base_flag = "blended" if src.blended else "good"
            sums = src.sums
            add = sums.add
            for n, i in enumerate(epochs):
                c = a * sin0[i] + b * cos0[i] * cos(radians(ra_c[i] - ra_s))
                sep = degrees(acos(c if c < 1.0 else 1.0))
                sep2 = sep * sep
                rms = noise[i] * (1.0 + 0.4 * sep2 * inv_r2[i])
                flux = s_jy if mults is None else s_jy * mults[n]
                # two standard normal deviates at once (Box-Muller)
                angle, radius = two_pi * rand(), sqrt(-2.0 * log_(1.0 - rand()))
                peak = flux * (1.0 + sys_frac * cos(angle) * radius) + thermal * rms * sin(angle) * radius
                err = sqrt(rms * rms + err_sys2 * peak * peak)
                snr = peak / rms
                if snr < 5.0:
                    flag = "low_snr"
                elif sep2 > edge[i]:
                    flag = "edge"
                else:
                    flag = base_flag
                mjd = mid[i]
                add(peak, err, mjd)
                count[i] += 1
                if peak > peak_max[i]:
                    peak_max[i] = peak
                yield (
                    sid,
                    image[i],
                    ra_s,
                    dec_s,
                    cat,
                    peak,
                    err,
                    peak * extent + 0.3 * rms * (rand() - 0.5),
                    err * sqrt_extent,
                    peak * inv_s,
                    err * inv_s,
                    snr,
                    rms,
                    sep,
                    flag,
                    mjd,
                    measured[i],
                )
            src.update_time = measured[epochs[-1]]

    def _groups(self) -> list[tuple[float, float, list[float], list[int]]]:
        """Finished scans per (strip, imaging setup): declination, radius, RAs sorted, their MS indexes."""
        by_key: dict[tuple[float, int], list[tuple[float, int]]] = {}
        for ms in self.ms:
            if ms.kind == "photometry":
                by_key.setdefault((ms.strip, ms.setup), []).append((ms.ra, ms.index))
        groups = []
        for (strip, setup), items in sorted(by_key.items()):
            items.sort()
            groups.append((strip, PHOT_RADIUS_DEG[setup], [r for r, _ in items], [i for _, i in items]))
        return groups

    def _variability(self, src: _Source, mjds: list[float]) -> list[float] | None:
        """Flux multipliers per epoch for a variable source; None for a steady one."""
        rng = self.rng
        if src.model in ("", "calibrator"):
            return None
        if src.model == "scintillation":
            (m,) = src.params
            return [max(0.05, 1.0 + m * rng.gauss(0.0, 1.0)) for _ in mjds]
        if src.model == "walk":
            std, tau = src.params
            x, last, out = rng.gauss(0.0, std), mjds[0], []
            for t in mjds:
                decay = math.exp(-(t - last) / tau)
                x = x * decay + std * math.sqrt(1.0 - decay * decay) * rng.gauss(0.0, 1.0)
                last = t
                out.append(math.exp(x - std * std / 2.0))
            return out
        # extreme scattering event: a dip with caustic brightenings on either side, placed inside the
        # span this source was observed so that every database shows some
        depth, width, where = src.params
        span = mjds[-1] - mjds[0]
        centre = mjds[0] + where * span
        sigma = max(width * span, 0.004)
        out = []
        for t in mjds:
            x = (t - centre) / sigma
            caustic = math.exp(-0.5 * ((abs(x) - 1.8) / 0.4) ** 2)
            out.append(1.0 - depth * math.exp(-0.5 * x * x) + 0.35 * depth * caustic)
        return out

    # -- images

    def _image_rows(self) -> Iterator[tuple[object, ...]]:
        rng = self.rng
        for ms in self.ms:
            if not ms.n_images:
                continue
            size, cell = IMAGING[ms.setup]
            field_name = f"drift_dec{ms.strip:+.2f}"
            beam_major = round(30.0 * (1.0 + 0.05 * rng.gauss(0.0, 1.0)), 2)
            beam_minor = round(min(beam_major, 25.0 * (1.0 + 0.04 * rng.gauss(0.0, 1.0))), 2)
            beam_pa = round(rng.gauss(0.0, 8.0), 1)
            bandwidth = SUBBAND_MHZ * rng.choices((16, 15, 14, 13, 12), (0.7, 0.12, 0.08, 0.06, 0.04))[0]
            integration = round(INTEGRATION_S * rng.choices((24, 23, 22), (0.9, 0.07, 0.03))[0], 3)
            noise = ms.noise_jy
            flagged = rng.betavariate(2.0, 12.0)
            measured = self.photometry_count[ms.index]
            if ms.kind == "photometry":
                peak = max(self.photometry_peak[ms.index], noise * rng.uniform(80.0, 150.0))
                sources = measured + rng.randint(0, measured // 5 + 2)
            else:
                peak = noise * math.exp(rng.uniform(math.log(100.0), math.log(3000.0)))
                sources = rng.randint(30, 120)
            dr = peak / noise
            problems = []
            if noise > 1.1e-3:
                problems.append("high noise")
            if flagged > 0.3:
                problems.append(f"RFI: {flagged:.0%} flagged")
            if dr < 100.0:
                problems.append("low dynamic range")
            roll = rng.random()
            if roll < 0.01:
                problems.append("calibration solutions flagged for 12 antennas")
            grade = QAGrade.GOOD
            if problems:
                grade = QAGrade.WARNING
            if noise > 1.3e-3 or flagged > 0.45 or roll < 0.01:
                grade = QAGrade.BAD
            summary = f"noise {noise * 1e3:.2f} mJy/beam, DR {dr:.0f}, {flagged:.0%} flagged"
            if problems:
                summary += "; " + "; ".join(problems)
            extras = [ImageType.PBCOR, ImageType.RESIDUAL, ImageType.PSF, ImageType.MODEL]
            if rng.random() < 0.05:
                extras[1] = ImageType.CLEAN
            if rng.random() < 0.1:
                extras[3] = ImageType.DIRTY
            types = [ImageType.CONTINUUM, *extras][: ms.n_images]
            imaged = ms.times[MSStage.IMAGED]
            for j, itype in enumerate(types):
                image_id = ms.first_image_id + j
                created = imaged + j * 1_500_000
                updated = created
                count = 0
                i_noise, i_peak, i_sources = noise, peak, sources
                if itype == ImageType.CONTINUUM:
                    count = measured
                    if ms.kind == "photometry":
                        updated = ms.times[MSStage.PHOTOMETRY_DONE]
                elif itype == ImageType.PBCOR:
                    i_noise, i_peak = noise * 1.8, peak * 1.02
                elif itype in (ImageType.RESIDUAL, ImageType.CLEAN):
                    i_noise, i_peak, i_sources = noise * 1.02, noise * rng.uniform(4.0, 8.0), 0
                elif itype == ImageType.DIRTY:
                    i_noise, i_peak = noise * 1.5, peak * 1.1
                if itype in (ImageType.PSF, ImageType.MODEL):
                    i_noise, i_dr, i_grade, i_summary, metrics = 0.0, 0.0, QAGrade.UNSPECIFIED, "", "{}"
                    i_peak = 1.0 if itype == ImageType.PSF else peak * 0.97
                    i_sources = 0
                else:
                    i_dr = i_peak / i_noise
                    i_grade, i_summary = grade, summary
                    metrics = _METRICS_JSON % (
                        beam_major,
                        beam_minor,
                        round(i_dr, 1),
                        round(flagged, 4),
                        round(i_noise, 9),
                        round(i_peak, 6),
                        float(i_sources),
                    )
                yield (
                    image_id,
                    f"/stage/dsa110-contimg/images/{ms.group_id}{_IMAGE_SUFFIX[itype]}",
                    ms.path,
                    int(itype),
                    "fits",
                    created,
                    updated,
                    ms.mid_mjd,
                    beam_major,
                    beam_minor,
                    beam_pa,
                    i_noise,
                    i_dr,
                    int(itype == ImageType.PBCOR),
                    field_name,
                    ms.ra,
                    ms.strip,
                    size,
                    size,
                    cell,
                    FREQUENCY_GHZ,
                    bandwidth,
                    integration,
                    int(i_grade),
                    i_summary,
                    metrics,
                    i_sources,
                    i_peak,
                    count,
                )

    def _footprint_rows(self) -> Iterator[tuple[object, ...]]:
        for ms in self.ms:
            if not ms.n_images:
                continue
            size, cell = IMAGING[ms.setup]
            box = sky.cap_box(ms.ra, ms.strip, sky.footprint_radius_deg(size, size, cell))
            for j in range(ms.n_images):
                yield (ms.first_image_id + j, *box)

    # -- jobs

    def _jobs(self) -> tuple[list[Job], list[tuple[object, ...]], list[tuple[object, ...]]]:
        rng = self.rng
        recent = self.ms[-MAX_JOB_MS:]
        sims: list[_JobSim] = []
        first_success = True
        done_seen = 0
        for ms in recent:
            sims.append(
                self._pipeline_job(ms, retried=ms.kind == "photometry" and (first_success or rng.random() < 0.08))
            )
            if ms.kind == "photometry":
                first_success = False
                if done_seen % EXTRA_JOB_EVERY == 0:
                    sims.append(self._extra_job(ms, done_seen // EXTRA_JOB_EVERY))
                done_seen += 1
        jobs = [s.job for s in sims]
        ordered = sorted(
            ((t, n, k, row) for n, s in enumerate(sims) for k, (t, row) in enumerate(s.events)),
            key=lambda e: (e[0], e[1], e[2]),
        )
        events = [row for *_, row in ordered]
        logs: list[tuple[object, ...]] = [
            (s.job.id, n + 1, t, text) for s in sims for n, (t, text) in enumerate(s.logs)
        ]
        return jobs, events, logs

    def _pipeline_job(self, ms: _MS, *, retried: bool) -> _JobSim:
        rng = self.rng
        times = ms.times
        obs_end = (ms.start_s + SCAN_S) * 1_000_000
        size, cell = IMAGING[ms.setup]
        params = {
            "calibrator": CAL_NAME,
            "cell_arcsec": cell,
            "group_id": ms.group_id,
            "imager": "wsclean",
            "photometry_radius_deg": round(PHOT_RADIUS_DEG[ms.setup], 4),
            "size_px": size,
        }
        job_type = JobType.PIPELINE
        if ms.stage == MSStage.CONVERTED and ms.status == MSStatus.PENDING:
            job_type = JobType.CALIBRATE
        if job_type == JobType.CALIBRATE:
            created = times[1] + rng.randint(5, 30) * 1_000_000
        else:
            created = obs_end + rng.randint(5, 40) * 1_000_000
        sim = _JobSim(
            Job(
                id=_job_id(ms),
                type=int(job_type),
                ms_path=ms.path,
                target_path=ms.path,
                parameters_json=json.dumps(params, separators=(",", ":"), sort_keys=True),
            ),
            created,
        )
        host = rng.choice(_HOSTS)
        if job_type == JobType.CALIBRATE:
            if rng.random() < 0.5:
                sim.act(Action.START, created + 20_000_000)
                sim.log(created + 21_000_000, f"attempt 1/3 started on {host}")
                sim.act(
                    Action.FAIL,
                    created + 90_000_000,
                    message="calibration: no calibrator solutions valid "
                    "at this time (0834+555 transit not yet processed)",
                )
                sim.act(Action.RETRY, created + 95_000_000)
                sim.log(created + 95_500_000, "retry scheduled: waiting for the next calibrator solution")
            return sim
        t = sim.job.create_time + rng.randint(2, 10) * 1_000_000
        # how far the current attempt gets: (stage, time reached), in pipeline order
        path = [
            (JobStage.CONVERTING, t + 1_000_000),
            (JobStage.CONVERTED, times[1]),
            (JobStage.FLAGGING_RFI, times[1] + 2_000_000),
            (JobStage.SOLVING_CAL, times[2]),
            (JobStage.APPLYING_CAL, times[3]),
            (JobStage.IMAGING, times[4]),
            (JobStage.PHOTOMETRY, times[5]),
        ]
        reached = {
            MSStage.CONVERTED: 2,
            MSStage.FLAGGED: 4,
            MSStage.CALIBRATION_SOLVED: 5,
            MSStage.CALIBRATED: 6,
            MSStage.IMAGED: 7,
            MSStage.PHOTOMETRY_DONE: 7,
        }[MSStage(ms.stage)]
        if ms.status == MSStatus.FAILED:
            self._failing_attempts(sim, ms, host, t, path[: max(reached, 3)])
            return sim
        sim.act(Action.START, t)
        sim.log(t + 100_000, f"attempt 1/{sim.job.max_attempts} started on {host}")
        stages = path[:reached]
        if retried:
            # the first attempt dies while imaging; the retry starts over at imaging
            fail_at = times[4] + rng.randint(5, 60) * 1_000_000
            for stage, when in path[:6]:
                self._progress(sim, ms, stage, when)
            error = rng.choice(_ERRORS).format(ms=ms.path, group=ms.group_id)
            sim.act(Action.FAIL, fail_at, message=error)
            sim.log(fail_at + 100_000, f"ERROR {error}")
            sim.act(Action.RETRY, fail_at + 30_000_000)
            restart = fail_at + 40_000_000
            sim.act(Action.START, restart)
            sim.log(restart + 100_000, f"attempt 2/{sim.job.max_attempts} started on {rng.choice(_HOSTS)}")
            stages = [(JobStage.IMAGING, restart + 2_000_000), *path[6:reached]]
        for stage, when in stages:
            self._progress(sim, ms, stage, when)
        if ms.stage == MSStage.PHOTOMETRY_DONE:
            artifacts = [f"images/{ms.first_image_id + j}" for j in range(ms.n_images)]
            sim.act(Action.SUCCEED, times[6], artifacts=artifacts)
            sim.log(
                times[6] + 100_000,
                f"done: {ms.n_images} images, {self.photometry_count[ms.index]} photometry measurements",
            )
        return sim

    def _failing_attempts(self, sim: _JobSim, ms: _MS, host: str, t: int, path: list[tuple[JobStage, int]]) -> None:
        """Attempts that all die at the MS's last stage; every other one has used all three."""
        rng = self.rng
        error = rng.choice(_ERRORS).format(ms=ms.path, group=ms.group_id)
        attempts = sim.job.max_attempts if ms.index % 2 == 0 else 1
        last_stage_time = ms.times[ms.stage]
        fails = [ms.fail_time - (attempts - 1 - k) * 120_000_000 for k in range(attempts)]
        sim.act(Action.START, t)
        sim.log(t + 100_000, f"attempt 1/{sim.job.max_attempts} started on {host}")
        for stage, when in path:
            self._progress(sim, ms, stage, min(when, last_stage_time))
        for k, fail_at in enumerate(fails):
            if k:
                sim.act(Action.RETRY, fail_at - 100_000_000)
                sim.act(Action.START, fail_at - 90_000_000)
                sim.log(fail_at - 89_000_000, f"attempt {k + 1}/{sim.job.max_attempts} started on {host}")
                self._progress(sim, ms, path[-1][0], fail_at - 80_000_000)
            sim.act(Action.FAIL, fail_at, message=error)
            sim.log(fail_at + 100_000, f"ERROR {error}")

    def _progress(self, sim: _JobSim, ms: _MS, stage: JobStage, when: int) -> None:
        sim.act(Action.PROGRESS, when, stage=int(stage), progress=_STAGE_PROGRESS[stage])
        size, cell = IMAGING[ms.setup]
        text = {
            JobStage.CONVERTING: f"found 16/16 subband files for group {ms.group_id}; converting",
            JobStage.CONVERTED: f"wrote {ms.path}",
            JobStage.FLAGGING_RFI: "aoflagger: flagging RFI",
            JobStage.SOLVING_CAL: f"solving K, BP, G against {CAL_NAME}",
            JobStage.APPLYING_CAL: "applying calibration tables",
            JobStage.IMAGING: f"wsclean -size {size} {size} -scale {cell}asec -niter 50000 -mgain 0.8 {ms.path}",
            JobStage.PHOTOMETRY: f"forced photometry within {PHOT_RADIUS_DEG[ms.setup]:.2f} deg of the centre",
        }[stage]
        sim.log(when + 200_000, text)

    def _extra_job(self, ms: _MS, n: int) -> _JobSim:
        """Re-runs on finished scans: cancelled re-imaging, a repeated photometry, a failed recalibration."""
        rng = self.rng
        kind = n % 4
        t = ms.times[6] + rng.randint(600, 7200) * 1_000_000
        job_type, suffix = (
            (JobType.IMAGE, "reimage"),
            (JobType.PHOTOMETRY, "rephot"),
            (JobType.IMAGE, "reimage"),
            (JobType.CALIBRATE, "recal"),
        )[kind]
        params = {"reason": "operator request", "size_px": 5040, "cell_arcsec": 2.5}
        sim = _JobSim(
            Job(
                id=f"{_job_id(ms)}-{suffix}",
                type=int(job_type),
                ms_path=ms.path,
                target_path=ms.path,
                parameters_json=json.dumps(params, separators=(",", ":"), sort_keys=True),
            ),
            t,
        )
        host = rng.choice(_HOSTS)
        if kind == 0:
            sim.act(Action.CANCEL, t + 300_000_000, message="superseded by the pipeline run")
        elif kind == 1:
            sim.act(Action.START, t + 5_000_000)
            sim.log(t + 5_100_000, f"attempt 1/3 started on {host}")
            self._progress(sim, ms, JobStage.PHOTOMETRY, t + 6_000_000)
            sim.act(Action.SUCCEED, t + 120_000_000, artifacts=[f"images/{ms.first_image_id}"])
            sim.log(t + 120_100_000, f"done: {self.photometry_count[ms.index]} photometry measurements")
        elif kind == 2:
            sim.act(Action.START, t + 5_000_000)
            sim.log(t + 5_100_000, f"attempt 1/3 started on {host}")
            self._progress(sim, ms, JobStage.IMAGING, t + 6_000_000)
            sim.act(Action.CANCEL, t + 200_000_000, message="operator cancelled: wrong imaging parameters")
        else:
            for attempt in range(sim.job.max_attempts):
                start = t + attempt * 600_000_000
                if attempt:
                    sim.act(Action.RETRY, start - 1_000_000)
                sim.act(Action.START, start)
                sim.log(start + 100_000, f"attempt {attempt + 1}/3 started on {host}")
                self._progress(sim, ms, JobStage.SOLVING_CAL, start + 1_000_000)
                error = "calibration: bandpass solutions flagged for 61 % of antennas"
                sim.act(Action.FAIL, start + 240_000_000, message=error)
                sim.log(start + 240_100_000, f"ERROR {error}")
        return sim


class _JobSim:
    """One job moved through the server's state machine, recording what the repository would."""

    def __init__(self, job: Job, created: int):
        self.job = job._replace(create_time=created, update_time=created)
        self.events: list[tuple[int, tuple[object, ...]]] = []
        self.logs: list[tuple[int, str]] = []
        self._record(JobEventType.CREATED, JobTransition(0, int(JobState.PENDING), 0, "", created))

    def act(
        self,
        action: Action,
        when: int,
        *,
        stage: int = 0,
        progress: float | None = None,
        message: str = "",
        artifacts: list[str] | None = None,
    ) -> None:
        self.job, transition, etype = apply(
            self.job, action, when, stage=stage, progress=progress, message=message, artifacts=artifacts
        )
        self._record(etype, transition)

    def log(self, when: int, text: str) -> None:
        self.logs.append((when, text))
        self.job = self.job._replace(log_line_count=self.job.log_line_count + 1)

    def _record(self, etype: JobEventType, tr: JobTransition) -> None:
        self.events.append(
            (
                tr.time,
                (
                    self.job.id,
                    int(etype),
                    tr.from_state,
                    tr.to_state,
                    tr.stage,
                    tr.message,
                    tr.time,
                    rows.job_snapshot(self.job),
                ),
            )
        )


# ---- helpers ------------------------------------------------------------------------------------


def _job_id(ms: _MS) -> str:
    """The pipeline's run id, derived from the MS name: job-YYYY-MM-DD-HHMMSS."""
    return "job-" + ms.group_id.replace("T", "-").replace(":", "")


def _cumulative(lengths: list[float]) -> list[float]:
    out = [0.0]
    for length in lengths:
        out.append(out[-1] + length)
    return out


def _epochs(groups: list[tuple[float, float, list[float], list[int]]], ra: float, dec: float) -> list[int]:
    """Indexes (in time order) of the finished scans whose centre lies within the photometry radius.

    Scan centres sit exactly on their strip's declination, so for a given source the radius
    becomes an RA half-width: every centre inside it is a match and none outside.
    """
    found: list[int] = []
    sin_d, cos_d = math.sin(math.radians(dec)), math.cos(math.radians(dec))
    for strip, radius, ras, indexes in groups:
        if abs(dec - strip) >= radius:
            continue
        d0 = math.radians(strip)
        c = (math.cos(math.radians(radius)) - sin_d * math.sin(d0)) / (cos_d * math.cos(d0))
        if c >= 1.0:
            continue
        half = math.degrees(math.acos(max(-1.0, c)))
        lo, hi = ra - half, ra + half
        windows = [(lo, hi)]
        if half >= 180.0:
            windows = [(0.0, 360.0)]
        elif lo < 0.0:
            windows = [(lo + 360.0, 360.0), (0.0, hi)]
        elif hi >= 360.0:
            windows = [(lo, 360.0), (0.0, hi - 360.0)]
        for w_lo, w_hi in windows:
            found.extend(indexes[bisect.bisect_left(ras, w_lo) : bisect.bisect_right(ras, w_hi)])
    found.sort()
    return found


class _Steps:
    def __init__(self, start: float):
        self.start = self.last = start

    def done(self, what: str, count: int) -> None:
        now = time.perf_counter()
        log.info("demo data: %s %s (%.1f s, %.1f s in all)", f"{count:,}", what, now - self.last, now - self.start)
        self.last = now

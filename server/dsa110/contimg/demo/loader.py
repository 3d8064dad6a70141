"""The bulk load: simulate, then write every table in one pass on one connection.

The order matters twice. For the data: one random generator feeds every step, so the steps run in
a fixed order (schedule, catalog, variables, photometry, images, jobs) and each step's rows are
consumed as they are generated (photometry fills the tally and the sums that the sources' statistics,
images and jobs then read). For speed: the secondary indexes of the big tables are dropped first and
rebuilt from their stored definitions at the end, which is much faster than updating them per row.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time

from dsa110.contimg.server.domain import sky
from dsa110.contimg.server.domain.variability import derive
from dsa110.contimg.server.storage import rows
from dsa110.contimg.server.storage.sqlite.maintenance import STATS_SET

from .catalog import SOURCE_COLUMNS, build_catalog, source_rows
from .images import FOOTPRINT_COLUMNS, IMAGE_COLUMNS, footprint_rows, image_rows
from .job_history import JOB_EVENT_COLUMNS, JOB_LOG_COLUMNS
from .jobs import simulate_jobs
from .measurement_sets import MS_COLUMNS, ms_rows
from .photometry import PHOTOMETRY_COLUMNS, PhotometryTally, photometry_rows, statistics_rows
from .scans import schedule
from .variability import choose_variables

log = logging.getLogger(__name__)

# Tables big enough that dropping their indexes during the load pays.
_BULK_TABLES = ("measurement_sets", "images", "sources", "photometry")
_POSITION_COLUMNS = ("sid", "x0", "x1", "y0", "y1", "z0", "z1")


def load(conn: sqlite3.Connection, rng: random.Random, images: int, catalog_sources: int) -> dict[str, int]:
    """Write the demo data into the empty tables (inside the caller's transaction); returns the
    number of rows of each kind for the log."""
    step = _Steps(time.perf_counter())
    indexes = _drop_indexes(conn)
    scans = schedule(rng, images)
    catalog = build_catalog(rng, scans, images, catalog_sources)
    choose_variables(rng, catalog.measured)
    everything = catalog.all()

    conn.executemany(_insert("measurement_sets", MS_COLUMNS), ms_rows(scans))
    step.done("measurement sets", len(scans))
    conn.executemany(_insert("sources", SOURCE_COLUMNS), source_rows(scans, everything))
    step.done("sources", len(everything))

    tally = PhotometryTally.empty(len(scans))
    conn.executemany(_insert("photometry", PHOTOMETRY_COLUMNS), photometry_rows(rng, scans, catalog.measured, tally))
    measured = sum(tally.count)
    step.done("photometry rows", measured)
    by_image = conn.execute(
        "INSERT INTO image_photometry (image_id, source_sids) "
        "SELECT image_id, json_group_array(source_sid) FROM photometry GROUP BY image_id"
    )
    step.done("images' photometry lists", by_image.rowcount)
    conn.executemany(
        f"UPDATE sources SET {STATS_SET}, update_time = ? WHERE sid = ?", statistics_rows(catalog.measured)
    )
    conn.executemany(
        _insert("source_positions", _POSITION_COLUMNS), ((s.sid, *sky.point_box(s.ra, s.dec)) for s in everything)
    )
    step.done("source statistics and positions", len(everything))

    conn.executemany(_insert("images", IMAGE_COLUMNS), image_rows(rng, scans, tally))
    step.done("images", images)
    conn.executemany(_insert("image_footprints", FOOTPRINT_COLUMNS), footprint_rows(scans))
    step.done("image footprints", images)

    jobs = simulate_jobs(rng, scans, tally.count)
    conn.executemany(
        f"INSERT INTO jobs ({rows.JOB_SELECT}) VALUES ({', '.join('?' * len(rows.JOB_COLUMNS))})",
        (rows.job_values(j) for j in jobs.jobs),
    )
    conn.executemany(_insert("job_events", JOB_EVENT_COLUMNS), jobs.events)
    conn.executemany(_insert("job_logs", JOB_LOG_COLUMNS), jobs.logs)
    step.done("jobs", len(jobs.jobs))

    for sql in indexes:
        conn.execute(sql)
    step.done("indexes", len(indexes))
    return {
        "measurement sets": len(scans),
        "images": images,
        "sources": len(everything),
        "variable sources": sum(1 for s in catalog.measured if derive(s.sums).is_variable),
        "photometry rows": measured,
        "jobs": len(jobs.jobs),
        "job events": len(jobs.events),
        "job log lines": len(jobs.logs),
    }


def _drop_indexes(conn: sqlite3.Connection) -> list[str]:
    """Drop the bulk tables' secondary indexes; returns their CREATE statements, in name order."""
    indexes = list(
        conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN "
            f"({', '.join('?' * len(_BULK_TABLES))}) ORDER BY name",
            _BULK_TABLES,
        )
    )
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    return [sql for _, sql in indexes]


def _insert(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


class _Steps:
    """Logs each step's row count and time: a million images take minutes, and this says where."""

    def __init__(self, start: float):
        self.start = self.last = start

    def done(self, what: str, count: int) -> None:
        now = time.perf_counter()
        log.info("demo data: %s %s (%.1f s, %.1f s in all)", f"{count:,}", what, now - self.last, now - self.start)
        self.last = now

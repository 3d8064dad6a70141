"""Writes shared by several repositories: cascading image deletion and source statistics (as
storage/sqlite/maintenance.py), and what concurrent writes need that SQLite's one writer did not."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ...domain.variability import FluxSums
from ..clock import now_us
from ..statistics import STATS_COLUMNS, stats_values

if TYPE_CHECKING:
    from .database import Conn


STATS_SET = ", ".join(f"{c} = ${i}" for i, c in enumerate(STATS_COLUMNS, start=1))
_N_STATS = len(STATS_COLUMNS)
_UPDATE_STATS = f"UPDATE sources SET {STATS_SET}, update_time = ${_N_STATS + 1} WHERE sid = ${_N_STATS + 2}"


async def recompute_sources(conn: Conn, sids: Iterable[int]) -> None:
    """Rebuild the statistics of these sources from their remaining photometry.

    Folded here, not by SQL aggregates, so the sums are FluxSums.add's (non-finite sums of old rows
    become statistics of 0 rather than an overflow error that fails the write); streamed through a
    cursor, so a large image's sources never sit in memory whole."""
    ordered = sorted(set(sids))
    if not ordered:
        return
    # Lock the sources first, in sid order as ingest does (sources.py): an ingest committing
    # between the read of photometry and the write of the sums would otherwise be lost from them.
    await conn.execute("SELECT 1 FROM sources WHERE sid = ANY($1::bigint[]) ORDER BY sid FOR UPDATE", ordered)
    sums: defaultdict[int, FluxSums] = defaultdict(FluxSums)
    async for sid, flux, err, mjd in conn.cursor(
        "SELECT source_sid, peak_flux_jy, peak_flux_err_jy, observation_mjd FROM photometry "
        "WHERE source_sid = ANY($1::bigint[]) ORDER BY source_sid, observation_mjd, image_id",
        ordered,
        prefetch=5000,
    ):
        sums[sid].add(flux, err, mjd)
    now = now_us()
    await conn.executemany(_UPDATE_STATS, [[*stats_values(sums[sid]), now, sid] for sid in ordered])


async def delete_images(conn: Conn, image_ids: Sequence[int]) -> None:
    """Delete images with their photometry, keeping source statistics and image counts true."""
    if not image_ids:
        return
    ids = list(image_ids)
    # By primary-key prefix, source by source: photometry has no index by image.
    measured = [
        (sid, image_id)
        for image_id, sids in await conn.fetch(
            "DELETE FROM image_photometry WHERE image_id = ANY($1::bigint[]) RETURNING image_id, source_sids", ids
        )
        for sid in sids
    ]
    if measured:
        await conn.executemany("DELETE FROM photometry WHERE source_sid = $1 AND image_id = $2", measured)
        await recompute_sources(conn, (sid for sid, _ in measured))
    ms_counts = await conn.fetch(
        "WITH gone AS (DELETE FROM images WHERE id = ANY($1::bigint[]) RETURNING ms_path) "
        "SELECT ms_path, count(*) FROM gone GROUP BY ms_path ORDER BY ms_path",
        ids,
    )
    now = now_us()
    await conn.executemany(
        "UPDATE measurement_sets SET image_count = image_count - $1, update_time = $2 WHERE path = $3",
        [(n, now, path) for path, n in ms_counts],
    )

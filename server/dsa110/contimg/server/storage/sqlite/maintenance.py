"""Writes shared by several repositories: cascading image deletion and source statistics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson

from ...domain.variability import FluxSums
from ..clock import now_us
from ..statistics import STATS_COLUMNS, stats_values
from .sql import chunks, placeholders
from .writer import Txn

STATS_SET = ", ".join(f"{c} = ?" for c in STATS_COLUMNS)


def recompute_sources(txn: Txn, sids: Iterable[int]) -> None:
    """Rebuild the statistics of these sources from their remaining photometry."""
    now = now_us()
    for sid in sorted(set(sids)):
        sums = FluxSums()
        for flux, err, mjd in txn.fetchall(
            "SELECT peak_flux_jy, peak_flux_err_jy, observation_mjd FROM photometry WHERE source_sid = ?",
            (sid,),
        ):
            sums.add(flux, err, mjd)
        txn.execute(f"UPDATE sources SET {STATS_SET}, update_time = ? WHERE sid = ?", [*stats_values(sums), now, sid])


def delete_images(txn: Txn, image_ids: Sequence[int]) -> None:
    """Delete images with their photometry and footprints, keeping source statistics true."""
    for part in chunks(image_ids):
        marks = placeholders(len(part))
        # By primary-key prefix, source by source: photometry has no index by image (migration 2).
        measured = [
            (sid, image_id)
            for image_id, sids in txn.fetchall(
                f"SELECT image_id, source_sids FROM image_photometry WHERE image_id IN ({marks})", part
            )
            for sid in orjson.loads(sids)
        ]
        txn.executemany("DELETE FROM photometry WHERE source_sid = ? AND image_id = ?", measured)
        txn.execute(f"DELETE FROM image_photometry WHERE image_id IN ({marks})", part)
        recompute_sources(txn, (sid for sid, _ in measured))
        txn.execute(f"DELETE FROM image_footprints WHERE id IN ({marks})", part)
        ms_counts = list(
            txn.fetchall(f"SELECT ms_path, count(*) FROM images WHERE id IN ({marks}) GROUP BY ms_path", part)
        )
        txn.execute(f"DELETE FROM images WHERE id IN ({marks})", part)
        txn.executemany(
            "UPDATE measurement_sets SET image_count = image_count - ?, update_time = ? WHERE path = ?",
            [(n, now_us(), p) for p, n in ms_counts],
        )

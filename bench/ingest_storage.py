"""RecordPhotometry's storage alone: rows/s through SQLiteSources.record_photometry, no gRPC.

    python bench/ingest_storage.py --database /tmp/b100k/contimg.sqlite3 [--writers 1 4 64]

Works on a copy of the database (the original is left alone). Each writer records 1,000-row
batches of the same 1,000 sources on new images, as concurrent photometry workers on consecutive
drift scans do, so the numbers are comparable to bench/run.py's RecordPhotometry line; the
difference between the two is what gRPC, request decoding and conversion cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from dsa110.contimg.server.domain.records import JobEvent, Photometry, PhotometryBatch
from dsa110.contimg.server.storage.sqlite.database import SQLiteSettings
from dsa110.contimg.server.storage.sqlite.storage import SQLiteStorage
from dsa110.contimg.server.storage.sqlite.writer import Txn
from procs import cpu_seconds


class _NoEvents:
    def publish(self, event: JobEvent) -> None:
        pass


async def run(database: Path, writers: int, images: int, rows: int, write_process: bool) -> tuple[float, float]:
    """Rows per second, and CPU microseconds per row (all threads and the write process)."""
    storage = SQLiteStorage(SQLiteSettings(database, write_process=write_process), _NoEvents())
    await storage.open()
    try:
        tag = time.time_ns()

        def new_images(txn: Txn) -> list[int]:
            found = txn.fetchone("SELECT path FROM measurement_sets LIMIT 1")
            assert found is not None, "the database needs demo data (contimg-server demo-data)"
            return [
                int(
                    txn.execute(
                        "INSERT INTO images (path, ms_path, mid_mjd, create_time, update_time) VALUES (?, ?, ?, 0, 0)",
                        (f"/bench/{tag}-{i}.fits", found[0], 61000 + i / 288),
                    ).lastrowid
                    or 0
                )
                for i in range(images)
            ]

        ids = await storage.db.write(new_images)
        rng = random.Random(1)
        sources = [f"BENCH{tag}-{j}" for j in range(rows)]
        queue = [
            (
                image_id,
                PhotometryBatch.of_rows(
                    [
                        Photometry(s, 0, 100.0 + j * 1e-3, 54.57, 0.0, 0.05 + rng.random() * 0.01, 0.001)
                        for j, s in enumerate(sources)
                    ]
                ),
            )
            for image_id in ids
        ]
        image_id, batch = queue.pop()  # not timed: starts the write process
        await storage.sources.record_photometry(image_id, batch, None)
        start, cpu = time.perf_counter(), cpu_seconds(os.getpid())

        async def writer() -> None:
            while queue:
                image_id, batch = queue.pop()
                await storage.sources.record_photometry(image_id, batch, None)

        await asyncio.gather(*(writer() for _ in range(writers)))
        total = (images - 1) * rows
        return total / (time.perf_counter() - start), (cpu_seconds(os.getpid()) - cpu) / total * 1e6
    finally:
        await storage.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database", type=Path, required=True)
    p.add_argument("--writers", type=int, nargs="+", default=[1, 4, 64])
    p.add_argument("--images", type=int, default=256)
    p.add_argument(
        "--write-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write from the write process, as the server does (default), or from a thread here",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="contimg-ingest-") as tmp:
        copy = Path(tmp) / "contimg.sqlite3"
        shutil.copy(args.database, copy)
        os.sync()  # else the copy's writeback competes with every commit's fsync
        for writers in args.writers:
            rate, cpu_us = asyncio.run(run(copy, writers, args.images, 1000, args.write_process))
            print(
                f"{writers} concurrent writers: {rate:,.0f} rows/s durably committed, "
                f"{cpu_us:.1f} CPU us/row (storage only)"
            )


if __name__ == "__main__":
    main()

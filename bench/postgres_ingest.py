"""RecordPhotometry's storage on PostgreSQL alone: rows/s through PostgresSources.record_photometry.

    python bench/postgres_ingest.py [--server postgresql://postgres@127.0.0.1:5432/postgres] [--writers 4 64] [--no-q3c]

Works in a database of its own, made on that server and dropped after. As bench/ingest_storage.py
(SQLite), each writer records 1,000-row batches of the same 1,000 sources on new images, as
concurrent photometry workers on consecutive drift scans do: every batch updates the statistics of
the same 1,000 sources. The first batch (not timed) creates them. CPU is counted for this process
and for the PostgreSQL backends serving it (not PostgreSQL's WAL writer or checkpointer). The
database gets q3c's index over the sources where the server has the extension, as a server's would;
--no-q3c leaves it out (what the index costs the ingest).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid

import asyncpg
from dsa110.contimg.server.domain.records import Photometry, PhotometryBatch
from dsa110.contimg.server.storage.postgres.database import Conn, Database, PostgresSettings
from dsa110.contimg.server.storage.postgres.sources import PostgresSources
from procs import cpu_seconds


async def backend_pids(db: Database) -> list[int]:
    return [r[0] for r in await db.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]


def cpu_of(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}


async def run(url: str, writers: int, images: int, rows: int, q3c: bool) -> tuple[float, float, float]:
    """Rows per second, and CPU microseconds per row here and in PostgreSQL's backends."""
    db = Database(PostgresSettings(url, pool_max=10, q3c=q3c))
    await db.open()
    try:
        tag = uuid.uuid4().hex[:8]

        async def new_images(conn: Conn) -> list[int]:
            ms = f"/bench/{tag}.ms"
            await conn.execute(
                "INSERT INTO measurement_sets (path, mid_mjd, create_time, update_time) VALUES ($1, 61000, 0, 0)", ms
            )
            found = await conn.fetch(
                "INSERT INTO images (path, ms_path, mid_mjd, create_time, update_time) "
                "SELECT '/bench/' || $1 || '-' || i || '.fits', $2, 61000 + i / 288.0, 0, 0 "
                "FROM generate_series(1, $3) AS i RETURNING id",
                tag,
                ms,
                images,
            )
            return sorted(r[0] for r in found)

        ids = await db.write(new_images)
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
        repo = PostgresSources(db)
        image_id, batch = queue.pop()  # not timed: creates the sources
        await repo.record_photometry(image_id, batch, None)
        # Open every pooled connection now, so that the backends counted are the ones that write.
        await asyncio.gather(*(db.fetch("SELECT pg_sleep(0.05)") for _ in range(10)))
        pids = await backend_pids(db)
        start, cpu, pg_cpu = time.perf_counter(), cpu_seconds(os.getpid()), cpu_of(pids)

        async def writer() -> None:
            while queue:
                image_id, batch = queue.pop()
                await repo.record_photometry(image_id, batch, None)

        await asyncio.gather(*(writer() for _ in range(writers)))
        elapsed = time.perf_counter() - start
        total = (images - 1) * rows
        here = (cpu_seconds(os.getpid()) - cpu) / total * 1e6
        there = sum(cpu_seconds(pid) - pg_cpu.get(pid, 0.0) for pid in await backend_pids(db)) / total * 1e6
        return total / elapsed, here, there
    finally:
        await db.close()


async def main_async(server: str, writers: list[int], images: int, repeat: int, q3c: bool) -> None:
    name = f"contimg_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        for n in writers:
            for _ in range(repeat):
                rate, here, there = await run(server.rsplit("/", 1)[0] + "/" + name, n, images, 1000, q3c)
                print(
                    f"{n} concurrent writers: {rate:,.0f} rows/s committed; CPU us/row: {here:.1f} here, "
                    f"{there:.1f} in PostgreSQL's backends",
                    flush=True,
                )
    finally:
        admin = await asyncpg.connect(server)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--writers", type=int, nargs="+", default=[4, 64])
    p.add_argument("--images", type=int, default=257, help="batches per run, the first not timed")
    p.add_argument("--repeat", type=int, default=1, help="runs per writer count (each adds its rows)")
    p.add_argument("--no-q3c", action="store_true", help="no q3c index over the sources")
    args = p.parse_args()
    asyncio.run(main_async(args.server, args.writers, args.images, args.repeat, not args.no_q3c))


if __name__ == "__main__":
    main()

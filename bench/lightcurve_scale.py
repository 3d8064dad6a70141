"""GetLightcurve as photometry grows: the same 100-point lightcurves read from a database holding
10^5 photometry rows and from one holding 10^7, through gRPC with the read cache off (every call
reads storage).

    python bench/lightcurve_scale.py --engine postgres            # 10^5 and 10^7 rows
    python bench/lightcurve_scale.py --engine sqlite --rows 100000 1000000

Each SQLite database is filled through the server's own RecordPhotometry (one columnar batch per
image, as the pipeline records an image's photometry once; 8 concurrent writers), and each
PostgreSQL one with `contimg-server copy-data` from the SQLite one of the same size (PostgreSQL's
own ingest of 100,000-source batches runs at ~10,000 rows/s: every statistics update rewrites each
of the sources table's 14 index entries; bench/README.md): `rows / 100` sources (at
most 100,000, a batch's limit) measured on each of 100 images, so every source has 100
points at either scale and only the size of the tables differs. The databases are kept (PostgreSQL:
`contimg_lc_<rows>`; SQLite: /tmp/contimg-lc-<rows>/) and reused by later runs. One caller, one
call at a time, a random source per call, the scales interleaved in rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

import asyncpg
import grpc
from dsa110.contimg.v1 import (
    images_pb2,
    images_pb2_grpc,
    measurement_sets_pb2,
    measurement_sets_pb2_grpc,
    sources_pb2,
    sources_pb2_grpc,
)

sys.path.insert(0, str(Path(__file__).parent))
from run import free_port, start

BIN = Path(sys.executable).parent
IMAGES = 100
WRITERS = 8


def source_name(j: int) -> str:
    return f"sources/LC{j:07d}"


async def fill(port: int, rows: int) -> float:
    """Record `rows` photometry rows; rows/s."""
    sources = rows // IMAGES
    options = [("grpc.max_send_message_length", 1 << 26)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
        ms = await measurement_sets_pb2_grpc.MSServiceStub(ch).UpdateMeasurementSet(
            measurement_sets_pb2.UpdateMeasurementSetRequest(
                measurement_set=measurement_sets_pb2.MeasurementSet(path="/bench/lc.ms", mid_mjd=61000.0),
                allow_missing=True,
            )
        )
        img_stub = images_pb2_grpc.ImageServiceStub(ch)
        images = [
            (
                await img_stub.CreateImage(
                    images_pb2.CreateImageRequest(
                        image=images_pb2.Image(
                            path=f"/bench/lc-{i}.fits", measurement_set=ms.name, mid_mjd=61000.0 + i / 288
                        )
                    )
                )
            ).name
            for i in range(IMAGES)
        ]
        rng = random.Random(5)
        work = list(images)
        stub = sources_pb2_grpc.SourceServiceStub(ch)

        def batch(image: str) -> sources_pb2.RecordPhotometryRequest:
            js = range(sources)
            return sources_pb2.RecordPhotometryRequest(
                image=image,
                columns=sources_pb2.PhotometryColumns(
                    source=[source_name(j) for j in js],
                    ra_deg=[(j * 0.0036) % 360.0 for j in js],
                    dec_deg=[54.57 + (j % 100) * 0.01 for j in js],
                    peak_flux_jy=[0.05 + rng.random() * 0.01 for _ in js],
                    peak_flux_err_jy=[0.001] * len(js),
                ),
            )

        started = time.perf_counter()

        async def writer() -> None:
            while work:
                await stub.RecordPhotometry(batch(work.pop()), timeout=600)

        await asyncio.gather(*(writer() for _ in range(WRITERS)))
        return rows / (time.perf_counter() - started)


async def prepared(engine: str, rows: int) -> str:
    """The `--database` value of a database holding `rows` rows of photometry, filled if new."""
    if engine == "sqlite":
        path = Path(f"/tmp/contimg-lc-{rows}/contimg.sqlite3")
        database, exists = str(path), path.exists()  # noqa: ASYNC240 (a one-shot check before any load)
        path.parent.mkdir(exist_ok=True)
    else:
        database = f"postgresql://postgres@127.0.0.1:5432/contimg_lc_{rows}"
        admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            exists = bool(await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", f"contimg_lc_{rows}"))
            if not exists:
                await admin.execute(f"CREATE DATABASE contimg_lc_{rows}")
        finally:
            await admin.close()
    if not exists and engine == "postgres":
        source = await prepared("sqlite", rows)
        proc = await asyncio.create_subprocess_exec(
            *(str(BIN / "contimg-server"), "copy-data", "--from", source, "--to", database),
            stdout=asyncio.subprocess.DEVNULL,
        )
        if await proc.wait() != 0:
            raise SystemExit(f"copy-data into {database} failed")
        print(f"postgres: copied {rows:,} photometry rows from {source}", flush=True)
    elif not exists:
        port = free_port()
        server = start(serve(database, port), port)
        try:
            rate = await fill(port, rows)
            print(f"{engine}: filled {rows:,} photometry rows at {rate:,.0f} rows/s", flush=True)
        finally:
            server.terminate()
            server.wait(60)
    return database


def serve(database: str, port: int) -> list[str]:
    return [str(BIN / "contimg-server"), "serve", "--port", str(port), "--database", database,
            "--read-cache-mb", "0", "--no-log-rpcs", "--allow-anonymous-writes", "--max-message-mb", "64"]  # fmt: skip


async def timed(port: int, sources: int, calls: int, rng: random.Random) -> list[float]:
    took = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = sources_pb2_grpc.SourceServiceStub(ch)
        for _ in range(calls):
            name = source_name(rng.randrange(sources))
            t0 = time.perf_counter()
            points = 0
            async for reply in stub.GetLightcurve(sources_pb2.GetLightcurveRequest(name=name)):
                points += len(reply.points)
            took.append((time.perf_counter() - t0) * 1000.0)
            if points != IMAGES:
                raise SystemExit(f"{name}: {points} points, expected {IMAGES}")
    return took


async def main_async(engine: str, scales: list[int], calls: int, rounds: int) -> None:
    databases = {rows: await prepared(engine, rows) for rows in scales}
    servers = {}
    for rows, database in databases.items():
        port = free_port()
        servers[rows] = (port, start(serve(database, port), port))
    try:
        took: dict[int, list[float]] = {rows: [] for rows in scales}
        rng = random.Random(11)
        for rows, (port, _) in servers.items():
            await timed(port, rows // IMAGES, 50, rng)  # warm-up: connections, plans, the OS cache
        for _ in range(rounds):
            for rows, (port, _) in servers.items():
                took[rows] += await timed(port, rows // IMAGES, calls, rng)
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(60)
    base = statistics.median(took[scales[0]])
    for rows in scales:
        ordered = sorted(took[rows])
        p50 = statistics.median(ordered)
        p99 = ordered[int(0.99 * len(ordered)) - 1]
        print(
            f"{engine}, {rows:,} photometry rows: GetLightcurve (100 points, read cache off, one caller) "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms over {len(ordered)} calls; {p50 / base:.2f}x the smallest"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=("sqlite", "postgres"), default="postgres")
    p.add_argument("--rows", type=int, nargs="+", default=[100_000, 10_000_000])
    p.add_argument("--calls", type=int, default=500, help="calls per scale per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    asyncio.run(main_async(args.engine, args.rows, args.calls, args.rounds))
    print(f"`python bench/lightcurve_scale.py {' '.join(sys.argv[1:])}`")


if __name__ == "__main__":
    main()

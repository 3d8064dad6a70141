"""Memory under a long mixed load: does the server's heap stay flat once its caches are full?

    python bench/soak.py --data-dir /tmp/b10k --minutes 10

Starts `contimg-server serve` (production defaults, request logging included) on a demo database
(it writes to it: use a copy), then for `--minutes` runs readers and writers side by side: readers ask
GetImage, BatchGetImages, ListImages (varied filters, orders and pages), SearchImages,
SearchSources, GetSource, GetLightcurve, ListJobs and ListMeasurementSets over many distinct
requests, so the read cache fills and evicts; writers create images, record their photometry and
take jobs through their states. The server's RssAnon (its heap; VmRSS also counts the database's
mapped pages) is sampled every `--sample-s` seconds. Reported: the medians of the samples in the
first and the second half after the warm-up (a leak moves them apart), the largest, and calls made.
The read cache is bounded by `--read-cache-mb` (passed on), SQLite's page caches by their
connections' cache_size: the question is whether anything else grows.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import grpc
from dsa110.contimg.v1 import (
    images_pb2,
    images_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    measurement_sets_pb2,
    measurement_sets_pb2_grpc,
    sources_pb2,
    sources_pb2_grpc,
)

sys.path.insert(0, str(Path(__file__).parent))
import run


def rss_anon_mib(pid: int) -> float:
    """Anonymous resident memory: the heap. (VmRSS also counts the database's pages that the read
    connections map, up to 256 MiB each, which are the file's, shared and reclaimable.)"""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon")


class Load:
    def __init__(self, channel: grpc.aio.Channel, database: Path, seed: int):
        self.images = images_pb2_grpc.ImageServiceStub(channel)
        self.sources = sources_pb2_grpc.SourceServiceStub(channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(channel)
        self.ms = measurement_sets_pb2_grpc.MSServiceStub(channel)
        self.rng = random.Random(seed)
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        self.image_ids = [r[0] for r in conn.execute("SELECT id FROM images ORDER BY random() LIMIT 20000")]
        self.source_ids = [
            r[0] for r in conn.execute("SELECT id FROM sources WHERE detection_count > 0 ORDER BY random() LIMIT 5000")
        ]
        self.ms_paths = [r[0] for r in conn.execute("SELECT path FROM measurement_sets ORDER BY random() LIMIT 50")]
        conn.close()
        self.calls = 0
        self.writes = 0
        self.errors = 0
        self.serial = 0

    async def read_once(self) -> None:
        rng = self.rng
        kind = rng.randrange(9)
        if kind == 0:
            await self.images.GetImage(images_pb2.GetImageRequest(name=f"images/{rng.choice(self.image_ids)}"))
        elif kind == 1:
            names = [f"images/{i}" for i in rng.sample(self.image_ids, 20)]
            await self.images.BatchGetImages(images_pb2.BatchGetImagesRequest(names=names))
        elif kind == 2:
            request = images_pb2.ListImagesRequest(
                page_size=rng.choice((10, 50, 100)),
                filter=rng.choice(("", f"noise_jy < {rng.uniform(0.0005, 0.003):.5f}", "pbcor = true")),
                order_by=rng.choice(("", "mid_mjd desc", "noise_jy")),
            )
            page = await self.images.ListImages(request)
            if page.next_page_token and rng.random() < 0.5:
                request.page_token = page.next_page_token
                await self.images.ListImages(request)
        elif kind == 3:
            await self.images.SearchImages(
                images_pb2.SearchImagesRequest(ra_deg=rng.uniform(0, 360), dec_deg=rng.uniform(50, 60))
            )
        elif kind == 4:
            await self.sources.SearchSources(
                sources_pb2.SearchSourcesRequest(
                    ra_deg=rng.uniform(0, 360), dec_deg=rng.uniform(50, 60), radius_deg=rng.choice((0.2, 0.5, 1.0))
                )
            )
        elif kind == 5:
            await self.sources.GetSource(sources_pb2.GetSourceRequest(name=f"sources/{rng.choice(self.source_ids)}"))
        elif kind == 6:
            request = sources_pb2.GetLightcurveRequest(name=f"sources/{rng.choice(self.source_ids)}")
            async for _ in self.sources.GetLightcurve(request):
                pass
        elif kind == 7:
            await self.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=50))
        else:
            await self.ms.ListMeasurementSets(measurement_sets_pb2.ListMeasurementSetsRequest(page_size=50))
        self.calls += 1

    async def write_once(self) -> None:
        rng = self.rng
        self.serial += 1
        image = await self.images.CreateImage(
            images_pb2.CreateImageRequest(
                image=images_pb2.Image(
                    path=f"/data/soak/{time.time_ns()}-{self.serial}.fits",
                    measurement_set=rng.choice(self.ms_paths),
                    mid_mjd=60900.0 + rng.random(),
                    center_ra_deg=rng.uniform(0, 360),
                    center_dec_deg=rng.uniform(50, 60),
                    size_x_px=4800,
                    size_y_px=4800,
                    cell_size_arcsec=6.0,
                    noise_jy=rng.uniform(0.0003, 0.003),
                )
            )
        )
        sources = rng.sample(self.source_ids, 200)
        await self.sources.RecordPhotometry(
            sources_pb2.RecordPhotometryRequest(
                image=image.name,
                measurements=[
                    sources_pb2.PhotometryMeasurement(
                        source=f"sources/{s}",
                        ra_deg=1.0,
                        dec_deg=55.0,
                        peak_flux_jy=rng.uniform(0.01, 0.1),
                        peak_flux_err_jy=0.001,
                        quality_flag="good",
                    )
                    for s in sources
                ],
            )
        )
        job = await self.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)))
        await self.jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name))
        await self.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=job.name, lines=["soak"] * 5))
        await self.jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=job.name))
        self.writes += 1


async def loop(action: object, until: float, pause_s: float, load: Load) -> None:
    while time.monotonic() < until:
        try:
            await action()  # type: ignore[operator]
        except grpc.aio.AioRpcError as exc:
            load.errors += 1
            if load.errors <= 3:
                print(f"error: {exc.code().name}: {exc.details()}", flush=True)
        if pause_s:
            await asyncio.sleep(pause_s)


async def main_async(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir)
    database = data_dir / "contimg.sqlite3"
    port = run.free_port()
    cmd = [
        str(run.BIN / "contimg-server"), "serve", "--port", str(port), "--data-dir", str(data_dir),
        "--allow-anonymous-writes", "--read-cache-mb", str(args.read_cache_mb),
    ]  # fmt: skip
    proc = run.start(cmd, port)
    samples: list[tuple[float, float]] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            load = Load(channel, database, args.seed)
            start = time.monotonic()
            until = start + args.minutes * 60

            async def sampler() -> None:
                while time.monotonic() < until:
                    samples.append((time.monotonic() - start, rss_anon_mib(proc.pid)))
                    await asyncio.sleep(args.sample_s)

            await asyncio.gather(
                sampler(),
                *(loop(load.read_once, until, 0.0, load) for _ in range(args.readers)),
                *(loop(load.write_once, until, args.write_pause_s, load) for _ in range(args.writers)),
            )
    finally:
        proc.terminate()
        proc.wait(30)
    # The heap swings by hundreds of MiB as threads' malloc arenas fill and are trimmed: compare
    # the halves' medians (a leak moves them apart) and name the largest sample.
    warm = [rss for t, rss in samples if t >= args.warmup_s]
    half = len(warm) // 2
    early, late, peak = statistics.median(warm[:half]), statistics.median(warm[half:]), max(warm)
    print(
        f"server heap (RssAnon) after the {args.warmup_s:.0f} s warm-up: median {early:.0f} MiB in the first half, "
        f"{late:.0f} MiB in the second ({(late - early) / early:+.1%}); largest sample {peak:.0f} MiB, "
        f"smallest {min(warm):.0f} MiB"
    )
    print(
        f"{load.calls:,} reads, {load.writes:,} write rounds (image + 200 measurements + a job), "
        f"{load.errors} errors, {args.minutes:g} min, read cache {args.read_cache_mb} MiB"
    )
    print("samples (s, MiB): " + ", ".join(f"{t:.0f}:{rss:.0f}" for t, rss in samples[:: max(1, len(samples) // 20)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="a demo database's directory (the soak writes to it)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--readers", type=int, default=16)
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--write-pause-s", type=float, default=0.2)
    p.add_argument("--read-cache-mb", type=int, default=256)
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=18)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()

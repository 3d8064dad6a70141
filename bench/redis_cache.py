"""Does the Redis-coordinated query cache pay for itself? Each cached read with and without it.

    contimg-server demo-data --images 20000 --data-dir /tmp/redisbench/data
    python bench/redis_cache.py --data-dir /tmp/redisbench/data
    python bench/redis_cache.py --data-dir /tmp/redisbench/data --writes-per-s 1

For every read the server may cache (and GetImage as an uncached control): start
`contimg-server serve` on the demo database without Redis, then with `--redis-url`, interleaved
over `--rounds` rounds (the table shows medians); drive it with 64 concurrent grpc.aio calls drawn
at random from a fixed set of distinct requests; report throughput, p50/p99 latency, server CPU
per call, and the cache's hit ratio from the server's own counters (logged at shutdown).

With `--writes-per-s`, a writer records a new image and its photometry through the API that many
times a second (the pipeline's write pattern), which invalidates the image and source caches on
every write. The run also measures the raw costs the design rests on: a Redis GET round trip
versus an indexed SQLite primary-key lookup.

Loopback only, every phase bounded in time; servers and redis-server are started and stopped here.
The writer adds images to the database it is given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")
Call = Callable[[Any], Awaitable[None]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"


# ---- the requests ---------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    requests: list[Any]
    call: Callable[[Any, Any], Awaitable[None]]  # (stubs, request)


class Stubs:
    def __init__(self, channel: grpc.aio.Channel):
        self.images = images_pb2_grpc.ImageServiceStub(channel)
        self.sources = sources_pb2_grpc.SourceServiceStub(channel)
        self.ms = measurement_sets_pb2_grpc.MSServiceStub(channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(channel)


async def _unary(method: Any, request: Any) -> None:
    await method(request, timeout=30)


async def _stream(method: Any, request: Any) -> None:
    async for _ in method(request, timeout=30):
        pass


def scenarios(database: Path, seed: int) -> list[Scenario]:
    rng = random.Random(seed)
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    image_ids = [r[0] for r in conn.execute("SELECT id FROM images ORDER BY random() LIMIT 2000")]
    source_ids = [
        r[0] for r in conn.execute("SELECT id FROM sources WHERE detection_count > 0 ORDER BY random() LIMIT 200")
    ]
    conn.close()
    image_filters = [
        "",
        "type = CONTINUUM",
        "qa.grade = GOOD",
        "pbcor = true",
        "dynamic_range > 100",
        "noise_jy < 0.002",
    ]
    image_orders = ["", "create_time desc", "mid_mjd desc", "noise_jy", "dynamic_range desc"]
    source_filters = ["", "is_variable = true", "epoch_count > 20", "mean_flux_jy > 0.01", "dec_deg > 55"]
    source_orders = [
        "eta desc",
        "v desc",
        "chi2_reduced desc",
        "sigma_deviation desc",
        "max_flux_jy desc",
        "epoch_count desc",
    ]
    ms_filters = ["", "stage = IMAGED", "status = COMPLETED", "cal_applied = true", "pointing_dec_deg > 54"]
    ms_orders = ["", "start_mjd desc", "mid_mjd", "create_time desc"]
    job_filters = ["", "state = RUNNING", "state = SUCCEEDED", "type = IMAGE"]
    job_orders = ["", "create_time desc", "update_time desc"]
    positions = [(rng.uniform(0, 360), 54.57 + rng.uniform(-1.5, 1.5)) for _ in range(200)]
    return [
        Scenario(
            "GetImage (uncached control)",
            [images_pb2.GetImageRequest(name=f"images/{i}") for i in image_ids],
            lambda s, r: _unary(s.images.GetImage, r),
        ),
        Scenario(
            "ListImages page_size=50",
            [
                images_pb2.ListImagesRequest(filter=f, order_by=o, page_size=50)
                for f in image_filters
                for o in image_orders
            ],
            lambda s, r: _unary(s.images.ListImages, r),
        ),
        Scenario(
            "SearchImages",
            [images_pb2.SearchImagesRequest(ra_deg=ra, dec_deg=dec, page_size=50) for ra, dec in positions],
            lambda s, r: _unary(s.images.SearchImages, r),
        ),
        Scenario(
            "ListSources (variability rankings) page_size=50",
            [
                sources_pb2.ListSourcesRequest(filter=f, order_by=o, page_size=50)
                for f in source_filters
                for o in source_orders
            ],
            lambda s, r: _unary(s.sources.ListSources, r),
        ),
        Scenario(
            "SearchSources radius 0.5-2 deg",
            [
                sources_pb2.SearchSourcesRequest(
                    ra_deg=ra, dec_deg=dec, radius_deg=rng.choice((0.5, 1.0, 2.0)), page_size=50
                )
                for ra, dec in positions
            ],
            lambda s, r: _unary(s.sources.SearchSources, r),
        ),
        Scenario(
            "ListMeasurementSets page_size=50",
            [
                measurement_sets_pb2.ListMeasurementSetsRequest(filter=f, order_by=o, page_size=50)
                for f in ms_filters
                for o in ms_orders
            ],
            lambda s, r: _unary(s.ms.ListMeasurementSets, r),
        ),
        Scenario(
            "ListJobs page_size=50",
            [jobs_pb2.ListJobsRequest(filter=f, order_by=o, page_size=50) for f in job_filters for o in job_orders],
            lambda s, r: _unary(s.jobs.ListJobs, r),
        ),
        Scenario(
            "GetLightcurve",
            [sources_pb2.GetLightcurveRequest(name=f"sources/{sid}") for sid in source_ids],
            lambda s, r: _stream(s.sources.GetLightcurve, r),
        ),
    ]


# ---- servers --------------------------------------------------------------------------------------


class Redis:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found: apt-get install redis-server")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="contimg-bench-redis-")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    def __init__(self, database: Path, redis_url: str, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        args = [
            str(BIN / "contimg-server"),
            "serve",
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--database={database}",
            "--no-log-rpcs",
            "--allow-anonymous-writes",
            "--log-level=INFO",
            "--grace-s=2",
        ]
        if redis_url:
            args.append(f"--redis-url={redis_url}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    async def ready(self) -> None:
        deadline = time.monotonic() + 30
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start:\n{self.log_path.read_text()}")
                await asyncio.sleep(0.1)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        return self.log_path.read_text(errors="replace")


# ---- load -----------------------------------------------------------------------------------------


@dataclass
class Result:
    calls: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    server_cpu_s: float
    client_cpu_s: float
    writes: int
    hit_ratio: float | None
    stats: str

    @property
    def rps(self) -> float:
        return self.calls / self.seconds

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else 0.0

    @property
    def cpu_us_per_call(self) -> float:
        return 1e6 * self.server_cpu_s / max(self.calls, 1)


async def writer(
    channel: grpc.aio.Channel, database: Path, per_s: float, stop: asyncio.Event, counter: list[int]
) -> None:
    """The pipeline's write pattern: a new image of an existing MS, its photometry, a job's progress."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    ms_paths = [r[0] for r in conn.execute("SELECT path FROM measurement_sets LIMIT 100")]
    sources = conn.execute("SELECT id, ra_deg, dec_deg FROM sources LIMIT 2000").fetchall()
    conn.close()
    stubs = Stubs(channel)
    rng = random.Random(7)
    job = await stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)))
    await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name))
    n = 0
    while not stop.is_set():
        n += 1
        await stubs.jobs.ReportJobProgress(
            jobs_pb2.ReportJobProgressRequest(name=job.name, progress_percent=n % 100), timeout=30
        )
        image = images_pb2.Image(
            path=f"/data/bench/redis/{os.getpid()}-{time.time_ns()}-{n}.fits",
            measurement_set=rng.choice(ms_paths),
            type=images_pb2.Image.TYPE_CONTINUUM,
            center_ra_deg=rng.uniform(0, 360),
            center_dec_deg=54.57,
            size_x_px=2048,
            size_y_px=2048,
            cell_size_arcsec=6.0,
            noise_jy=0.001,
        )
        made = await stubs.images.CreateImage(images_pb2.CreateImageRequest(image=image), timeout=30)
        rows = [
            sources_pb2.PhotometryMeasurement(
                source=f"sources/{sid}",
                ra_deg=ra,
                dec_deg=dec,
                peak_flux_jy=rng.uniform(0.01, 0.2),
                peak_flux_err_jy=0.001,
                integrated_flux_jy=0.05,
                snr=50,
            )
            for sid, ra, dec in rng.sample(sources, 50)
        ]
        await stubs.sources.RecordPhotometry(
            sources_pb2.RecordPhotometryRequest(image=made.name, measurements=rows), timeout=30
        )
        counter[0] += 3
        try:
            await asyncio.wait_for(stop.wait(), 1.0 / per_s)
        except TimeoutError:
            pass


async def drive(
    server: Server,
    scenario: Scenario,
    *,
    concurrency: int,
    warmup: float,
    seconds: float,
    writes_per_s: float,
    database: Path,
    seed: int,
) -> tuple[int, int, list[float], float, float, int, float]:
    rng = random.Random(seed)
    latencies: list[float] = []
    calls = errors = 0
    measuring = False
    stop = asyncio.Event()
    write_count = [0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stubs = Stubs(channel)

        async def worker() -> None:
            nonlocal calls, errors
            while not stop.is_set():
                request = rng.choice(scenario.requests)
                t0 = time.perf_counter()
                try:
                    await scenario.call(stubs, request)
                except grpc.aio.AioRpcError as exc:
                    if measuring:
                        errors += 1
                        if errors == 1:
                            print(f"    error: {exc.code()} {exc.details()}", file=sys.stderr)
                    continue
                if measuring:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    calls += 1

        write_task = (
            asyncio.create_task(writer(channel, database, writes_per_s, stop, write_count)) if writes_per_s else None
        )
        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring = True
        cpu0, client0, t0 = cpu_seconds(server.proc.pid), time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        measuring = False
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(server.proc.pid) - cpu0
        client_cpu = time.process_time() - client0
        stop.set()
        await asyncio.gather(*tasks)
        if write_task is not None:
            await write_task
    return calls, errors, latencies, cpu, client_cpu, write_count[0], elapsed


def parse_hit_ratio(log: str) -> tuple[float | None, str]:
    found = re.findall(r"query cache: (.*)", log)
    if not found:
        return None, ""
    m = re.search(r"hit_ratio=([\d.]+)", found[-1])
    return (float(m.group(1)) if m else None), found[-1].strip()


async def run_one(
    database: Path, redis_url: str, scenario: Scenario, args: argparse.Namespace, workdir: Path, tag: str
) -> Result:
    server = Server(database, redis_url, workdir / f"server-{tag}.log")
    await server.ready()
    calls, errors, lat, cpu, client_cpu, writes, elapsed = await drive(
        server,
        scenario,
        concurrency=args.concurrency,
        warmup=args.warmup,
        seconds=args.seconds,
        writes_per_s=args.writes_per_s,
        database=database,
        seed=args.seed,
    )
    log = server.stop()
    hit_ratio, stats = parse_hit_ratio(log) if redis_url else (None, "")
    return Result(calls, errors, elapsed, lat, cpu, client_cpu, writes, hit_ratio, stats)


# ---- raw costs ------------------------------------------------------------------------------------


async def raw_costs(database: Path, redis_url: str, n: int = 3000) -> dict[str, float]:
    """Sequential round trips, microseconds: Redis GET vs SQLite PK lookup through the server's Database."""
    from dsa110.contimg.server.domain.query import OrderKey
    from dsa110.contimg.server.repositories.protocols import ListQuery
    from dsa110.contimg.server.storage.sqlite.database import Database, SQLiteSettings
    from dsa110.contimg.server.storage.sqlite.images import SQLiteImages
    from dsa110.contimg.server.storage.sqlite.sources import SQLiteSources
    from redis.asyncio import Redis as AsyncRedis

    out: dict[str, float] = {}
    client = AsyncRedis.from_url(redis_url)
    await client.set("contimg:bench:k", b"x" * 64)
    for _ in range(200):
        await client.get("contimg:bench:k")
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        await client.get("contimg:bench:k")
    out["redis GET (64 B), redis.asyncio"] = (time.perf_counter() - t0) / n * 1e6
    out["redis GET (64 B), redis.asyncio: client CPU"] = (time.process_time() - c0) / n * 1e6
    fields = ["incarnation", "measurement_sets", "images", "sources", "jobs"]
    await client.hset("contimg:bench:h", mapping=dict.fromkeys(fields, 1))
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        await client.hmget("contimg:bench:h", fields)
    out["cache counter read (HMGET of 5 fields)"] = (time.perf_counter() - t0) / n * 1e6
    out["cache counter read (HMGET of 5 fields): client CPU"] = (time.process_time() - c0) / n * 1e6
    await client.aclose()
    db = Database(SQLiteSettings(database, readers=1))
    await db.open()
    ids = [r[0] for r in await db.fetchall("SELECT id FROM images ORDER BY random() LIMIT 1000")]
    for i in ids[:200]:
        await db.fetchall("SELECT * FROM images WHERE id = ?", (i,))
    t0 = time.perf_counter()
    for k in range(n):
        await db.fetchall("SELECT * FROM images WHERE id = ?", (ids[k % len(ids)],))
    out["SQLite image row by primary key, aiosqlite"] = (time.perf_counter() - t0) / n * 1e6
    lookup = getattr(db, "lookup", None)  # the server's inline primary-key path, where it exists
    if lookup is not None:
        t0 = time.perf_counter()
        for k in range(n):
            await lookup("SELECT * FROM images WHERE id = ?", (ids[k % len(ids)],))
        out["SQLite image row by primary key, inline (the server's GetImage path)"] = (
            (time.perf_counter() - t0) / n * 1e6
        )
    # What a Redis-held copy of a cached page would cost on an in-process miss (pickle: the cheapest
    # decoder there is), against reading the page from SQLite again.
    images = SQLiteImages(db)
    sources = SQLiteSources(db)
    reads: dict[str, Callable[[], Awaitable[object]]] = {
        "ListImages first page (50, create_time desc)": lambda: images.list_page(
            ListQuery([], [OrderKey("create_time", True)], 50, None)
        ),
        "ListSources first page (50, eta desc)": lambda: sources.list_page(
            ListQuery([], [OrderKey("eta", True)], 50, None)
        ),
        "SearchSources radius 1 deg (50)": lambda: sources.search(180.0, 54.57, 1.0, ListQuery([], [], 50, None)),
    }
    client = AsyncRedis.from_url(redis_url)
    for name, read in reads.items():
        value = await read()
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        await client.set("contimg:bench:page", blob)
        reps = 200
        t0 = time.perf_counter()
        for _ in range(reps):
            db.invalidate()  # no COUNT cache: the full cost of a miss
            await read()
        out[f"{name}: SQLite"] = (time.perf_counter() - t0) / reps * 1e6
        t0 = time.perf_counter()
        for _ in range(reps):
            raw = await client.get("contimg:bench:page")
            assert isinstance(raw, bytes)
            pickle.loads(raw)
        out[f"{name}: Redis GET + unpickle ({len(blob) // 1024} KiB)"] = (time.perf_counter() - t0) / reps * 1e6
    await client.aclose()
    await db.close()
    return out


# ---- main -----------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    database = Path(args.database) if args.database else Path(args.data_dir) / "contimg.sqlite3"
    if not database.exists():
        raise SystemExit(f"{database} does not exist: run `contimg-server demo-data --images 20000 --data-dir DIR`")
    redis = Redis()
    workdir = Path(tempfile.mkdtemp(prefix="contimg-bench-redis-logs-"))
    rows: list[str] = []
    try:
        costs = await raw_costs(database, redis.url)
        for name, us in costs.items():
            print(f"{name}: {us:.0f} us per call (sequential)")
        chosen = [s for s in scenarios(database, args.seed) if not args.only or any(o in s.name for o in args.only)]
        header = (
            "| read | cache | calls/s | min-max | p50 ms | p99 ms | server CPU us/call | hit ratio | errors |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"
        )
        print(header)
        rows.append(header)
        for scenario in chosen:
            results: dict[str, list[Result]] = {"off": [], "on": []}
            for round_no in range(args.rounds):
                modes = [("off", ""), ("on", redis.url)]
                for mode, url in modes if round_no % 2 == 0 else modes[::-1]:  # interleaved, alternating order
                    tag = re.sub(r"\W+", "-", f"{scenario.name}-{mode}-{round_no}")
                    r = await run_one(database, url, scenario, args, workdir, tag)
                    results[mode].append(r)
                    print(
                        f"    {scenario.name} {mode} round {round_no}: {r.rps:,.0f}/s p99 {r.pct(0.99):.1f} ms "
                        f"{r.stats} writes={r.writes} client_cpu={r.client_cpu_s / r.seconds:.0%}",
                        file=sys.stderr,
                        flush=True,
                    )
            for mode, rs in results.items():
                rps = statistics.median(r.rps for r in rs)
                p50 = statistics.median(r.pct(0.5) for r in rs)
                p99 = statistics.median(r.pct(0.99) for r in rs)
                cpu = statistics.median(r.cpu_us_per_call for r in rs)
                ratios = [r.hit_ratio for r in rs if r.hit_ratio is not None]
                hit = f"{statistics.mean(ratios):.3f}" if ratios else "-"
                line = (
                    f"| {scenario.name} ({len(scenario.requests)} distinct) | {mode} | {rps:,.0f} | "
                    f"{min(r.rps for r in rs):,.0f}-{max(r.rps for r in rs):,.0f} | {p50:.1f} | "
                    f"{p99:.1f} | {cpu:,.0f} | {hit} | {sum(r.errors for r in rs)} |"
                )
                print(line, flush=True)
                rows.append(line)
    finally:
        redis.close()
    if args.markdown:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        text = [
            f"### {stamp}: {machine()}",
            "",
            "```sh",
            "python bench/redis_cache.py " + " ".join(sys.argv[1:]),
            "```",
            "",
            *(f"- {name}: {us:.0f} us per call (sequential)" for name, us in costs.items()),
            "",
            *rows,
            "",
        ]
        with open(args.markdown, "w") as out:  # noqa: ASYNC230  (once, at the end)
            out.write("\n".join(text))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--database", default="")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--writes-per-s", type=float, default=0.0, help="image + photometry writes per second during reads")
    p.add_argument("--rounds", type=int, default=3, help="interleaved off/on rounds; the table shows medians")
    p.add_argument("--seed", type=int, default=110)
    p.add_argument("--only", nargs="*", default=[], help="run scenarios whose name contains one of these")
    p.add_argument("--markdown", default="", help="also write the results as a markdown block to this file")
    args = p.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

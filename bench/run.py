"""The benchmark harness: seed, serve, load, compare to the reference server, report.

    python bench/run.py                       # 100,000 images, every case, 3 interleaved rounds
    python bench/run.py --images 1000000      # the large scale
    python bench/run.py --smoke               # seconds: proves the harness works (CI runs this)
    python bench/run.py --engine both         # SQLite and PostgreSQL on the same data, interleaved

Loopback only; every load is bounded in time. Results go to stdout and, with --write, into
bench/README.md (between the RESULTS markers) with the exact command, machine and date.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
from dsa110.contimg.v1 import images_pb2, jobs_pb2, jobs_pb2_grpc, measurement_sets_pb2, sources_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).parent))
import h2load
from procs import cpu_seconds
from reference_server import request_key

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine() -> str:
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, grpcio {grpc.__version__}"


def wait_healthy(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise RuntimeError(f"server on port {port} never became healthy")


# Every server this run started: stopped at exit, whichever way the run ends.
STARTED: list[subprocess.Popen[bytes]] = []


@atexit.register
def _stop_started() -> None:
    for proc in STARTED:
        if proc.poll() is None:
            proc.terminate()
    for proc in STARTED:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)


# A run stopped by SIGTERM stops its servers too (atexit runs on SystemExit, not on a signal's death).
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def start(cmd: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    STARTED.append(proc)
    try:
        wait_healthy(port)
    except Exception:
        proc.kill()
        raise
    return proc


# The WatchJob case's 1,000 watchers all come from this one address: past the default of 100
# watch streams per caller (README: Limits).
WATCH_FLAGS = ("--max-watch-streams", "5000", "--max-watch-streams-per-caller", "5000")


def serve_cmd(data_dir: Path, port: int, *extra: str, database: str | None = None) -> list[str]:
    return [
        str(BIN / "contimg-server"),
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *(("--database", database) if database else ()),
        "--allow-anonymous-writes",
        *extra,
    ]


def pg_version(url: str) -> str:
    import asyncpg

    async def ask() -> str:
        conn = await asyncpg.connect(url)
        try:
            return str(await conn.fetchval("SHOW server_version")).split()[0]
        finally:
            await conn.close()

    return asyncio.run(ask())


def fresh_copies(seed: Path, scratch: Path, url: str) -> None:
    """What a run with PostgreSQL measures: a copy of the seeded SQLite database in `scratch` and one
    made anew in PostgreSQL at `url` (dropped first), so that both engines start from the same rows
    (the ingest case adds some to each, with their own times) and no run measures an earlier run's."""
    import asyncpg

    name = url.rsplit("/", 1)[1]
    if "bench" not in name:
        raise SystemExit(f"--postgres-url: {name!r} would be dropped; name a database with 'bench' in it")
    scratch.mkdir(exist_ok=True)
    for old in scratch.glob("contimg.sqlite3*"):
        old.unlink()
    with sqlite3.connect(f"file:{seed}?mode=ro", uri=True) as src, sqlite3.connect(scratch / "contimg.sqlite3") as dst:
        src.backup(dst)

    async def recreate() -> None:
        conn = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(recreate())
    t0 = time.perf_counter()
    cmd = [str(BIN / "contimg-server"), "copy-data", "--from", str(seed), "--to", url, "--log-level", "WARNING"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    print(f"copied the SQLite database into {url} in {time.perf_counter() - t0:.1f} s", flush=True)


@dataclass
class Served:
    port: int
    proc: subprocess.Popen[bytes]


@dataclass
class Case:
    name: str
    method: str
    request: bytes
    streaming: bool = False
    connections: int = 16  # h2load -c: 16 x 4 streams = the 64 concurrent
    streams: int = 4
    rows: list[dict[str, float]] = field(default_factory=list)


def raw_call(port: int, method: str, request: bytes, streaming: bool) -> list[bytes]:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 1 << 26)]) as ch:
        if streaming:
            return list(ch.unary_stream(method)(request, timeout=30))
        return [ch.unary_unary(method)(request, timeout=30)]


REPLY_TYPES = {
    "GetImage": images_pb2.Image,
    "ListImages": images_pb2.ListImagesResponse,
    "GetLightcurve": sources_pb2.GetLightcurveResponse,
    "SearchSources": sources_pb2.SearchSourcesResponse,
}


def same_replies(method: str, replies: list[bytes]) -> list[bytes]:
    """The replies in a form two engines must agree on byte for byte: map fields (an image's QA
    metrics) may be written in any order, so each is re-serialized deterministically."""
    reply_type = REPLY_TYPES[method.rsplit("/", 1)[1]]
    return [reply_type.FromString(r).SerializeToString(deterministic=True) for r in replies]


def pick_targets(db: Path) -> dict[str, object]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    # Not the images the ingest case adds (/bench/...), as below.
    n_images = con.execute("SELECT count(*) FROM images WHERE path NOT LIKE '/bench/%'").fetchone()[0]
    image_id = con.execute(
        "SELECT id FROM images WHERE path NOT LIKE '/bench/%' ORDER BY id LIMIT 1 OFFSET ?", (n_images // 2,)
    ).fetchone()[0]
    # Not the sources the ingest case adds (BENCH...): a second run must measure the same targets.
    source = con.execute(
        "SELECT id, detection_count FROM sources WHERE id NOT LIKE 'BENCH%' "
        "ORDER BY abs(detection_count - 100), id LIMIT 1"
    ).fetchone()
    ra, dec = con.execute(
        "SELECT ra_deg, dec_deg FROM sources WHERE id NOT LIKE 'BENCH%' ORDER BY detection_count DESC LIMIT 1"
    ).fetchone()
    photometry = con.execute("SELECT count(*) FROM photometry").fetchone()[0]
    n_sources = con.execute("SELECT count(*) FROM sources").fetchone()[0]
    con.close()
    return {
        "images": n_images,
        "image_id": image_id,
        "source": source[0],
        "points": source[1],
        "ra": ra,
        "dec": dec,
        "photometry": photometry,
        "sources": n_sources,
    }


def unary_cases(t: dict[str, object]) -> list[Case]:
    svc = "/dsa110.contimg.v1."
    get_image = images_pb2.GetImageRequest(name=f"images/{t['image_id']}").SerializeToString()
    search = sources_pb2.SearchSourcesRequest(
        ra_deg=float(t["ra"]),
        dec_deg=float(t["dec"]),  # type: ignore[arg-type]
        radius_deg=1.0,
        page_size=100,
    ).SerializeToString()
    return [
        Case("GetImage", svc + "ImageService/GetImage", get_image),
        Case("GetImage, 1 caller", svc + "ImageService/GetImage", get_image, connections=1, streams=1),
        Case(
            "ListImages page_size=100",
            svc + "ImageService/ListImages",
            images_pb2.ListImagesRequest(page_size=100).SerializeToString(),
        ),
        Case(
            "ListImages filtered, 100",
            svc + "ImageService/ListImages",
            images_pb2.ListImagesRequest(
                page_size=100, filter="center_dec_deg > 54 AND center_dec_deg < 55", order_by="noise_jy"
            ).SerializeToString(),
        ),
        Case(
            f"GetLightcurve {t['points']} points",
            svc + "SourceService/GetLightcurve",
            sources_pb2.GetLightcurveRequest(name=f"sources/{t['source']}").SerializeToString(),
            streaming=True,
        ),
        Case("SearchSources r=1 deg", svc + "SourceService/SearchSources", search),
        # The p50 <= 10 ms is a latency target: one caller, no queueing behind 63 others.
        Case("SearchSources r=1 deg, 1 caller", svc + "SourceService/SearchSources", search, connections=1, streams=1),
    ]


def measure(port: int, pid: int, case: Case, requests: int, expected_bytes: int) -> dict[str, float]:
    before = cpu_seconds(pid)
    result = h2load.run(
        port, case.method, case.request, requests=requests, connections=case.connections, streams=case.streams
    )
    cpu = cpu_seconds(pid) - before
    if result.failed or result.data_bytes_per_req < 0.9 * expected_bytes:
        raise RuntimeError(
            f"{case.name}: failed calls ({result.failed}) or short responses "
            f"({result.data_bytes_per_req:.0f} B < {expected_bytes} B): not grpc-status 0"
        )
    calls = result.succeeded
    return {"rps": result.rps, "p50": result.p50_ms, "p99": result.p99_ms, "cpu_us": cpu / max(calls, 1) * 1e6}


async def ingest(
    port: int, pid: int, rows_per_image: int, images: int, concurrency: int, columnar: bool = False
) -> dict[str, float]:
    """RecordPhotometry throughput: rows durably committed per second (synchronous=FULL), and the
    server's CPU microseconds per row (all its threads and its write process). `columnar` sends the
    batches as columns."""
    from dsa110.contimg.v1 import images_pb2_grpc, measurement_sets_pb2_grpc, sources_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        ms_stub = measurement_sets_pb2_grpc.MSServiceStub(ch)
        img_stub = images_pb2_grpc.ImageServiceStub(ch)
        src_stub = sources_pb2_grpc.SourceServiceStub(ch)
        tag = f"{time.time_ns()}"
        ms = await ms_stub.UpdateMeasurementSet(
            measurement_sets_pb2.UpdateMeasurementSetRequest(
                measurement_set=measurement_sets_pb2.MeasurementSet(path=f"/bench/{tag}.ms", mid_mjd=61000.0),
                allow_missing=True,
            )
        )
        names = []
        for i in range(images + 1):
            img = await img_stub.CreateImage(
                images_pb2.CreateImageRequest(
                    image=images_pb2.Image(
                        path=f"/bench/{tag}-{i}.fits", measurement_set=ms.name, mid_mjd=61000.0 + i / 288
                    )
                )
            )
            names.append(img.name)
        rnd = random.Random(1)
        batches = [
            sources_pb2.RecordPhotometryRequest(
                image=name,
                measurements=[
                    sources_pb2.PhotometryMeasurement(
                        source=f"sources/BENCH{tag}-{j}",
                        ra_deg=100 + j * 1e-3,
                        dec_deg=54.57,
                        peak_flux_jy=0.05 + rnd.random() * 0.01,
                        peak_flux_err_jy=0.001,
                    )
                    for j in range(rows_per_image)
                ],
            )
            for name in names
        ]
        if columnar:  # the same numbers, one packed array per field
            batches = [
                sources_pb2.RecordPhotometryRequest(
                    image=b.image,
                    columns=sources_pb2.PhotometryColumns(
                        source=[m.source for m in b.measurements],
                        ra_deg=[m.ra_deg for m in b.measurements],
                        dec_deg=[m.dec_deg for m in b.measurements],
                        peak_flux_jy=[m.peak_flux_jy for m in b.measurements],
                        peak_flux_err_jy=[m.peak_flux_err_jy for m in b.measurements],
                    ),
                )
                for b in batches
            ]
        # The first batch is not timed: a warm-up, and the write process may still be starting.
        await src_stub.RecordPhotometry(batches.pop(), timeout=120)
        queue = list(batches)
        start_t, start_cpu = time.perf_counter(), cpu_seconds(pid)

        async def worker() -> None:
            while queue:
                await src_stub.RecordPhotometry(queue.pop(), timeout=120)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start_t
        cpu_us = (cpu_seconds(pid) - start_cpu) / (rows_per_image * images) * 1e6
    return {
        "rows_per_s": rows_per_image * images / elapsed,
        "batches": images,
        "rows_per_batch": rows_per_image,
        "concurrency": concurrency,
        "cpu_us_per_row": cpu_us,
        "columnar": float(columnar),
    }


async def watchers(port: int, count: int, record: dict[str, bytes] | None = None) -> dict[str, float]:
    """`count` WatchJob streams on one job; latency from each transition request to each receipt.
    `record` receives the replies and events as bytes (for the reference server's WatchJob)."""
    # The transitions go over a connection of their own: the watchers fill theirs up to the server's
    # limit of concurrent streams per connection (--max-streams-per-connection, 1,000).
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch_w,
    ):
        stub, driver = jobs_pb2_grpc.JobServiceStub(ch), jobs_pb2_grpc.JobServiceStub(ch_w)
        job = await driver.CreateJob(
            jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)), timeout=30
        )
        ready = 0
        all_ready = asyncio.Event()
        received: dict[int, list[float]] = {}
        events: dict[int, bytes] = {}

        async def watch() -> None:
            nonlocal ready
            call = stub.WatchJob(jobs_pb2.WatchJobRequest(name=job.name))
            async for event in call:
                if event.type == jobs_pb2.JobEvent.TYPE_SNAPSHOT:
                    if record is not None:
                        record.setdefault("snapshot", event.SerializeToString())
                    ready += 1
                    if ready == count:
                        all_ready.set()
                    continue
                received.setdefault(event.sequence, []).append(time.perf_counter())
                if record is not None:
                    events.setdefault(event.sequence, event.SerializeToString())

        tasks = [asyncio.create_task(watch()) for _ in range(count)]
        await asyncio.wait_for(all_ready.wait(), 60)
        # Latency counts from just before each transition request is sent (it includes that call).
        sent: dict[int, float] = {}
        t0 = time.perf_counter()
        started = await driver.StartJob(jobs_pb2.StartJobRequest(name=job.name), timeout=30)
        sent[started.transitions[-1].sequence] = t0
        t0 = time.perf_counter()
        succeeded = await driver.SucceedJob(jobs_pb2.SucceedJobRequest(name=job.name), timeout=30)
        sent[succeeded.transitions[-1].sequence] = t0
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    if record is not None:
        record.update(
            CreateJob=job.SerializeToString(),
            StartJob=started.SerializeToString(),
            SucceedJob=succeeded.SerializeToString(),
        )
        record.update({f"event.{i}": events[seq] for i, seq in enumerate(sent)})
    lat = sorted((t - sent[seq]) * 1000 for seq, times in received.items() if seq in sent for t in times)
    complete = all(len(received.get(seq, [])) == count for seq in sent)
    return {
        "watchers": count,
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[int(len(lat) * 0.99) - 1],
        "all_received": float(complete),
    }


def table(rows: list[list[str]]) -> str:
    head, *body = rows
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--data-dir", type=Path, help="reuse or create the seeded database here")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument(
        "--catalog-sources",
        type=int,
        default=0,
        help="seed this many extra (unmeasured, faint) catalog sources: SearchSources at 1,000,000",
    )
    p.add_argument("--workers", action="store_true", help="also compare 1 vs 2 worker processes")
    p.add_argument(
        "--engine",
        choices=("sqlite", "postgres", "both"),
        default="sqlite",
        help="the storage engine of the server measured (both: the two, interleaved in one run)",
    )
    p.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/contimg_bench",
        help="PostgreSQL database for --engine postgres/both (made from the SQLite one when missing)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny database, 1-second loads, 1 round")
    p.add_argument("--write", action="store_true", help="record the results in bench/README.md")
    args = p.parse_args()
    if args.smoke:
        args.images, args.seconds, args.rounds, args.watchers = min(args.images, 300), 1.0, 1, 50

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="contimg-bench-"))
    db = data_dir / "contimg.sqlite3"
    if not db.exists():
        t0 = time.perf_counter()
        subprocess.run(
            [
                str(BIN / "contimg-server"),
                "demo-data",
                "--images",
                str(args.images),
                "--catalog-sources",
                str(args.catalog_sources),
                "--data-dir",
                str(data_dir),
                "--log-level",
                "WARNING",
            ],
            check=True,
        )
        print(f"seeded {args.images} images in {time.perf_counter() - t0:.1f} s", flush=True)
    targets = pick_targets(db)
    print(f"database: {json.dumps(targets)}", flush=True)
    engines = ["sqlite", "postgres"] if args.engine == "both" else [args.engine]
    served_dir = data_dir
    if "postgres" in engines:
        served_dir = data_dir / "run"
        fresh_copies(db, served_dir, args.postgres_url)

    ref_port = free_port()
    servers: dict[str, Served] = {}
    for engine in engines:
        port = free_port()
        database = args.postgres_url if engine == "postgres" else None
        servers[engine] = Served(port, start(serve_cmd(served_dir, port, *WATCH_FLAGS, database=database), port))
    port = servers[engines[0]].port
    responses = Path(tempfile.mkdtemp(prefix="contimg-bench-responses-"))
    cases = unary_cases(targets)
    expected: dict[str, int] = {}
    for case in cases:
        replies = raw_call(port, case.method, case.request, case.streaming)
        for other in engines[1:]:  # the engines answer alike, or their figures mean nothing
            theirs = raw_call(servers[other].port, case.method, case.request, case.streaming)
            if same_replies(case.method, theirs) != same_replies(case.method, replies):
                raise SystemExit(f"{case.name}: {other} answers differently from {engines[0]}")
        if case.method.endswith("/SearchSources"):
            targets["cone_matches"] = sources_pb2.SearchSourcesResponse.FromString(replies[0]).total_size
        expected[case.name] = sum(len(r) + 5 for r in replies)
        save_replies(responses, case, replies)
    # The reference's WatchJob sends the same replies and events, recorded from a run here (also a warm-up).
    recorded: dict[str, bytes] = {}
    asyncio.run(watchers(port, min(args.watchers, 10), recorded))
    for name, reply in recorded.items():
        (responses / f"watch.{name}.bin").write_bytes(reply)
    ref_cmd = reference_cmd(ref_port, responses, [c.method for c in cases if c.streaming])
    ref_proc = subprocess.Popen(ref_cmd, stdout=subprocess.DEVNULL)
    STARTED.append(ref_proc)
    time.sleep(0)  # the health check below is the real wait
    try:
        _wait_port(ref_port)
        results: list[list[str]] = [
            [
                "case",
                "server req/s",
                "reference req/s",
                "ratio",
                "p50 ms",
                "p99 ms",
                "reference p99 ms",
                "server CPU us/call",
                "reference CPU us/call",
            ]
        ]
        for case in cases:
            ours: dict[str, list[dict[str, float]]] = {engine: [] for engine in engines}
            refs = []
            # Warm-up runs (not recorded) also size the counted runs to about --seconds each.
            size = {
                p: max(
                    200,
                    int(
                        h2load.run(
                            p, case.method, case.request, seconds=1, connections=case.connections, streams=case.streams
                        ).rps
                        * args.seconds
                    ),
                )
                for p in (ref_port, *(s.port for s in servers.values()))
            }
            for _ in range(args.rounds):  # interleaved so machine noise hits all alike
                refs.append(measure(ref_port, ref_proc.pid, case, size[ref_port], expected[case.name]))
                for engine, served in servers.items():
                    ours[engine].append(
                        measure(served.port, served.proc.pid, case, size[served.port], expected[case.name])
                    )
            ref = {k: statistics.median(r[k] for r in refs) for k in refs[0]}
            for engine in engines:
                med = {k: statistics.median(r[k] for r in ours[engine]) for k in ours[engine][0]}
                results.append(
                    [
                        case.name + (f", {engine}" if len(engines) > 1 else ""),
                        f"{med['rps']:.0f}",
                        f"{ref['rps']:.0f}",
                        f"{med['rps'] / ref['rps']:.2f}x",
                        f"{med['p50']:.1f}",
                        f"{med['p99']:.1f}",
                        f"{ref['p99']:.1f}",
                        f"{med['cpu_us']:.0f}",
                        f"{ref['cpu_us']:.0f}",
                    ]
                )
                print(results[-1], flush=True)
        rss = {engine: peak_rss_mb(served.proc.pid) for engine, served in servers.items()}
        # 64 writers is the default concurrency (a backfill with many photometry workers); 4 is a
        # small pipeline. Each image's batch measures the same field's sources, as consecutive drift
        # scans do, so concurrent batches overlap.
        ingests = []
        for w, n, columnar in ((64, 256, False), (4, 40, False), (64, 256, True), (4, 40, True)):
            # Like every case above, the median of the rounds (a single run swung ±20 % here): the run
            # with the median rate, with the others' range. The engines take turns in each round.
            by_engine: dict[str, list[dict[str, float]]] = {engine: [] for engine in engines}
            for _ in range(args.rounds):
                for engine, served in servers.items():
                    rows, images = (1000, n) if not args.smoke else (100, 3)
                    by_engine[engine].append(
                        asyncio.run(ingest(served.port, served.proc.pid, rows, images, w, columnar))
                    )
            for engine in engines:
                runs = sorted(by_engine[engine], key=lambda r: r["rows_per_s"])
                ingests.append(
                    {
                        **runs[len(runs) // 2],
                        "low": runs[0]["rows_per_s"],
                        "high": runs[-1]["rows_per_s"],
                        "runs": len(runs),
                        "engine": engine,
                    }
                )
        watch_ours: dict[str, list[dict[str, float]]] = {engine: [] for engine in engines}
        watch_refs = []
        for _ in range(args.rounds):  # interleaved, as above
            watch_refs.append(asyncio.run(watchers(ref_port, args.watchers)))
            for engine, served in servers.items():
                watch_ours[engine].append(asyncio.run(watchers(served.port, args.watchers)))
        watch_ref_p99 = statistics.median(r["p99_ms"] for r in watch_refs)
    finally:
        for served in servers.values():
            served.proc.terminate()
        ref_proc.terminate()
        for served in servers.values():
            served.proc.wait(30)
        ref_proc.wait(30)

    def on(engine: str) -> str:
        return f" ({engine})" if len(engines) > 1 else ""

    extra = [
        *(
            f"- RecordPhotometry{' (columns)' if r['columnar'] else ''}{on(str(r['engine']))}, "
            f"{r['concurrency']:.0f} concurrent writers: "
            f"**{r['rows_per_s']:,.0f} rows/s** durably "
            f"committed ({r['batches']:.0f} batches of {r['rows_per_batch']:.0f} rows, synchronous=FULL; median of "
            f"{r['runs']} runs, {r['low']:,.0f}-{r['high']:,.0f}); server CPU {r['cpu_us_per_row']:.1f} us/row."
            for r in ingests
        ),
        *(
            f"- WatchJob{on(engine)}: {args.watchers} concurrent watchers, two transitions, transition-to-receipt "
            f"p50 {statistics.median(r['p50_ms'] for r in runs):.1f} ms, p99 "
            f"**{statistics.median(r['p99_ms'] for r in runs):.1f} ms** (median of {args.rounds} rounds; the "
            f"reference's p99 {watch_ref_p99:.1f} ms); every watcher got every transition: "
            f"{all(r['all_received'] for r in runs)}."
            for engine, runs in watch_ours.items()
        ),
        *(f"- Server peak RSS{on(engine)}: {mb:.0f} MB." for engine, mb in rss.items()),
    ]
    if args.workers and not args.smoke:
        extra.append(compare_workers(data_dir, cases[0], args.seconds, expected[cases[0].name]))
    report = "\n".join(
        [
            f"### {args.images:,} images, {targets['photometry']:,} photometry rows, {targets['sources']:,} sources",
            "",
            f"`{' '.join(['python', 'bench/run.py', *sys.argv[1:]])}` on {machine()}, "
            + (f"PostgreSQL {pg_version(args.postgres_url)} on the same machine, " if "postgres" in engines else "")
            + f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. 64 concurrent streams (h2load -c 16 -m 4), "
            f"{args.seconds:g} s per run, median of {args.rounds} interleaved rounds (one caller where the case says "
            f"so). The SearchSources cone holds {targets['cone_matches']:,} sources; pages of 100.",
            "",
            table(results),
            "",
            *extra,
            "",
        ]
    )
    print(report)
    if args.write:
        record_results(report)


def record_results(report: str) -> None:
    """The report joins the run log (bench/history/results.md, newest first) and becomes the
    current table of bench/README.md."""
    here = Path(__file__).parent
    history = here / "history" / "results.md"
    marker = "<!-- RESULTS -->"
    history.write_text(history.read_text().replace(marker, marker + "\n\n" + report, 1))
    readme = here / "README.md"
    head, rest = readme.read_text().split("<!-- CURRENT -->", 1)
    _, tail = rest.split("<!-- /CURRENT -->", 1)
    readme.write_text(f"{head}<!-- CURRENT -->\n\n{report.strip()}\n\n<!-- /CURRENT -->{tail}")


def reference_cmd(port: int, responses: Path, streaming: list[str]) -> list[str]:
    """The reference server on `port`, answering with the replies `save_replies` left in `responses`."""
    script = str(Path(__file__).parent / "reference_server.py")
    return [sys.executable, script, "--port", str(port), "--responses", str(responses),
            *(arg for method in streaming for arg in ("--streaming", method))]  # fmt: skip


def save_replies(responses: Path, case: Case, replies: list[bytes]) -> None:
    """What the reference server answers `case` with (bench/reference_server.py reads them back)."""
    stem = case.method.lstrip("/").replace("/", ".") + "." + request_key(case.request)
    for i, reply in enumerate(replies):
        (responses / (f"{stem}.bin.{i}" if case.streaming else f"{stem}.bin")).write_bytes(reply)


def compare_workers(data_dir: Path, case: Case, seconds: float, expected: int) -> str:
    out = []
    for workers in (1, 2):
        port = free_port()
        proc = start(serve_cmd(data_dir, port, "--workers", str(workers)), port)
        try:
            h2load.run(port, case.method, case.request, seconds=1)  # warm-up
            result = h2load.run(port, case.method, case.request, seconds=seconds)
            if result.succeeded == 0:
                raise RuntimeError("worker comparison got error responses")
            out.append(
                f"{workers} worker{'s' if workers > 1 else ''}: {result.rps:.0f} req/s, p99 {result.p99_ms:.1f} ms"
            )
        finally:
            proc.terminate()
            proc.wait(30)
    return f"- {case.name} with --workers: " + "; ".join(out) + "."


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


if __name__ == "__main__":
    main()

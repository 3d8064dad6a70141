"""Workers claiming jobs through several server processes on one database (issue 21).

    python bench/job_claims.py [--engine sqlite|postgres] [--jobs 10000] [--workers 20] [--servers 2]

Starts `--servers` `contimg-server serve` processes on one database (a fresh SQLite file, or a
fresh database on --postgres), each on its own port, writes needing a token (production defaults:
one log line per RPC). Then:

1. Drain: `--jobs` IMAGE jobs are created, then `--workers` worker processes (worker i talks to
   server i mod --servers), released together, each loop ClaimJob (no wait) -> SucceedJob with its
   lease token until a claim finds nothing. Checked: every job was claimed exactly once over all
   workers (no name twice, none missing) and the database holds every job SUCCEEDED at attempt 1.
   Printed: claims/s (wall clock, first claim to last SucceedJob), claim latency p50/p99 as the
   workers saw it, SucceedJob p50.
2. Long-poll wake: `--wakers` processes each keep a ClaimJob (2 s wait, renewed) open for
   CALIBRATE jobs; this process creates `--wake-jobs` of them one at a time, `--wake-gap-ms` apart.
   Printed: p50/p99/max of the time from CreateJob returning to a claimer having the job (both
   read the host's monotonic clock), twice: claimers spread over every server and jobs created
   through each in turn (the server that takes a job wakes its own claimers first), then claimers
   only on the last server and jobs created through the first (every wake crosses processes).
3. Deadline: a ClaimJob with a 1 s wait on an empty queue returns empty after (printed) seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import asyncpg
from dsa110.contimg.client import AsyncClient, Client, ClientConfig
from dsa110.contimg.v1 import jobs_pb2

sys.path.insert(0, str(Path(__file__).parent))
from replicas import Replica, start_replica, stop_replica, wait_serving, with_database

DEFAULT_POSTGRES = os.environ.get("CONTIMG_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
TOKEN = "bench-claims"
Job = jobs_pb2.Job


def config(target: str) -> ClientConfig:
    return ClientConfig(target=target, token=TOKEN, deadline_s=60)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# ---- worker processes -------------------------------------------------------------------------------


def drain_worker(index: int, target: str, ready: Barrier, results: Any) -> None:
    """Claim and succeed until a claim finds nothing; report (names, claim latencies, succeed latencies)."""
    names: list[str] = []
    claim_s: list[float] = []
    succeed_s: list[float] = []
    with Client(config(target)) as client:
        _ = client.list_jobs(page_size=1).first_page  # connected before the start
        ready.wait()
        worker = f"bench-{index}:{os.getpid()}"
        first = time.monotonic()
        while True:
            t0 = time.perf_counter()
            claim = client.claim_job([Job.TYPE_IMAGE], worker=worker, lease_duration_s=600)
            t1 = time.perf_counter()
            if not claim.HasField("job"):
                break
            claim_s.append(t1 - t0)
            client.succeed_job(claim.job.name, lease_token=claim.lease_token)
            succeed_s.append(time.perf_counter() - t1)
            names.append(claim.job.name)
        last = time.monotonic()
    results.put((names, claim_s, succeed_s, first, last))


def wake_worker(index: int, target: str, ready: Barrier, stop: Event, results: Any) -> None:
    """Keep a long-poll claim open; report (job name, monotonic time received, target) per job."""
    got: list[tuple[str, float, str]] = []
    with Client(config(target)) as client:
        _ = client.list_jobs(page_size=1).first_page
        ready.wait()
        worker = f"waker-{index}:{os.getpid()}"
        while not stop.is_set():
            claim = client.claim_job([Job.TYPE_CALIBRATE], worker=worker, wait_s=2, lease_duration_s=600)
            if claim.HasField("job"):
                got.append((claim.job.name, time.monotonic(), target))
                client.succeed_job(claim.job.name, lease_token=claim.lease_token)
    results.put(got)


# ---- phases -----------------------------------------------------------------------------------------


async def create_jobs(targets: list[str], count: int, concurrency: int = 32) -> list[str]:
    clients = [AsyncClient(config(t)) for t in targets]
    names: list[str] = []
    todo = iter(range(count))

    async def creator(k: int) -> None:
        client = clients[k % len(clients)]
        for _ in todo:
            names.append((await client.create_job(Job(type=Job.TYPE_IMAGE))).name)

    try:
        await asyncio.gather(*(creator(k) for k in range(concurrency)))
    finally:
        for c in clients:
            await c.close()
    return names


def drain(targets: list[str], workers: int) -> tuple[list[str], list[float], list[float], float]:
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(workers + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=drain_worker, args=(i, targets[i % len(targets)], ready, results)) for i in range(workers)
    ]
    for p in procs:
        p.start()
    ready.wait()
    outs = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    names = [n for out in outs for n in out[0]]
    claims = [s for out in outs for s in out[1]]
    succeeds = [s for out in outs for s in out[2]]
    wall = max(out[4] for out in outs) - min(out[3] for out in outs)
    return names, claims, succeeds, wall


async def wake(claimers: list[str], creators: list[str], wakers: int, jobs: int, gap_s: float) -> list[float]:
    """Long-poll claimers on `claimers` (in turn), jobs created through `creators` (in turn): the
    delays from each CreateJob reply to its claimer having the job."""
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(wakers + 1)
    stop = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=wake_worker, args=(i, claimers[i % len(claimers)], ready, stop, results))
        for i in range(wakers)
    ]
    for p in procs:
        p.start()
    await asyncio.to_thread(ready.wait)
    await asyncio.sleep(1.0)  # every claimer's first long-poll is open
    created: dict[str, float] = {}
    clients = [AsyncClient(config(t)) for t in creators]
    try:
        for k in range(jobs):
            job = await clients[k % len(clients)].create_job(Job(type=Job.TYPE_CALIBRATE))
            created[job.name] = time.monotonic()
            await asyncio.sleep(gap_s)
    finally:
        for c in clients:
            await c.close()
    await asyncio.sleep(1.0)
    stop.set()
    got = [item for _ in procs for item in await asyncio.to_thread(results.get, True, 120)]
    for p in procs:
        p.join()
    names = [name for name, _, _ in got]
    assert sorted(names) == sorted(created), f"wake phase: {len(set(names))} of {len(created)} jobs claimed"
    assert len(set(names)) == len(names), "a job was claimed twice"
    return [received - created[name] for name, received, _ in got]


async def verify(target: str, names: list[str], expected: int) -> None:
    assert len(names) == expected, f"{len(names)} claims for {expected} jobs"
    assert len(set(names)) == len(names), f"{len(names) - len(set(names))} jobs claimed twice"
    async with AsyncClient(config(target)) as client:
        for condition, want in (
            ("type = IMAGE AND state = SUCCEEDED", expected),
            ("type = IMAGE AND state != SUCCEEDED", 0),
            ("type = IMAGE AND attempt != 1", 0),
        ):
            found = await client.list_jobs(condition, page_size=1)
            assert found.total_size == want, f"{condition}: {found.total_size}, expected {want}"


async def deadline_check(target: str) -> float:
    async with AsyncClient(config(target)) as client:
        t0 = time.perf_counter()
        empty = await client.claim_job([Job.TYPE_CONVERT], worker="deadline-check", wait_s=1)
        took = time.perf_counter() - t0
        assert not empty.HasField("job")
    return took


async def run(args: argparse.Namespace, targets: list[str]) -> None:
    t0 = time.perf_counter()
    created = await create_jobs(targets, args.jobs)
    print(f"created {len(created)} jobs in {time.perf_counter() - t0:.1f} s", flush=True)

    names, claims, succeeds, wall = await asyncio.to_thread(drain, targets, args.workers)
    await verify(targets[0], names, args.jobs)
    assert sorted(names) == sorted(created)
    print(
        f"drain: {len(names)} jobs claimed and succeeded by {args.workers} workers through {len(targets)} servers "
        f"in {wall:.1f} s: {len(names) / wall:.0f} claims/s; every job exactly once, none lost",
        flush=True,
    )
    print(
        f"  ClaimJob p50 {statistics.median(claims) * 1e3:.1f} ms, p99 {pct(claims, 0.99) * 1e3:.1f} ms; "
        f"SucceedJob p50 {statistics.median(succeeds) * 1e3:.1f} ms",
        flush=True,
    )

    gap_s = args.wake_gap_ms / 1000
    for kind, claimers, creators in (
        ("claimers on every server, jobs created through each in turn", targets, targets),
        ("claimers on one server, jobs created through another", targets[-1:], targets[:1]),
    ):
        if kind.startswith("claimers on one") and len(targets) < 2:
            continue
        values = await wake(claimers, creators, args.wakers, args.wake_jobs, gap_s)
        print(
            f"long-poll wake, {kind} ({len(values)} jobs): p50 {statistics.median(values) * 1e3:.1f} ms, "
            f"p99 {pct(values, 0.99) * 1e3:.1f} ms, max {max(values) * 1e3:.1f} ms",
            flush=True,
        )
    print(f"empty long-poll of 1 s returned empty after {await deadline_check(targets[-1]):.3f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="admin URL: a fresh database is made beside it")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--wakers", type=int, default=8)
    parser.add_argument("--wake-jobs", type=int, default=400)
    parser.add_argument("--wake-gap-ms", type=float, default=50.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="job-claims-") as tmp:
        workdir = Path(tmp)
        database = str(workdir / "contimg.sqlite3")
        pg_name = ""
        if args.engine == "postgres":
            pg_name = f"contimg_claims_{uuid.uuid4().hex[:10]}"
            asyncio.run(_admin(args.postgres, f'CREATE DATABASE "{pg_name}"'))
            database = with_database(args.postgres, pg_name)
        servers: list[Replica] = []
        try:
            # One at a time: the first creates (migrates) the database, the others open it.
            for i in range(args.servers):
                servers.append(start_replica(database, TOKEN, workdir, i))
                asyncio.run(wait_serving(servers[-1].target, servers[-1].proc))
            print(f"{args.servers} servers on one {args.engine} database, {os.cpu_count()} CPUs", flush=True)
            asyncio.run(run(args, [s.target for s in servers]))
        finally:
            for server in servers:
                stop_replica(server)
            if pg_name:
                asyncio.run(_admin(args.postgres, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


if __name__ == "__main__":
    main()

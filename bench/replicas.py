"""Job transitions through several replicas sharing one PostgreSQL database, with a watcher on each.

    python bench/replicas.py --replicas 1|2|4 [--transitions 10000] [--writers 8]
    python bench/replicas.py --targets host:port,host:port [--token TOKEN] [--database URL]

Without --targets it makes a fresh database on --postgres (a migrated, empty one: the replicas
migrate it at start), starts `--replicas` `contimg-server serve --database postgresql://...`
processes on it (production defaults: writes need a token, one log line per RPC), and drops the
database afterwards. With --targets it drives replicas started elsewhere (give --token if they
need one, and --database to compare with their `job_events` table too).

`--writers` concurrent writers take jobs through CreateJob, StartJob, 6 x ReportJobProgress and
SucceedJob, one call at a time each, every writer's consecutive calls going to the replicas in turn
(so each job is moved through all of them), until `--transitions` transitions are acknowledged.
Before the first write a WatchJobs stream is opened on every replica. Printed: transitions/s (wall
clock from the first call to the last reply), p50/p99 latency of one transition as its writer saw
it, whether every watcher got every event exactly once and in order (after a last "fence" job, each
watcher's events must be the consecutive sequences from its first heartbeat to the fence, hold
every acknowledged transition, agree with each other and with `job_events`), and the CPU seconds
spent by the replicas, the PostgreSQL backends serving this database, and this load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from dsa110.contimg.v1 import jobs_pb2, jobs_pb2_grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).parent))
from procs import cpu_seconds

CONSOLE_SCRIPT = Path(sys.executable).with_name("contimg-server")
DEFAULT_POSTGRES = os.environ.get("CONTIMG_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
PROGRESS_REPORTS = 6
CALL_TIMEOUT_S = 60.0
WAIT_S = 120.0
HEARTBEAT = jobs_pb2.JobEvent.TYPE_HEARTBEAT
STAGES = [
    jobs_pb2.Job.STAGE_CONVERTING,
    jobs_pb2.Job.STAGE_FLAGGING_RFI,
    jobs_pb2.Job.STAGE_SOLVING_CAL,
    jobs_pb2.Job.STAGE_IMAGING,
    jobs_pb2.Job.STAGE_PHOTOMETRY,
]

Event = tuple[int, str, int]  # (sequence, job name, to_state)


# ---- replicas started here ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    target: str
    log: Path


def start_replica(url: str, token: str, workdir: Path, i: int) -> Replica:
    port = free_port()
    data_dir = workdir / f"replica-{i}"
    data_dir.mkdir()
    log = data_dir / "server.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
             "--database", url, "--write-tokens", token],
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )  # fmt: skip
    return Replica(proc, f"127.0.0.1:{port}", log)


async def wait_serving(target: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"the replica on {target} exited at start (status {proc.returncode})")
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if time.monotonic() > deadline:
                raise SystemExit(f"{target} did not report SERVING within {WAIT_S:.0f} s")
            await asyncio.sleep(0.05)


def stop_replica(replica: Replica) -> None:
    if replica.proc.poll() is None:
        replica.proc.terminate()
        try:
            replica.proc.wait(30)
        except subprocess.TimeoutExpired:
            replica.proc.kill()
            replica.proc.wait(30)


# ---- watchers -------------------------------------------------------------------------------------


class Watcher:
    def __init__(self, target: str):
        self.target = target
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.events: list[Event] = []
        self.start_sequence = -1
        self.failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        call = self.stub.WatchJobs(jobs_pb2.WatchJobsRequest())
        first = await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
        assert isinstance(first, jobs_pb2.JobEvent) and first.type == HEARTBEAT
        self.start_sequence = first.sequence
        self._task = asyncio.create_task(self._follow(call))

    @property
    def last(self) -> int:
        return self.events[-1][0] if self.events else self.start_sequence

    async def _follow(self, call: Any) -> None:
        try:
            while True:
                event = await call.read()
                if event is grpc.aio.EOF:
                    raise RuntimeError("WatchJobs ended")
                if event.type != HEARTBEAT:
                    self.events.append((event.sequence, event.job.name, event.transition.to_state))
        except Exception as exc:
            self.failure = exc

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.channel.close()


# ---- writers --------------------------------------------------------------------------------------


def lifecycle(job_id: str) -> list[tuple[str, Message]]:
    name = f"jobs/{job_id}"

    def rid() -> str:
        return str(uuid.uuid4())

    steps: list[tuple[str, Message]] = [
        ("CreateJob", jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE), job_id=job_id,
                                                request_id=rid())),
        ("StartJob", jobs_pb2.StartJobRequest(name=name, request_id=rid())),
    ]  # fmt: skip
    for p in range(PROGRESS_REPORTS):
        percent = 100.0 * (p + 1) / (PROGRESS_REPORTS + 1)
        steps.append(
            (
                "ReportJobProgress",
                jobs_pb2.ReportJobProgressRequest(
                    name=name, stage=STAGES[p % len(STAGES)], progress_percent=percent, request_id=rid()
                ),
            )
        )
    steps.append(("SucceedJob", jobs_pb2.SucceedJobRequest(name=name, artifacts=["/data/out.fits"], request_id=rid())))
    return steps


@dataclass
class Load:
    stubs: list[jobs_pb2_grpc.JobServiceAsyncStub]
    metadata: tuple[tuple[str, str], ...]
    remaining: int
    tag: str
    next_job: int = 0
    latencies: list[float] = field(default_factory=list)
    acks: list[Event] = field(default_factory=list)

    async def writer(self, w: int) -> None:
        calls = 0
        while self.remaining > 0:
            job_id = f"{self.tag}-{self.next_job}"
            self.next_job += 1
            for method, request in lifecycle(job_id):
                if self.remaining <= 0:
                    return
                self.remaining -= 1
                stub = self.stubs[(w + calls) % len(self.stubs)]
                calls += 1
                start = time.perf_counter()
                job = await getattr(stub, method)(request, metadata=self.metadata, timeout=CALL_TIMEOUT_S)
                self.latencies.append(time.perf_counter() - start)
                last = job.transitions[-1]
                self.acks.append((last.sequence, job.name, last.to_state))


# ---- the run --------------------------------------------------------------------------------------


async def stored_events(url: str, after: int) -> list[Event]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT sequence, job_id, to_state FROM job_events WHERE sequence > $1 ORDER BY sequence", after
        )
    finally:
        await conn.close()
    return [(int(r[0]), f"jobs/{r[1]}", int(r[2])) for r in rows]


async def backend_pids(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid != pg_backend_pid()"
        )
    finally:
        await conn.close()
    return [int(r[0]) for r in rows]


def cpu_of(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}


def verdict(watchers: list[Watcher], acks: list[Event], fence: int, stored: list[Event] | None) -> tuple[bool, str]:
    """Whether every watcher got every event exactly once, in order; and if not, the first reason."""
    acked = set(acks)
    starts = {w.start_sequence for w in watchers}
    for w in watchers:
        if w.failure is not None:
            return False, f"{w.target}: the stream failed: {w.failure!r}"[:300]
        sequences = [e[0] for e in w.events]
        if sequences != list(range(w.start_sequence + 1, fence + 1)):
            dupes = len(sequences) - len(set(sequences))
            return False, f"{w.target}: {len(sequences)} events, {dupes} repeated, not {w.start_sequence + 1}..{fence}"
        if not acked <= set(w.events):
            return False, f"{w.target}: {len(acked - set(w.events))} acknowledged transitions never sent"
    common = max(starts)
    views = {tuple(e for e in w.events if e[0] > common) for w in watchers}
    if len(views) != 1:
        return False, "the watchers disagree on the events"
    if stored is not None:
        for w in watchers:
            if w.events != [e for e in stored if w.start_sequence < e[0] <= fence]:
                return False, f"{w.target}: the events differ from job_events"
    counts = sorted({len(w.events) for w in watchers})
    table = "; job_events matches" if stored is not None else ""
    return True, f"{len(watchers)} watchers, {counts} events each{table}"


async def run(args: argparse.Namespace) -> None:
    token = args.token or ("" if args.targets else uuid.uuid4().hex)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    replicas: list[Replica] = []
    database_url: str | None = args.database
    made_database = ""
    workdir = Path(tempfile.mkdtemp(prefix="contimg-bench-replicas-"))
    try:
        if args.targets:
            targets = [t.strip() for t in args.targets.split(",") if t.strip()]
            where = f"{len(targets)} replicas given ({', '.join(targets)})"
        else:
            made_database = f"contimg_bench_{uuid.uuid4().hex[:12]}"
            admin = await asyncpg.connect(args.postgres)
            try:
                await admin.execute(f'CREATE DATABASE "{made_database}"')
            finally:
                await admin.close()
            database_url = with_database(args.postgres, made_database)
            # The first replica migrates the new database; the others start on the migrated one.
            replicas.append(start_replica(database_url, token, workdir, 0))
            await wait_serving(replicas[0].target, replicas[0].proc)
            replicas += [start_replica(database_url, token, workdir, i) for i in range(1, args.replicas)]
            await asyncio.gather(*(wait_serving(r.target, r.proc) for r in replicas[1:]))
            targets = [r.target for r in replicas]
            where = f"{len(targets)} replicas started here on a new database ({made_database})"

        channels = [grpc.aio.insecure_channel(t) for t in targets]
        watchers = [Watcher(t) for t in targets]
        try:
            await asyncio.gather(*(w.start() for w in watchers))
            stubs = [jobs_pb2_grpc.JobServiceStub(c) for c in channels]
            tag = "bench-" + uuid.uuid4().hex[:8]
            # Warm-up (pools, prepared statements, channels), untimed; its events are watched too.
            warm = Load(stubs, metadata, args.warmup, tag + "-warm")
            await asyncio.gather(*(warm.writer(w) for w in range(args.writers)))

            load = Load(stubs, metadata, args.transitions, tag)
            pg_pids = await backend_pids(database_url) if database_url else []
            server_pids = [r.proc.pid for r in replicas]
            cpu0 = (sum(map(cpu_seconds, server_pids)), cpu_of(pg_pids), time.process_time())
            start = time.perf_counter()
            await asyncio.gather(*(load.writer(w) for w in range(args.writers)))
            wall = time.perf_counter() - start
            pg_after = cpu_of(pg_pids)
            cpu = (
                sum(map(cpu_seconds, server_pids)) - cpu0[0],
                sum(pg_after[p] - cpu0[1][p] for p in pg_pids),
                time.process_time() - cpu0[2],  # this process only (cpu_seconds would add the replicas)
            )

            fence_job = await stubs[0].CreateJob(
                jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_CONVERT)),
                metadata=metadata,
                timeout=CALL_TIMEOUT_S,
            )
            fence = int(fence_job.transitions[-1].sequence)
            deadline = time.monotonic() + WAIT_S
            while not all(w.last >= fence or w.failure is not None for w in watchers):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
        finally:
            for w in watchers:
                await w.close()
            for c in channels:
                await c.close()

        start_seq = min(w.start_sequence for w in watchers)
        stored = await stored_events(database_url, start_seq) if database_url else None
        ok, detail = verdict(watchers, warm.acks + load.acks, fence, stored)

        q = statistics.quantiles(load.latencies, n=100, method="inclusive")
        print(f"{where}; {args.writers} writers; {len(load.acks)} transitions timed (+{len(warm.acks)} warm-up)")
        print(f"transitions/s: {len(load.acks) / wall:,.0f}   ({wall:.2f} s)")
        print(f"transition latency ms: p50 {q[49] * 1000:.2f}  p99 {q[98] * 1000:.2f}")
        print(f"every watcher saw every event exactly once in order: {ok} ({detail})")
        if replicas:
            print(
                f"CPU s: replicas {cpu[0]:.1f}, PostgreSQL backends {cpu[1]:.1f}, load generator {cpu[2]:.1f} "
                f"(wall {wall:.1f} s x {os.cpu_count()} cores = {wall * (os.cpu_count() or 1):.1f} core-s)"
            )
        if not ok:
            raise SystemExit(1)
    finally:
        for r in replicas:
            stop_replica(r)
        if made_database:
            admin = await asyncpg.connect(args.postgres)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{made_database}" WITH (FORCE)')
            finally:
                await admin.close()


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--replicas", type=int, default=2, help="replicas to start here (ignored with --targets)")
    p.add_argument("--transitions", type=int, default=10_000, help="timed transitions (default 10,000)")
    p.add_argument("--writers", type=int, default=8, help="concurrent writers (default 8)")
    p.add_argument("--warmup", type=int, default=500, help="untimed transitions first (default 500)")
    p.add_argument("--targets", default="", help="host:port,... of replicas started elsewhere")
    p.add_argument("--token", default="", help="write token for --targets")
    p.add_argument("--database", default=None, help="with --targets: their database, to compare job_events")
    p.add_argument("--postgres", default=DEFAULT_POSTGRES, help="server to make the bench database on")
    args = p.parse_args()
    if args.replicas < 1 or args.writers < 1 or args.transitions < 2:
        p.error("--replicas and --writers must be >= 1, --transitions >= 2")
    try:
        import uvloop  # the loop the replicas run on; a cheaper load generator
    except ImportError:
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()

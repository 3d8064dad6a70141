"""Clients that leave a stream mid-way never take the server down (the crash-proof issue, item 1).

The server runs as users run it (`contimg-server serve` with its defaults: one log line per RPC,
uvloop, the write process) in a subprocess, so a crash shows as the process dying (it died with
SIGSEGV inside cygrpc ~1.4 s after a client broke out of a watch stream, when the logging wrapper
asked a released call for its peer). Streams are abandoned in every way a client can: break out of
the Python clients' iterators, cancel, close the channel, stop reading with a full flow-control
window, and drop the TCP connection (a proxy between client and server resets it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import threading
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from dsa110.contimg.client import AsyncClient, Client, ClientConfig
from dsa110.contimg.v1 import jobs_pb2, jobs_pb2_grpc, sources_pb2, sources_pb2_grpc
from google.protobuf import struct_pb2

from conftest import PostgresDatabases, make_stubs
from helpers_jobs import make_images, measurement, record
from helpers_stress import SERVING, ServerProcess, env_int, health_status

ENGINES = ("sqlite", "postgres")

STREAMS = env_int("CONTIMG_ABANDONED_STREAMS", 600)  # ~565 watch streams, the rest lightcurves
AT_ONCE = 40
BLOB = "x" * 4000  # job parameters of 4 KB: a few events fill a 64 KB flow-control window
# Should the server die, the clients' watchers give up soon instead of retrying for minutes.
GIVE_UP_S = 3.0


class Proxy:
    """A TCP forwarder in front of the server whose connections can stall (stop reading the
    server's side: its writes back up until the flow-control window is full) or be reset (RST)."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, asyncio.Event]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        flowing = asyncio.Event()
        flowing.set()
        self._pairs.append((writer, up_writer, flowing))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event | None) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while True:
                    if gate is not None:
                        await gate.wait()
                    data = await src.read(65536)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(pump(reader, up_writer, None), pump(up_reader, writer, flowing))

    def stall(self) -> None:
        for _, _, flowing in self._pairs:
            flowing.clear()

    def reset(self) -> None:
        """Close every connection with RST (SO_LINGER 0), as a dropped network path or a killed peer."""
        for down, up, _ in self._pairs:
            for w in (down, up):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.close()
        self._pairs.clear()

    async def close(self) -> None:
        self.reset()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _events_until(call: grpc.aio.UnaryStreamCall, n: int) -> None:  # type: ignore[type-arg]
    for _ in range(n):
        await call.read()


async def _raw_async(target: str, rng: random.Random, job: str, source: str) -> str:
    """A raw grpc.aio stub: read a few messages, then cancel, close the channel, or just drop the call."""
    how = rng.choice(["cancel", "close", "drop"])
    channel = grpc.aio.insecure_channel(target)
    stubs = jobs_pb2_grpc.JobServiceStub(channel)
    kind = rng.choice(["WatchJob", "WatchJobs", "GetLightcurve"])
    if kind == "WatchJob":
        call = stubs.WatchJob(jobs_pb2.WatchJobRequest(name=job))
    elif kind == "WatchJobs":
        call = stubs.WatchJobs(jobs_pb2.WatchJobsRequest())
    else:
        call = sources_pb2_grpc.SourceServiceStub(channel).GetLightcurve(
            sources_pb2.GetLightcurveRequest(name=source, max_points_per_message=1)
        )
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
        await asyncio.wait_for(_events_until(call, rng.randint(0, 3)), 2.0)
    if how == "cancel":
        call.cancel()
    del call  # "drop": the call object goes away with the channel
    await channel.close(grace=None)
    return f"raw-async {kind} {how}"


def _raw_sync(target: str, rng: random.Random, job: str) -> str:
    """A raw blocking stub in a thread: iterate a little, then break and close or cancel."""
    channel = grpc.insecure_channel(target)
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    deadline = 5.0  # a test that hangs proves nothing; events keep coming, so this is never reached
    stream = (
        stub.WatchJob(jobs_pb2.WatchJobRequest(name=job), timeout=deadline)
        if rng.random() < 0.5
        else (stub.WatchJobs(jobs_pb2.WatchJobsRequest(), timeout=deadline))
    )
    wanted = rng.randint(1, 3)
    with contextlib.suppress(grpc.RpcError):
        for n, _ in enumerate(stream, 1):
            if n >= wanted:
                break
    if rng.random() < 0.5:
        stream.cancel()
    channel.close()
    return "raw-sync"


def _client_sync(target: str, rng: random.Random, job: str) -> str:
    """The project's blocking Client: break out of watch_job / watch_jobs, then close the client."""
    wanted = rng.randint(1, 3)
    with Client(ClientConfig(target=target, watch_give_up_s=GIVE_UP_S)) as client:
        events = client.watch_job(job) if rng.random() < 0.5 else client.watch_jobs()
        for n, _ in enumerate(events, 1):
            if n >= wanted:
                break
    return "client-sync"


async def _client_async(target: str, rng: random.Random, job: str) -> str:
    """The project's AsyncClient: break out of the watch (or cancel the task reading it)."""
    wanted = rng.randint(1, 3)
    async with AsyncClient(ClientConfig(target=target, watch_give_up_s=GIVE_UP_S)) as client:
        events = client.watch_job(job) if rng.random() < 0.5 else client.watch_jobs()

        async def read() -> None:
            n = 0
            async for _ in events:
                n += 1
                if n >= wanted:
                    break

        task = asyncio.ensure_future(read())
        if rng.random() < 0.5:
            await asyncio.sleep(rng.random() * 0.05)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return "client-async"


async def _through_proxy(upstream_port: int, rng: random.Random, job: str) -> str:
    """Stop reading (the server's writes fill the window), then drop the TCP connection."""
    proxy = Proxy(upstream_port)
    await proxy.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}")
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    call = (
        stub.WatchJobs(jobs_pb2.WatchJobsRequest())
        if rng.random() < 0.5
        else stub.WatchJob(jobs_pb2.WatchJobRequest(name=job))
    )
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
        await asyncio.wait_for(call.read(), 2.0)
    stalled = rng.random() < 0.7
    if stalled:
        proxy.stall()
        await asyncio.sleep(rng.random() * 0.3)  # events keep coming meanwhile: the window fills
    proxy.reset()
    call.cancel()
    await channel.close(grace=None)
    await proxy.close()
    return f"proxy {'stall+reset' if stalled else 'reset'}"


def _drive_events(target: str, job_names: list[str], stop: threading.Event) -> None:
    """Keeps job events flowing (with 4 KB parameters) while streams come and go."""
    params = struct_pb2.Struct()
    params.update({"blob": BLOB})
    with grpc.insecure_channel(target) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        percent = 0.0
        while not stop.is_set():
            new = jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE, parameters=params)
            stub.CreateJob(jobs_pb2.CreateJobRequest(job=new))
            for name in job_names:
                percent = (percent + 1) % 100
                stub.ReportJobProgress(jobs_pb2.ReportJobProgressRequest(name=name, progress_percent=percent))
            stop.wait(0.01)


async def _within(seconds: float, work: Awaitable[str], what: str) -> str:
    try:
        return await asyncio.wait_for(work, seconds)
    except TimeoutError:
        raise AssertionError(f"{what} did not end within {seconds} s") from None


async def _until_dead(server: ServerProcess) -> int:
    """The server's exit status, once it has exited (a pidfd becomes readable then)."""
    assert server.proc is not None
    exited = asyncio.Event()
    loop = asyncio.get_running_loop()
    pidfd = os.pidfd_open(server.proc.pid)
    try:
        loop.add_reader(pidfd, exited.set)
        await exited.wait()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return server.proc.wait()


@pytest.mark.slow
async def test_abandoned_streams_never_crash_the_server(
    tmp_path: Path, engine: str, postgres_databases: PostgresDatabases
) -> None:
    database = await postgres_databases.new() if engine == "postgres" else None
    # The defaults users get: request logging, uvloop, the write process (SQLite).
    server = ServerProcess(tmp_path, database=database)
    await server.start()
    try:
        target = server.target
        async with grpc.aio.insecure_channel(target) as channel:
            stubs = make_stubs(channel)
            jobs = stubs.jobs
            # A source with 30 epochs: its lightcurve, one point per message, is a stream too.
            for image in await make_images(stubs, [60000.0 + i for i in range(30)]):
                await record(stubs, image.name, [measurement("J083454.9+553421", 128.7291, 55.5725)])
            params = struct_pb2.Struct()
            params.update({"blob": BLOB})
            running = []
            for _ in range(3):
                job = await jobs.CreateJob(jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=1, parameters=params)))
                await jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name))
                running.append(job.name)
        source = "sources/J083454.9+553421"

        stop = threading.Event()
        driver = threading.Thread(target=_drive_events, args=(target, running, stop), daemon=True)
        driver.start()
        rng = random.Random(16)
        kinds: dict[str, int] = {}
        loop = asyncio.get_running_loop()
        threads = ThreadPoolExecutor(AT_ONCE, thread_name_prefix="blocking-client")  # every blocking client at once

        def one(i: int) -> Awaitable[str]:
            job = rng.choice(running)
            pick = i % 5
            seed = random.Random(rng.random())
            if pick == 0:
                return _raw_async(target, seed, job, source)
            if pick == 1:
                return loop.run_in_executor(threads, _raw_sync, target, seed, job)
            if pick == 2:
                return loop.run_in_executor(threads, _client_sync, target, seed, job)
            if pick == 3:
                return _client_async(target, seed, job)
            return _through_proxy(server.port, seed, job)

        async def batch(start: int, end: int) -> None:
            assert driver.is_alive(), "the event driver stopped"
            work = asyncio.gather(*(_within(30, one(i), f"stream {i} (kind {i % 5})") for i in range(start, end)))
            watchdog = asyncio.ensure_future(_until_dead(server))
            await asyncio.wait([work, watchdog], return_when=asyncio.FIRST_COMPLETED)
            if watchdog.done():
                with contextlib.suppress(Exception):
                    await work  # let the clients see the dead server and give up
                raise AssertionError(f"server died (exit {watchdog.result()}):\n{server.log_tail()}")
            watchdog.cancel()
            for kind in work.result():
                kinds[kind.split()[0]] = kinds.get(kind.split()[0], 0) + 1

        try:
            await batch(0, AT_ONCE)  # warm-up: first use of every path grows the heap once
            start_rss = server.rss_kib()
            for first in range(AT_ONCE, STREAMS, AT_ONCE):
                await batch(first, min(first + AT_ONCE, STREAMS))
        finally:
            stop.set()
            driver.join(30)
            threads.shutdown(wait=True)

        await asyncio.sleep(2.5)  # past the ~1.4 s at which abandoned generators used to be finalized
        assert server.proc is not None and server.proc.poll() is None, f"server died:\n{server.log_tail()}"
        assert await health_status(target) == SERVING
        assert sum(kinds.values()) == STREAMS and len(kinds) == 5, kinds
        end_rss = server.rss_kib()
        assert end_rss < start_rss * 1.25 + 20_000, f"RSS {start_rss} KiB -> {end_rss} KiB after {STREAMS} streams"
        log = server.log_path.read_text(errors="replace")
        assert "Traceback" not in log and " ERROR " not in log, server.log_tail(80)
        assert log.count("code=CANCELLED") > 0  # the streams were logged, as users' servers log them
    finally:
        assert server.terminate() == 0, server.log_tail()

"""Prometheus metrics (`--metrics-port`: metrics.py, metrics_endpoint.py), scraped over HTTP as
Prometheus does: the gRPC series count exactly the calls made, by code, through `--workers 2`
(every worker's values added up by the parent), and the backend's own series follow what happens.

Every wait polls a condition against a deadline; none is a timing assertion."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import yaml
from dsa110.contimg.v1 import images_pb2, jobs_pb2
from prometheus_client.parser import text_string_to_metric_families

from conftest import PostgresDatabases, ServerFactory, free_port, make_stubs
from helpers import make_image, make_ms, record_photometry
from helpers_stress import ServerProcess, exit_status
from helpers_stress import until as until_true

ENGINES = ("sqlite", "postgres")
DEADLINE_S = 30.0
IMAGE = "dsa110.contimg.v1.ImageService"
JOBS = "dsa110.contimg.v1.JobService"
CONNECTIONS = 8  # each its own TCP connection: with --workers 2 the kernel spreads them
FOUND, MISSING, INVALID, WRITES = 400, 120, 80, 60

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of http://127.0.0.1:port/metrics, parsed as Prometheus parses the text format."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name, frozenset(s.labels.items())] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and want <= have)


async def until(check: Callable[[], Awaitable[bool]], what: Callable[[], str]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        assert time.monotonic() < deadline, what()
        await asyncio.sleep(0.05)


async def test_scraped_counts_equal_the_calls_made_by_code_under_workers(
    tmp_path: Path, engine: str, postgres_databases: PostgresDatabases
) -> None:
    database = await postgres_databases.new() if engine == "postgres" else None
    metrics_port = free_port()
    server = ServerProcess(
        tmp_path, database=database, port=free_port(), args=["--workers", "2", "--metrics-port", str(metrics_port)]
    )
    await server.start()
    try:
        channels = [
            grpc.aio.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CONNECTIONS)
        ]
        stubs = [make_stubs(ch) for ch in channels]
        image = await make_image(stubs[0], (await make_ms(stubs[0])).name)
        setup = await asyncio.to_thread(scrape, metrics_port)

        async def call(i: int) -> tuple[str, str]:
            s = stubs[i % CONNECTIONS]
            method = "GetImage" if i < FOUND + MISSING + INVALID else "CreateJob"
            try:
                if i < FOUND:
                    await s.images.GetImage(images_pb2.GetImageRequest(name=image.name), timeout=10)
                elif i < FOUND + MISSING:
                    await s.images.GetImage(images_pb2.GetImageRequest(name=f"images/{10**9 + i}"), timeout=10)
                elif i < FOUND + MISSING + INVALID:
                    await s.images.GetImage(images_pb2.GetImageRequest(name="not-an-image"), timeout=10)
                else:
                    job = jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)
                    await s.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=job), timeout=10)
                return method, "OK"
            except grpc.aio.AioRpcError as err:
                return method, err.code().name

        scrapes: list[Samples] = []
        loading = asyncio.Event()

        async def scrape_during_load() -> None:
            while not loading.is_set():
                scrapes.append(await asyncio.to_thread(scrape, metrics_port))

        scraper = asyncio.create_task(scrape_during_load())
        order = list(range(FOUND + MISSING + INVALID + WRITES))
        codes = await asyncio.gather(*(call(i) for i in order[::-1]))  # writes first, reads while they commit
        loading.set()
        await scraper
        tally = collections.Counter(codes)  # what the clients saw, (method, code) -> calls
        assert {code for method, code in tally if method == "GetImage"} >= {"OK", "NOT_FOUND", "INVALID_ARGUMENT"}
        assert tally["GetImage", "OK"] > 0 and tally["CreateJob", "OK"] > 0

        # During the load: every scrape parsed, and no count ever passed the calls made or went back.
        assert scrapes
        previous = 0.0
        for s in scrapes:
            handled = value(s, "grpc_server_handled_total", grpc_method="GetImage")
            assert (
                previous
                <= handled
                <= value(setup, "grpc_server_handled_total", grpc_method="GetImage") + FOUND + MISSING + INVALID
            )
            previous = handled

        def delta(name: str, **labels: str) -> float:
            return value(last, name, **labels) - value(setup, name, **labels)

        last: Samples = {}

        async def settled() -> bool:
            # Under --workers a scrape reads each worker's files one after another (prometheus_client's
            # multiprocess mode), so one scrape can hold a flush's counters but not yet its histogram
            # (seen once in CI: handled 600, handling_seconds_count 345). Wait until every family is in.
            nonlocal last
            last = await asyncio.to_thread(scrape, metrics_port)
            reads = FOUND + MISSING + INVALID
            return (
                delta("grpc_server_handled_total", grpc_method="GetImage") == reads
                and delta("grpc_server_handling_seconds_count", grpc_method="GetImage") == reads
                and delta("grpc_server_started_total", grpc_method="GetImage") == reads
                and delta("grpc_server_msg_sent_total", grpc_method="GetImage") == tally["GetImage", "OK"]
                and delta("grpc_server_handled_total", grpc_method="CreateJob") == WRITES
            )

        await until(settled, lambda: f"{last}")
        get = {"grpc_service": IMAGE, "grpc_method": "GetImage", "grpc_type": "unary"}
        assert delta("grpc_server_started_total", **get) == FOUND + MISSING + INVALID
        assert delta("grpc_server_msg_received_total", **get) == FOUND + MISSING + INVALID
        for (method, code), calls in tally.items():  # every (method, code) the clients saw, exactly
            assert delta("grpc_server_handled_total", grpc_code=code, grpc_method=method) == calls, (method, code)
        assert sum(value(last, "grpc_server_handled_total", grpc_method=m) for m in ("GetImage", "CreateJob")) == sum(
            value(setup, "grpc_server_handled_total", grpc_method=m) for m in ("GetImage", "CreateJob")
        ) + sum(tally.values())  # and no other code
        assert delta("grpc_server_msg_sent_total", **get) == tally["GetImage", "OK"]  # errors send no message
        assert delta("grpc_server_handling_seconds_count", **get) == FOUND + MISSING + INVALID
        assert delta("grpc_server_handling_seconds_bucket", le="+Inf", **get) == FOUND + MISSING + INVALID
        assert delta("grpc_server_started_total", grpc_service=JOBS, grpc_method="CreateJob") == WRITES

        async def committed() -> bool:  # sampled every second, from the storage's own record
            nonlocal last
            last = await asyncio.to_thread(scrape, metrics_port)
            return value(last, "contimg_commit_seconds_count") >= 1

        await until(committed, lambda: "no commit counted")
        for ch in channels:
            await ch.close()
    finally:
        assert server.terminate() == 0, server.log_tail()


async def test_both_workers_are_added_up(tmp_path: Path) -> None:
    """Each worker's pool counts once: the sum over `--workers 3` is three pools."""
    metrics_port = free_port()
    args = ["--workers", "3", "--readers", "2", "--metrics-port", str(metrics_port)]
    server = ServerProcess(tmp_path, port=free_port(), args=args)
    await server.start()
    try:
        last: Samples = {}

        async def all_three() -> bool:
            nonlocal last
            last = await asyncio.to_thread(scrape, metrics_port)
            return value(last, "contimg_reader_pool_size") == 6

        await until(all_three, lambda: f"{value(last, 'contimg_reader_pool_size')} readers")
    finally:
        assert server.terminate() == 0, server.log_tail()


async def test_backend_series_follow_what_happens(server_factory: ServerFactory) -> None:
    port = free_port()
    srv = await server_factory(metrics_port=port)
    last: Samples = {}

    async def until_value(name: str, expected: Callable[[float], bool]) -> None:
        async def check() -> bool:
            nonlocal last
            last = await asyncio.to_thread(scrape, port)
            return expected(value(last, name))

        await until(check, lambda: f"{name} = {value(last, name)}")

    async with grpc.aio.insecure_channel(srv.target) as channel:
        stubs = make_stubs(channel)
        image = await make_image(stubs, (await make_ms(stubs)).name)
        await record_photometry(stubs, image.name, [(f"J0834+55{i:02d}", 0.1 + i) for i in range(7)])
        await until_value("contimg_photometry_rows_ingested_total", lambda v: v == 7)
        await until_value("contimg_commit_seconds_count", lambda v: v >= 3)  # the MS, the image, the photometry
        assert value(last, "contimg_commit_group_size_sum") >= value(last, "contimg_commit_seconds_count")

        for _ in range(3):
            await stubs.images.GetImage(images_pb2.GetImageRequest(name=image.name))
        await until_value("contimg_read_cache_hits_total", lambda v: v >= 2)
        assert value(last, "contimg_read_cache_misses_total") >= 1
        assert value(last, "contimg_read_cache_bytes") > 0
        await until_value("contimg_database_size_bytes", lambda v: v > 0)
        assert value(last, "contimg_storage_serving") == 1
        assert value(last, "contimg_reader_pool_size") >= 1
        assert ("contimg_redis_up", frozenset()) not in last  # no --redis-url: no series

        job = await stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)))
        watch = stubs.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name))
        first = await watch.read()
        assert first.type == jobs_pb2.JobEvent.TYPE_SNAPSHOT
        await until_value("contimg_watch_streams_open", lambda v: v == 1)
        await until_value("contimg_watch_events_delivered_total", lambda v: v == 1)  # before the stream ends
        await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name))
        await watch.read()
        await until_value("contimg_watch_events_delivered_total", lambda v: v == 2)
        watch.cancel()
        await until_value("contimg_watch_streams_open", lambda v: v == 0)
        started = {"grpc_method": "WatchJob", "grpc_type": "server_stream"}
        await until_value("grpc_server_handled_total", lambda v: v > 0)
        assert value(last, "grpc_server_handled_total", grpc_code="CANCELLED", **started) == 1
        assert value(last, "grpc_server_msg_sent_total", **started) == 2


async def test_a_taken_metrics_port_stops_the_start_with_a_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            server = ServerProcess(
                tmp_path, port=free_port(), name=f"w{workers}", args=["--workers", workers, "--metrics-port", str(port)]
            )
            assert await exit_status(server.command(server.port), server.log_path, wait_s=DEADLINE_S) != 0
            assert f"cannot serve metrics on 127.0.0.1:{port}" in server.log_path.read_text(), server.log_tail()


DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SERIES = re.compile(r"\b(grpc_server_\w+|contimg_\w+)")


def exported_series() -> set[str]:
    """The name of every sample the server can export (Redis's included)."""
    from dsa110.contimg.server.metrics import ServerMetrics

    metrics = ServerMetrics(redis=True)
    metrics.method("/dsa110.contimg.v1.ImageService/GetImage", False)
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum", "_total"))
    return names


def test_the_dashboard_and_the_alerts_use_only_series_the_server_exports() -> None:
    exported = exported_series()
    dashboard = json.loads((DEPLOY / "grafana" / "contimg-grpc.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 15
    rules = yaml.safe_load((DEPLOY / "prometheus" / "contimg-alerts.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule), rule
        assert rule["annotations"]["summary"]
    exprs += [rule["expr"] for rule in rules]
    used = {name for expr in exprs for name in SERIES.findall(expr)}
    assert used - exported == set()
    # Every series the backend adds is on the dashboard (by family: a counter's `_total`, a histogram's parts).
    families = {
        n for n in exported if n.startswith("contimg_") and not n.endswith(("_total", "_bucket", "_count", "_sum"))
    }
    on_dashboard = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
    assert families - on_dashboard == set()
    names = {rule["alert"] for rule in rules}
    assert {"ContimgDown", "ContimgHighErrorRate", "ContimgSlowUnaryCalls", "ContimgWriterBacklog"} <= names
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert [job["job_name"] for job in scrape["scrape_configs"]] == ["contimg"]  # the rules' job="contimg"


async def test_idle_connections_to_the_metrics_port_hold_a_bounded_number_of_threads(
    server_factory: ServerFactory,
) -> None:
    """prometheus_client's server gave every connection a thread of its own: 200 connections left
    idle held 200 threads. Now at most MAX_SCRAPES are served at once, the rest are closed unanswered,
    and once the idle ones go a scrape is answered again."""
    import socket
    import threading

    from dsa110.contimg.server.metrics_endpoint import MAX_SCRAPES

    port = free_port()
    srv = await server_factory(metrics_port=port)
    endpoint = srv.server.metrics_endpoint
    assert endpoint is not None
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    try:
        http = endpoint.server
        await until_true(lambda: http.accepted + http.refused == len(idle), "every connection taken or refused")
        assert http.refused >= len(idle) // 2  # the kept ones leave after SCRAPE_TIMEOUT_S, then a few more
        assert threading.active_count() <= before + MAX_SCRAPES
    finally:
        for conn in idle:
            conn.close()
    samples = await until_scraped(port)
    assert any(name == "grpc_server_started_total" or name.startswith("contimg_") for name, _ in samples)


async def until_scraped(port: int) -> Samples:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return await asyncio.to_thread(scrape, port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_every_method_has_its_series_at_zero_before_its_first_call(server_factory: ServerFactory) -> None:
    """Alerts and rate() need a series to exist before it moves: every method is registered at start,
    unary ones (recorded by their envelope) as well as streams."""
    port = free_port()
    await server_factory(metrics_port=port)
    samples = await until_scraped(port)
    for method, kind in (("GetImage", "unary"), ("CreateJob", "unary"), ("WatchJobs", "server_stream")):
        labels = {"grpc_method": method, "grpc_type": kind}
        found = [
            v for (n, have), v in samples.items() if n == "grpc_server_started_total" and set(labels.items()) <= have
        ]
        assert found == [0.0], (method, found)

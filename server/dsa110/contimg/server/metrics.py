"""Prometheus metrics (`--metrics-port`): the standard gRPC server series and the backend's own.

The gRPC series are named and labelled as go-grpc-prometheus and py-grpc-prometheus name them
(`grpc_server_started_total`, `grpc_server_handled_total{grpc_code}`, `grpc_server_handling_seconds`,
`grpc_server_msg_received_total`, `grpc_server_msg_sent_total`; labels grpc_type, grpc_service,
grpc_method), so existing dashboards and alerts apply. Their buckets start at 0.5 ms: a warm GetImage
takes ~0.2 ms, and the Go library's first bucket (5 ms) would hide every regression below it.

Nothing here runs per call. The access log's wrapper (accesslog.py) already keeps one tuple per
call; its flush hands them here every 0.1 s, where they become counter and histogram increments.
`started` and the messages of a stream are counted as they happen, in plain dicts, so a long watch
stream shows up before it ends. The backend's own series are sampled every SAMPLE_S from counters
the server keeps anyway (storage/load.py, readcache.py, the admission pools).

Under `--workers N` every worker writes its values to files in one directory (prometheus_client's
multiprocess mode; workers.py makes the directory before forking) and the parent serves their sum
(metrics_endpoint.py). Gauges say how they add up: `livesum` (queue depths, streams open: the
service's total), `livemax` (database size: one database), `livemin` (Redis link, storage health:
0 if any worker is cut off). A scrape reads the workers' files one after another, so one scrape
taken during a flush may count a call in one family (handled) and not yet in another (the histogram);
the next scrape has both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .tasks import cancel_and_wait

if TYPE_CHECKING:
    from .accesslog import Entry
    from .health import StorageHealth
    from .readcache import ReadCache
    from .redislink import RedisLink
    from .servicers.admission import Admission
    from .storage.engine import Upkeep

log = logging.getLogger("contimg.metrics")

SAMPLE_S = 1.0
SIZE_EVERY = 15  # samples between two database-size queries (PostgreSQL's is a query)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
WATCH_METHODS = ("WatchJob", "WatchJobs")
_RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")


class ServerMetrics:
    """The series of one server process, in its own registry (several servers may share a process: tests)."""

    def __init__(self, redis: bool = False) -> None:
        # Imported here: a server without --metrics-port never loads prometheus_client, and under
        # --workers it must be first imported after workers.py has set PROMETHEUS_MULTIPROC_DIR.
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # type: ignore[no-untyped-call]  # a `_created` twin of every series, which no dashboard here reads
        self.registry = r = CollectorRegistry()
        self.started = Counter("grpc_server_started", "RPCs started on the server.", _RPC_LABELS, registry=r)
        self.handled = Counter(
            "grpc_server_handled", "RPCs completed on the server, by code.", (*_RPC_LABELS, "grpc_code"), registry=r
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the RPC's start to its status, seconds.",
            _RPC_LABELS,
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.received = Counter("grpc_server_msg_received", "Request messages received.", _RPC_LABELS, registry=r)
        self.sent = Counter("grpc_server_msg_sent", "Reply messages sent.", _RPC_LABELS, registry=r)

        self.writes_pending = Gauge(
            "contimg_writer_queue_depth",
            "Writes taken by the storage and not yet committed (SQLite: the writer's queue).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.commit_seconds = Histogram(
            "contimg_commit_seconds",
            "Duration of one commit (a group of writes), seconds.",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.commit_writes = Histogram(
            "contimg_commit_group_size", "Writes carried by one commit.", buckets=GROUP_BUCKETS, registry=r
        )
        self.photometry_rows = Counter(
            "contimg_photometry_rows_ingested", "Photometry measurements recorded.", registry=r
        )
        self.watch_open = Gauge(
            "contimg_watch_streams_open",
            "WatchJob and WatchJobs streams open.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.watch_events = Counter(
            "contimg_watch_events_delivered", "Messages sent on WatchJob and WatchJobs streams.", registry=r
        )
        self.in_progress = Gauge(
            "contimg_requests_in_progress",
            "Calls holding an admission slot, by pool.",
            ("pool",),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_hits = Counter("contimg_read_cache_hits", "Reads answered from kept replies.", registry=r)
        self.cache_misses = Counter("contimg_read_cache_misses", "Reads computed by the storage.", registry=r)
        self.cache_bytes = Gauge(
            "contimg_read_cache_bytes", "Memory held by kept replies.", registry=r, multiprocess_mode="livesum"
        )
        self.readers_in_use = Gauge(
            "contimg_reader_pool_in_use", "Storage read connections in use.", registry=r, multiprocess_mode="livesum"
        )
        self.readers = Gauge(
            "contimg_reader_pool_size", "Storage read connections in all.", registry=r, multiprocess_mode="livesum"
        )
        self.redis_up = (
            Gauge(
                "contimg_redis_up",
                "1 while the Redis link is up (--redis-url only).",
                registry=r,
                multiprocess_mode="livemin",
            )
            if redis
            else None
        )
        self.database_bytes = Gauge(
            "contimg_database_size_bytes",
            "Size of the database (SQLite: file and WAL).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.serving = Gauge(
            "contimg_storage_serving",
            '1 while the database takes writes (health "" SERVING).',
            registry=r,
            multiprocess_mode="livemin",
        )

        # Per call, only these (the access log's wrapper, accesslog.py): plain dicts, no locks.
        self.started_counts: dict[str, int] = {}
        self.sent_counts: dict[str, int] = {}
        self._kinds: dict[str, tuple[str, str, str]] = {}  # "/svc/Method" -> labels
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}  # (method, code) -> (handled, histogram)
        self._started_seen: dict[str, int] = {}
        self._sent_seen: dict[str, int] = {}

    def method(self, path: str, server_streaming: bool) -> None:
        """Register a method at server start: its series exist, at 0, before its first call."""
        service, _, name = path.lstrip("/").partition("/")
        labels = ("server_stream" if server_streaming else "unary", service, name)
        self._kinds[path] = labels
        self.started.labels(*labels)
        self.handling.labels(*labels)
        self.received.labels(*labels)
        self.sent.labels(*labels)
        self.handled.labels(*labels, "OK")

    def observe_calls(self, entries: list[Entry]) -> None:
        """Calls ended since the last flush (accesslog.Entry: time, method, code, ms, peer, sent, caller)."""
        children = self._children
        counts: dict[tuple[str, str], int] = {}  # a counter's lock once per (method, code), not per call
        for entry in entries:
            method, code, ms = entry[1], entry[2], entry[3]
            key = (method, code)
            pair = children.get(key)
            if pair is None:
                labels = self._kinds[method]
                pair = children[key] = (self.handled.labels(*labels, code), self.handling.labels(*labels))
            counts[key] = counts.get(key, 0) + 1
            pair[1].observe(ms / 1000)
            if entry[5] < 0 and code == "OK":  # a unary reply
                self.sent_counts[method] = self.sent_counts.get(method, 0) + 1
        for key, n in counts.items():
            children[key][0].inc(n)
        for method, total in self.started_counts.items():
            delta = total - self._started_seen.get(method, 0)
            if delta:
                self._started_seen[method] = total
                labels = self._kinds[method]
                self.started.labels(*labels).inc(delta)
                self.received.labels(*labels).inc(delta)  # every method's request is one message
        for method, total in self.sent_counts.items():
            delta = total - self._sent_seen.get(method, 0)
            if delta:
                self._sent_seen[method] = total
                labels = self._kinds[method]
                self.sent.labels(*labels).inc(delta)
                if labels[2] in WATCH_METHODS:
                    self.watch_events.inc(delta)


class Sampler:
    """Every SAMPLE_S, the backend's own series from what the server keeps anyway."""

    def __init__(
        self,
        metrics: ServerMetrics,
        storage: Upkeep,
        reads: ReadCache,
        health: StorageHealth,
        admission: Callable[[], Admission | None],
        redis: RedisLink | None,
        photometry_rows: Callable[[], int],
    ):
        self.metrics = metrics
        self.storage = storage
        self.reads = reads
        self.health = health
        self.admission = admission
        self.redis = redis
        self.photometry_rows = photometry_rows
        self._seen = {"hits": 0, "misses": 0, "rows": 0}
        self._samples = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.storage.commits.take()  # commits are kept from now on
        self._task = asyncio.create_task(self._run(), name="metrics-sampler")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # the database unreachable for its size, say: the next sample tries again
                log.exception("sampling the metrics failed")
            await asyncio.sleep(SAMPLE_S)

    async def sample(self) -> None:
        m = self.metrics
        load = self.storage.load()
        m.writes_pending.set(load.writes_pending)
        m.readers_in_use.set(load.readers_in_use)
        m.readers.set(load.readers)
        for seconds, writes in self.storage.commits.take():
            m.commit_seconds.observe(seconds)
            m.commit_writes.observe(writes)
        self._inc(m.cache_hits, "hits", self.reads.hits)
        self._inc(m.cache_misses, "misses", self.reads.misses)
        self._inc(m.photometry_rows, "rows", self.photometry_rows())
        m.cache_bytes.set(self.reads.size)
        admission = self.admission()
        if admission is not None:
            m.watch_open.set(admission.watches.active)
            m.in_progress.labels("reads").set(admission.reads.active)
            m.in_progress.labels("writes").set(admission.writes.active)
        if self.redis is not None and m.redis_up is not None:
            m.redis_up.set(1 if self.redis.usable else 0)
        m.serving.set(1 if self.health.serving else 0)
        if self._samples % SIZE_EVERY == 0:
            m.database_bytes.set(await self.storage.size_bytes())
        self._samples += 1

    def _inc(self, counter: Any, key: str, total: int) -> None:
        # Cache counters go down when a hit turns out stale (readcache.py): never let the series do.
        delta = total - self._seen[key]
        if delta > 0:
            counter.inc(delta)
            self._seen[key] = total

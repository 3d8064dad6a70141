"""Assembles and runs the server: storage, event bus, servicers, health, reflection, access log.

This module owns every gRPC server option.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from dataclasses import dataclass, replace

import grpc
from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import error_details_pb2  # noqa: F401  (registers ErrorInfo/BadRequest for reflection)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from . import metrics_endpoint
from .accesslog import AccessLog, quiet_departures
from .config import ServerConfig, read_tokens
from .domain.errors import StartupError
from .events.local import LocalEventBus
from .events.tail import EventTailer
from .events.watch import JobWatcher
from .health import StorageHealth
from .housekeeping import Housekeeping
from .leases import LeaseSweeper
from .metrics import Sampler, ServerMetrics
from .metrics_endpoint import Endpoint
from .open_files import fit_connections
from .reflection import enable_server_reflection
from .replicas import RedisFeatures
from .servicers.admission import Admission, Limits, TokenPolicy
from .servicers.common import Paging
from .servicers.handlers import Behaviour, add_service
from .servicers.images import ImageServicer
from .servicers.jobs import JobServicer
from .servicers.measurement_sets import MSServicer
from .servicers.sources import SourceServicer
from .storage.engine import Storage, open_storage
from .tracing import Tracing
from .web.listener import WebServer, WebTls, private_address
from .web.listener import bind as bind_web

log = logging.getLogger("contimg.server")

IMAGE_SERVICE = images_pb2.DESCRIPTOR.services_by_name["ImageService"]
SOURCE_SERVICE = sources_pb2.DESCRIPTOR.services_by_name["SourceService"]
JOB_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
MS_SERVICE = measurement_sets_pb2.DESCRIPTOR.services_by_name["MSService"]
SERVICES = (IMAGE_SERVICE, SOURCE_SERVICE, JOB_SERVICE, MS_SERVICE)
SERVICE_NAMES = tuple(s.full_name for s in SERVICES)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]


PENDING_CALLS_SOFT_LIMIT = 10_000


def server_options(config: ServerConfig, connections: int | None = None) -> list[tuple[str, int]]:
    """`connections`: the cap on open client connections (open_files.fit_connections)."""
    size = config.max_message_mb * 1024 * 1024
    return [
        # Past it, a new connection is closed as it arrives (idle ones cost descriptors, not calls).
        ("grpc.max_allowed_incoming_connections", connections or config.max_connections),
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        # One connection cannot hold more than this many calls open at once (HTTP/2 streams), well
        # above what one client process runs at once (a burst beyond it at a connection's start is
        # refused as REFUSED_STREAM before the client has the limit). Memory is bounded by the
        # admission pools (servicers/admission.py), which hold a read's slot until its reply is taken.
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        # Calls that arrive faster than the server takes them wait in gRPC's core; past a soft limit
        # of pending calls (1,000 by default) core sheds them at random, with CANCELLED, the
        # pipeline's writes among them (seen in 1 of 15 floods of 2,000 calls). The admission
        # pools refuse a flood cheaply once the calls are taken, so let the queue be deeper.
        ("grpc.server.max_pending_requests", PENDING_CALLS_SOFT_LIMIT),
        ("grpc.server.max_pending_requests_hard_limit", 2 * PENDING_CALLS_SOFT_LIMIT),
        ("grpc.keepalive_time_ms", config.keepalive_time_s * 1000),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_s * 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients may ping every 10 s without being told to go away (ENHANCE_YOUR_CALM).
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # A second server on the same port must fail to bind, unless we fork workers on purpose.
        ("grpc.so_reuseport", 1 if config.workers > 1 else 0),
    ]


class BindError(StartupError):
    """The server could not bind its address; nothing is left open."""


@dataclass
class ContimgServer:
    config: ServerConfig
    port: int = 0
    web_socket: socket.socket | None = None  # --web-port's, bound by the parent of --workers

    def __post_init__(self) -> None:
        self.bus = LocalEventBus()
        self.redis = RedisFeatures(self.config.redis_url) if self.config.redis_url else None
        # Committed job events reach the bus through the tailer, from the database's event log: every
        # process sharing the database (workers, replicas) delivers every event to its watchers, once.
        self.tailer = EventTailer(self.bus, self.redis.link if self.redis is not None else None)
        self.storage: Storage = open_storage(self.config, self.tailer)
        self.tailer.version = self.storage.version
        self.health = HealthServicer()
        self.storage_health = StorageHealth(self.storage.db, self.health)
        self.housekeeping = Housekeeping(self.storage.db)
        self.leases = LeaseSweeper(self.storage.jobs)  # job leases that expired: every process sweeps
        # Prometheus series (metrics.py), served by this process, or by the parent of --workers.
        self.metrics = ServerMetrics(redis=self.redis is not None) if self.config.metrics_port else None
        self.sampler: Sampler | None = None
        self.metrics_endpoint: Endpoint | None = None
        # One line per RPC, written off the hot path (accesslog.py); the metrics count the same calls.
        self.access = (
            AccessLog(self.config.log_format == "json", lines=self.config.log_rpcs, metrics=self.metrics)
            if self.config.log_rpcs or self.metrics is not None
            else None
        )
        self.tracing: Tracing | None = None  # --otlp-endpoint, once started
        self._server: grpc.aio.Server | None = None
        self.admission: Admission | None = None  # tokens and capacity, once started
        self.servicers: dict[str, object] = {}  # service name -> servicer, once started
        self.web: WebServer | None = None  # --web-port, once started

    async def start(self) -> int:
        cfg = self.config
        # What can fail without the database comes first, so that nothing is left open when it does
        # (a tokens file that does not parse once left the process hanging beside its open storage).
        try:
            tokens = read_tokens(self.config)
        except (ValueError, OSError) as exc:
            raise StartupError(str(exc)) from None
        if cfg.otlp_endpoint:  # first, as the metrics port: a missing package stops the start with nothing open
            engine = "postgresql" if cfg.postgres else "sqlite"
            self.tracing = Tracing(cfg.otlp_endpoint, engine, cfg.otlp_sample_ratio)
        if self.metrics is not None and self.config.workers == 1:  # else the parent serves them (workers.py)
            # First: a port that cannot be bound stops the start before anything else is open.
            host = self.config.metrics_host or self.config.host
            self.metrics_endpoint = metrics_endpoint.serve(host, self.config.metrics_port, self.metrics.registry)
        if cfg.web_port:
            self.web = self._web_server()  # a missing package or a taken port stops the start here
        try:
            await self.storage.open()
        except BaseException:
            if self.metrics_endpoint is not None:
                self.metrics_endpoint.close()
            self._close_web()
            raise
        if self.redis is not None:
            await self.redis.start(self.health)
        await self.tailer.start(self.storage.jobs)
        paging = Paging(await self.storage.db.page_token_keys())
        self.housekeeping.tokens = paging.tokens
        self.housekeeping.reads = self.storage.read_cache
        policy = TokenPolicy(
            tokens.write, tokens.read, self.config.require_read_token, self.config.allow_anonymous_writes, tokens.names
        )
        if not tokens.write and not self.config.allow_anonymous_writes:
            log.warning("no write token configured: every write will be refused (see --write-tokens)")
        # Tokens and capacity are checked inside each RPC (servicers/admission.py: an interceptor
        # costs every call ~7 us), and logging wraps each method (accesslog.py). Not grpc's maximum_concurrent_rpcs:
        # its refusals carry no ErrorInfo, and it cannot keep reads from taking writers' capacity.
        limits = Limits(
            reads=cfg.max_concurrent_reads,
            writes=cfg.max_concurrent_writes,
            watches=cfg.max_watch_streams,
            watches_per_caller=cfg.max_watch_streams_per_caller,
        )
        admission = self.admission = Admission(policy, limits)
        if self.access is not None:
            self.access.caller = lambda token: admission.policy.caller_name(token)  # the policy SIGHUP swapped in
        quiet_departures()
        server = grpc.aio.server(options=server_options(self.config, fit_connections(cfg.max_connections)))
        servicers: list[tuple[ServiceDescriptor, ImageServicer | SourceServicer | JobServicer | MSServicer]] = [
            (IMAGE_SERVICE, ImageServicer(self.storage.images, paging)),
            (SOURCE_SERVICE, SourceServicer(self.storage.sources, paging)),
            (JOB_SERVICE, JobServicer(self.storage.jobs, paging, JobWatcher(self.storage.jobs, self.bus))),
            (MS_SERVICE, MSServicer(self.storage.measurement_sets, paging)),
        ]
        self.servicers = {service.name: servicer for service, servicer in servicers}
        for service, servicer in servicers:
            servicer.admission = admission
            servicer.reads = self.storage.read_cache
            if self.access is not None:
                servicer.recorder = self.access.recorder(service)
            # Not the generated add_*_to_server: these handlers also send pre-encoded replies (servicers/encoded.py).
            add_service(server, service, servicer, self._wrap)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_server_reflection((*SERVICE_NAMES, "grpc.health.v1.Health"), server)
        try:
            self.port = self._bind(server)
            if self.web is not None and not server.add_insecure_port(self.web.target):
                self.port = 0
        except RuntimeError:  # grpc raises where it used to return 0; its own log line says why
            self.port = 0
        if self.port == 0:
            # Close storage before raising: its threads would otherwise keep the process alive.
            self._close_web()
            await self.tailer.stop()
            if self.redis is not None:
                await self.redis.stop()
            await self.storage.close()
            raise BindError(f"cannot serve {self.config.address}: could not bind it (gRPC's log line above says why)")
        await server.start()
        self._server = server
        for name in SERVICE_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.tracing is not None:
            self.tracing.start()
        if self.web is not None:
            self.web.start((*SERVICES, HEALTH_SERVICE), admission, self.access)
        await self.storage_health.start()  # "" SERVING while the database takes writes
        self.housekeeping.start()
        self.leases.start()
        if self.access is not None:
            self.access.start()
        if self.metrics is not None:
            self._start_metrics(self.metrics)
        log.info("serving on %s:%d (database %s)", self.config.host, self.port, self.storage.description)
        return self.port

    def _wrap(self, method: str, behaviour: Behaviour, streams: bool) -> Behaviour:
        """Each method's handler inside its span (tracing.py), inside its log line and metrics
        (accesslog.py), unless its envelope records the call itself (servicers/envelope.py)."""
        records = getattr(behaviour, "records_calls", False)
        if self.tracing is not None:
            behaviour = self.tracing.wrap(method, behaviour, streams)
        if self.access is not None and not records:
            behaviour = self.access.wrap(method, behaviour, streams)
        return behaviour

    def _web_server(self) -> WebServer:
        cfg = self.config
        try:
            import connectrpc  # noqa: F401
            import hypercorn  # noqa: F401
        except ImportError as exc:
            raise StartupError(f"--web-port needs the web extra: pip install 'contimg-grpc[web]' ({exc})") from None
        sock = self.web_socket or bind_web(cfg.web_host or cfg.host, cfg.web_port)
        target, directory = private_address()
        origins = tuple(o.strip() for o in cfg.web_cors_origin.split(",") if o.strip())
        tls = WebTls(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if cfg.tls_cert else None
        # Enough connections to the server for every call it admits at once, and a spare for the
        # ones it refuses (and Health): gateway.Lanes. An unlimited pool (0) counts as four
        # connections' worth.
        per_connection = cfg.max_streams_per_connection
        pools = (cfg.max_watch_streams, cfg.max_concurrent_reads, cfg.max_concurrent_writes)
        admitted = sum(limit or 4 * per_connection for limit in pools)
        connections = -(-admitted // per_connection) + 1
        return WebServer(
            sock, target, directory, origins, cfg.max_message_mb * 1024 * 1024, tls, connections, cfg.web_idle_timeout_s
        )

    def _close_web(self) -> None:
        """Before the server started: the socket and the private directory."""
        if self.web is not None:
            self.web.discard()
            self.web = None

    def _start_metrics(self, metrics: ServerMetrics) -> None:
        sources = self.servicers[SOURCE_SERVICE.name]
        assert isinstance(sources, SourceServicer)
        self.sampler = Sampler(
            metrics,
            self.storage.db,
            self.storage.read_cache,
            self.storage_health,
            lambda: self.admission,
            self.redis.link if self.redis is not None else None,
            lambda: sources.photometry_rows,
        )
        self.sampler.start()

    def reload_tokens(self) -> None:
        """SIGHUP: read the tokens file (and flags) again; a file that cannot be read changes nothing."""
        if self.admission is None:
            return
        try:
            tokens = read_tokens(self.config)
        except (ValueError, OSError) as exc:
            log.error("SIGHUP: tokens not reloaded, those in use stay: %s", exc)
            return
        self.admission.policy = replace(
            self.admission.policy, write_tokens=tokens.write, read_tokens=tokens.read, names=tokens.names
        )
        log.info("SIGHUP: tokens reloaded: %d write, %d read", len(tokens.write), len(tokens.read))

    def _bind(self, server: grpc.aio.Server) -> int:
        cfg = self.config
        if not cfg.tls_cert:
            return server.add_insecure_port(cfg.address)
        with open(cfg.tls_key, "rb") as key, open(cfg.tls_cert, "rb") as cert:
            pair = (key.read(), cert.read())
        client_ca = None
        if cfg.tls_client_ca:
            with open(cfg.tls_client_ca, "rb") as ca:
                client_ca = ca.read()
        credentials = grpc.ssl_server_credentials(
            [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
        return server.add_secure_port(cfg.address, credentials)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first (load balancers drain), then let in-flight RPCs finish, then close storage."""
        if self._server is None:
            return
        await self.storage_health.stop()
        await self.housekeeping.stop()
        await self.leases.stop()
        if self.sampler is not None:
            await self.sampler.stop()
        await self.health.enter_graceful_shutdown()
        self.bus.close()  # watch streams end now (UNAVAILABLE, resumable) instead of holding the grace period
        draining = [self._server.stop(self.config.grace_s if grace is None else grace)]
        if self.web is not None:  # browsers' calls in flight are gRPC calls: they drain the same way
            draining.append(self.web.stop())
        await asyncio.gather(*draining)
        self.web = None
        self._server = None
        await self.tailer.stop()
        if self.redis is not None:
            await self.redis.stop()
        await self.storage.close()
        if self.access is not None:
            await self.access.stop()  # the lines of the last calls
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
            self.metrics_endpoint = None
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.stop)  # sends the last spans: off the loop
            self.tracing = None
        log.info("stopped")

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(config: ServerConfig, web_socket: socket.socket | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully; SIGHUP reloads the tokens."""
    server = ContimgServer(config, web_socket=web_socket)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_tokens)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # a --workers child kept it blocked until now
    # Serving already; the first RecordPhotometry should not wait for the write process to start.
    await server.storage.start_background()
    await stopping.wait()
    log.info("signal received: draining for up to %.1f s", config.grace_s)
    await server.stop()

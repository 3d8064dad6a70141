"""The HTTP endpoint Prometheus scrapes (`--metrics-port`), for one process or for `--workers N`.

One process: its own registry (metrics.py), served from a thread of prometheus_client's.
`--workers N`: `prepare_workers` makes an empty directory and names it in PROMETHEUS_MULTIPROC_DIR
before the fork, so each worker's prometheus_client writes its values to files there; the parent,
which serves no gRPC, serves the sum over the workers' files, and `worker_gone` drops the live
gauges of a worker that has exited. The directory goes when the parent does.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import socketserver
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .domain.errors import StartupError

log = logging.getLogger("contimg.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsBindError(StartupError):
    """The metrics port could not be bound."""


# Scrapes served at once, each on a thread of its own; a connection beyond is closed unanswered.
# Prometheus scrapes one at a time; without a cap, every connection opened (and left idle) to the
# port held a thread: prometheus_client's own server starts one per connection, unbounded.
MAX_SCRAPES = 8
SCRAPE_TIMEOUT_S = 10.0  # a connection that sends nothing for this long is closed


@dataclass
class Endpoint:
    server: Any  # a wsgiref server (_Bounded)
    port: int
    directory: str = ""

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


class _Bounded(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, a thread per connection, at most MAX_SCRAPES at once."""

    daemon_threads = True
    request_queue_size = 64  # wsgiref's 5 left connections waiting on SYN retries (seconds)

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        self.slots = threading.BoundedSemaphore(MAX_SCRAPES)
        self.accepted = self.refused = 0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        self.accepted += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that timed out or went away: not worth a traceback on stderr."""
        log.debug("metrics connection from %s ended", client_address, exc_info=True)


class _Bounded6(_Bounded):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    timeout = SCRAPE_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape on stderr is noise beside the RPC log."""


def serve(host: str, port: int, registry: Any, directory: str = "") -> Endpoint:
    """Serve `registry` at http://host:port/metrics from a daemon thread; one process's registry
    gets the process_* series too (memory, CPU, open files)."""
    from prometheus_client import ProcessCollector, make_wsgi_app

    if not directory:
        ProcessCollector(registry=registry)
    server_class = _Bounded6 if ":" in host else _Bounded
    try:
        server = make_server(host.strip("[]"), port, make_wsgi_app(registry), server_class, _Quiet)
    except OSError as exc:
        raise MetricsBindError(f"cannot serve metrics on {host}:{port}: {exc}") from None
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    bound = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return Endpoint(server, bound, directory)


def prepare_workers() -> str:
    """Before forking workers: the directory their values go to (named in the environment they inherit)."""
    if "prometheus_client" in sys.modules:  # its value class is chosen at import: too late for files
        raise RuntimeError("prometheus_client was imported before the metrics directory was set")
    directory = tempfile.mkdtemp(prefix="contimg-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    return directory


def serve_workers(host: str, port: int, directory: str) -> Endpoint:
    """In the parent, after the fork: the workers' values, added up."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return serve(host, port, registry, directory)


def worker_gone(pid: int) -> None:
    """A worker exited: its live gauges no longer count (its counters do)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

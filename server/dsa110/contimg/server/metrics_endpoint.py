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
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from .domain.errors import StartupError

log = logging.getLogger("contimg.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsBindError(StartupError):
    """The metrics port could not be bound."""


@dataclass
class Endpoint:
    server: Any  # wsgiref server of prometheus_client's
    port: int
    directory: str = ""

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def serve(host: str, port: int, registry: Any, directory: str = "") -> Endpoint:
    """Serve `registry` at http://host:port/metrics from a daemon thread; one process's registry
    gets the process_* series too (memory, CPU, open files)."""
    from prometheus_client import ProcessCollector, start_http_server

    if not directory:
        ProcessCollector(registry=registry)

    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsBindError(f"cannot serve metrics on {host}:{port}: {exc}") from None
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

"""--workers N: fork N server processes on one port before any gRPC object exists."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from .config import ServerConfig


def run_workers(config: ServerConfig, serve_one: Callable[[], None]) -> None:
    """Fork first (gRPC must not exist in the parent), let the kernel spread connections (SO_REUSEPORT)."""
    if config.port == 0:
        raise SystemExit("--workers needs a fixed --port")
    children: list[int] = []
    for _ in range(config.workers):
        pid = os.fork()
        if pid == 0:
            try:
                serve_one()
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or (code >> 8)
    sys.exit(status)

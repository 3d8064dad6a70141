"""Drive one unary (or server-streaming) gRPC method with h2load against a loopback server."""

from __future__ import annotations

import re
import shutil
import statistics
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    succeeded: int
    failed: int
    data_bytes_per_req: float


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def run(
    port: int,
    method: str,
    request: bytes,
    *,
    seconds: float = 0.0,
    requests: int = 0,
    connections: int = 16,
    streams: int = 4,
    threads: int = 1,
    headers: tuple[str, ...] = ("content-type: application/grpc", "te: trailers"),
    body: bytes | None = None,
    h1: bool = False,
) -> LoadResult:
    """A timed run (`seconds`) or a counted one (`requests`). Only counted runs account bytes
    exactly (h2load's -D mode counts requests and DATA bytes over different windows), so the
    bytes-per-request check that tells gRPC errors (no DATA) from successes uses counted runs.
    `headers`, `body` (default: `request` as one gRPC frame) and `h1` (HTTP/1.1) serve the browser
    port's protocols (bench/web_load.py)."""
    h2load = shutil.which("h2load")
    if h2load is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    with tempfile.TemporaryDirectory(prefix="contimg-h2load-") as tmp:
        payload = Path(tmp) / "request.body"
        payload.write_bytes(grpc_frame(request) if body is None else body)
        log = Path(tmp) / "requests.log"
        out = subprocess.run(
            [
                h2load,
                "-c",
                str(connections),
                "-m",
                str(streams),
                "-t",
                str(threads),
                *(["-n", str(requests)] if requests else ["-D", f"{seconds:g}"]),
                *(arg for header in headers for arg in ("-H", header)),
                *(["--h1"] if h1 else []),
                "-d",
                str(payload),
                f"--log-file={log}",
                f"http://127.0.0.1:{port}{method}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        latencies = sorted(int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines() if line)
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out)
    succeeded, failed = int(m.group(1)), int(m.group(2))  # type: ignore[union-attr]
    found = re.search(r"\((\d+)\) data", out)
    data = int(found.group(1)) if found else 0
    per_req = data / max(succeeded, 1)
    p50 = statistics.median(latencies) if latencies else 0.0
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return LoadResult(rps, p50, p99, succeeded, failed, per_req)

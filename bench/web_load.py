"""GetImage through the browser port (`--web-port`) against native gRPC, one server, interleaved.

    python bench/web_load.py --data-dir /tmp/b100k --rounds 3

Every protocol a browser's client speaks (gRPC-Web, Connect binary, Connect JSON; HTTP/1.1, as
browsers send them to a plaintext port, and gRPC-Web over h2c as a proxy would) and native gRPC
(HTTP/2) take turns on one `contimg-server serve --web-port` (its default flags otherwise), each
round in a rotated order. Reported: calls/s, p50/p99 and the server's CPU per call (the gateway
runs in the server's process, so its cost is in that number), medians of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path

import h2load
import run
from dsa110.contimg.v1 import images_pb2
from google.protobuf import json_format
from procs import cpu_seconds


@dataclass(frozen=True)
class Mode:
    name: str
    web: bool  # the browser port, else the gRPC port
    headers: tuple[str, ...]
    framed: bool  # the body is one gRPC(-Web) frame, else the bare message
    json: bool = False
    h1: bool = True
    min_bytes: int = 300  # a reply shorter than this is an error, not an image (~400 B)


MODES = (
    Mode("native gRPC (HTTP/2)", False, ("content-type: application/grpc", "te: trailers"), True, h1=False),
    Mode("gRPC-Web (HTTP/1.1)", True, ("content-type: application/grpc-web+proto", "x-grpc-web: 1"), True),
    Mode("gRPC-Web (h2c)", True, ("content-type: application/grpc-web+proto", "x-grpc-web: 1"), True, h1=False),
    Mode("Connect proto (HTTP/1.1)", True, ("content-type: application/proto", "connect-protocol-version: 1"), False),
    Mode(
        "Connect JSON (HTTP/1.1)",
        True,
        ("content-type: application/json", "connect-protocol-version: 1"),
        False,
        json=True,
    ),
)


def body(mode: Mode, request: bytes) -> bytes:
    if mode.json:
        message = images_pb2.GetImageRequest.FromString(request)
        return json_format.MessageToJson(message, indent=None).encode()
    return h2load.grpc_frame(request) if mode.framed else request


def measure(mode: Mode, port: int, pid: int, request: bytes, calls: int) -> dict[str, float]:
    before = cpu_seconds(pid)
    result = h2load.run(
        port,
        "/dsa110.contimg.v1.ImageService/GetImage",
        request,
        requests=calls,
        connections=16,
        streams=1 if mode.h1 else 4,
        headers=mode.headers,
        body=body(mode, request),
        h1=mode.h1,
    )
    cpu = cpu_seconds(pid) - before
    per_reply = result.data_bytes_per_req
    if mode.h1 and result.succeeded == 0:
        # h2load's HTTP/1.1 parser takes no status from hypercorn's "HTTP/1.1 200 " (no reason
        # phrase) and calls every reply failed; its byte count is right, so judge by the bytes.
        per_reply /= calls
    elif result.failed:
        raise RuntimeError(f"{mode.name}: {result.failed} of {calls} failed")
    if per_reply < mode.min_bytes:
        raise RuntimeError(f"{mode.name}: {per_reply:.0f} B per reply: errors, not images")
    return {"rps": result.rps, "p50": result.p50_ms, "p99": result.p99_ms, "cpu_us": cpu / calls * 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True, help="a database seeded by bench/run.py")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0, help="about this long per protocol per round")
    args = p.parse_args()
    target = run.pick_targets(args.data_dir / "contimg.sqlite3")
    case = next(c for c in run.unary_cases(target) if c.name == "GetImage")
    port, web_port = run.free_port(), run.free_port()
    server = run.start(run.serve_cmd(args.data_dir, port, "--web-port", str(web_port)), port)
    try:
        run._wait_port(web_port)
        ports = {mode: web_port if mode.web else port for mode in MODES}
        calls = {
            mode: max(200, int(measure(mode, ports[mode], server.pid, case.request, 200)["rps"] * args.seconds))
            for mode in MODES
        }
        results: dict[Mode, list[dict[str, float]]] = {mode: [] for mode in MODES}
        for r in range(args.rounds):
            order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
            for mode in order:
                m = measure(mode, ports[mode], server.pid, case.request, calls[mode])
                results[mode].append(m)
                print(f"round {r} {mode.name}: {m['rps']:.0f} calls/s, {m['cpu_us']:.0f} us/call", flush=True)
    finally:
        server.terminate()
        server.wait()
    print(f"\nGetImage, 16 connections, {args.rounds} rounds, medians; {run.machine()}")
    print("| protocol | calls/s | p50 ms | p99 ms | server CPU us/call |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        med = {k: statistics.median(m[k] for m in results[mode]) for k in ("rps", "p50", "p99", "cpu_us")}
        print(f"| {mode.name} | {med['rps']:,.0f} | {med['p50']:.1f} | {med['p99']:.1f} | {med['cpu_us']:.0f} |")


if __name__ == "__main__":
    main()

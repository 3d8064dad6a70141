"""The reference server: answers the benchmarked RPCs with prebuilt response bytes and no storage.

Its throughput is the limit of Python gRPC on this machine; every result is reported as a ratio to it.

    python bench/reference_server.py --port P --responses DIR

DIR holds `<Service>.<Method>.<request key>.bin` (unary) or `...bin.<N>` (stream messages), where the
request key is `request_key(request bytes)`: two cases of one method get their own responses.

WatchJob, when DIR also holds `watch.*.bin` (bench/run.py records them from the real server): every
WatchJob stream gets the prebuilt snapshot, then each prebuilt event once a StartJob or SucceedJob
releases it (CreateJob starts over), all watchers woken by one asyncio.Event: the least a server can
do to fan an event out to its watchers.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc


def request_key(request: bytes) -> str:
    return hashlib.sha1(request).hexdigest()[:12]


def load(directory: Path) -> dict[tuple[str, str], list[bytes]]:
    """(method path, request key) -> response messages, in stream order."""
    out: dict[tuple[str, str], list[bytes]] = {}
    paths = [p for p in directory.glob("*.bin*") if not p.name.startswith("watch.")]
    for path in sorted(paths, key=lambda p: (p.name.split(".bin")[0], len(p.name), p.name)):
        service, method, key = path.name.split(".bin")[0].rsplit(".", 2)
        out.setdefault((f"/{service}/{method}", key), []).append(path.read_bytes())
    return out


_JOBS = "/dsa110.contimg.v1.JobService/"


class Watch:
    """A job's events for WatchJob: released one per transition call, read by every watcher."""

    def __init__(self, directory: Path):
        def read(name: str) -> bytes:
            return (directory / f"watch.{name}.bin").read_bytes()

        self.snapshot = read("snapshot")
        self.events = [read(f"event.{i}") for i in range(2)]
        self.replies = {m: read(m) for m in ("CreateJob", "StartJob", "SucceedJob")}
        self.released: list[bytes] = []
        self.changed = asyncio.Event()

    def handler(self, method: str) -> grpc.RpcMethodHandler | None:
        name = method.removeprefix(_JOBS)
        if name == "WatchJob":
            return grpc.unary_stream_rpc_method_handler(self.watch)
        if name not in self.replies:
            return None
        reply = self.replies[name]

        async def unary(request: bytes, _context: object) -> bytes:
            if name == "CreateJob":
                self.released = []
            elif len(self.released) < len(self.events):
                self.released.append(self.events[len(self.released)])
                self.changed.set()
                self.changed = asyncio.Event()
            return reply

        return grpc.unary_unary_rpc_method_handler(unary)

    async def watch(self, request: bytes, _context: object) -> AsyncIterator[bytes]:
        yield self.snapshot
        sent = 0
        while sent < len(self.events):
            while sent >= len(self.released):
                await self.changed.wait()
            yield self.released[sent]
            sent += 1


class Prebuilt(grpc.GenericRpcHandler):
    def __init__(self, responses: dict[tuple[str, str], list[bytes]], streaming: set[str], watch: Watch | None):
        self.responses = responses
        self.methods = {method for method, _ in responses}
        self.streaming = streaming
        self.watch = watch

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:  # type: ignore[override]
        method = details.method
        if self.watch is not None and method.startswith(_JOBS):
            return self.watch.handler(method)
        if method not in self.methods:
            return None
        responses = self.responses
        if method in self.streaming:

            async def stream(request: bytes, _context: object) -> AsyncIterator[bytes]:
                for message in responses[(method, request_key(request))]:
                    yield message

            return grpc.unary_stream_rpc_method_handler(stream)

        async def unary(request: bytes, _context: object) -> bytes:
            return responses[(method, request_key(request))][0]

        return grpc.unary_unary_rpc_method_handler(unary)


async def main(port: int, directory: Path, streaming: set[str]) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    watch = Watch(directory) if (directory / "watch.snapshot.bin").exists() else None
    server.add_generic_rpc_handlers((Prebuilt(load(directory), streaming, watch),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"reference server on 127.0.0.1:{bound}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--responses", type=Path, required=True)
    parser.add_argument("--streaming", action="append", default=[], help="method paths that stream")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    if args.no_uvloop:
        asyncio.run(main(args.port, args.responses, set(args.streaming)))
    else:
        import uvloop

        uvloop.run(main(args.port, args.responses, set(args.streaming)))

"""The reference server: answers the benchmarked RPCs with prebuilt response bytes and no storage.

Its throughput is the limit of Python gRPC on this machine; every result is reported as a ratio to it.

    python bench/reference_server.py --port P --responses DIR   (DIR/<Service>.<Method>.bin[.N])
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc


def load(directory: Path) -> dict[str, list[bytes]]:
    """`Service.Method.bin` (unary) or `Service.Method.bin.0..N` (stream) -> response messages."""
    out: dict[str, list[bytes]] = {}
    for path in sorted(directory.glob("*.bin*")):
        service, method = path.name.split(".bin")[0].rsplit(".", 1)
        out.setdefault(f"/{service}/{method}", []).append(path.read_bytes())
    return out


class Prebuilt(grpc.GenericRpcHandler):
    def __init__(self, responses: dict[str, list[bytes]], streaming: set[str]):
        self.responses = responses
        self.streaming = streaming

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:  # type: ignore[override]
        messages = self.responses.get(details.method)
        if messages is None:
            return None
        if details.method in self.streaming:

            async def stream(_request: bytes, _context: object) -> AsyncIterator[bytes]:
                for message in messages:
                    yield message

            return grpc.unary_stream_rpc_method_handler(stream)
        reply = messages[0]

        async def unary(_request: bytes, _context: object) -> bytes:
            return reply

        return grpc.unary_unary_rpc_method_handler(unary)


async def main(port: int, directory: Path, streaming: set[str]) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((Prebuilt(load(directory), streaming),))
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

"""An OTLP/gRPC trace receiver that counts and discards spans: the collector of `--otlp-endpoint` runs.

    python bench/otlp_sink.py --port 4317

Prints the spans received at exit (SIGINT/SIGTERM). A real collector costs the server the same: the
export is one batched call a second from the SDK's thread.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def main(port: int) -> None:
    server = grpc.aio.server()
    sink = Sink()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)
    print(f"otlp_sink: {sink.spans} spans received", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=4317)
    asyncio.run(main(p.parse_args().port))

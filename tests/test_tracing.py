"""OpenTelemetry tracing (`--otlp-endpoint`: tracing.py) from a real server process to a real OTLP/gRPC
receiver (the collector's own service, from opentelemetry-proto): a span per RPC continuing the
caller's W3C trace context, the storage work as its child spans, the status code on each.

Every wait polls a condition against a deadline; none is a timing assertion."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from dsa110.contimg.v1 import images_pb2, jobs_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from conftest import PostgresDatabases, free_port, make_stubs
from helpers import make_image, make_ms
from helpers_stress import ServerProcess, exit_status

ENGINES = ("sqlite", "postgres")
DEADLINE_S = 30.0
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []  # (service.name, span)

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
            )
            for scope in resource_spans.scope_spans:
                self.spans.extend((service, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    found = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(found, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield found, port
    await server.stop(0)


def attributes(span: trace_pb2.Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind) if kind else None
    return out


async def test_a_span_per_rpc_continues_the_callers_trace_with_storage_children(
    tmp_path: Path, engine: str, postgres_databases: PostgresDatabases, receiver: tuple[Receiver, int]
) -> None:
    found, port = receiver
    database = await postgres_databases.new() if engine == "postgres" else None
    server = ServerProcess(tmp_path, database=database, args=["--otlp-endpoint", f"http://127.0.0.1:{port}"])
    await server.start()
    try:
        traced = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = make_stubs(channel)
            image = await make_image(stubs, (await make_ms(stubs)).name)
            await stubs.images.GetImage(images_pb2.GetImageRequest(name=image.name), metadata=traced)
            with pytest.raises(grpc.aio.AioRpcError):
                await stubs.images.GetImage(images_pb2.GetImageRequest(name="images/999999999"), metadata=traced)
            job = jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)
            await stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=job), metadata=traced)
    finally:
        # In a thread: the receiver runs on this loop, and the server sends its last spans as it stops.
        assert await asyncio.to_thread(server.terminate) == 0, server.log_tail()

    deadline = time.monotonic() + DEADLINE_S
    while len([s for _, s in found.spans if s.kind == trace_pb2.Span.SPAN_KIND_SERVER]) < 5:
        assert time.monotonic() < deadline, [s.name for _, s in found.spans]
        await asyncio.sleep(0.05)
    assert {service for service, _ in found.spans} == {"contimg-server"}
    spans = [s for _, s in found.spans]
    rpcs = [s for s in spans if s.kind == trace_pb2.Span.SPAN_KIND_SERVER]
    ours = [s for s in rpcs if s.trace_id.hex() == TRACE_ID]
    # The three calls that sent a traceparent continue that trace, as children of the caller's span.
    assert [s.name for s in ours] == [
        "dsa110.contimg.v1.ImageService/GetImage",
        "dsa110.contimg.v1.ImageService/GetImage",
        "dsa110.contimg.v1.JobService/CreateJob",
    ]
    assert all(s.parent_span_id.hex() == PARENT_ID for s in ours)
    assert [attributes(s)["rpc.grpc.status_code"] for s in ours] == [0, 5, 0]  # OK, NOT_FOUND, OK
    assert all(attributes(s)["rpc.system"] == "grpc" for s in ours)
    # A caller's NOT_FOUND is not the server's error.
    assert all(s.status.code != trace_pb2.Status.STATUS_CODE_ERROR for s in ours)
    # The others (make_ms, make_image) began traces of their own.
    assert len({s.trace_id for s in rpcs if s.trace_id.hex() != TRACE_ID}) == 2

    system = "postgresql" if engine == "postgres" else "sqlite"
    for rpc, operation in ((ours[0], "read"), (ours[2], "write")):
        children = [s for s in spans if s.parent_span_id == rpc.span_id]
        assert children, f"{rpc.name} has no storage span"
        assert all(s.trace_id == rpc.trace_id and s.kind == trace_pb2.Span.SPAN_KIND_CLIENT for s in children)
        assert any(attributes(s)["db.operation"].startswith(operation) for s in children), [  # type: ignore[union-attr]
            attributes(s) for s in children
        ]
        assert {attributes(s)["db.system"] for s in children} == {system}
        assert all(rpc.start_time_unix_nano <= s.start_time_unix_nano <= s.end_time_unix_nano for s in children)
        assert all(s.end_time_unix_nano <= rpc.end_time_unix_nano for s in children)


async def test_without_the_packages_the_flag_fails_the_start_clearly(tmp_path: Path) -> None:
    """The packages are an extra: hide them and the server refuses to start, naming the extra."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "opentelemetry").mkdir()
    (hide / "opentelemetry" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    server = ServerProcess(tmp_path, port=free_port(), args=["--otlp-endpoint", "http://127.0.0.1:1"])
    env = {**os.environ, "PYTHONPATH": str(hide)}
    assert await exit_status(server.command(server.port), server.log_path, env, DEADLINE_S) != 0
    assert "pip install 'contimg-grpc[tracing]'" in server.log_path.read_text()


async def test_a_sample_ratio_of_zero_records_only_the_traces_callers_sampled(
    tmp_path: Path, receiver: tuple[Receiver, int]
) -> None:
    found, port = receiver
    args = ["--otlp-endpoint", f"http://127.0.0.1:{port}", "--otlp-sample-ratio", "0"]
    server = ServerProcess(tmp_path, port=free_port(), args=args)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            images = make_stubs(channel).images
            for traceparent in (None, f"00-{TRACE_ID}-{PARENT_ID}-01", None, f"00-{'1' * 32}-{PARENT_ID}-00"):
                metadata = (("traceparent", traceparent),) if traceparent else None
                with pytest.raises(grpc.aio.AioRpcError):
                    await images.GetImage(images_pb2.GetImageRequest(name="images/999999999"), metadata=metadata)
    finally:
        assert await asyncio.to_thread(server.terminate) == 0, server.log_tail()  # sends what was sampled
    # Only the call whose caller sampled its trace (flags 01) was recorded; not the unsampled one (00).
    assert {s.trace_id.hex() for _, s in found.spans} == {TRACE_ID}  # its storage span included
    assert [s.name for _, s in found.spans if s.kind == trace_pb2.Span.SPAN_KIND_SERVER] == [
        "dsa110.contimg.v1.ImageService/GetImage"
    ]

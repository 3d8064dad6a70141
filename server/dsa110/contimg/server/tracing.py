"""OpenTelemetry tracing (`--otlp-endpoint`): a span per RPC, the storage work as its child spans,
exported over OTLP/gRPC in batches from a thread of the SDK's.

The RPC's span continues the caller's trace when its metadata carries W3C trace context
(`traceparent`, `tracestate`: read by OpenTelemetry's own propagator, nothing hand-parsed), and
starts one otherwise. Storage spans (`storage_span`) are made by the engines' database classes around
each read and each write (a write's span covers its wait in the writer's queue and its commit);
a read answered from kept replies does no storage work and has none.

Off (the default): no wrapper is registered, the OpenTelemetry packages are never imported, and a
storage call pays one test of a module global (`storage_span` returns a shared null context).
Installed with the `tracing` extra (pip install 'contimg-grpc[tracing]'); scripts/setup.sh has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

import grpc

from .domain.errors import StartupError
from .rpc_types import Ctx, call_metadata, status_name

log = logging.getLogger("contimg.tracing")
Handler = Callable[..., Awaitable[Any]]

SERVICE_NAME = "contimg-server"
EXPORT_DELAY_MS = 1000  # spans leave at most this long after they end (the SDK's default is 5 s)
# Codes that are the server's failure, not the caller's mistake: the span's status is ERROR.
SERVER_ERRORS = frozenset({"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED", "UNIMPLEMENTED"})

_NO_SPAN: AbstractContextManager[Any] = contextlib.nullcontext()
_tracer: Any = None  # the running server's, while --otlp-endpoint is set
_system = ""  # "sqlite" or "postgresql"
_CLIENT: Any = None  # opentelemetry.trace.SpanKind's, once imported
_SERVER: Any = None
_current_span: Any = None  # opentelemetry.trace.get_current_span, once imported


def storage_span(operation: str, statement: str = "") -> AbstractContextManager[Any]:
    """A child span for one storage call of an RPC being recorded (else a null context: tracing
    off, or this call not sampled)."""
    if _tracer is None or not _current_span().is_recording():
        return _NO_SPAN
    attributes = {"db.system": _system, "db.operation": operation}
    if statement:
        attributes["db.statement"] = statement
    span: AbstractContextManager[Any] = _tracer.start_as_current_span(
        f"{_system} {operation}", kind=_CLIENT, attributes=attributes
    )
    return span


class Tracing:
    """The tracer provider of one server process, and the wrapper that gives each RPC its span."""

    def __init__(self, endpoint: str, engine: str, sample_ratio: float = 1.0):
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
            from opentelemetry.trace import SpanKind, get_current_span
        except ImportError as exc:
            raise StartupError(
                f"--otlp-endpoint needs the OpenTelemetry packages: pip install 'contimg-grpc[tracing]' ({exc})"
            ) from None
        global _CLIENT, _SERVER, _current_span
        _CLIENT, _SERVER, _current_span = SpanKind.CLIENT, SpanKind.SERVER, get_current_span
        self.sample_ratio = sample_ratio
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": SERVICE_NAME}),
            # A caller's decision (its traceparent's sampled flag) is followed. Calls without one are
            # sampled at the ratio by `wrap`, before any OpenTelemetry object is made: at 1 %, letting
            # the SDK's sampler decide still cost GetImage 24 % (its unsampled spans, the propagator).
            sampler=ParentBased(ALWAYS_ON),
        )
        insecure = not endpoint.startswith("https://")
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=insecure)
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=EXPORT_DELAY_MS))
        self.tracer = self.provider.get_tracer("dsa110.contimg.server")
        self.engine = engine
        log.info("tracing to %s (OTLP/gRPC), %g of new traces sampled", endpoint, sample_ratio)

    def start(self) -> None:
        global _tracer, _system
        _tracer, _system = self.tracer, self.engine

    def stop(self) -> None:
        """Stop making spans and send those not yet sent (the SDK's shutdown waits for its export)."""
        global _tracer
        if _tracer is self.tracer:
            _tracer = None
        self.provider.shutdown()

    def wrap(self, method: str, behaviour: Handler, streams: bool) -> Handler:
        """`behaviour` (request, context) run inside a SERVER span named after `method`."""
        from opentelemetry.propagate import extract
        from opentelemetry.trace import Status, StatusCode

        service, _, name = method.lstrip("/").partition("/")
        span_name = method.lstrip("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        tracer = self.tracer
        ratio = self.sample_ratio

        async def traced(request: Any, context: Ctx) -> Any:
            metadata = call_metadata(context) or ()
            if not any(key == "traceparent" for key, _ in metadata) and (ratio <= 0.0 or random.random() >= ratio):
                return await behaviour(request, context)  # not sampled: no span, no storage spans
            carrier = {k: v for k, v in metadata if isinstance(v, str)}
            with tracer.start_as_current_span(
                span_name,
                context=extract(carrier),
                kind=_SERVER,
                attributes=attributes,
                record_exception=False,  # a handler's exception is already a status code
                set_status_on_exception=False,
            ) as span:
                code = "UNKNOWN"
                try:
                    result = await behaviour(request, context)
                    code = status_name(context.code())
                    return result
                except grpc.aio.AbortError:
                    code = status_name(context.code())
                    raise
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                finally:
                    span.set_attribute("rpc.grpc.status_code", _NUMBERS.get(code, 2))
                    if code in SERVER_ERRORS:
                        span.set_status(Status(StatusCode.ERROR, code))

        return traced


_NUMBERS = {s.name: s.value[0] for s in grpc.StatusCode}

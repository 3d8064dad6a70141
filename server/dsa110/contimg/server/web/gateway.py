"""One ASGI application (connect-python) serving every method of the given services to browsers,
over gRPC-Web and the Connect protocol, by forwarding each call to the native gRPC server.

The endpoints come from the services' descriptors (the same protos as the gRPC server), so a method
added to a proto is reachable from a browser with no code here. connect-python owns the wire
formats (gRPC-Web framing and trailers, Connect's envelopes, JSON, timeouts, compression); this
module only moves messages, metadata, deadlines and errors between it and a gRPC channel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo
from connectrpc.request import Headers, RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import status_pb2

from ..servicers.admission import FORWARDED_FOR  # the browser's address, for the server's log line

# Request headers that mean something to the gRPC server (tokens, request ids, trace context).
FORWARDED_HEADERS = ("authorization", "x-request-id", "traceparent", "tracestate")
STATUS_DETAILS = "grpc-status-details-bin"
RESERVED_PREFIXES = ("grpc-", "content-", "connect-", ":")

_CODES = {status: Code[status.name] for status in grpc.StatusCode if status.name not in ("OK", "CANCELLED")}
_CODES[grpc.StatusCode.CANCELLED] = Code.CANCELED
_IDEMPOTENCY = {
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS: IdempotencyLevel.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT: IdempotencyLevel.IDEMPOTENT,
}

Ctx = RequestContext[Any, Any]
Unary = Callable[[Message, Ctx], Awaitable[Message]]
Streaming = Callable[[Message, Ctx], AsyncIterator[Message]]


class Gateway(ConnectASGIApplication[grpc.aio.Channel]):
    """Every method of `services`, forwarded over `channel` (to this process's gRPC server)."""

    def __init__(self, channel: grpc.aio.Channel, services: Iterable[ServiceDescriptor], max_bytes: int) -> None:
        methods = [method for service in services for method in service.methods]
        super().__init__(
            service=channel,
            endpoints=lambda ch: {f"/{m.containing_service.full_name}/{m.name}": _endpoint(ch, m) for m in methods},
            read_max_bytes=max_bytes,
        )

    @property
    def path(self) -> str:
        return "/"


def _endpoint(channel: grpc.aio.Channel, method: MethodDescriptor) -> Any:  # connect-python exports no union
    if method.client_streaming:  # browsers cannot stream requests (fetch has no duplex)
        raise ValueError(f"{method.full_name}: client streaming cannot be served to browsers")
    request = GetMessageClass(method.input_type)
    reply = GetMessageClass(method.output_type)
    info: MethodInfo[Any, Any] = MethodInfo(
        name=method.name,
        service_name=method.containing_service.full_name,
        input=request,
        output=reply,
        idempotency_level=_IDEMPOTENCY.get(method.GetOptions().idempotency_level, IdempotencyLevel.UNKNOWN),
    )
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.server_streaming:
        return Endpoint.server_stream(
            method=info,
            function=_streaming(channel.unary_stream(path, request.SerializeToString, reply.FromString)),
        )
    return Endpoint.unary(
        method=info, function=_unary(channel.unary_unary(path, request.SerializeToString, reply.FromString))
    )


def _unary(stub: grpc.aio.UnaryUnaryMultiCallable[Message, Message]) -> Unary:
    async def forward(request: Message, ctx: Ctx) -> Message:
        call = stub(request, metadata=_metadata(ctx), timeout=_timeout(ctx))
        try:
            reply: Message = await call
            _copy(await call.initial_metadata(), ctx.response_headers())
        except grpc.aio.AioRpcError as exc:
            raise _connect_error(exc) from None
        return reply

    return forward


def _streaming(stub: grpc.aio.UnaryStreamMultiCallable[Message, Message]) -> Streaming:
    async def forward(request: Message, ctx: Ctx) -> AsyncIterator[Message]:
        call = stub(request, metadata=_metadata(ctx), timeout=_timeout(ctx))
        try:
            # Sent with the first message (e.g. `contimg-watch: open`: the watch is registered)
            _copy(await call.initial_metadata(), ctx.response_headers())
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise _connect_error(exc) from None
        finally:
            call.cancel()  # the browser went away (or the stream ended): the server's watcher goes too

    return forward


def _copy(metadata: grpc.aio.Metadata | None, headers: Headers) -> None:
    """The server's own response metadata, as HTTP headers (not gRPC's, not binary values)."""
    for key, value in metadata or ():
        if isinstance(value, str) and not key.startswith(RESERVED_PREFIXES):
            headers[key] = value


def _metadata(ctx: Ctx) -> tuple[tuple[str, str], ...]:
    headers = ctx.request_headers()
    pairs = [(name, value) for name in FORWARDED_HEADERS if (value := headers.get(name)) is not None]
    client = ctx.client_address()
    if client:
        pairs.append((FORWARDED_FOR, client))
    return tuple(pairs)


def _timeout(ctx: Ctx) -> float | None:
    left = ctx.timeout_ms()
    return None if left is None else max(left, 0.0) / 1000.0


def _connect_error(exc: grpc.aio.AioRpcError) -> ConnectError:
    """The server's status, message and rich details (BadRequest, ErrorInfo, ...), unchanged."""
    code = _CODES.get(exc.code(), Code.UNKNOWN)
    return ConnectError(code, exc.details() or "", _details(exc.trailing_metadata()))


def _details(trailers: grpc.aio.Metadata | None) -> list[Any]:
    for key, value in trailers or ():
        if key == STATUS_DETAILS and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            return list(status.details)
    return []

"""One ASGI application (connect-python) serving every method of the given services to browsers,
over gRPC-Web and the Connect protocol, by forwarding each call to the native gRPC server.

The endpoints come from the services' descriptors (the same protos as the gRPC server), so a method
added to a proto is reachable from a browser with no code here. connect-python owns the wire
formats (gRPC-Web framing and trailers, Connect's envelopes, JSON, timeouts, compression); this
module only moves messages, metadata, deadlines and errors between it and a gRPC channel.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo
from connectrpc.request import Headers, RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import descriptor_pb2, json_format
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import code_pb2, status_pb2

from ..servicers.admission import FORWARDED_FOR  # the browser's address, for the server's log line
from ..servicers.status import rich_status
from .compression import BoundedGzip

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


class Lanes:
    """The gateway's connections to the server; each call goes on the one with the fewest open.

    One HTTP/2 connection carries at most --max-streams-per-connection calls, and the server admits
    more than that at once (watches, reads and writes have their own limits): on one connection, a
    browser's call past it would wait for a slot, forever without a deadline, rather than reach
    the server and be answered or refused."""

    def __init__(self, channels: Sequence[grpc.aio.Channel]) -> None:
        self.channels = tuple(channels)
        self.open = [0] * len(self.channels)

    def take(self) -> int:
        lane = min(range(len(self.open)), key=self.open.__getitem__)
        self.open[lane] += 1
        return lane

    def give(self, lane: int) -> None:
        self.open[lane] -= 1


class Gateway(ConnectASGIApplication[Lanes]):
    """Every method of `services`, forwarded over `lanes` (to this process's gRPC server)."""

    def __init__(self, lanes: Lanes, services: Iterable[ServiceDescriptor], max_bytes: int) -> None:
        methods = [method for service in services for method in service.methods]
        super().__init__(
            service=lanes,
            endpoints=lambda ls: {f"/{m.containing_service.full_name}/{m.name}": _endpoint(ls, m) for m in methods},
            read_max_bytes=max_bytes,
            compressions=(BoundedGzip(max_bytes),),
        )

    @property
    def path(self) -> str:
        return "/"

    async def _handle_error(self, exc: Exception, ctx: RequestContext[Any, Any] | None, send: Any) -> None:
        """connect-python answers a Connect unary request whose body does not decode (curl with a
        typo, say) with `unknown` and HTTP 500; the native server answers INVALID_ARGUMENT with a
        BadRequest, and so does this. (connect-python 0.9's hook for errors before the call runs:
        tests/test_web_gateway.py fails if a release stops calling it.)"""
        if isinstance(exc, UNDECODABLE) and ctx is not None:
            exc = undecodable(exc, ctx.method().input)
        elif isinstance(exc, UnicodeDecodeError):  # before the call has a context: its headers
            exc = ConnectError(Code.INVALID_ARGUMENT, "a request header is not valid UTF-8")
        await super()._handle_error(exc, ctx, send)


def _endpoint(lanes: Lanes, method: MethodDescriptor) -> Any:  # connect-python exports no union
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
    encode, decode = request.SerializeToString, reply.FromString
    if method.server_streaming:
        streams = [channel.unary_stream(path, encode, decode) for channel in lanes.channels]
        return Endpoint.server_stream(method=info, function=_streaming(lanes, streams))
    unaries = [channel.unary_unary(path, encode, decode) for channel in lanes.channels]
    return Endpoint.unary(method=info, function=_unary(lanes, unaries))


def _unary(lanes: Lanes, stubs: Sequence[grpc.aio.UnaryUnaryMultiCallable[Message, Message]]) -> Unary:
    async def forward(request: Message, ctx: Ctx) -> Message:
        lane = lanes.take()
        try:
            call = stubs[lane](request, metadata=_metadata(ctx), timeout=_timeout(ctx))
            reply: Message = await call
            _copy(await call.initial_metadata(), ctx.response_headers())
        except grpc.aio.AioRpcError as exc:
            raise _connect_error(exc) from None
        finally:
            lanes.give(lane)
        return reply

    return forward


def _streaming(lanes: Lanes, stubs: Sequence[grpc.aio.UnaryStreamMultiCallable[Message, Message]]) -> Streaming:
    async def forward(request: Message, ctx: Ctx) -> AsyncIterator[Message]:
        lane, call = lanes.take(), None
        try:
            call = stubs[lane](request, metadata=_metadata(ctx), timeout=_timeout(ctx))
            # Sent with the first message (e.g. `contimg-watch: open`: the watch is registered)
            _copy(await call.initial_metadata(), ctx.response_headers())
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise _connect_error(exc) from None
        finally:
            if call is not None:
                call.cancel()  # the browser went away (or the stream ended): the server's watcher goes too
            lanes.give(lane)

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


# What the JSON and binary codecs raise for a body that is not a message of the method's type.
UNDECODABLE = (json_format.ParseError, DecodeError, UnicodeDecodeError)
_JSON_FIELD = re.compile(r"^Failed to parse (\w+) field")


def undecodable(exc: Exception, request_type: type[Message]) -> ConnectError:
    """INVALID_ARGUMENT naming the request's top-level field the parser names, else `request`."""
    field = "request"
    if (named := _JSON_FIELD.match(str(exc))) is not None:
        fields = request_type.DESCRIPTOR.fields_by_name
        by_json = {f.json_name: f.name for f in request_type.DESCRIPTOR.fields}
        field = named[1] if named[1] in fields else by_json.get(named[1], field)
    problem = str(exc).rstrip(".") or exc.__class__.__name__
    status = rich_status(
        code_pb2.INVALID_ARGUMENT,
        f"the request is not a valid {request_type.DESCRIPTOR.name}: {problem}",
        "INVALID_ARGUMENT",
        violations=[(field, problem)],
    )
    return from_status(status)


def from_status(status: grpc.Status) -> ConnectError:
    """A status built as the gRPC server builds its own (servicers/status.py), for a browser."""
    return ConnectError(_CODES.get(status.code, Code.UNKNOWN), status.details, _details(status.trailing_metadata))


def _connect_error(exc: grpc.aio.AioRpcError) -> ConnectError:
    """The server's status, message and rich details (BadRequest, ErrorInfo, ...), unchanged."""
    code = _CODES.get(exc.code(), Code.UNKNOWN)
    return ConnectError(code, exc.details() or "", _details(exc.trailing_metadata()))


def _details(trailers: Iterable[tuple[str, str | bytes]] | None) -> list[Any]:
    for key, value in trailers or ():
        if key == STATUS_DETAILS and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            return list(status.details)
    return []

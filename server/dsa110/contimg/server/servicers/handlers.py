"""Registers a servicer from its service descriptor, with serializers that send `Encoded` replies as they are.

What the generated `add_XServicer_to_server` does (one handler per method, the request type's
`FromString`, the same service and method paths), except:
* the response serializer sends `Encoded` replies as they are (servicers/encoded.py);
* the request deserializer marks undecodable bytes instead of failing, and refuses without decoding
  a request larger than its method can need (servicers/decoding.py: reads 64 KiB, BatchGet 4 MiB);
  reads whose replies are reused get their request's bytes, decoded only on a miss (envelope.py);
* writes are registered as client-streaming: gRPC reads a unary method's request before calling
  its handler, a streaming one's only when the handler asks, so the handler admits the caller
  (servicers/admission.py) before the body is read and a refused caller's body never is (four
  anonymous callers sending 52 MB RecordPhotometry requests once took the server to 5.2 GB). On the
  wire a unary call and a client stream of one message are the same; clients see no difference.
Servicers need not subclass the generated base classes, whose signatures insist on message replies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from .admission import is_read
from .decoding import Unread, lenient, raw
from .encoded import serializer

_MAKERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


# Request size limits of reads (writes have the server's message limit, once admitted).
READ_REQUEST_BYTES = 64 << 10
BATCH_REQUEST_BYTES = 4 << 20  # 1,000 names of up to a few KiB each


def request_limit(method: str) -> int:
    if not is_read(method):
        return 0
    return BATCH_REQUEST_BYTES if method.startswith("BatchGet") else READ_REQUEST_BYTES


Behaviour = Callable[[Any, Any], Awaitable[Any]]
# Wraps each method's handler once, at registration: (full method path, handler, server-streaming).
Wrap = Callable[[str, Behaviour, bool], Behaviour]


def method_handlers(
    service: ServiceDescriptor, servicer: object, wrap: Wrap | None = None
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """Method name -> handler, for every method of `service` (the servicer must implement each);
    each handler passed through `wrap` (the access log: accesslog.py) when given."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None:
            raise TypeError(f"{type(servicer).__name__} does not implement {service.full_name}/{method.name}")
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        limit = request_limit(method.name)
        reads_raw = getattr(behaviour, "reads_raw", False)
        decode = raw(request.FromString, limit) if reads_raw else lenient(request.FromString, limit)
        path = f"/{service.full_name}/{method.name}"
        if not method.client_streaming and not method.server_streaming and not is_read(method.name):
            handle = _read_after_admission(behaviour)
            handle = wrap(path, handle, False) if wrap is not None else handle
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(handle, decode, serializer(response))
            continue
        make = _MAKERS[method.client_streaming, method.server_streaming]
        handle = wrap(path, behaviour, method.server_streaming) if wrap is not None else behaviour
        handlers[method.name] = make(handle, decode, serializer(response))
    return handlers


def _read_after_admission(behaviour: Behaviour) -> Behaviour:
    async def handle(requests: Any, context: Any) -> Any:
        return await behaviour(Unread(requests), context)

    handle.records_calls = getattr(behaviour, "records_calls", False)  # type: ignore[attr-defined]
    return handle


def add_service(
    server: grpc.aio.Server, service: ServiceDescriptor, servicer: object, wrap: Wrap | None = None
) -> None:
    handlers = method_handlers(service, servicer, wrap)
    # Generic handlers only, unlike the generated code, which also registers each method with the
    # core (add_registered_method_handlers): measured here, the registered path costs ~15-20 us more
    # CPU per call (GetImage at 64 concurrent: 232 -> 211-220 us/call without it).
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))

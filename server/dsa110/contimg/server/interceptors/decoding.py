"""Requests whose bytes do not decode get INVALID_ARGUMENT, not gRPC's UNKNOWN ("Unexpected DecodeError").

Truncated or corrupt messages, invalid UTF-8 in a string field and nesting deeper than the protobuf
decoder allows can all be sent by a client that does not use a protobuf library to encode. gRPC
Python treats a failing deserializer like a crashing handler; here the deserializer returns a
marker instead and the handler aborts with a proper rich status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import code_pb2

from ..rpc_types import Ctx
from ..servicers.errors import rich_status

_STATUS = rich_status(
    code_pb2.INVALID_ARGUMENT,
    "the request is not a valid protobuf message of the method's request type",
    "INVALID_ARGUMENT",
    violations=[("request", "does not decode (corrupt or truncated bytes, invalid UTF-8, or nested too deeply)")],
)


class _Undecodable:
    __slots__ = ()


_UNDECODABLE = _Undecodable()


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    strict = deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return strict(data)
        except DecodeError:
            return _UNDECODABLE

    return deserialize


class DecodeGuardInterceptor(grpc.aio.ServerInterceptor):
    """Innermost interceptor: wraps the contract's handlers (every one takes a single request message).

    Wrapped handlers are built once per method, not per call (building them costs more than a Get).
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_streaming or not details.method.startswith("/dsa110."):
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Any) -> Any:
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Ctx) -> Any:
                if request is _UNDECODABLE:
                    await context.abort_with_status(_STATUS)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, _lenient(handler.request_deserializer), handler.response_serializer
            )
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
            if request is _UNDECODABLE:
                await context.abort_with_status(_STATUS)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, _lenient(handler.request_deserializer), handler.response_serializer
        )

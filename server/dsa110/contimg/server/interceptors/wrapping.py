"""Wrap any of the four RPC kinds of a handler with one around-call hook.

Every wrapped handler is a coroutine that grpc awaits inside the RPC's task, streams included: a
streaming behaviour written as an async generator is sent with streams.send_all, so the hook's
`finally` (and the generator's) run while the call is alive.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ..rpc_types import Ctx
from ..streams import send_all

# hook(method, context, call, streams) -> awaitable of the call's result; `call` runs the real
# behaviour with the context it is given (the hook may hand it a context of its own, e.g. to count a
# stream's messages); `streams`: the method sends a stream of responses.
Around = Callable[[str, Ctx, Callable[[Ctx], Awaitable[Any]], bool], Awaitable[Any]]


def _writer(inner: Callable[[Any, Ctx], Any]) -> Callable[[Any, Ctx], Awaitable[None]]:
    """A streaming behaviour as a coroutine that sends its items."""
    if not inspect.isasyncgenfunction(inner):
        return inner  # already a coroutine that calls context.write() (e.g. grpc.health.v1.Health/Watch)

    async def send(request: Any, context: Ctx) -> None:
        await send_all(context, inner(request, context))

    return send


def wrap_handler(handler: Any, method: str, around: Around) -> Any:
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Ctx) -> Any:
            return await around(method, context, lambda ctx: inner_uu(request, ctx), False)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = _writer(handler.unary_stream)

        async def unary_stream(request: Any, context: Ctx) -> None:
            await around(method, context, lambda ctx: inner_us(request, ctx), True)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Ctx) -> Any:
            return await around(method, context, lambda ctx: inner_su(requests, ctx), False)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = _writer(handler.stream_stream)

    async def stream_stream(requests: Any, context: Ctx) -> None:
        await around(method, context, lambda ctx: inner_ss(requests, ctx), True)

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )

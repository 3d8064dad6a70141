"""Wrap any of the four RPC kinds of a handler with one around-call hook."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from ..rpc_types import Ctx

# hook(method, context, call) -> awaitable of the call's result; `call` runs the real behaviour.
Around = Callable[[str, Ctx, Callable[[], Awaitable[Any]]], Awaitable[Any]]
AroundStream = Callable[[str, Ctx, Callable[[], AsyncIterator[Any]]], AsyncIterator[Any]]


def wrap_handler(handler: Any, method: str, around: Around, around_stream: AroundStream) -> Any:
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Ctx) -> Any:
            return await around(method, context, lambda: inner_uu(request, context))

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream
        if not inspect.isasyncgenfunction(inner_us):
            # A streaming handler written as a coroutine that calls context.write() (e.g.
            # grpc.health.v1.Health/Watch): awaited, not iterated; it must stay a coroutine.
            async def unary_stream_writer(request: Any, context: Ctx) -> Any:
                return await around(method, context, lambda: inner_us(request, context))

            return grpc.unary_stream_rpc_method_handler(
                unary_stream_writer, handler.request_deserializer, handler.response_serializer
            )

        async def unary_stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
            async for item in around_stream(method, context, lambda: inner_us(request, context)):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Ctx) -> Any:
            return await around(method, context, lambda: inner_su(requests, context))

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream
    if not inspect.isasyncgenfunction(inner_ss):

        async def stream_stream_writer(requests: Any, context: Ctx) -> Any:
            return await around(method, context, lambda: inner_ss(requests, context))

        return grpc.stream_stream_rpc_method_handler(
            stream_stream_writer, handler.request_deserializer, handler.response_serializer
        )

    async def stream_stream(requests: Any, context: Ctx) -> AsyncIterator[Any]:
        async for item in around_stream(method, context, lambda: inner_ss(requests, context)):
            yield item

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )

"""The concurrency limit (--max-concurrent-rpcs), refusing with the contract's rich status.

gRPC's own `maximum_concurrent_rpcs` refuses with a bare RESOURCE_EXHAUSTED ("Concurrent RPC limit
exceeded!") that carries no google.rpc.ErrorInfo, while the contract promises reason
RESOURCE_EXHAUSTED on every such refusal. Health and reflection are not limited: an overloaded
server is still a live one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.rpc import code_pb2

from ..rpc_types import Ctx
from ..servicers.errors import rich_status
from .auth import OPEN_PREFIXES
from .wrapping import wrap_handler

_STATUS = rich_status(
    code_pb2.RESOURCE_EXHAUSTED,
    "too many concurrent requests; retry with backoff",
    "RESOURCE_EXHAUSTED",
)


class ConcurrencyLimitInterceptor(grpc.aio.ServerInterceptor):
    """At most `limit` contract RPCs in flight (streams count while open); the rest are refused at once."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0  # the server runs on one event loop: a plain counter is race-free
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        # One wrapper per method (as the logging interceptor does): wrapping per call costs more than a Get.
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap_handler(handler, details.method, self._around, self._around_stream)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    async def _around(self, method: str, context: Ctx, call: Callable[[], Awaitable[Any]]) -> Any:
        if self.active >= self.limit:
            await context.abort_with_status(_STATUS)
        self.active += 1
        try:
            return await call()
        finally:
            self.active -= 1

    async def _around_stream(
        self, method: str, context: Ctx, call: Callable[[], AsyncIterator[Any]]
    ) -> AsyncIterator[Any]:
        if self.active >= self.limit:
            await context.abort_with_status(_STATUS)
        self.active += 1
        try:
            async for item in call():
                yield item
        finally:
            self.active -= 1

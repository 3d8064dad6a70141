"""One log line per RPC: method, status code, duration, peer (never metadata, so never tokens)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from ..rpc_types import Ctx
from .wrapping import wrap_handler

log = logging.getLogger("contimg.rpc")


def _code(context: Ctx, failed: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and code != 0:
        return next((s.name for s in grpc.StatusCode if s.value[0] == code), str(code))
    if failed is None:
        return "OK"
    return "UNKNOWN" if isinstance(failed, Exception) else "CANCELLED"


class LoggingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith("/grpc.reflection."):
            return handler
        # One wrapper per method, built on first use: wrapping per call would cost more than a Get.
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap_handler(handler, details.method, self._around, self._around_stream)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    async def _around(self, method: str, context: Ctx, call: Callable[[], Awaitable[Any]]) -> Any:
        start = time.perf_counter()
        failed: BaseException | None = None
        try:
            return await call()
        except BaseException as exc:
            failed = exc
            raise
        finally:
            self._log(method, context, failed, start, None)

    async def _around_stream(
        self, method: str, context: Ctx, call: Callable[[], AsyncIterator[Any]]
    ) -> AsyncIterator[Any]:
        start = time.perf_counter()
        failed: BaseException | None = None
        sent = 0
        try:
            async for item in call():
                sent += 1
                yield item
        except BaseException as exc:
            failed = exc
            raise
        finally:
            self._log(method, context, failed, start, sent)

    @staticmethod
    def _log(
        method: str,
        context: Ctx,
        failed: BaseException | None,
        start: float,
        sent: int | None,
    ) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        ms = (time.perf_counter() - start) * 1000
        extra = f" messages={sent}" if sent is not None else ""
        log.info(
            "rpc method=%s code=%s duration_ms=%.2f peer=%s%s",
            method,
            _code(context, failed),
            ms,
            context.peer(),
            extra,
        )

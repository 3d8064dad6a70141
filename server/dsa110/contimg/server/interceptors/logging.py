"""One log line per RPC: method, status code, duration, peer (never metadata, so never tokens).

Everything it needs from the context is read while the call is alive: the peer when the call
starts, the code when the handler returns or aborts. Both run inside the RPC's task (streams too:
interceptors/wrapping.py), before grpc releases the call; grpc.aio (1.85.1) sets the call to NULL
once that task ends, after which `context.peer()` dereferences NULL in gRPC core (SIGSEGV).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc

from ..rpc_types import Ctx
from .wrapping import wrap_handler

log = logging.getLogger("contimg.rpc")


def _name(code: object) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return next((s.name for s in grpc.StatusCode if s.value[0] == code), str(code))
    return "OK"


class _Counting:
    """A stream's context that counts the messages written through it (delegates everything else)."""

    __slots__ = ("_context", "sent")

    def __init__(self, context: Ctx):
        self._context = context
        self.sent = 0

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self.sent += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


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
        wrapped = wrap_handler(handler, details.method, self._around)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    async def _around(self, method: str, context: Ctx, call: Callable[[Ctx], Awaitable[Any]], streams: bool) -> Any:
        if not log.isEnabledFor(logging.INFO):
            return await call(context)
        start = time.perf_counter()
        peer = context.peer()
        counting = _Counting(context) if streams else None
        code = "UNKNOWN"
        try:
            result = await call(cast(Ctx, counting) if counting is not None else context)
            code = _name(context.code())
            return result
        except grpc.aio.AbortError:
            code = _name(context.code())  # set by the abort, which has just happened
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            ms = (time.perf_counter() - start) * 1000
            extra = f" messages={counting.sent}" if counting is not None else ""
            log.info("rpc method=%s code=%s duration_ms=%.2f peer=%s%s", method, code, ms, peer, extra)


class _Departures(logging.Filter):
    """grpc.aio logs "ExecuteBatchError raised in core by servicer method" with a traceback when a
    unary reply cannot be sent because its client has gone, if it has not yet noticed the client's
    departure (a race inside grpc): normal life, already in the call's own log line. Kept at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith("ExecuteBatchError raised in core"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = record.exc_text = None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_DEPARTURES = _Departures()


def quiet_departures() -> None:
    """Install the filter on grpc's server logger (once)."""
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    if _DEPARTURES not in grpc_log.filters:
        grpc_log.addFilter(_DEPARTURES)

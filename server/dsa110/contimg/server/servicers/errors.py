"""Every failure leaves as a google.rpc.Status with ErrorInfo (and BadRequest for bad arguments)."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RequestIdMismatch,
    StorageUnavailable,
)
from ..rpc_types import Ctx

log = logging.getLogger("contimg.errors")
DOMAIN = "contimg.dsa110.org"
R = TypeVar("R")

_CODES: list[tuple[type[DomainError], int]] = [
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (NotFound, code_pb2.NOT_FOUND),
    (AlreadyExists, code_pb2.ALREADY_EXISTS),
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (RequestIdMismatch, code_pb2.ABORTED),
    (StorageUnavailable, code_pb2.UNAVAILABLE),
]


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def rich_status(
    code: int,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    violations: list[tuple[str, str]] | None = None,
) -> grpc.Status:
    details = [_pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {}))]
    if violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
                    ]
                )
            )
        )
    status: grpc.Status = rpc_status.to_status(status_pb2.Status(code=code, message=message, details=details))
    return status


def status_for(exc: DomainError) -> grpc.Status:
    code = next((c for kind, c in _CODES if isinstance(exc, kind)), code_pb2.INTERNAL)
    violations = [(v.field, v.description) for v in exc.violations] if isinstance(exc, InvalidArgument) else None
    return rich_status(code, exc.message, exc.reason, exc.metadata, violations)


async def abort(context: Ctx, exc: BaseException, method: str) -> NoReturn:
    if isinstance(exc, DomainError):
        await context.abort_with_status(status_for(exc))
    log.error("unexpected error in %s", method, exc_info=exc)
    await context.abort_with_status(rich_status(code_pb2.INTERNAL, "internal error", "INTERNAL"))
    raise AssertionError("unreachable")  # abort_with_status always raises


def unary(fn: Callable[[Any, Any, Ctx], Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> R:
        try:
            return await fn(self, request, context)
        except (DomainError, Exception) as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await abort(context, exc, fn.__qualname__)

    return wrapper


def streaming(
    fn: Callable[[Any, Any, Ctx], AsyncIterator[R]],
) -> Callable[..., AsyncIterator[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> AsyncIterator[R]:
        try:
            async for item in fn(self, request, context):
                yield item
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await abort(context, exc, fn.__qualname__)

    return wrapper

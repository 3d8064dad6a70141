"""Every failure as a google.rpc.Status with ErrorInfo (and BadRequest for bad arguments)."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

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
    OutOfRange,
    QueryTimeout,
    RequestIdMismatch,
    StorageFull,
    StorageUnavailable,
)
from ..rpc_types import Ctx

log = logging.getLogger("contimg.errors")
DOMAIN = "contimg.dsa110.org"

_CODES: list[tuple[type[DomainError], int]] = [
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (NotFound, code_pb2.NOT_FOUND),
    (AlreadyExists, code_pb2.ALREADY_EXISTS),
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (RequestIdMismatch, code_pb2.ABORTED),
    (StorageUnavailable, code_pb2.UNAVAILABLE),
    (StorageFull, code_pb2.RESOURCE_EXHAUSTED),
    (QueryTimeout, code_pb2.DEADLINE_EXCEEDED),
    (OutOfRange, code_pb2.OUT_OF_RANGE),
]


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


# Errors travel in the trailers, which clients cap (gRPC: 8 KiB soft, 16 KiB hard): an error echoing
# a huge or many-times-wrong request would arrive as RESOURCE_EXHAUSTED instead. Keep them small.
MAX_MESSAGE_BYTES = 512
MAX_TEXT_BYTES = 256
MAX_METADATA_VALUE_BYTES = 1024
MAX_VIOLATIONS_BYTES = 2048


def clip(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore") + "..."


def rich_status(
    code: int,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    violations: list[tuple[str, str]] | None = None,
) -> grpc.Status:
    metadata = {k: clip(v, MAX_METADATA_VALUE_BYTES) for k, v in (metadata or {}).items()}
    details = [_pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))]
    if violations:
        kept: list[error_details_pb2.BadRequest.FieldViolation] = []
        size = 0
        for f, d in violations:
            kept.append(error_details_pb2.BadRequest.FieldViolation(field=clip(f), description=clip(d)))
            size += kept[-1].ByteSize()
            if size >= MAX_VIOLATIONS_BYTES:
                break
        details.append(_pack(error_details_pb2.BadRequest(field_violations=kept)))
    message = clip(message, MAX_MESSAGE_BYTES)
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


_UNDECODABLE = rich_status(
    code_pb2.INVALID_ARGUMENT,
    "the request is not a valid protobuf message of the method's request type",
    "INVALID_ARGUMENT",
    violations=[("request", "does not decode (corrupt or truncated bytes, invalid UTF-8, or nested too deeply)")],
)


def undecodable_status() -> grpc.Status:
    return _UNDECODABLE


def refusal_for_oversized(size: int, limit: int) -> grpc.Status:
    return rich_status(
        code_pb2.RESOURCE_EXHAUSTED,
        f"the request is {size} bytes; this method takes at most {limit}",
        "REQUEST_TOO_LARGE",
        metadata={"max_bytes": str(limit)},
    )

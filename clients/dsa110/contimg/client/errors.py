"""Exceptions raised by the clients, one per canonical gRPC status code.

The server attaches a `google.rpc.Status` to every error (trailer `grpc-status-details-bin`)
carrying a `google.rpc.ErrorInfo` (domain `contimg.dsa110.org`) and, for invalid arguments, a
`google.rpc.BadRequest`; both are decoded here so callers can branch on `reason` and `field`
instead of parsing messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "contimg.dsa110.org"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class ContimgError(Exception):
    """An RPC failed. `reason` and `metadata` come from the server's ErrorInfo when present."""

    default_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[tuple[str, str]] = (),
        details: Iterable[Any] = (),
    ) -> None:
        super().__init__(message)
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[tuple[str, str]] = list(field_violations)
        # Every decoded detail message, for details other than ErrorInfo and BadRequest.
        self.details: list[Any] = list(details)

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.reason:
            text += f" [{self.reason}]"
        return text


class InvalidArgumentError(ContimgError):
    """The request is malformed; `field_violations` lists (field path, description) pairs."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT

    def __str__(self) -> str:
        lines = [super().__str__()]
        lines += [f"  {field}: {description}" for field, description in self.field_violations]
        return "\n".join(lines)


class OutOfRangeError(InvalidArgumentError):
    default_code = grpc.StatusCode.OUT_OF_RANGE


class NotFoundError(ContimgError):
    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(ContimgError):
    default_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(ContimgError):
    default_code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(ContimgError):
    default_code = grpc.StatusCode.ABORTED


class UnauthenticatedError(ContimgError):
    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(ContimgError):
    default_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(ContimgError):
    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(ContimgError):
    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnavailableError(ContimgError):
    default_code = grpc.StatusCode.UNAVAILABLE


class CallCancelledError(ContimgError):
    default_code = grpc.StatusCode.CANCELLED


class UnimplementedError(ContimgError):
    default_code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(ContimgError):
    default_code = grpc.StatusCode.INTERNAL


class DataLossError(ContimgError):
    default_code = grpc.StatusCode.DATA_LOSS


class UnknownError(ContimgError):
    default_code = grpc.StatusCode.UNKNOWN


_BY_CODE: dict[grpc.StatusCode, type[ContimgError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgumentError,
        OutOfRangeError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        AbortedError,
        UnauthenticatedError,
        PermissionDeniedError,
        ResourceExhaustedError,
        DeadlineExceededError,
        UnavailableError,
        CallCancelledError,
        UnimplementedError,
        InternalError,
        DataLossError,
        UnknownError,
    )
}


def error_class(code: grpc.StatusCode) -> type[ContimgError]:
    return _BY_CODE.get(code, UnknownError)


def from_status(code: grpc.StatusCode, message: str, status: Any | None) -> ContimgError:
    """Builds the exception for `code`, decoding the details of a google.rpc.Status if given."""
    cls = error_class(code)
    if status is None:
        return cls(message, code=code)
    info: Any | None = None
    violations: list[tuple[str, str]] = []
    others: list[Any] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            decoded: Any = error_details_pb2.ErrorInfo()
            detail.Unpack(decoded)
            # Our own domain wins over ErrorInfo a proxy might have added.
            if info is None or decoded.domain == ERROR_DOMAIN:
                info = decoded
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad: Any = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(str(v.field), str(v.description)) for v in bad.field_violations]
        else:
            others.append(detail)
    return cls(
        str(status.message) or message,
        code=code,
        reason=str(info.reason) if info is not None else "",
        domain=str(info.domain) if info is not None else "",
        metadata=dict(info.metadata) if info is not None else None,
        field_violations=violations,
        details=others,
    )


def from_rpc_error(error: grpc.RpcError) -> ContimgError:
    """Converts an error of the synchronous API (which is also a grpc.Call)."""
    if not isinstance(error, grpc.Call):
        return UnknownError(str(error) or type(error).__name__)
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        # Code or message differ between the status line and the details (a non-conforming
        # proxy or server); the details are still the best account of what went wrong.
        status = _status_from_metadata(error.trailing_metadata())
    return from_status(code, message, status)


def from_aio_error(error: grpc.aio.AioRpcError) -> ContimgError:
    """Converts an error of the asyncio API from its trailing metadata."""
    return from_status(error.code(), error.details() or "", _status_from_metadata(error.trailing_metadata()))


def _status_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Any | None:
    for key, value in metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None

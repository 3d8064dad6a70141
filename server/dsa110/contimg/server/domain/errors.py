"""One exception hierarchy for everything the domain can refuse; servicers map it to gRPC codes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """Base of every expected failure. `reason` is the ErrorInfo reason (see common.proto)."""

    reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def __reduce__(self) -> tuple[object, ...]:
        # Subclasses' constructors take other arguments than the message: rebuild from the state
        # (errors cross from the write process to the server pickled).
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: type[DomainError], args: tuple[object, ...], state: dict[str, object]) -> DomainError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidArgument(DomainError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation], *, reason: str | None = None):
        self.violations = list(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations[:5])
        more = f" (+{len(self.violations) - 5} more)" if len(self.violations) > 5 else ""
        super().__init__(f"invalid argument: {summary}{more}", reason=reason)

    @classmethod
    def single(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        return cls([FieldViolation(field, description)], reason=reason)


class NotFound(DomainError):
    reason = "NOT_FOUND"

    def __init__(self, kind: str, name: str):
        super().__init__(
            f"{kind.replace('_', ' ').lower()} {name!r} not found",
            reason=f"{kind}_NOT_FOUND",
            metadata={"resource": name},
        )


class AlreadyExists(DomainError):
    reason = "ALREADY_EXISTS"

    def __init__(self, kind: str, name: str, *, reason: str | None = None, message: str | None = None):
        super().__init__(
            message or f"{kind.replace('_', ' ').lower()} {name!r} already exists",
            reason=reason or f"{kind}_ALREADY_EXISTS",
            metadata={"resource": name},
        )


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


class RequestIdMismatch(DomainError):
    """A request_id was reused for a different request (AIP-155): ABORTED."""

    reason = "REQUEST_ID_MISMATCH"

    def __init__(self, request_id: str):
        super().__init__(
            f"request_id {request_id!r} was already used for a different request",
            metadata={"request_id": request_id},
        )


class StorageUnavailable(DomainError):
    """Storage is temporarily unable to serve (e.g. locked past the busy timeout): UNAVAILABLE."""

    reason = "STORAGE_UNAVAILABLE"


class StorageFailure(StorageUnavailable):
    """The machine under the database failed a write (an I/O error, a file or disk turned
    read-only): UNAVAILABLE, and health NOT_SERVING until a write succeeds again."""


class StorageFull(DomainError):
    """The disk holding the database is full: RESOURCE_EXHAUSTED until space is freed (nothing of the
    refused write was stored); health NOT_SERVING meanwhile."""

    reason = "STORAGE_FULL"


class DatabaseReplaced(StorageFailure):
    """The database file was removed or replaced under the running server: UNAVAILABLE for every
    write until a restart, so that no write is acknowledged into a file nobody will read again."""

    reason = "DATABASE_REPLACED"


class QueryTimeout(DomainError):
    """A query ran past the server's statement timeout: DEADLINE_EXCEEDED, which clients do not
    retry (the same query would take as long again)."""

    reason = "QUERY_TIMEOUT"


class OutOfRange(DomainError):
    """A position past the end of what the server has (e.g. a watch's after_sequence): OUT_OF_RANGE."""

    reason = "OUT_OF_RANGE"


class ShuttingDown(StorageUnavailable):
    """The server is draining: streams end so clients reconnect and resume elsewhere (UNAVAILABLE)."""

    reason = "SHUTTING_DOWN"


class StartupError(Exception):
    """The server cannot start (its database cannot be opened for writing, or has a newer schema):
    the message is the one line an operator sees, without a traceback."""

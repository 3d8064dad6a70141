"""Admission of every contract RPC: bearer-token authorization and the concurrency limit.

Tokens: writes need a write token; reads need a token only when configured; a token that is
presented must be valid. Compared in constant time and never logged. The limit
(--max-concurrent-rpcs): at most that many RPCs in flight (streams count while open), the rest
refused at once with RESOURCE_EXHAUSTED and ErrorInfo (gRPC's own maximum_concurrent_rpcs refuses
with a bare status). Health and reflection are neither checked nor limited: load balancers and
grpcurl keep working, and an overloaded server is still a live one.

Checked inside each servicer method's wrapper (servicers/errors.py), not by interceptors: grpc.aio
runs every server interceptor as its own step of every call, measured at ~7 us each (a third of a
GetImage's own work); the checks themselves cost ~1 us.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import code_pb2

from ..rpc_types import Ctx
from .errors import rich_status

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
READ_PREFIXES = ("Get", "List", "Search", "BatchGet", "Watch")


def is_read(method: str) -> bool:
    return method.rsplit("/", 1)[-1].startswith(READ_PREFIXES)


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    write_tokens: frozenset[str]
    read_tokens: frozenset[str]
    require_read_token: bool = False
    allow_anonymous_writes: bool = False

    @staticmethod
    def _match(token: str, candidates: Iterable[str]) -> bool:
        found = False
        for candidate in candidates:  # no early exit: timing does not reveal which token matched
            found |= hmac.compare_digest(token.encode(), candidate.encode())
        return found

    def decide(self, method: str, token: str | None) -> tuple[int, str, str] | None:
        """None to allow, else (code, reason, message)."""
        if method.startswith(OPEN_PREFIXES):
            return None
        is_writer = token is not None and self._match(token, self.write_tokens)
        is_reader = is_writer or (token is not None and self._match(token, self.read_tokens))
        if token is not None and not is_reader:
            return code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED", "the bearer token is not valid"
        if is_read(method):
            if self.require_read_token and not is_reader:
                return code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED", "this server requires a bearer token"
            return None
        if is_writer or (token is None and self.allow_anonymous_writes):
            return None
        if token is None:
            return code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED", "writes require a bearer token (authorization metadata)"
        return code_pb2.PERMISSION_DENIED, "PERMISSION_DENIED", "this token may only read"


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


_BUSY = rich_status(
    code_pb2.RESOURCE_EXHAUSTED,
    "too many concurrent requests; retry with backoff",
    "RESOURCE_EXHAUSTED",
)


class Admission:
    def __init__(self, policy: TokenPolicy, limit: int = 0):
        self.policy = policy
        self.limit = limit
        self.active = 0  # the server runs on one event loop: a plain counter is race-free

    def admit(self, method: str, context: Ctx) -> grpc.Status | None:
        """None when the call may run (then `leave` must follow), else the status to abort it with."""
        denied = self.policy.decide(method, bearer_token(context.invocation_metadata()))
        if denied is not None:
            code, reason, message = denied
            return rich_status(code, message, reason)
        if self.limit and self.active >= self.limit:
            return _BUSY
        self.active += 1
        return None

    def leave(self) -> None:
        self.active -= 1


# For servicers built without a server (tests of a servicer alone): everything is allowed.
OPEN = Admission(TokenPolicy(frozenset(), frozenset(), allow_anonymous_writes=True))

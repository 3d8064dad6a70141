"""Bearer-token authorization: writes need a write token; reads need a token only when configured.

Health and reflection stay open so load balancers and grpcurl work. Tokens are compared in
constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import code_pb2

from ..servicers.errors import rich_status

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


def _rejecting_handler(handler: Any, status: grpc.Status) -> Any:
    async def reject(_request: Any, context: Any) -> Any:
        await context.abort_with_status(status)

    async def reject_stream(_request: Any, context: Any) -> Any:
        await context.abort_with_status(status)
        yield  # pragma: no cover  (makes this an async generator, as streaming handlers must be)

    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler, reject),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler, reject_stream),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler, reject),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler, reject_stream),
    )
    for behaviour, make, replacement in kinds:
        if behaviour is not None:
            return make(replacement, handler.request_deserializer, handler.response_serializer)
    return handler


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, policy: TokenPolicy):
        self.policy = policy

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        token = bearer_token(details.invocation_metadata)
        denied = self.policy.decide(details.method, token)
        handler = await continuation(details)
        if denied is None or handler is None:
            return handler
        code, reason, message = denied
        return _rejecting_handler(handler, rich_status(code, message, reason))

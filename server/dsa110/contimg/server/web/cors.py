"""CORS for the browser path: which origins may call, and what a browser may send and read.

Browsers send a preflight OPTIONS before each cross-origin call of gRPC-Web or Connect (their
content types and headers are not "simple"). An origin that is not allowed gets no CORS headers,
so the browser refuses the call before it is made; calls without an Origin (curl, buf curl,
servers) pass unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# What the gRPC-Web and Connect clients send besides content-type, and what the server reads.
ALLOWED_HEADERS = (
    "authorization",
    "content-type",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-accept-encoding",
    "connect-content-encoding",
    "content-encoding",
    "grpc-encoding",
    "grpc-timeout",
    "grpc-accept-encoding",
    "x-grpc-web",
    "x-user-agent",
    "x-request-id",
    "traceparent",
    "tracestate",
)
# What a page's client must read from a reply: status and errors live in these headers.
EXPOSED_HEADERS = (
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
    "connect-content-encoding",
    "content-encoding",
    "contimg-watch",  # a watch stream is registered (its first message may be long in coming)
)
PREFLIGHT_MAX_AGE_S = 7200


class Cors:
    """ASGI middleware: answers preflights and marks replies to allowed origins."""

    def __init__(self, app: App, origins: Iterable[str]) -> None:
        self.app = app
        self.origins = frozenset(o.rstrip("/") for o in origins)
        self.any = "*" in self.origins

    def allowed(self, origin: str) -> bool:
        return self.any or origin in self.origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self.allowed(origin)
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            await self._preflight(origin, allowed, send)
            return
        if not allowed:
            # The browser will refuse to show the reply; the call must not run either (a write from a
            # page the operator did not allow would still change the database).
            await _respond(send, 403, [(b"vary", b"origin")])
            return
        marks = [
            (b"access-control-allow-origin", b"*" if self.any else origin.encode()),
            (b"access-control-expose-headers", ", ".join(EXPOSED_HEADERS).encode()),
            (b"vary", b"origin"),
        ]

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), *marks]
            await send(message)

        await self.app(scope, receive, marked)

    async def _preflight(self, origin: str, allowed: bool, send: Send) -> None:
        if not allowed:
            await _respond(send, 403, [(b"vary", b"origin")])
            return
        await _respond(
            send,
            204,
            [
                (b"access-control-allow-origin", b"*" if self.any else origin.encode()),
                (b"access-control-allow-methods", b"POST, GET, OPTIONS"),
                (b"access-control-allow-headers", ", ".join(ALLOWED_HEADERS).encode()),
                (b"access-control-max-age", str(PREFLIGHT_MAX_AGE_S).encode()),
                (b"vary", b"origin"),
            ],
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0"), *headers]})
    await send({"type": "http.response.body", "body": b""})

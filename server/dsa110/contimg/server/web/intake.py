"""A browser's request must be allowed, arrive in time and stay within its size (ASGI middleware).

hypercorn closes a connection that sits idle, or has not finished a request's headers, after its
keep-alive timeout; but once the headers are in, it hands the request to the application and
waits for the body as long as the client likes, and connect-python reads a whole body before it
checks its size. So a client sending a body a byte a minute (or never) held its connection, a
descriptor and a task forever, and one sending 300 MB took the server from 76 MB to 699 MB before
being told the request was too large. Here the body must be complete within `seconds` of the
headers (else 408, and hypercorn closes the connection: the body was never read to its end), and
the body is refused RESOURCE_EXHAUSTED as soon as it passes its method's limit (a read takes 64 KiB,
as on the gRPC port; compressed, its decompressed size too: compression.py), in the caller's
protocol (connect-python answers the ConnectError raised from `receive` as any other). And as on the
gRPC port, a write's token is checked before its body is read: a refused caller's body never is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from ..servicers.admission import bearer_token
from .compression import REQUEST_LIMIT
from .cors import App, Message, Receive, Scope, Send

# A request's envelope (gRPC-Web, Connect streams) adds a few bytes to the message it carries.
ENVELOPE_BYTES = 1024
log = logging.getLogger("contimg.web")

REFUSED_READ_BYTES = 64 << 10
# (method path, bearer token or None) -> the refusal the gRPC server would answer, or None.
Refusal = Callable[[str, str | None], ConnectError | None]


class _Stalled(BaseException):
    """Raised through the application (not an Exception: connect-python would answer it as one)."""


class RequestIntake:
    """`limit(path)`: the most a method's request may be; `refuse`: the gRPC server's token check."""

    def __init__(self, app: App, seconds: float, limit: Callable[[str], int], refuse: Refusal) -> None:
        self.app = app
        self.seconds = seconds
        self.limit = limit
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        path: str = scope["path"]
        limit = self.limit(path)
        refused = self.refuse(path, _bearer(scope))
        arrived = False
        size = 0
        answering = False

        async def arriving() -> Message:
            nonlocal arrived, size
            if arrived:
                return await receive()
            if refused is not None:
                # Of a refused caller's body, no more than a small request's is read: enough that a
                # client which sent it all gets the answer, rather than a connection reset under it.
                while size <= REFUSED_READ_BYTES and not arrived:
                    message = await timed(receive, deadline)
                    size += len(message.get("body", b""))
                    arrived = message["type"] != "http.request" or not message.get("more_body", False)
                arrived = True
                client = scope.get("client") or ("?", 0)
                log.info(
                    "refused before its body was read: method=%s code=%s peer=web:%s",
                    path,
                    refused.code.name,
                    client[0],
                )
                raise refused
            message = await timed(receive, deadline)
            if message["type"] != "http.request":
                arrived = True
                return message
            size += len(message.get("body", b""))
            if size > limit + ENVELOPE_BYTES:
                arrived = True  # the rest is never read: hypercorn closes the connection after the answer
                raise ConnectError(Code.RESOURCE_EXHAUSTED, f"the request is larger than {limit} bytes")
            arrived = not message.get("more_body", False)
            return message

        async def sending(message: Message) -> None:
            nonlocal answering
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        limited = REQUEST_LIMIT.set(limit)
        try:
            await self.app(scope, arriving, sending)
        except _Stalled:
            if not answering:
                await send({"type": "http.response.start", "status": 408, "headers": [(b"connection", b"close")]})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            REQUEST_LIMIT.reset(limited)


async def timed(receive: Receive, deadline: float) -> Message:
    try:
        async with asyncio.timeout_at(deadline):
            return await receive()
    except TimeoutError:
        raise _Stalled from None


def _bearer(scope: Scope) -> str | None:
    return bearer_token((k.decode("latin-1"), v) for k, v in scope["headers"] if k == b"authorization")

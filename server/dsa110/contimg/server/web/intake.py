"""A browser's request must arrive in time and within its size (ASGI middleware).

hypercorn closes a connection that sits idle, or has not finished a request's headers, after its
keep-alive timeout; but once the headers are in, it hands the request to the application and
waits for the body as long as the client likes, and connect-python reads a whole body before it
checks its size. So a client sending a body a byte a minute (or never) held its connection, a
descriptor and a task forever, and one sending 300 MB took the server from 76 MB to 699 MB before
being told the request was too large. Here the body must be complete within `seconds` of the
headers (else 408, and hypercorn closes the connection: the body was never read to its end), and
the body is refused RESOURCE_EXHAUSTED as soon as it passes `max_bytes`, in the caller's protocol
(connect-python answers the ConnectError raised from `receive` as any other).
"""

from __future__ import annotations

import asyncio

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from .cors import App, Message, Receive, Scope, Send


class _Stalled(BaseException):
    """Raised through the application (not an Exception: connect-python would answer it as one)."""


class RequestIntake:
    def __init__(self, app: App, seconds: float, max_bytes: int) -> None:
        self.app = app
        self.seconds = seconds
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        arrived = False
        size = 0
        answering = False

        async def arriving() -> Message:
            nonlocal arrived, size
            if arrived:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _Stalled from None
            if message["type"] != "http.request":
                arrived = True
                return message
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                arrived = True  # the rest is never read: hypercorn closes the connection after the answer
                raise ConnectError(Code.RESOURCE_EXHAUSTED, f"the request is larger than {self.max_bytes} bytes")
            arrived = not message.get("more_body", False)
            return message

        async def sending(message: Message) -> None:
            nonlocal answering
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, arriving, sending)
        except _Stalled:
            if not answering:
                await send({"type": "http.response.start", "status": 408, "headers": [(b"connection", b"close")]})
                await send({"type": "http.response.body", "body": b"", "more_body": False})

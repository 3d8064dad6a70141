"""A browser's request must arrive in time (ASGI middleware).

hypercorn closes a connection that sits idle, or has not finished a request's headers, after its
keep-alive timeout; but once the headers are in, it hands the request to the application and waits
for the body as long as the client likes. A client sending a body a byte a minute (or never) would
hold its connection, a descriptor and a task forever, before any limit of the gRPC server sees a
call. Here the body must be complete within `seconds` of the headers; past that, the client gets 408
and hypercorn closes the connection (the body was never read to its end).
"""

from __future__ import annotations

import asyncio

from .cors import App, Message, Receive, Scope, Send


class _Stalled(BaseException):
    """Raised through the application (not an Exception: connect-python would answer it as one)."""


class RequestDeadline:
    def __init__(self, app: App, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        arrived = False
        answering = False

        async def timed() -> Message:
            nonlocal arrived
            if arrived:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _Stalled from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                arrived = True
            return message

        async def sending(message: Message) -> None:
            nonlocal answering
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed, sending)
        except _Stalled:
            if not answering:
                await send({"type": "http.response.start", "status": 408, "headers": [(b"connection", b"close")]})
                await send({"type": "http.response.body", "body": b"", "more_body": False})

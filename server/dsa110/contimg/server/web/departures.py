"""Ends a call as soon as its browser goes away (ASGI middleware).

A watch stream whose page was closed would otherwise run on until its next write failed, up to a
heartbeat interval later (30 s), holding a watch slot of the caller's and a gRPC stream: hypercorn
tells an application that its client left only through `receive()`, which connect-python stops
calling once it has read the request (its own watch notices only when the next message is sent).
Here a task alone listens after the request is read (the application's later `receive()` calls
wait for what it hears), and cancels the call when `http.disconnect` comes; the gateway's stream
then cancels its gRPC call.
"""

from __future__ import annotations

import asyncio
import contextlib

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from .cors import App, Message, Receive, Scope, Send


class Departures:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        call = asyncio.current_task()
        assert call is not None
        read = asyncio.Event()
        gone = asyncio.Event()
        left = False

        async def reading() -> Message:
            if read.is_set():  # the request is read: only a departure is left to hear, and we listen
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                read.set()
            return message

        async def listen() -> None:
            nonlocal left
            await read.wait()
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            left = True
            call.cancel()

        listener = asyncio.create_task(listen(), name="web-departure")
        try:
            await self.app(scope, reading, send)
        except (asyncio.CancelledError, ConnectError) as exc:
            # connect-python turns a stream's cancellation into ConnectError(CANCELED)
            if not left or (isinstance(exc, ConnectError) and exc.code != Code.CANCELED):
                raise
            call.uncancel()  # our own cancel: the browser is gone, nothing is left to answer
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

"""A browser's request must be allowed, arrive in time and stay within its size (ASGI middleware).

hypercorn closes a connection that sits idle, or has not finished a request's headers, after its
keep-alive timeout; but once the headers are in, it hands the request to the application and
waits for the body as long as the client likes, and connect-python reads a whole body before it
checks its size. So a client sending a body a byte a minute (or never) held its connection, a
descriptor and a task forever, and one sending 300 MB took the server from 76 MB to 699 MB before
being told the request was too large. Here, as on the gRPC port:

* a write's token is checked before its body is read (at most a small request's worth is read, so
  that a client which sent it all gets the answer rather than a reset);
* the body is refused RESOURCE_EXHAUSTED as soon as it passes its method's limit (a read takes 64 KiB;
  compressed, its decompressed size too: compression.py);
* it must be complete within `seconds` of the headers, else DEADLINE_EXCEEDED.

Each refusal is a ConnectError raised from `receive`, which connect-python answers in the caller's
protocol. Over HTTP/1.1, hypercorn then closes the connection (the body was not read to its end).
Over HTTP/2 the connection carries other streams, and hypercorn 0.18 fails the whole connection
when DATA arrives for a stream it has already answered: so there the rest of the body is read and
dropped (until the deadline) before the answer's last message goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from ..servicers.admission import bearer_token
from .compression import REQUEST_LIMIT
from .cors import App, Message, Receive, Scope, Send

# A request's envelope (gRPC-Web, Connect streams) adds a few bytes to the message it carries.
ENVELOPE_BYTES = 1024
REFUSED_READ_BYTES = 64 << 10
# (method path, bearer token or None) -> the refusal the gRPC server would answer, or None.
Refusal = Callable[[str, str | None], ConnectError | None]
# Told of each call refused here (its scope, refusal, start by perf_counter): the gRPC server never
# sees it, so its log line and metrics come from here.
Refused = Callable[[Scope, ConnectError, float], None]


class RequestIntake:
    """`limit(path)`: the most a method's request may be; `refuse`: the gRPC server's token check."""

    def __init__(
        self, app: App, seconds: float, limit: Callable[[str], int], refuse: Refusal, refused: Refused
    ) -> None:
        self.app = app
        self.seconds = seconds
        self.limit = limit
        self.refuse = refuse
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        intake = _Intake(self, scope, receive, send)
        limited = REQUEST_LIMIT.set(intake.limit)
        try:
            await self.app(scope, intake.receive, intake.send)
        finally:
            REQUEST_LIMIT.reset(limited)


class _Intake:
    """One request's body as the application reads it, and its answer as it goes out."""

    def __init__(self, rules: RequestIntake, scope: Scope, receive: Receive, send: Send) -> None:
        self.rules = rules
        self.scope = scope
        self._receive = receive
        self._send = send
        self.path: str = scope["path"]
        self.limit = rules.limit(self.path)
        self.refused = rules.refuse(self.path, _bearer(scope))
        self.began = time.perf_counter()
        self.deadline = asyncio.get_running_loop().time() + rules.seconds
        self.size = 0
        self.complete = False  # the client has sent its whole body (or gone)
        self.stopped = False  # the application is told no more of it

    async def receive(self) -> Message:
        if self.complete or self.stopped:
            return await self._receive()
        if self.refused is not None:
            while self.size <= REFUSED_READ_BYTES and not self.complete:
                await self._next()
            self.stopped = True
            self.rules.refused(self.scope, self.refused, self.began)
            raise self.refused
        message = await self._next()
        if self.size > self.limit + ENVELOPE_BYTES:
            self.stopped = True
            raise ConnectError(Code.RESOURCE_EXHAUSTED, f"the request is larger than {self.limit} bytes")
        return message

    async def _next(self) -> Message:
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self._receive()
        except TimeoutError:
            self.stopped = True
            raise ConnectError(
                Code.DEADLINE_EXCEEDED, f"the request did not arrive within {self.rules.seconds:g} s"
            ) from None
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        else:
            self.complete = True
        return message

    async def send(self, message: Message) -> None:
        ends = (message["type"] == "http.response.body" and not message.get("more_body", False)) or (
            message["type"] == "http.response.trailers" and not message.get("more_trailers", False)
        )
        if ends and not self.complete and self.scope.get("http_version") == "2":
            await self._drop_rest()
        await self._send(message)

    async def _drop_rest(self) -> None:
        with contextlib.suppress(ConnectError):  # the deadline passed: answer anyway
            while not self.complete:
                await self._next()


def _bearer(scope: Scope) -> str | None:
    # As text whatever its bytes (a value that is not UTF-8 is an invalid token, not an error).
    return bearer_token((k.decode(), v.decode("latin-1")) for k, v in scope["headers"] if k == b"authorization")

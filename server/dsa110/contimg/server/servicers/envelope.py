"""The envelope of every RPC: admission, undecodable or oversized requests, reply reuse, and every
failure as a rich status (servicers/status.py), never a stack trace.

Servicer methods are written as plain coroutines (or async generators, for server streams) and
wrapped here by one of four decorators: `unary` and `streaming` for every method, `read` and
`read_stream` for reads whose replies are reused. Those get their request as bytes
(servicers/decoding.py: `Raw`): the reply kept for the same method and bytes is sent if nothing has
committed since it was computed (readcache.py), and the request is decoded and the method run only
when it is not. Only a complete, successful reply is kept; errors are computed every time.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import Message

from ..domain.errors import DomainError
from ..readcache import ReadCache
from ..rpc_types import Ctx
from ..streams import send_all
from .decoding import UNDECODABLE, Oversized, Raw, Unread
from .encoded import Encoded
from .status import abort, refusal_for_oversized, undecodable_status

if TYPE_CHECKING:
    from ..accesslog import Recorder

R = TypeVar("R")
# Requests above this size are answered without their reply being kept (hashing them would cost
# more than it saves, and keys count toward the cache's bytes).
MAX_KEY_BYTES = 16 << 10


# Both checks are plain functions, awaited only when they refuse: no coroutine per check per call.


def _unreadable(request: Any) -> grpc.Status | None:
    if request is UNDECODABLE:
        return undecodable_status()
    if request.__class__ is Oversized:
        return refusal_for_oversized(request.size, request.limit)
    return None


def _admit(servicer: Any, name: str, context: Ctx) -> grpc.Status | None:
    return servicer.admission.admit(name, context)  # type: ignore[no-any-return]  # slot given back when done


def _encoded(reply: Any) -> Encoded[Any]:
    if reply.__class__ is Encoded:
        return reply  # type: ignore[no-any-return]
    message: Message = reply
    return Encoded(message.__class__, message.SerializeToString())


class _Lookup:
    """A reusable read's request looked up in the read cache: what was kept for it, if still valid,
    and the key and version to keep its new reply under; `request` decoded when it must be computed.
    Where the cache has a barrier (PostgreSQL), a kept reply still needs `confirmed()`."""

    __slots__ = ("kept", "key", "request", "version")

    def __init__(self, reads: ReadCache, name: str, request: Any):
        self.key: Hashable | None = None
        self.version: Hashable | None = None
        self.kept: Any = None
        if request.__class__ is Raw:
            if len(request.data) <= MAX_KEY_BYTES:
                self.key = (name, request.data)
                self.version = reads.version()
                self.kept = reads.get(self.key, self.version)
                if self.kept is not None:
                    return
            request = request.decode()
        self.request = request

    async def confirmed(self, reads: ReadCache, raw: Raw) -> None:
        """Drop the kept reply if a commit that returned before now is not in it (readcache.py)."""
        self.kept, self.version = await reads.confirm(self.kept, self.version)
        if self.kept is None:
            self.request = raw.decode()

    def keep(self, reads: ReadCache, reply: Any, size: int) -> None:
        if self.key is not None:
            reads.keep(self.key, self.version, reply, size + MAX_KEY_BYTES // 64)


def unary(fn: Callable[[Any, Any, Ctx], Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """The servicer method as a unary RPC."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> R:
        recorder: Recorder | None = self.recorder
        began = recorder.begin(name, context) if recorder is not None else None
        try:
            if (refused := _admit(self, name, context)) is not None:
                await context.abort_with_status(refused)
            try:
                if request.__class__ is Unread:  # a write, admitted before its body was read
                    request = await request.read()
                if (refused := _unreadable(request)) is not None:
                    await context.abort_with_status(refused)
                return await fn(self, request, context)
            except (DomainError, Exception) as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await abort(context, exc, fn.__qualname__)
        except BaseException as exc:
            if began is not None:
                recorder.end(began, _failure(exc, context), context)  # type: ignore[union-attr]
                began = None
            raise
        finally:
            if began is not None:
                recorder.end(began, context.code(), context)  # type: ignore[union-attr]

    wrapper.records_calls = True  # type: ignore[attr-defined]  # handlers.py: no access-log wrapper
    return wrapper


def read(fn: Callable[[Any, Any, Ctx], Awaitable[Any]]) -> Callable[..., Awaitable[Encoded[Any]]]:
    """A unary read whose reply is reused while nothing commits (module docstring)."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> Encoded[Any]:
        recorder: Recorder | None = self.recorder
        began = recorder.begin(name, context) if recorder is not None else None
        try:
            if (refused := _admit(self, name, context)) is not None:
                await context.abort_with_status(refused)
            try:
                found = _Lookup(self.reads, name, request)
                if found.kept is not None and self.reads.barrier is not None:
                    await found.confirmed(self.reads, request)
                if found.kept is not None:
                    return found.kept  # type: ignore[no-any-return]
                if (refused := _unreadable(found.request)) is not None:
                    await context.abort_with_status(refused)
                reply = _encoded(await fn(self, found.request, context))
                found.keep(self.reads, reply, len(reply.data))
                return reply
            except (DomainError, Exception) as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await abort(context, exc, fn.__qualname__)
        except BaseException as exc:
            if began is not None:
                recorder.end(began, _failure(exc, context), context)  # type: ignore[union-attr]
                began = None
            raise
        finally:
            if began is not None:
                recorder.end(began, context.code(), context)  # type: ignore[union-attr]

    wrapper.reads_raw = True  # type: ignore[attr-defined]  # handlers.py: hand it the request's bytes
    wrapper.records_calls = True  # type: ignore[attr-defined]  # handlers.py: no access-log wrapper
    return wrapper


def _failure(exc: BaseException, context: Ctx) -> object:
    """The status code of a call that ended by `exc`, for its log line."""
    if exc.__class__ is asyncio.CancelledError:
        return "CANCELLED"
    return context.code() if isinstance(exc, grpc.aio.AbortError) else "UNKNOWN"


def streaming(
    fn: Callable[[Any, Any, Ctx], AsyncGenerator[R, None]],
) -> Callable[..., Awaitable[None]]:
    """The servicer method as a server-streaming RPC (admitted for as long as the stream is open).

    The method is written as an async generator and served as a coroutine that sends its items
    (streams.send_all: why grpc must never be handed the generator itself)."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> None:
        if (refused := _admit(self, name, context)) is not None:
            await context.abort_with_status(refused)
        try:
            if (refused := _unreadable(request)) is not None:
                await context.abort_with_status(refused)
            await send_all(context, fn(self, request, context))
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await abort(context, exc, fn.__qualname__)

    return wrapper


def read_stream(
    fn: Callable[[Any, Any, Ctx], AsyncGenerator[Any, None]],
) -> Callable[..., Awaitable[None]]:
    """A server-streaming read whose messages are reused while nothing commits; kept only once
    every message has been sent."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> None:
        if (refused := _admit(self, name, context)) is not None:
            await context.abort_with_status(refused)
        try:
            found = _Lookup(self.reads, name, request)
            if found.kept is not None and self.reads.barrier is not None:
                await found.confirmed(self.reads, request)
            if found.kept is not None:
                await send_all(context, _replay(found.kept))
                return
            if (refused := _unreadable(found.request)) is not None:
                await context.abort_with_status(refused)
            sent: list[Encoded[Any]] = []

            async def recorded() -> AsyncGenerator[Encoded[Any], None]:
                async with aclosing(fn(self, found.request, context)) as messages:
                    async for message in messages:
                        sent.append(_encoded(message))
                        yield sent[-1]

            await send_all(context, recorded())
            found.keep(self.reads, tuple(sent), sum(len(m.data) for m in sent))
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await abort(context, exc, fn.__qualname__)

    wrapper.reads_raw = True  # type: ignore[attr-defined]
    return wrapper


async def _replay(messages: tuple[Encoded[Any], ...]) -> AsyncGenerator[Encoded[Any], None]:
    for message in messages:
        yield message

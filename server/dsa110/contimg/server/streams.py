"""Sending a server stream from inside the RPC's task: the one way every stream here is written.

grpc.aio (checked on 1.85.1) can iterate a handler's async generator itself, but when the client
leaves mid-stream (a write fails, or the call is cancelled while a write waits on a client that
stopped reading) it abandons the generator suspended at its `yield`. Its `finally` blocks, and those
of every wrapper around it, then run whenever Python finalizes it, after grpc has released the call:
`_schedule_rpc_coro` sets `rpc_state.call` to NULL once the RPC's task ends, and `context.peer()`,
`write`, `abort` or `send_initial_metadata` there hand NULL to gRPC core (SIGSEGV in cygrpc).
(`code()`, `details()` and `invocation_metadata()` only read Python-side state and stay safe.)

So handlers are coroutines that write each item with `send_all`, which closes the generator before
returning: every `finally` of ours runs inside the task, while the call is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from .rpc_types import Ctx


async def send_all(context: Ctx, items: AsyncGenerator[Any, None]) -> None:
    """Write every item of `items` to the stream, then close `items` (also when the client leaves)."""
    async with contextlib.aclosing(items):
        async for item in items:
            try:
                await context.write(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The stream is over: the client went away (the write's batch failed in core) or the
                # server is stopping. grpc reports a handler's CancelledError quietly, as a client
                # that cancelled; the core error itself would be logged with a traceback for every
                # client that leaves mid-stream, which is normal life, not a fault.
                raise asyncio.CancelledError("the stream ended during a write") from exc

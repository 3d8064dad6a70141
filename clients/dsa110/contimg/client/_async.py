"""The asyncio client, on grpc.aio; same surface as the blocking `Client`, with awaitables.

Its methods come from the table in _methods; this module only says how a call is made.
"""

from __future__ import annotations

from typing import Any, Self, TypeVar, cast

import grpc
from google.protobuf.message import Message

from . import _methods as m
from ._rpc import AsyncTransport, Rpc, settings
from .config import ClientConfig
from .errors import from_aio_error

R = TypeVar("R")
MR = TypeVar("MR", bound=Message)


class _AsyncChannelOwner(AsyncTransport):
    def __init__(self, config: ClientConfig | str | None = None, *, channel: grpc.aio.Channel | None = None) -> None:
        self.config = config = settings(config)
        if channel is None:
            options = config.channel_options()
            if config.uses_tls:
                channel = grpc.aio.secure_channel(config.target, config.credentials(), options=options)
            else:
                channel = grpc.aio.insecure_channel(config.target, options=options)
        self._channel = channel
        self._owns_channel = True  # a clone from with_options shares it and leaves it open
        self._stubs = {service: stub(channel) for service, stub in m.STUBS.items()}

    def _call(self, rpc: Rpc[..., Any, Any], request: object) -> Any:
        stub = self._stub(rpc.service, rpc.method)
        timeout = rpc.timeout(self.config.deadline_s, request)
        return stub(request, timeout=timeout, metadata=self.config.call_metadata())

    async def _invoke(self, rpc: Rpc[..., Any, R], request: object) -> R:
        try:
            return cast(R, await self._call(rpc, request))
        except grpc.aio.AioRpcError as error:
            raise from_aio_error(error) from error

    async def _collect(self, rpc: Rpc[..., Any, MR], request: object) -> MR:
        # The deadline covers the whole stream: a lightcurve is a bounded read, not a watch.
        merged = rpc.response()
        try:
            async for response in self._call(rpc, request):
                merged.MergeFrom(response)
        except grpc.aio.AioRpcError as error:
            raise from_aio_error(error) from error
        return merged

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncClient(_AsyncChannelOwner, m.Methods):
    """asyncio client of the four contimg services; create it inside the running loop.

    Unary methods are coroutines; List/Search methods return an AsyncPager (`async for`, or
    `await` it first to read `total_size`); watchers are async iterators (close them with
    `contextlib.aclosing` when leaving early). Failures raise ContimgError subclasses.
    """

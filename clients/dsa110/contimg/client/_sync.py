"""The blocking client, on the synchronous grpc channel API.

It never touches an event loop, so it works the same in scripts, threads and inside a running
loop (a Jupyter cell), where driving an asyncio client to completion would fail. Its methods come
from the table in _methods; this module only says how a call is made.
"""

from __future__ import annotations

from typing import Any, Self, TypeVar, cast

import grpc
from google.protobuf.message import Message

from . import _methods as m
from ._rpc import Rpc, SyncTransport, settings
from .config import ClientConfig
from .errors import from_rpc_error

R = TypeVar("R")
MR = TypeVar("MR", bound=Message)


class _ChannelOwner(SyncTransport):
    def __init__(self, config: ClientConfig | str | None = None, *, channel: grpc.Channel | None = None) -> None:
        self.config = config = settings(config)
        if channel is None:
            options = config.channel_options()
            if config.uses_tls:
                channel = grpc.secure_channel(config.target, config.credentials(), options=options)
            else:
                channel = grpc.insecure_channel(config.target, options=options)
        self._channel = channel
        self._owns_channel = True  # a clone from with_options shares it and leaves it open
        self._stubs = {service: stub(channel) for service, stub in m.STUBS.items()}

    def _call(self, rpc: Rpc[..., Any, Any], request: object) -> Any:
        stub = self._stub(rpc.service, rpc.method)
        timeout = rpc.timeout(self.config.deadline_s, request)
        return stub(request, timeout=timeout, metadata=self.config.call_metadata())

    def _invoke(self, rpc: Rpc[..., Any, R], request: object) -> R:
        try:
            return cast(R, self._call(rpc, request))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    def _collect(self, rpc: Rpc[..., Any, MR], request: object) -> MR:
        # The deadline covers the whole stream: a lightcurve is a bounded read, not a watch.
        merged = rpc.response()
        try:
            for response in self._call(rpc, request):
                merged.MergeFrom(response)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        return merged

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client(_ChannelOwner, m.Methods):
    """Blocking client of the four contimg services.

    `Client()` reads its settings from the environment (ClientConfig.from_env); `Client("host:port")`
    or `Client(ClientConfig(...))` sets them explicitly. Every method raises a ContimgError
    subclass on failure. Use as a context manager, or call close().
    """

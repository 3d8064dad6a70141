"""A raw HTTP/2 gRPC client for the floods well-behaved clients never send (bounded-resources tests).

It speaks HTTP/2 through the `h2` library over one TCP connection and does only what it is told:
open many streams, never read (a zero flow-control window: the server cannot send a byte back),
send request bodies of any size, or go away. gRPC framing is the 5-byte prefix (compressed flag,
big-endian length) before each message.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Sequence

import h2.config
import h2.connection
import h2.events
import h2.settings


def grpc_frame(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


class RawClient:
    def __init__(self, host: str, port: int, *, window: int = 65535, max_streams: int = 100_000):
        self.host = host
        self.port = port
        self.window = window
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
            },
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ended: dict[int, str] = {}  # stream id -> grpc-status, or "reset"
        self.headers: dict[int, dict[str, str]] = {}
        self.remote_max_streams = 0
        self._changed = asyncio.Event()  # set whenever a stream ends
        self._pump: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.conn.initiate_connection()
        await self._flush()
        self._pump = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _flush(self) -> None:
        assert self.writer is not None
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def _read(self) -> None:
        assert self.reader is not None
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                    if changed is not None:
                        self.remote_max_streams = changed.new_value
                elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    values = dict(event.headers)
                    self.headers.setdefault(event.stream_id, {}).update(values)
                    if "grpc-status" in values:
                        self.ended[event.stream_id] = values["grpc-status"]
                        self._changed.set()
                elif isinstance(event, h2.events.StreamReset):
                    self.ended.setdefault(event.stream_id, "reset")
                    self._changed.set()
            await self._flush()  # settings and ping acks; never a window update: we do not read data

    async def call(
        self, method: str, message: bytes | None, metadata: Sequence[tuple[str, str]] = (), *, end: bool = True
    ) -> int:
        """Open a stream for `method` (`/package.Service/Method`) and send `message` (None: headers
        only, the body to follow through `send_rest`); its stream id. Sends as much of the body as
        the server's flow-control window allows now, the rest never."""
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", f"{self.host}:{self.port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *metadata,
            ],
        )
        if message is None:
            await self._flush()
            return stream
        body = grpc_frame(message)
        room = min(self.conn.local_flow_control_window(stream), len(body))
        sent = 0
        while sent < room:
            chunk = body[sent : sent + min(self.conn.max_outbound_frame_size, room - sent)]
            self.conn.send_data(stream, chunk, end_stream=end and sent + len(chunk) == len(body))
            sent += len(chunk)
        if not body:
            self.conn.end_stream(stream)
        await self._flush()
        return stream

    async def ended_status(self, stream: int, within_s: float) -> str:
        """The stream's grpc-status ("reset" for a reset), once it has ended; "" after `within_s`."""
        deadline = time.monotonic() + within_s
        while stream not in self.ended and time.monotonic() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
        return self.ended.get(stream, "")

    async def send_rest(self, stream: int, body: bytes, offset: int) -> int:
        """Send more of a body as the window allows; how far it got."""
        room = min(self.conn.local_flow_control_window(stream), len(body) - offset)
        end = offset + room
        while offset < end:
            chunk = body[offset : offset + min(self.conn.max_outbound_frame_size, end - offset)]
            offset += len(chunk)
            self.conn.send_data(stream, chunk, end_stream=offset == len(body))
        await self._flush()
        return offset


async def count_ended(clients: Sequence[RawClient], status: str, expected: int, within_s: float = 30.0) -> int:
    """How many streams of `clients` ended with `status` ("": however they ended), once that is
    `expected` (or after `within_s`: the server may still be answering the last of a flood)."""
    deadline = time.monotonic() + within_s
    while True:
        count = sum(1 for c in clients for s in c.ended.values() if not status or s == status)
        if count >= expected or time.monotonic() >= deadline:
            return count
        await asyncio.sleep(0.05)

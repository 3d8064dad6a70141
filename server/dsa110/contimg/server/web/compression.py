"""gzip for the browser port, with decompression stopped at the size a request may have.

connect-python's own gzip decompresses a request whole before checking its size: a 1 MB body of
gzipped zeros took the server from 76 MB to 2.1 GB. This one stops at `max_bytes` and refuses the
request RESOURCE_EXHAUSTED; a body that is not gzip is INVALID_ARGUMENT (it was `unknown`).
Replies are compressed as connect-python's are (level 6, when the client accepts gzip).
"""

from __future__ import annotations

import gzip
import zlib
from contextvars import ContextVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError

GZIP_WBITS = 16 + zlib.MAX_WBITS
# A gzip body may hold several members, one after another; at the end of each, zlib copies what is
# left of its input. So members are limited (a 4 MiB body of 200,000 empty ones would be copied
# 200,000 times, on the event loop), and fed to zlib a slice at a time.
MAX_MEMBERS = 16
SLICE_BYTES = 64 << 10
# What the request being read may decompress to, when less than the message limit: its method's
# own limit (a read takes 64 KiB), set for the request by web/intake.py.
REQUEST_LIMIT: ContextVar[int] = ContextVar("contimg_web_request_limit", default=0)


class BoundedGzip:
    """A connectrpc.compression.Compression."""

    def __init__(self, max_bytes: int, level: int = 6) -> None:
        self.max_bytes = max_bytes
        self.level = level

    def name(self) -> str:
        return "gzip"

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        return gzip.compress(data, compresslevel=self.level)

    def decompress(self, data: bytes | bytearray | memoryview) -> bytes:
        limit = min(self.max_bytes, REQUEST_LIMIT.get() or self.max_bytes)
        view = memoryview(data)
        out = bytearray()
        at, members = 0, 0
        member = None
        while at < len(view):
            if member is None:
                members += 1
                if members > MAX_MEMBERS:
                    raise ConnectError(Code.INVALID_ARGUMENT, f"the request's gzip has over {MAX_MEMBERS} members")
                member = zlib.decompressobj(GZIP_WBITS)
            piece = view[at : at + SLICE_BYTES]
            try:
                out += member.decompress(piece, limit + 1 - len(out))
            except zlib.error as exc:
                raise ConnectError(Code.INVALID_ARGUMENT, f"the request is not valid gzip: {exc}") from None
            if len(out) > limit or member.unconsumed_tail:
                raise ConnectError(Code.RESOURCE_EXHAUSTED, f"the request decompresses to more than {limit} bytes")
            at += len(piece) - len(member.unused_data)
            if member.eof:
                member = None
        if member is not None:
            raise ConnectError(Code.INVALID_ARGUMENT, "the request is not valid gzip: it ends early")
        return bytes(out)

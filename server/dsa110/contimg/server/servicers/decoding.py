"""Requests whose bytes do not decode get INVALID_ARGUMENT, not gRPC's UNKNOWN ("Unexpected DecodeError"),
and requests larger than their method can need are refused before they are decoded.

Truncated or corrupt messages, invalid UTF-8 in a string field and nesting deeper than the protobuf
decoder allows can all be sent by a client that does not use a protobuf library to encode. gRPC
Python treats a failing deserializer like a crashing handler; here the deserializer returns a
marker instead, and the `unary`/`streaming` wrappers (servicers/envelope.py) abort with a proper rich
status. (This was an interceptor; a per-call interceptor costs ~7 us of every RPC, the check ~0.1.)

Size: a read needs kilobytes (a BatchGet of 1,000 names a few MiB), yet gRPC accepts any request up
to the server's message limit, which RecordPhotometry needs to be large; decoding 52 MB requests
sent by anonymous callers once took the server to a 5.2 GB peak. Each method has its own limit,
checked on the raw bytes: a larger request is marked OVERSIZED, refused RESOURCE_EXHAUSTED, and
never decoded. (Writes are authorized before their body is even read: servicers/handlers.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from typing import Any

from google.protobuf.message import DecodeError


class _Undecodable:
    __slots__ = ()


class Oversized:
    """A request larger than its method's limit (never decoded)."""

    __slots__ = ("limit", "size")

    def __init__(self, size: int, limit: int):
        self.size = size
        self.limit = limit


UNDECODABLE: Any = _Undecodable()


def lenient(strict: Callable[[bytes], Any], limit: int = 0) -> Callable[[bytes], Any]:
    """`strict`, except that bytes it cannot decode become UNDECODABLE instead of an exception,
    and more than `limit` bytes (when set) an Oversized marker, without decoding them."""

    def deserialize(data: bytes) -> Any:
        if limit and len(data) > limit:
            return Oversized(len(data), limit)
        try:
            return strict(data)
        except DecodeError:
            return UNDECODABLE

    return deserialize


class Raw:
    """A read's request bytes, not decoded yet: the envelope looks its reply up by them first
    (servicers/envelope.py), and decodes them only when it has to compute the reply."""

    __slots__ = ("_strict", "data")

    def __init__(self, data: bytes, strict: Callable[[bytes], Any]):
        self.data = data
        self._strict = strict

    def decode(self) -> Any:
        try:
            return self._strict(self.data)
        except DecodeError:
            return UNDECODABLE


def raw(strict: Callable[[bytes], Any], limit: int) -> Callable[[bytes], Any]:
    """As `lenient`, but the bytes within the limit are handed on undecoded, as `Raw`."""

    def deserialize(data: bytes) -> Any:
        if len(data) > limit:
            return Oversized(len(data), limit)
        return Raw(data, strict)

    return deserialize


class Unread:
    """A unary request not read yet: the method is registered as client-streaming so that its caller
    is admitted before the body is read (servicers/handlers.py); `read` then takes the one message."""

    __slots__ = ("_requests",)

    def __init__(self, requests: AsyncIterable[Any]):
        self._requests = requests

    async def read(self) -> Any:
        """The request (decoded as `lenient` does), or UNDECODABLE when there is not exactly one."""
        found: list[Any] = []
        async for message in self._requests:
            found.append(message)
            if len(found) > 1:
                break
        return found[0] if len(found) == 1 else UNDECODABLE

"""Responses assembled from serialized items, sent as they are.

Building an Image message from a record costs ~25 us in Python; a 100-item page therefore spent
most of its time there. Each item is kept as wire bytes (readcache.py: items, keyed by row version),
already framed as the parent's field (tag, length, message), so a response is a concatenation.

Such a response is returned as `Encoded[Response]` and leaves unchanged: every method handler is
registered with `serializer(Response)` (servicers/handlers.py), which sends an `Encoded` reply's
bytes and serializes any other reply as usual. Parsing the bytes back into a message only to have
gRPC serialize it again cost ~80 us per 100-item page. Clients see the same bytes either way.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)
K = TypeVar("K", int, str)
R = TypeVar("R")
T = TypeVar("T")


class Encoded(Generic[M]):
    """A reply of message type `cls`, already serialized (what `cls.SerializeToString()` would give)."""

    __slots__ = ("cls", "data")

    def __init__(self, cls: type[M], data: bytes):
        self.cls = cls
        self.data = data

    def message(self) -> M:
        return self.cls.FromString(self.data)

    def __repr__(self) -> str:
        return f"Encoded({self.cls.__name__}, {len(self.data)} bytes)"


def serializer(cls: type[Message]) -> Callable[[Any], bytes]:
    """The response serializer of a method returning `cls`: `Encoded` replies pass through unchanged."""
    serialize: Callable[[Any], bytes] = cls.SerializeToString

    def serialize_reply(reply: Any) -> bytes:
        if reply.__class__ is Encoded:
            if reply.cls is not cls:  # a servicer bug: fail the call rather than send the wrong type
                raise TypeError(f"{reply!r} returned where {cls.__name__} is expected")
            data: bytes = reply.data
            return data
        return serialize(reply)

    return serialize_reply


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def unframe(framed: bytes) -> bytes:
    """The payload of one length-delimited field with a one-byte tag (what `field_bytes` made)."""
    i = 1
    while framed[i] & 0x80:
        i += 1
    return framed[i + 1 :]


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    if number < 16 and n < 16384:  # one-byte tag, one- or two-byte length: the common case, inline
        tag = number << 3 | 2
        return (bytes((tag, n)) if n < 128 else bytes((tag, (n & 0x7F) | 0x80, n >> 7))) + payload
    return _varint(number << 3 | 2) + _varint(n) + payload


_ZERO_DOUBLE = bytes(8)


def double_field(number: int, value: float) -> bytes:
    """A proto3 `double` field; empty for 0.0, which proto3 does not serialize (-0.0 it does)."""
    packed = struct.pack("<d", value)
    if packed == _ZERO_DOUBLE:
        return b""
    return (bytes((number << 3 | 1,)) if number < 16 else _varint(number << 3 | 1)) + packed


def string_field(number: int, text: str) -> bytes:
    """A proto3 `string` field; empty for "" (not serialized)."""
    return field_bytes(number, text.encode()) if text else b""


def uint_field(number: int, value: int) -> bytes:
    """A proto3 integer field holding a value >= 0; empty for 0 (not serialized)."""
    if value < 0:
        raise ValueError("uint_field encodes non-negative values only")
    return _varint(number << 3) + _varint(value) if value else b""


_PAGE_SHAPE = [
    (1, FieldDescriptor.TYPE_MESSAGE, True),
    (2, FieldDescriptor.TYPE_STRING, False),
    (3, FieldDescriptor.TYPE_INT32, False),
]
_PAGES: set[type[Message]] = set()


def page(cls: type[M], items: Iterable[bytes], next_page_token: str, total_size: int) -> Encoded[M]:
    """A List/Search response: 1 = the items (already framed), 2 = next_page_token, 3 = total_size."""
    if cls not in _PAGES:  # checked once per type: the contract's pages all have this shape
        fields = cls.DESCRIPTOR.fields
        if [(f.number, f.type, f.is_repeated) for f in fields] != _PAGE_SHAPE or [f.name for f in fields[1:]] != [
            "next_page_token",
            "total_size",
        ]:
            raise TypeError(f"{cls.__name__} is not (repeated items = 1, next_page_token = 2, total_size = 3)")
        _PAGES.add(cls)
    return Encoded(cls, b"".join([*items, string_field(2, next_page_token), uint_field(3, total_size)]))

"""Responses assembled from cached serialized items, sent as they are.

Building an Image message from a record costs ~25 us in Python; a 100-item page therefore spent
most of its time there. Each item is cached as wire bytes under (kind, field number, id,
update_time): every write to a row bumps its update_time, so a key can never name stale bytes, on
any replica, with no invalidation. The cached bytes are already framed as the parent's field (tag,
length, message), so a response is a concatenation.

Such a response is returned as `Encoded[Response]` and leaves unchanged: every method handler is
registered with `serializer(Response)` (servicers/handlers.py), which sends an `Encoded` reply's
bytes and serializes any other reply as usual. Parsing the bytes back into a message only to have
gRPC serialize it again cost ~80 us per 100-item page. Clients see the same bytes either way.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any, Generic, TypeVar, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ..slices import map_in_slices

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


def reply_size(reply: Encoded[Any]) -> int:
    return len(reply.data)


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


class EncodedCache:
    """An LRU of serialized messages, each framed as a field of its parent message, bounded by
    entries and by bytes (each entry counted as its bytes plus `ENTRY_OVERHEAD` for its key and
    slot: 200,000 encoded images, its old count bound, were ~300 MB)."""

    ENTRY_OVERHEAD = 160

    def __init__(self, capacity: int = 200_000, max_bytes: int = 64 << 20):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _put(self, key: Hashable, data: bytes) -> bytes:
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= len(old) + self.ENTRY_OVERHEAD
        self._items[key] = data
        self.size += len(data) + self.ENTRY_OVERHEAD
        while len(self._items) > self.capacity or self.size > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.size -= len(evicted) + self.ENTRY_OVERHEAD
        return data

    def get(
        self, kind: str, number: int, ident: Hashable, version: int, build: Callable[[T], Message], item: T
    ) -> bytes:
        """`build(item)` serialized as field `number` of a parent; `version` is the row's update_time."""
        key = (kind, number, ident, version)
        found = self._items.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        return self._put(key, field_bytes(number, build(item).SerializeToString()))

    async def from_refs(
        self,
        kind: str,
        number: int,
        refs: Sequence[tuple[K, int]],
        fetch: Callable[[list[K]], Awaitable[Sequence[R | None]]],
        ident: Callable[[R], tuple[K, int]],
        build: Callable[[R], Message],
    ) -> list[bytes]:
        """Framed items for (id, update_time) refs; only rows not cached are fetched and built.

        A row that changed after the refs were read comes back newer (cached under its own key);
        one deleted in between is left out.
        """
        lookup = self._items.get
        out: list[bytes | None] = [lookup((kind, number, i, v)) for i, v in refs]
        if None not in out:
            self.hits += len(out)
            return cast(list[bytes], out)
        missing = [i for (i, _), b in zip(refs, out, strict=True) if b is None]
        self.hits += len(out) - len(missing)
        fetched: dict[K, R] = {}
        for r in await fetch(missing):
            if r is not None:
                fetched[ident(r)[0]] = r

        def built(n: int) -> None:
            i = refs[n][0]
            if out[n] is None and i in fetched:
                item: R = fetched[i]
                row_id, version = ident(item)
                out[n] = self.get(kind, number, row_id, version, build, item)

        await map_in_slices(built, range(len(refs)))
        return [b for b in out if b is not None]


class ReplyCache:
    """Whole replies (the serialized messages of a stream) under keys that name their data's version.

    An LRU bounded by the bytes it holds; a reply larger than `max_entry_bytes` is not kept.
    """

    def __init__(self, max_bytes: int = 32 << 20, max_entry_bytes: int = 2 << 20):
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.size = 0
        self._replies: OrderedDict[Hashable, tuple[bytes, ...]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> tuple[bytes, ...] | None:
        found = self._replies.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._replies.move_to_end(key)
        return found

    def put(self, key: Hashable, messages: Sequence[bytes]) -> None:
        size = sum(len(m) for m in messages)
        if size > self.max_entry_bytes:
            return
        old = self._replies.pop(key, None)
        if old is not None:
            self.size -= sum(len(m) for m in old)
        self._replies[key] = tuple(messages)
        self.size += size
        while self.size > self.max_bytes:
            _, evicted = self._replies.popitem(last=False)
            self.size -= sum(len(m) for m in evicted)

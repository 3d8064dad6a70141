"""Assemble list responses from cached serialized items instead of building them field by field.

Building an Image message from a record costs ~25 us in Python; a 100-item page therefore spent
most of its time there. Each item's wire bytes are cached under (kind, id, update_time): every
write to a row bumps its update_time, so a key can never name stale bytes, on any replica, with no
invalidation. The response is then one C-level parse of the concatenated bytes.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from functools import partial
from typing import TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)
K = TypeVar("K", int, str)
R = TypeVar("R")


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


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    if number < 16 and n < 16384:  # one-byte tag, one- or two-byte length: the common case, inline
        tag = number << 3 | 2
        return (bytes((tag, n)) if n < 128 else bytes((tag, (n & 0x7F) | 0x80, n >> 7))) + payload
    return _varint(number << 3 | 2) + _varint(n) + payload


def double_field(number: int, value: float) -> bytes:
    return _varint(number << 3 | 1) + struct.pack("<d", value)


class EncodedCache:
    """A bounded LRU of serialized messages."""

    def __init__(self, capacity: int = 200_000):
        self.capacity = capacity
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, build: Callable[[], Message]) -> bytes:
        found = self._items.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        data = build().SerializeToString()
        self._items[key] = data
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return data

    def peek(self, key: Hashable) -> bytes | None:
        found = self._items.get(key)
        if found is not None:
            self.hits += 1
        return found

    async def from_refs(
        self,
        kind: str,
        refs: Sequence[tuple[K, int]],
        fetch: Callable[[list[K]], Awaitable[Sequence[R | None]]],
        ident: Callable[[R], tuple[K, int]],
        build: Callable[[R], Message],
    ) -> list[bytes]:
        """Encoded items for (id, update_time) refs; only rows not cached are fetched and built.

        A row that changed after the refs were read comes back newer (cached under its own key);
        one deleted in between is left out.
        """
        out: list[bytes | None] = [self.peek((kind, i, v)) for i, v in refs]
        missing = [i for (i, _), b in zip(refs, out, strict=True) if b is None]
        if missing:
            fetched: dict[K, R] = {}
            for r in await fetch(missing):
                if r is not None:
                    fetched[ident(r)[0]] = r
            for n, ((i, _), b) in enumerate(zip(refs, out, strict=True)):
                if b is None and i in fetched:
                    item: R = fetched[i]
                    key = (kind, *ident(item))
                    out[n] = self.get(key, partial(build, item))
        return [b for b in out if b is not None]

    def message(self, cls: type[M], number: int, parts: Iterable[bytes]) -> M:
        """`cls` with repeated field `number` holding the already serialized items."""
        return cls.FromString(b"".join(field_bytes(number, p) for p in parts))

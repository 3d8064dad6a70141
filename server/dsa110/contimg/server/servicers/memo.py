"""Whole replies of List and Search calls, reused while the repository hands back the very same page.

Assembling a 100-item page costs ~100-300 us of Python even when every item's bytes are cached:
parsing the filter and page token, looking up 100 items, signing the next page token. The SQLite
repositories return the identical Page object until the next commit by anyone (`Database.cached`),
so a reply assembled from it stays right for as long as that object comes back. The memo checks
that by identity, through a weak reference: a dead reference matches nothing, so an identity cannot
pass to another object, and the memo does not keep pages alive (the repository's own cache bounds
those). The Redis-cached repositories also return their stored object until it is invalidated or
expires; a repository that builds a new object every time never hits, and costs a lookup.

Keyed by the request's bytes; the query parsed from them is kept too, so a repeated request skips
parsing (page tokens do not expire: decoding one always gives the same result). A key counts
toward the byte bound as its reply does, and requests above `max_key_bytes` (unknown fields can
pad a request to the message size limit) are answered without being kept.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

P = TypeVar("P")  # what the request parses into (query, fingerprint)
R = TypeVar("R")  # the repository's result
E = TypeVar("E")  # the reply


class _Entry(Generic[P, R, E]):
    __slots__ = ("plan", "reply", "result", "size")

    def __init__(self, plan: P, result: weakref.ref[Any], reply: E, size: int):
        self.plan = plan
        self.result = result
        self.reply = reply
        self.size = size


class ReplyMemo:
    """An LRU of replies bounded by entries and by bytes; a reply above `max_entry_bytes` is not kept."""

    def __init__(
        self,
        max_entries: int = 4096,
        max_bytes: int = 32 << 20,
        max_entry_bytes: int = 1 << 20,
        max_key_bytes: int = 16 << 10,
    ):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.max_key_bytes = max_key_bytes
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, bytes], _Entry[Any, Any, Any]] = OrderedDict()

    async def reply(
        self,
        key: tuple[str, bytes],
        plan: Callable[[], P],
        fetch: Callable[[P], Awaitable[R]],
        build: Callable[[P, R], Awaitable[E]],
        size: Callable[[E], int],
    ) -> E:
        """`build(plan, await fetch(plan))`, or the reply kept for `key` if `fetch` returned the same result."""
        entry = self._entries.get(key)
        planned: P = entry.plan if entry is not None else plan()
        result = await fetch(planned)
        if entry is not None and entry.result() is result:
            self.hits += 1
            self._entries.move_to_end(key)
            reply: E = entry.reply
            return reply
        self.misses += 1
        reply = await build(planned, result)
        key_bytes = len(key[1])
        if key_bytes <= self.max_key_bytes:
            try:
                seen = weakref.ref(result)
            except TypeError:  # not weakly referable: cannot be recognised safely, so never kept
                return reply
            self._keep(key, _Entry(planned, seen, reply, size(reply) + key_bytes))
        return reply

    def _keep(self, key: Any, entry: _Entry[Any, Any, Any]) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= old.size
        if entry.size > self.max_entry_bytes:
            return
        self._entries[key] = entry
        self.size += entry.size
        while self.size > self.max_bytes or len(self._entries) > self.max_entries:
            _, evicted = self._entries.popitem(last=False)
            self.size -= evicted.size

    def __len__(self) -> int:
        return len(self._entries)

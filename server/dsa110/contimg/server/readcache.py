"""The one read cache: every read result the server reuses, with one rule each for when it is stale.

Two kinds of entries share one LRU, bounded in bytes (`--read-cache-mb`):

* Results (whole replies, keyed by method and request bytes; list totals): valid while the storage's
  change version (storage/sqlite/changes.py) is the one read before they were computed. The version
  changes with every commit to the database, by this server, another replica, or any program
  writing the file, so no result is served after a write has returned; between commits a repeated
  read (dashboards polling, clients paging in step) costs a version check (~5 us) and a dict
  lookup. Under a steady stream of writes results are rebuilt, mostly from items:
* Items (one row's serialized message): valid for ever, because their key changes whenever what
  they encode does. Images and sources are keyed by (id, update_time): writers set update_time, and
  triggers (storage migration 4) move it when a program changes a row without doing so. Lightcurve
  points are keyed by their whole record (a tuple of values); job events by sequence and job version.

Nothing else in the server keeps read results. `max_bytes` 0 turns the cache off (every read
computed, nothing kept): the off switch of docs/performance.md, and the uncached oracle of the
tests. Values are shared by every caller and never modified (records are immutable, replies bytes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, TypeVar

from .slices import map_in_slices

T = TypeVar("T")
K = TypeVar("K")
R = TypeVar("R")

# What an entry costs beyond its value's bytes: the key tuple, the slot in the dict, the entry tuple.
ENTRY_OVERHEAD = 160
# An entry above this share of the cache is not kept: one reply may not empty the cache.
LARGEST_SHARE = 16
_ITEM = object()  # the version of items: they never go stale (module docstring)


class ReadCache:
    def __init__(
        self,
        version: Callable[[], Hashable | None],
        max_bytes: int,
        barrier: Callable[[], Awaitable[None]] | None = None,
    ):
        """`version()`: the storage's change version; None when it cannot tell (nothing is kept).
        `barrier()`, for a version that learns of other writers' commits by message (PostgreSQL):
        returns once every commit that had returned before the call is counted in `version()`; a
        kept result is reused only after one (`confirm`). None where `version()` is exact at once
        (SQLite's data_version)."""
        self.version = version
        self.barrier = barrier
        self.max_bytes = max_bytes
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, tuple[object, Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.size = 0

    def _keep(self, key: Hashable, version: object, value: Any, size: int) -> None:
        size += ENTRY_OVERHEAD
        if size > self.max_bytes // LARGEST_SHARE:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= old[2]
        self._entries[key] = (version, value, size)
        self.size += size
        while self.size > self.max_bytes:
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self.size -= evicted

    # ---- results: valid while nothing has committed ------------------------------------------------

    def get(self, key: Hashable, version: Hashable | None) -> Any | None:
        """The result kept for `key` if it was computed at `version` (read just before), else None."""
        found = self._entries.get(key)
        if found is not None and version is not None and found[0] == version:
            self.hits += 1
            self._entries.move_to_end(key)
            return found[1]
        self.misses += 1
        return None

    async def confirm(self, found: Any, version: Hashable | None) -> tuple[Any | None, Hashable | None]:
        """`found`, what `get(key, version)` returned: (found, version) if it is still valid once
        every commit returned so far is counted, else (None, the version now). Only needed when
        `barrier` is set."""
        assert self.barrier is not None
        await self.barrier()
        now = self.version()
        if now == version:
            return found, version
        self.hits -= 1
        self.misses += 1
        return None, now

    def keep(self, key: Hashable, version: Hashable | None, value: Any, size: int) -> None:
        """Keep `value`, computed after `version` was read: a commit during the computation leaves it
        under the older version, which the next read finds outdated. (None: not kept.)"""
        if version is not None and self.max_bytes:
            self._keep(key, version, value, size)

    async def computed(self, key: Hashable, compute: Callable[[], Awaitable[T]], size: int = 64) -> T:
        """`compute()`'s result, reused while nothing commits."""
        version = self.version()
        found = self.get(key, version)
        if found is not None and self.barrier is not None:
            found, version = await self.confirm(found, version)
        if found is not None:
            return found  # type: ignore[no-any-return]
        value = await compute()
        self.keep(key, version, value, size)
        return value

    # ---- items: valid for ever -----------------------------------------------------------------------

    def item(self, key: Hashable, build: Callable[[], bytes]) -> bytes:
        """The bytes kept for `key` (which names what they encode, version included), else `build()`'s."""
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            return found[1]  # type: ignore[no-any-return]
        self.misses += 1
        data = build()
        if self.max_bytes:
            self._keep(key, _ITEM, data, len(data))
        return data

    async def items_for_refs(
        self,
        kind: str,
        refs: Sequence[tuple[K, int]],
        fetch: Callable[[list[K]], Awaitable[Sequence[R | None]]],
        version_of: Callable[[R], tuple[K, int]],
        build: Callable[[R], bytes],
    ) -> list[bytes]:
        """The items of (id, update_time) refs, keyed (kind, id, update_time); only rows not kept are
        fetched and built. A row changed since the refs were read comes back newer (kept under its
        own key); one deleted in between is left out."""
        entries = self._entries
        out: list[bytes | None] = []
        for ident, version in refs:
            found = entries.get((kind, ident, version))
            out.append(found[1] if found is not None else None)
        missing = [i for (i, _), b in zip(refs, out, strict=True) if b is None]
        self.hits += len(out) - len(missing)
        if missing:
            fetched: dict[K, R] = {}
            for record in await fetch(missing):
                if record is not None:
                    fetched[version_of(record)[0]] = record

            def fill(n: int) -> None:
                ident = refs[n][0]
                if out[n] is None and ident in fetched:
                    record = fetched[ident]
                    out[n] = self.item((kind, *version_of(record)), lambda: build(record))

            await map_in_slices(fill, range(len(refs)))
        return [b for b in out if b is not None]


# A cache that keeps nothing: servicers built without one (unit tests, tools) compute every read.
def no_cache() -> ReadCache:
    return ReadCache(lambda: None, 0)

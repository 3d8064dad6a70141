"""An in-process cache of query results, exact across replicas through generation counters in Redis.

What it holds: results of the expensive reads only (list and search pages, lightcurves), keyed by
the full query and tagged with the resources they read ("images", "sources", ...), or - for a
lightcurve - keyed by the exact version of its source (see CachedSources.lightcurve). Primary-key
Gets are never cached: an indexed SQLite lookup costs a fraction of one Redis round trip, so a
cache could only make them slower (bench/REDIS.md). The values stay in this process (an LRU bounded
by rows); Redis holds only one small hash, `contimg:cache:generations`: a counter per tag.

Exactness, on every replica. A write commits to SQLite, then increments the counters of the tags
it changed (HINCRBY, awaited) before its RPC returns. A cached read first reads the counters
(HMGET), and serves an entry only if it was stored under exactly those counters; on a miss it reads
the database and stores the result under the counters it read *before* the database read. So once a
write has returned, every later read on any replica sees a newer counter and goes to the database;
a read racing the write may store an old result, but only under the old counter, where no later read
looks. (Redis executes commands one at a time, so "later" is well defined.) No pub/sub message has
to arrive in time, and the other replicas' COUNT caches are dropped as soon as they see a counter
move (and, for the lists this cache does not hold, when the write's announcement on
`contimg:cache:writes` arrives; the storage's own count TTL bounds that).

Cost: one Redis round trip per cached read, shared - at most one HMGET is in flight per process, and
every read that arrives while it is out waits for the next one (which starts after they arrived, so
it is as fresh as a read of its own). See bench/REDIS.md for what that costs against what it saves.

Fail-open: counter-checked entries are served only while the Redis link is usable; otherwise those
reads go to the database and writes do not wait for Redis (version-keyed lightcurves need no
Redis and keep being served). Whenever the link goes down or comes back the process
drops every entry, and on coming back it increments every counter (it may have written while it
could not tell the others). The hash carries an `incarnation` id, so a Redis that lost its data
(restart without persistence) is noticed even by a replica that never saw a disconnect. The TTL is
a safety net for writers that bypass the API (and for a replica cut off from Redis while the others
are not), not the invalidation mechanism.

Cached objects are shared between concurrent requests: callers must treat them as read-only (the
servicers only convert them to messages).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

from redis.asyncio import Redis

from ..redislink import RedisLink, RedisUnavailable

log = logging.getLogger("contimg.cache")
T = TypeVar("T")

GENERATIONS_KEY = "contimg:cache:generations"
# Every counter increment also announces itself here (same MULTI, no extra round trip): replicas
# drop their cached COUNT totals at once, also those of lists this cache does not hold.
WRITES_CHANNEL = "contimg:cache:writes"
INCARNATION = "incarnation"
MEASUREMENT_SETS: Final = "measurement_sets"
IMAGES: Final = "images"
SOURCES: Final = "sources"
JOBS: Final = "jobs"
TAGS = (MEASUREMENT_SETS, IMAGES, SOURCES, JOBS)

_FAILED: Any = object()  # a single-flight leader failed: its followers load for themselves
_UNSEEN: Any = object()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bypassed: int = 0  # link down or failing, or a query the cache cannot key
    coalesced: int = 0  # misses that waited for an identical in-flight load instead of reading
    stored: int = 0
    evicted: int = 0
    fetches: int = 0  # HMGETs of the counters (shared by every read waiting at the time)
    bumps: int = 0  # HINCRBYs after writes
    remote_changes: int = 0  # counter moves this process did not make itself
    write_messages: int = 0  # other replicas' write announcements received

    @property
    def hit_ratio(self) -> float:
        looked = self.hits + self.misses + self.coalesced
        return (self.hits + self.coalesced) / looked if looked else 0.0


@dataclass(slots=True)
class _Entry:
    generations: tuple[int, ...]
    expires: float
    weight: int
    value: object


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a miss needs to store its result: the counters read before the database read."""

    key: Hashable
    generations: tuple[int, ...]
    epoch: int


class QueryCache:
    def __init__(
        self,
        link: RedisLink,
        on_remote_write: Callable[[], None] = lambda: None,
        *,
        max_weight: int = 250_000,
        ttl_s: float = 30.0,
    ):
        self.link = link
        self.on_remote_write = on_remote_write
        self.max_weight = max_weight
        self.ttl_s = ttl_s
        self.stats = CacheStats()
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._weight = 0
        self._epoch = 0  # bumped whenever every entry is dropped; a load from an older epoch is not stored
        self._inflight: dict[tuple[Hashable, tuple[int, ...], int], asyncio.Future[object]] = {}
        self._seen: tuple[int, ...] | None = None
        self._incarnation: object = _UNSEEN
        self._next: asyncio.Future[dict[str, int] | None] | None = None
        self._fetcher: asyncio.Task[None] | None = None
        self.origin = uuid.uuid4().hex.encode()
        link.on_state(self._on_state)
        link.on_message(WRITES_CHANNEL, self._on_write_message)

    @property
    def active(self) -> bool:
        return self.link.usable

    # ---- reads ------------------------------------------------------------------------------------

    async def open(self, key: Hashable, tags: tuple[str, ...]) -> tuple[bool, object, Ticket | None]:
        """(found, value, ticket): a hit, or a miss to load and `finish`, or (False, None, None) to bypass.

        With no `tags` the key itself must name an exact version of the data (e.g. a row's
        update_time read from the database just before): no counters are read, and such entries
        stay correct without Redis.
        """
        if not _hashable(key) or (tags and not self.active):
            self.stats.bypassed += 1
            return False, None, None
        epoch = self._epoch
        generations: tuple[int, ...] = ()
        if tags:
            counters = await self._counters()
            if counters is None:
                self.stats.bypassed += 1
                return False, None, None
            generations = tuple(counters[t] for t in tags)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.generations == generations and entry.expires >= time.monotonic():
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return True, entry.value, None
            self._drop(key)
        return False, None, Ticket(key, generations, epoch)

    def finish(self, ticket: Ticket, value: object, weight: int) -> None:
        """Store a loaded value, unless every entry was dropped since the ticket was issued."""
        if ticket.epoch != self._epoch or weight > self.max_weight // 8:
            return
        if ticket.generations and not self.active:
            return
        self._drop(ticket.key)
        self._entries[ticket.key] = _Entry(ticket.generations, time.monotonic() + self.ttl_s, weight, value)
        self._weight += weight
        self.stats.stored += 1
        while self._weight > self.max_weight and self._entries:
            self._drop(next(iter(self._entries)))
            self.stats.evicted += 1

    async def get_or_load(
        self, key: Hashable, tags: tuple[str, ...], load: Callable[[], Awaitable[T]], weight: Callable[[T], int]
    ) -> T:
        """The cached result of `load` for `key`, or load it (once, however many callers ask at the same time)."""
        found, value, ticket = await self.open(key, tags)
        if found:
            return cast(T, value)
        if ticket is None:
            return await load()
        flight = (key, ticket.generations, ticket.epoch)
        leader = self._inflight.get(flight)
        if leader is not None:
            result = await asyncio.shield(leader)
            if result is not _FAILED:
                self.stats.coalesced += 1
                return cast(T, result)
            return await load()
        self.stats.misses += 1
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = future
        try:
            loaded = await load()
        except BaseException:
            future.set_result(_FAILED)
            raise
        finally:
            del self._inflight[flight]
        future.set_result(loaded)
        self.finish(ticket, loaded, weight(loaded))
        return loaded

    async def _counters(self) -> dict[str, int] | None:
        """The counters as Redis has them now (None: Redis failed), read at most one HMGET at a time.

        A caller joins the next HMGET, never one already sent: that one may predate a write that
        returned before this caller arrived.
        """
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            if self._fetcher is None:
                self._fetcher = asyncio.create_task(self._fetch_loop(), name="cache-counters")
        return await asyncio.shield(self._next)

    async def _fetch_loop(self) -> None:
        try:
            while self._next is not None:
                future, self._next = self._next, None
                try:
                    values = await self.link.command(_read_counters)
                except RedisUnavailable:
                    future.set_result(None)
                    continue
                self.stats.fetches += 1
                future.set_result(self._absorb(values))
        finally:
            self._fetcher = None

    def _absorb(self, values: list[Any]) -> dict[str, int]:
        incarnation, *raw = values
        counters = tuple(int(v) if v is not None else 0 for v in raw)
        if self._incarnation is not _UNSEEN and incarnation != self._incarnation:
            log.info("redis lost the cache counters (restart?): dropping every cached result")
            self.clear()
        self._incarnation = incarnation
        if counters != self._seen:
            if self._seen is not None:
                self.stats.remote_changes += 1
            self._seen = counters
            self.on_remote_write()  # someone wrote: cached COUNT totals are void too
        return dict(zip(TAGS, counters, strict=True))

    # ---- writes -----------------------------------------------------------------------------------

    async def write(self, tags: tuple[str, ...], call: Callable[[], Awaitable[T]]) -> T:
        """Run a write, then invalidate `tags` for every replica before returning.

        The write and its invalidation run as one shielded task: a caller that gives up (deadline,
        cancel) cannot leave a committed write without its invalidation.
        """

        async def guarded() -> T:
            try:
                return await call()
            finally:
                await self.bump(tags)

        return await asyncio.shield(asyncio.ensure_future(guarded()))

    async def bump(self, tags: tuple[str, ...]) -> None:
        if not self.link.usable:
            return  # this process does not cache now; it bumps everything when the link is back
        try:
            await self.link.command(lambda r: _increment(r, tags, self.origin))
            self.stats.bumps += 1
        except RedisUnavailable:
            pass  # the link is now down: this process stops caching until it is back

    def clear(self) -> None:
        self._entries.clear()
        self._weight = 0
        self._epoch += 1

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._weight -= entry.weight

    async def _on_state(self, up: bool) -> None:
        self.clear()
        self.on_remote_write()
        if up:
            try:
                await self.link.command(lambda r: _increment(r, TAGS, self.origin, claim=True))
            except RedisUnavailable:
                pass

    def _on_write_message(self, origin: bytes) -> None:
        if origin != self.origin:
            self.stats.write_messages += 1
            self.on_remote_write()

    def describe(self) -> str:
        s = self.stats
        return (
            f"hits={s.hits} coalesced={s.coalesced} misses={s.misses} bypassed={s.bypassed} "
            f"hit_ratio={s.hit_ratio:.3f} stored={s.stored} evicted={s.evicted} entries={len(self._entries)} "
            f"weight={self._weight} counter_reads={s.fetches} counter_bumps={s.bumps} "
            f"remote_changes={s.remote_changes} write_messages={s.write_messages}"
        )


async def _read_counters(client: Redis) -> list[Any]:
    return list(await client.hmget(GENERATIONS_KEY, [INCARNATION, *TAGS]))


async def _increment(client: Redis, tags: tuple[str, ...], origin: bytes, *, claim: bool = False) -> None:
    async with client.pipeline(transaction=True) as pipe:
        for tag in tags:
            pipe.hincrby(GENERATIONS_KEY, tag, 1)
        if claim:
            pipe.hsetnx(GENERATIONS_KEY, INCARNATION, uuid.uuid4().hex)
        pipe.publish(WRITES_CHANNEL, origin)
        await pipe.execute()


def _hashable(key: Hashable) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True

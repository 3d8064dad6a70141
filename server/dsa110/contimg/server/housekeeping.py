"""Periodic upkeep while serving: request_ids past their retention are forgotten, and the page-token
key set is reloaded.

request_ids: hourly, the first time a minute after start (not during it: a database that has not
been served for weeks may have many to forget, a batch per write). Every process serving the
database does it; the deletes are idempotent, so replicas need no coordination.

Page-token keys (domain/page_keys.py): every RELOAD_S, so a key rotated in by
`contimg-server rotate-page-token-key` is accepted by every replica well before any signs with it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from .domain.page_keys import RELOAD_S, PageKey
from .domain.query import PageTokens
from .readcache import ReadCache
from .tasks import cancel_and_wait

log = logging.getLogger("contimg.housekeeping")


class Kept(Protocol):
    async def expire_request_ids(self) -> int: ...
    async def page_token_keys(self) -> tuple[PageKey, ...]: ...


class Housekeeping:
    def __init__(self, storage: Kept, *, first_s: float = 60.0, every_s: float = 3600.0):
        self.storage = storage
        self.first_s = first_s
        self.every_s = every_s
        self.tokens: PageTokens | None = None  # the server's, once it has them
        self.reads: ReadCache | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="housekeeping"),
            asyncio.create_task(self._reload_keys(), name="page-token-keys"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []

    async def reload_page_token_keys(self) -> None:
        if self.tokens is None:
            return
        keys = await self.storage.page_token_keys()
        if keys != self.tokens.keys:
            self.tokens.use(keys)
            # Kept replies hold tokens of the old set; two rotations on, their key would be gone.
            if self.reads is not None:
                self.reads.clear()

    async def _reload_keys(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_S)
            try:
                await self.reload_page_token_keys()
            except Exception as exc:  # the database unreachable: keep the keys held
                log.warning("reloading the page-token keys failed: %s", exc)

    async def _run(self) -> None:
        await asyncio.sleep(self.first_s)
        while True:
            try:
                forgotten = await self.storage.expire_request_ids()
                if forgotten:
                    log.info("forgot %d request_ids past their retention", forgotten)
            except Exception as exc:  # a full disk, say: the next round tries again
                log.warning("expiring request_ids failed: %s", exc)
            await asyncio.sleep(self.every_s)

"""Whether anything has committed to the PostgreSQL database: the change version of the read cache.

PostgreSQL has no `data_version`. Every statement that writes a table a read can depend on runs a
statement-level trigger that calls `pg_notify('contimg_changes', '')` (migrations.py). PostgreSQL
delivers a notification only when its transaction commits, once per transaction (identical
notifications of one transaction are folded), to every session listening on the channel: every
replica holds one such session. The version is then (the listening session's epoch, notifications
received, this process's own commits):

* this process's own writes move it before they are acknowledged (`Database.write` calls
  `committed()` after COMMIT), so a caller never reads its own write's old value from the replica
  it wrote through;
* any other writer (another replica, `psql`, a pipeline script) moves it when its notification
  arrives. PostgreSQL signals every listening session at that writer's COMMIT, before the writer's
  client is answered (AtCommit_Notify in src/backend/commands/async.c), and an idle session sends
  the notifications it was signalled for before it answers its next query (PostgresMain in
  src/backend/tcop/postgres.c runs ProcessNotifyInterrupt before ReadyForQuery). So a round trip
  on the listening session, begun after a write returned anywhere, comes back after that write's
  notification: `barrier()`. A reply is reused only after such a round trip, begun after the read
  arrived, has found the version unchanged (servicers/envelope.py). Reads arriving together share
  one round trip (one in flight, the next one gathering everyone who arrives meanwhile), so under
  load the cost is one query per batch of reads, not one per read;
* while the listening session is down the version is None ("cannot tell"): nothing is reused until
  it is back, and reconnecting starts a new epoch, so nothing kept before the gap is served after.
  A round trip that fails counts as a notification: nothing kept before it is reused.

Why not a counter row bumped in each writing transaction and read before every cached read: the row
lock would serialize every write of every replica on one row. Why not `pg_current_snapshot()`: it
moves with every transaction of the cluster, other databases' included, so under any write load
elsewhere nothing would be reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Hashable
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

CHANNEL = "contimg_changes"
RECONNECT_S = 0.5
# A barrier round trip slower than this is given up: the reads waiting for it are computed afresh.
BARRIER_TIMEOUT_S = 2.0


class ChangeListener:
    """The LISTEN session of one process, kept open (reconnected when it drops)."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.epoch = 0
        self.notified = 0
        self.local = 0
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()
        # barrier(): the round trip that the reads arriving now will wait for, not yet begun.
        self._gathering: asyncio.Future[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self.round_trips = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-change-listener")
        await self._ready.wait()

    async def stop(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close()

    def version(self) -> Hashable | None:
        if self._conn is None:
            return None
        return (self.epoch, self.notified, self.local)

    def committed(self) -> None:
        """This process committed a write: readers here must not see what was kept before it."""
        self.local += 1

    async def barrier(self) -> None:
        """Return once every notification of a commit that had returned to its writer before this
        call has been counted in `version()` (module docstring)."""
        if self._conn is None:
            return  # version() is None: nothing is reused anyway
        if self._gathering is None:
            self._gathering = asyncio.get_running_loop().create_future()
            if self._prober is None:
                self._prober = asyncio.create_task(self._probe(), name="pg-change-barrier")
        await asyncio.shield(self._gathering)

    async def _probe(self) -> None:
        """Round trips on the listening session, one at a time, while reads wait for one."""
        try:
            while self._gathering is not None:
                waiting = self._gathering
                self._gathering = None
                answered = False
                try:
                    conn = self._conn
                    if conn is not None:
                        await conn.execute("SELECT 1", timeout=BARRIER_TIMEOUT_S)
                        answered = True
                        self.round_trips += 1
                except Exception as exc:
                    log.debug("a barrier round trip failed: %s", exc)
                finally:
                    if not answered:
                        self.notified += 1  # cannot tell what was missed: nothing kept so far is reused
                    waiting.set_result(None)  # also when cancelled: no read waits for ever
        finally:
            self._prober = None
            if self._gathering is not None:  # cancelled while reads gathered: let them go
                self.notified += 1
                self._gathering.set_result(None)
                self._gathering = None

    def _on_notify(self, *_: Any) -> None:
        self.notified += 1

    def _on_lost(self, *_: Any) -> None:
        self._conn = None  # nothing is reused from now until a new session listens
        self._lost.set()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def _run(self) -> None:
        while True:
            try:
                conn = await asyncpg.connect(
                    self.dsn, timeout=10, server_settings={"application_name": "contimg-server"}
                )
                conn.add_termination_listener(self._on_lost)
                await conn.add_listener(CHANNEL, self._on_notify)
                self._lost.clear()
                self.epoch += 1
                self._conn = conn
                self._ready.set()
                await self._lost.wait()
                log.warning("the change listener's connection to PostgreSQL was lost; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._conn = None
                self._ready.set()  # start() returns; version() is None until a session listens
                log.warning("cannot listen for changes on PostgreSQL (%s); retrying", exc)
            await self._close()
            await asyncio.sleep(RECONNECT_S)

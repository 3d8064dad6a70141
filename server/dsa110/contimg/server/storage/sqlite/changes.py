"""Whether anything has committed to the database: the change version every reused read is checked by.

`ChangeProbe.version()` is SQLite's `PRAGMA data_version` on a connection of its own that never
writes. SQLite documents it (https://www.sqlite.org/pragma.html#pragma_data_version): two answers on
one connection differ if and only if another connection committed in between, whatever process it
belongs to (this server's writer and write process, another replica, the `sqlite3` shell, a
backup). So a result kept under version V is exact while the version is still V, with no message
that must arrive in time, no TTL and no Redis. It is coarse: any commit changes it, so under a
steady stream of writes whole results are rebuilt (from items keyed by row version: readcache.py).

Why the sqlite3 module's pragma and nothing cleverer: the module releases the GIL around each step
of a statement, which under load hands the GIL between threads, and in 2026-11 that hand-off cost
GetImage ~15 % of its calls/s. Once replies are reused from the read cache the check is the only
statement of a warm read, and a copy of it through SQLite's C API that keeps the GIL (ctypes) gained
nothing measurable (2026-12-05, interleaved, 5 rounds: GetImage 3,789 calls/s with it vs 3,963
without, SearchSources 4,106 vs 4,009; docs/performance.md), so it was removed. The probe's busy
timeout is 0: a busy answer (a WAL recovery in progress) is "cannot tell", and a caller that cannot
tell keeps nothing.

(Until 2026-12 this read the header of SQLite's WAL index, the `-shm` file, through a memory map:
~0.2 us, but that format belongs to SQLite's unix VFS, which is free to change it, and a mapping of a
file another process may reset is how a second process opening the database came to crash this one
with SIGBUS.)

PostgreSQL (the next engine) has no data_version; the same contract there: a `change_versions`
table with one bigint per resource, incremented by statement-level AFTER INSERT/UPDATE/DELETE
triggers on each table (one increment per statement, so ingest pays once per batch, not per row),
in the writing transaction, so the version is exactly as visible as the rows. A cached read checks
`SELECT max(version) FROM change_versions` (or the versions of the resources it depends on) before
serving, one indexed read of a few rows per call, still far cheaper than the query it saves; LISTEN
on a channel the triggers NOTIFY lets a replica drop entries early, but is only a hint (a
notification can arrive after a client that saw the write has already read from this replica).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Hashable
from pathlib import Path

_PROBE_SQL = "PRAGMA data_version"


class _Statement:
    """`PRAGMA data_version` on a connection of its own that never writes."""

    def __init__(self, path: Path):
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA busy_timeout = 0")
        self._conn.execute("PRAGMA query_only = ON")

    def version(self) -> int | None:
        if self._conn is None:
            return None
        try:
            return int(self._conn.execute(_PROBE_SQL).fetchone()[0])
        except sqlite3.Error:
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ChangeProbe:
    """The database's change version (module docstring); None while closed or when it cannot tell."""

    def __init__(self, path: Path):
        self.path = path
        self._statement: _Statement | None = None

    def open(self) -> None:
        """After the database exists and is in WAL mode (the writer opened it)."""
        self._statement = _Statement(self.path)

    def version(self) -> Hashable | None:
        statement = self._statement
        return statement.version() if statement is not None else None

    def close(self) -> None:
        statement, self._statement = self._statement, None
        if statement is not None:
            statement.close()

"""Whether anything has committed to the database: the change version every reused read is checked by.

`ChangeProbe.version()` is SQLite's `PRAGMA data_version` on a connection of its own that never
writes. SQLite documents it (https://www.sqlite.org/pragma.html#pragma_data_version): two answers on
one connection differ if and only if another connection committed in between, whatever process it
belongs to (this server's writer and write process, another replica, the `sqlite3` shell, a
backup). So a result kept under version V is exact while the version is still V, with no message
that must arrive in time, no TTL and no Redis. It is coarse: any commit changes it, so under a
steady stream of writes whole results are rebuilt (from items keyed by row version: readcache.py).

Why the pragma is run through SQLite's C API (`_NativeStatement`) rather than the sqlite3 module:
the module releases the GIL around every step of a statement, and under load gRPC's poller thread
is waiting for it, so each release and retake is a hand-off between threads. Measured through gRPC
(2026-11), GetImage answered from memory plus the module's pragma ran at 0.82x the reference
server's calls/s, without the check at 0.99x. The same pragma called through ctypes' PyDLL, which
keeps the GIL, costs ~5 us and no hand-off (docs/performance.md has the figures and the switch).
It uses only SQLite's public API (open, prepare, step, column, reset, finalize, close), resolved
through the sqlite3 module's own extension, so it is the very library copy Python's connections use
(two copies in one process would drop each other's POSIX locks: https://sqlite.org/howtocorrupt.html
section 2.2.1); when that resolution fails, the module's pragma answers instead, with the same
result. The probe's busy timeout is 0: it never waits with the GIL held; a busy answer (a WAL
recovery in progress) is "cannot tell", and a caller that cannot tell keeps nothing.

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

import ctypes
import logging
import sqlite3
from collections.abc import Hashable
from pathlib import Path

log = logging.getLogger(__name__)

_SQLITE_OK = 0
_SQLITE_ROW = 100
_OPEN_READWRITE = 0x2
_PROBE_SQL = b"PRAGMA data_version"


class _NativeStatement:
    """`PRAGMA data_version` prepared once on a connection opened through SQLite's C API, stepped
    without releasing the GIL (module docstring)."""

    def __init__(self, path: Path):
        import _sqlite3  # the extension module: its handle resolves sqlite3_* to the library it uses

        lib = ctypes.PyDLL(_sqlite3.__file__)
        self._lib = lib
        void_p, c_int = ctypes.c_void_p, ctypes.c_int
        lib.sqlite3_libversion_number.restype = c_int
        linked = lib.sqlite3_libversion_number()
        if (
            linked
            != sqlite3.sqlite_version_info[0] * 1_000_000
            + sqlite3.sqlite_version_info[1] * 1000
            + (sqlite3.sqlite_version_info[2])
        ):
            raise OSError(f"resolved SQLite {linked} is not the sqlite3 module's {sqlite3.sqlite_version}")
        lib.sqlite3_open_v2.argtypes = [ctypes.c_char_p, ctypes.POINTER(void_p), c_int, ctypes.c_char_p]
        lib.sqlite3_prepare_v2.argtypes = [void_p, ctypes.c_char_p, c_int, ctypes.POINTER(void_p), void_p]
        lib.sqlite3_busy_timeout.argtypes = [void_p, c_int]
        for name in ("sqlite3_step", "sqlite3_reset", "sqlite3_finalize"):
            getattr(lib, name).argtypes = [void_p]
        lib.sqlite3_close_v2.argtypes = [void_p]
        lib.sqlite3_column_int64.argtypes = [void_p, c_int]
        lib.sqlite3_column_int64.restype = ctypes.c_int64
        db = void_p()
        stmt = void_p()
        rc = lib.sqlite3_open_v2(str(path).encode(), ctypes.byref(db), _OPEN_READWRITE, None)
        if rc == _SQLITE_OK:
            lib.sqlite3_busy_timeout(db, 0)
            rc = lib.sqlite3_prepare_v2(db, _PROBE_SQL, -1, ctypes.byref(stmt), None)
        if rc != _SQLITE_OK or not stmt.value:
            lib.sqlite3_close_v2(db)
            raise OSError(f"cannot open {path} through SQLite's C API (error {rc})")
        self._db: int | None = db.value
        self._stmt: int | None = stmt.value
        self._step = lib.sqlite3_step
        self._column = lib.sqlite3_column_int64
        self._reset = lib.sqlite3_reset

    def version(self) -> int | None:
        stmt = self._stmt
        if stmt is None:
            return None
        rc = self._step(stmt)
        value = self._column(stmt, 0) if rc == _SQLITE_ROW else None
        # Reset at once: a statement left mid-step would hold its read transaction open.
        self._reset(stmt)
        return value

    def close(self) -> None:
        if self._stmt is not None:
            self._lib.sqlite3_finalize(self._stmt)
            self._stmt = None
        if self._db is not None:
            self._lib.sqlite3_close_v2(self._db)
            self._db = None


class _ModuleStatement:
    """The same pragma through the sqlite3 module (which releases the GIL around each step)."""

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
            return int(self._conn.execute(_PROBE_SQL.decode()).fetchone()[0])
        except sqlite3.Error:
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ChangeProbe:
    """The database's change version (module docstring); None while closed or when it cannot tell."""

    def __init__(self, path: Path, native: bool = True):
        self.path = path
        self.native = native
        self._statement: _NativeStatement | _ModuleStatement | None = None

    @property
    def kind(self) -> str:
        """Which probe answers: "native", "module", or "closed"."""
        if isinstance(self._statement, _NativeStatement):
            return "native"
        return "module" if self._statement is not None else "closed"

    def open(self) -> None:
        """After the database exists and is in WAL mode (the writer opened it)."""
        if self.native:
            try:
                self._statement = _NativeStatement(self.path)
                return
            except (OSError, AttributeError, ImportError) as exc:
                log.warning("change version read through the sqlite3 module (slower): %s", exc)
        self._statement = _ModuleStatement(self.path)

    def version(self) -> Hashable | None:
        statement = self._statement
        return statement.version() if statement is not None else None

    def close(self) -> None:
        statement, self._statement = self._statement, None
        if statement is not None:
            statement.close()

"""Whether anything has committed, read from SQLite's WAL index instead of asked with a statement.

Why not `PRAGMA data_version`: it is a statement, and Python's sqlite3 releases the GIL around each
step of one. Under load grpc's poller thread is waiting for the GIL, so every release and retake is a
hand-off between threads: measured through gRPC, a GetImage answered from memory plus one pragma
ran at 0.82x the reference server's throughput, the same without the pragma at 0.99x (~50 us of
CPU per call for a statement that costs 3 us alone).

The WAL index (the database's `-shm` file, https://www.sqlite.org/walformat.html) starts with a
48-byte header that the writer rewrites at every commit (a change counter, the last valid frame, the
salts that change when the WAL restarts, checksums). It is stored twice: the writer fills the second
copy, then the first; SQLite's readers take it only when both agree. The same comparison here,
through a read-only mapping of the file, costs ~0.2 us and calls nothing that lets the GIL go.

Why this is safe, and what it must never do:

* The mapping is read only while this process holds connections to the database, and SQLite's
  connections hold a shared lock on the `-shm` file's "DMS" byte for as long as they are open.
  SQLite truncates or reinitializes the WAL index only when a connection takes that lock
  exclusively, i.e. when no connection anywhere has the database open. So while ours are open,
  no process resets the file under the mapping.
* Those locks are POSIX (fcntl) locks, which belong to the process and the file, not to a
  descriptor: closing ANY descriptor of `-shm` drops every lock this process holds on it, SQLite's
  included. An earlier version closed the descriptor it mapped the file through, right after
  mapping it; from then on another process opening the database (the write process starting or
  restarting, a second replica, `sqlite3` on the file, a backup) saw nobody, reset the WAL index
  under the running server, and the next read of the mapping died with SIGBUS (or read a
  "malformed" database). So the descriptor stays open for as long as the mapping, and both are
  closed only after every SQLite connection of this process to the database has been closed
  (`Database.close`), when dropping locks no longer matters (tests/test_second_process.py).
"""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

HEADER_BYTES = 48
WAL_INDEX_VERSION = 3007000  # iVersion, the first field of the header, in native byte order
_IS_INIT = 12  # offset of isInit, 1 once the header is valid


class WalIndexHeader:
    """The current WAL-index header of one database: equal bytes, no commit in between."""

    def __init__(self, fd: int, mapping: mmap.mmap | None):
        self._fd = fd  # kept open until close(), even when nothing could be mapped: module docstring
        self._map = mapping

    @classmethod
    def open(cls, database: Path) -> WalIndexHeader | None:
        """The header of `database`'s WAL index; None when there is no file to open. Its `read`
        answers None for good when the file cannot be mapped (not in WAL mode yet, or a format
        this code does not know): then callers ask SQLite."""
        if not hasattr(mmap, "PROT_READ"):  # Windows: no such mapping here; the pragma answers
            return None
        try:
            fd = os.open(f"{database}-shm", os.O_RDONLY)
        except OSError:
            return None
        mapping: mmap.mmap | None = None
        try:
            if os.fstat(fd).st_size >= 2 * HEADER_BYTES:
                mapping = mmap.mmap(fd, 2 * HEADER_BYTES, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            mapping = None
        if mapping is not None and int.from_bytes(mapping[0:4], sys.byteorder) != WAL_INDEX_VERSION:
            mapping.close()
            mapping = None
        return cls(fd, mapping)

    @property
    def mapped(self) -> bool:
        return self._map is not None

    def read(self) -> bytes | None:
        """The header's bytes, or None while a commit is rewriting it (the caller asks SQLite)."""
        mapping = self._map
        if mapping is None:
            return None
        first = mapping[0:HEADER_BYTES]  # the first copy first: the writer fills it last
        if first != mapping[HEADER_BYTES : 2 * HEADER_BYTES] or first[_IS_INIT] != 1:
            return None
        return first

    def close(self) -> None:
        """Only once this process has no SQLite connection to the database left (module docstring)."""
        if self._map is not None:
            self._map.close()
            self._map = None
        os.close(self._fd)

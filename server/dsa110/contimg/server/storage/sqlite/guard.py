"""Whether the database can take writes: its file still the one opened, its disk not full or failing.

Two faults that used to lose or hide writes:

* The data directory deleted (or the file replaced) under a running server: SQLite goes on writing
  into the unlinked inode, so the server acknowledged writes (1,335 in one trial) that the next start,
  finding no file, could never see. `DatabaseFile` remembers the file's (device, inode) at open and
  compares it with the path's, by `stat` (no descriptor opened: closing one would drop this
  process's POSIX locks on the file, SQLite's included), before and after every write group and
  once a second from the health monitor; once it differs, every write is refused until a restart.
* A full disk, an I/O error, a file or disk turned read-only: each refused write used to log a few
  tracebacks. `WriteState` records the fault the first time (one log line), and that it is over at
  the first write that succeeds again (one more); health reports it meanwhile.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ...domain.errors import DatabaseReplaced, DomainError, StorageFailure, StorageFull

log = logging.getLogger("contimg.storage")

# Faults of the machine under the database, as opposed to a refusal of one write's content.
FAULTS = (StorageFull, StorageFailure)
# After a full disk, writes count as possible again only with this much free: a tiny write may fit
# where the next real one would not (a write group of 32 photometry batches of 1,000 rows puts ~7 MB
# in the WAL), and health would turn SERVING and NOT_SERVING again at every batch.
FREE_AFTER_FULL_BYTES = 16 * 1024 * 1024


def free_bytes(path: Path) -> int:
    """Free space for this process on the filesystem holding `path` (a statvfs, no descriptor)."""
    try:
        found = os.statvfs(path)
    except OSError:
        return 0
    return found.f_bavail * found.f_frsize


class DatabaseFile:
    """The database file as it was when the server opened it."""

    def __init__(self, path: Path):
        self.path = path
        found = os.stat(path)
        self._identity = (found.st_dev, found.st_ino)
        self.replaced: DatabaseReplaced | None = None

    def check(self) -> DatabaseReplaced | None:
        """The error every write gets from now on if the path no longer names the file opened."""
        if self.replaced is None:
            try:
                found = os.stat(self.path)
                current: tuple[int, int] | None = (found.st_dev, found.st_ino)
            except FileNotFoundError:
                current = None
            except OSError:  # e.g. a directory made unreadable: not a sign that the file changed
                return None
            if current != self._identity:
                what = "removed" if current is None else "replaced by another file"
                self.replaced = DatabaseReplaced(
                    f"the database file {self.path} was {what} while this server ran: writes are refused "
                    "(they would go to a file nobody reads again); restart the server",
                    metadata={"database": str(self.path)},
                )
        return self.replaced


class WriteState:
    """The fault that made the last write fail, until a write succeeds again."""

    def __init__(self) -> None:
        self.fault: DomainError | None = None

    def failed(self, error: BaseException) -> None:
        # A replaced file outranks any other fault: it is the one that a restart, not time, mends.
        if not isinstance(error, FAULTS) or error is self.fault:
            return
        if self.fault is None or (isinstance(error, DatabaseReplaced) and not isinstance(self.fault, DatabaseReplaced)):
            self.fault = error
            log.error("writes fail: %s", error.message)

    def succeeded(self) -> None:
        if self.fault is not None:
            log.warning("writes succeed again (after: %s)", self.fault.message)
            self.fault = None

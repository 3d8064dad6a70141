"""Offloaded writes (photometry ingest) run in a process of their own, on the same SQLite file.

Why a process: Python's sqlite3 releases the GIL around each row's `sqlite3_step` and takes it back
after, so a writer thread inside the server waits for the event loop on every row of a 1,000-row
INSERT, and the server as a whole never uses more than one core (see bench/README.md). This process
has its own GIL: the server's loop receives and checks the next requests while it writes the
current group. What crosses is a group of (body, finish) pairs, each already pickled on the server's
loop (writer.Writer.write): a partial of a module-level function over plain data (a photometry
batch as packed columns, ~0.05 ms per 1,000 rows each way); and the outcomes back. A thread here
checkpoints the WAL after each group, outside the writer's COMMIT (see _Checkpoints).

Only the server's writer thread talks to it, one group at a time (writer.py), so the two write
connections never wait on each other for SQLite's write lock and commit order is queue order.
If the process dies, the group in flight fails UNAVAILABLE (it may or may not have committed: a
retry with the same request_id is answered from the first) and the next group starts a new one.
It runs in a session of its own and ignores SIGINT and SIGTERM (the server drains first, then
closes it), and exits when the server's end of the socket closes, including when the server dies.

It links its own SQLite when it can (connect.write_process_sqlite) and writes with foreign-key
checks off: they were 13 % of the instructions of each photometry row, and the only bodies offloaded
are photometry batches, which resolve every source and check their image in the same transaction,
while nothing deletes sources and deletions of images run between groups, on the server's own
connection, with the checks on. Errors of its SQLite cross back as the standard library's.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from types import ModuleType

from ...domain.errors import DomainError, StorageUnavailable
from .connect import SQLiteSettings, connect_writer, translate, write_process_sqlite
from .writer import Outcome, Work, run_group

log = logging.getLogger(__name__)

# Exceptions that mean a value would not pickle.
_PICKLING = (pickle.PicklingError, TypeError, AttributeError)
_STOP_TIMEOUT_S = 10.0


class WriteProcess:
    """The server's handle on the write process: started on the first offloaded group, restarted
    after a crash, stopped by `close`. Used from the writer thread only."""

    def __init__(self, settings: SQLiteSettings):
        self._settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        self._chan: Connection | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def run(self, work: list[bytes]) -> list[Outcome]:
        chan = self._started()
        if chan is None:
            return [(False, StorageUnavailable("the write process could not start"))] * len(work)
        try:
            chan.send(work)
        except Exception:
            log.exception("could not send a write group to the write process")
            self._stop()
            return [(False, _lost())] * len(work)
        try:
            reply = chan.recv()
        except (EOFError, OSError):
            log.error("the write process exited during a write group of %d", len(work))
            self._stop()
            return [(False, _lost())] * len(work)
        except Exception:  # e.g. a reply that does not unpickle here: start afresh rather than guess
            log.exception("could not read the write process's reply")
            self._stop()
            return [(False, _lost())] * len(work)
        if isinstance(reply, BaseException):
            return [(False, reply)] * len(work)
        outcomes: list[Outcome] = reply
        return outcomes

    def start(self) -> None:
        """Start the process now rather than on the first offloaded group (which otherwise pays
        its ~0.3 s start); a failure is logged, and the first group tries again."""
        self._started()

    def close(self) -> None:
        self._stop(graceful=True)

    def _started(self) -> Connection | None:
        """The channel to a running process, started if need be; None (logged) if it cannot start."""
        try:
            return self._running()
        except (OSError, EOFError, RuntimeError) as exc:
            log.error("could not start the write process: %s", exc)
            self._stop()
            return None

    def _running(self) -> Connection:
        if self._proc is not None and self._chan is not None and self._proc.poll() is None:
            return self._chan
        if self._proc is not None:
            log.warning("the write process exited (code %s); starting another", self._proc.returncode)
            self._stop()
        ours, theirs = socket.socketpair()
        with ours, theirs:
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                # Bodies pickle by reference: the process imports them, and this module, from
                # wherever the server does.
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
                # Its own session: a terminal's Ctrl-C goes to the server, which drains, then closes it.
                start_new_session=True,
            )
            chan = Connection(ours.detach())
        self._proc, self._chan = proc, chan
        self.starts += 1
        chan.send(self._settings)
        ok, detail = chan.recv()
        if not ok:
            raise RuntimeError(detail)
        return chan

    def _stop(self, graceful: bool = False) -> None:
        chan, self._chan = self._chan, None
        proc, self._proc = self._proc, None
        if chan is not None:
            chan.close()  # the process sees end of file and exits
        if proc is None:
            return
        if not graceful:
            proc.kill()
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("the write process did not exit in %.0f s; killing it", _STOP_TIMEOUT_S)
            proc.kill()
            proc.wait()


def _lost() -> StorageUnavailable:
    return StorageUnavailable(
        "the write process stopped during the write: it may or may not be committed; "
        "retry with the same request_id to get the first outcome"
    )


def _picklable(outcomes: list[Outcome]) -> list[Outcome]:
    clean: list[Outcome] = []
    for ok, value in outcomes:
        try:
            pickle.dumps(value)
        except _PICKLING:
            log.error("a write's %s does not pickle: %r", "result" if ok else "error", value)
            ok, value = False, RuntimeError(f"{type(value).__name__}: {value}")
        clean.append((ok, value))
    return clean


def serve(chan: Connection) -> int:
    """The write process: open the database, then run each group received until end of file."""
    settings = chan.recv()
    driver = write_process_sqlite()
    try:
        conn = connect_writer(settings, driver)
    except Exception as exc:
        chan.send((False, f"{type(exc).__name__}: {exc}"))
        return 1
    conn.execute(f"PRAGMA wal_autocheckpoint = {_BACKSTOP_PAGES}").fetchall()
    conn.execute("PRAGMA foreign_keys = OFF").fetchall()  # why: the module's docstring
    checkpoints = _Checkpoints(settings, driver)
    checkpoints.start()
    chan.send((True, os.getpid()))
    try:
        while True:
            try:
                work: list[Work] = [pickle.loads(item) for item in chan.recv()]
            except EOFError:
                return 0
            except Exception as exc:  # the message arrived whole but did not unpickle here
                log.exception("could not read a write group")
                chan.send(RuntimeError(f"the write process could not read the group: {exc}"))
                continue
            outcomes = run_group(conn, work, _translate)
            checkpoints.due()
            for ok, value in outcomes:
                if not ok and not isinstance(value, DomainError):
                    log.error("write failed", exc_info=value)
            try:
                chan.send(outcomes)
            except _PICKLING:
                chan.send(_picklable(outcomes))
            except OSError:  # the server is gone (it died mid-group): nobody is waiting
                return 0
    finally:
        checkpoints.stop()
        conn.close()


def _translate(exc: Exception) -> Exception:
    return translate(_standard(exc))


def _standard(exc: Exception) -> Exception:
    """An error of the write process's SQLite as the standard library's class of the same name,
    so that callers see the same errors with or without the write process."""
    if isinstance(exc, sqlite3.Error):
        return exc
    kind = getattr(sqlite3, type(exc).__name__, None)
    if not (isinstance(kind, type) and issubclass(kind, sqlite3.Error)):
        return exc
    same = kind(*exc.args)
    for attr in ("sqlite_errorcode", "sqlite_errorname"):
        if hasattr(exc, attr):
            setattr(same, attr, getattr(exc, attr))
    return same


# Past this many WAL pages the writer checkpoints at commit itself, as SQLite does by default at
# 1,000: only if the checkpoint thread falls behind (readers holding old snapshots, say).
_BACKSTOP_PAGES = 16_000


class _Checkpoints(threading.Thread):
    """Copies the WAL into the database file after each group, beside the writer instead of inside
    its COMMIT. Measured: with SQLite's automatic checkpoint a 32-batch group's COMMIT took
    61-273 ms of its 540-830 ms, against 25-147 ms with no checkpoint in it; through gRPC, four
    interleaved rounds, 64 writers +9-11 % rows/s and 4 writers +44 %. A PASSIVE checkpoint never
    blocks the writer, which goes on appending to the WAL meanwhile."""

    def __init__(self, settings: SQLiteSettings, driver: ModuleType):
        super().__init__(name="contimg-checkpoints", daemon=True)
        self._settings = settings
        self._driver = driver
        self._due = threading.Event()
        self._stopping = False

    def due(self) -> None:
        self._due.set()

    def stop(self) -> None:
        if self.is_alive():
            self._stopping = True
            self._due.set()
            self.join()

    def run(self) -> None:
        conn = self._driver.connect(str(self._settings.path), isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._settings.busy_timeout_ms)}").fetchall()
            failing = False
            while True:
                self._due.wait()
                self._due.clear()
                if self._stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except self._driver.Error as exc:  # the writer's backstop checkpoints meanwhile
                    if not failing:  # once, not after every group while the disk is full
                        log.warning("background checkpoints fail: %s", exc)
                    failing = True
                    continue
                if failing:
                    log.warning("background checkpoints succeed again")
                    failing = False
        finally:
            conn.close()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s write-process: %(message)s")
    return serve(Connection(int(sys.argv[1])))


if __name__ == "__main__":
    sys.exit(main())

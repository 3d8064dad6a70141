"""The WAL-index header (storage/sqlite/wal_index.py) tells every commit apart, by any connection,
and is refused where it cannot be trusted; Database.version() rests on it."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from dsa110.contimg.server.storage.sqlite.database import Database
from dsa110.contimg.server.storage.sqlite.wal_index import HEADER_BYTES, WAL_INDEX_VERSION, WalIndexHeader


def _wal_database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    conn.execute("CREATE TABLE t (v INTEGER)")
    return conn


def test_every_commit_changes_the_header_and_reads_do_not(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite3"
    writer = _wal_database(path)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("SELECT count(*) FROM t").fetchall()
    header = WalIndexHeader.open(path)
    assert header is not None
    try:
        seen = [header.read()]
        for i in range(5):
            reader.execute("SELECT count(*) FROM t").fetchall()
            assert header.read() == seen[-1]
            writer.execute("INSERT INTO t VALUES (?)", (i,))
            seen.append(header.read())
        # The WAL restarts from its first frame after a full checkpoint: still a new header each time.
        writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        writer.execute("INSERT INTO t VALUES (99)")
        seen.append(header.read())
        assert None not in seen
        assert len(set(seen)) == len(seen)
        # A transaction that rolls back commits nothing.
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO t VALUES (100)")
        writer.execute("ROLLBACK")
        assert header.read() == seen[-1]
    finally:
        reader.close()
        writer.close()
        header.close()  # last: closing it drops this process's locks on the file (wal_index.py)


def test_no_header_without_a_wal_index(tmp_path: Path) -> None:
    path = tmp_path / "rollback.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (v INTEGER)")
    conn.close()
    assert WalIndexHeader.open(path) is None


def _fake_index(path: Path, first: bytes, second: bytes) -> None:
    Path(f"{path}-shm").write_bytes(first + second + bytes(4096))


def test_unknown_format_and_torn_headers_are_not_trusted(tmp_path: Path) -> None:
    """Failure injection: files written by hand, since a half-written header lasts nanoseconds."""
    path = tmp_path / "fake.sqlite3"
    good = bytearray(HEADER_BYTES)
    good[0:4] = WAL_INDEX_VERSION.to_bytes(4, sys.byteorder)
    good[12] = 1  # isInit
    good[16:20] = (7).to_bytes(4, sys.byteorder)  # mxFrame

    _fake_index(path, bytes(good), bytes(good))
    header = WalIndexHeader.open(path)
    assert header is not None and header.read() == bytes(good)
    header.close()

    torn = bytearray(good)
    torn[16:20] = (8).to_bytes(4, sys.byteorder)  # the writer has filled the second copy only
    _fake_index(path, bytes(good), bytes(torn))
    header = WalIndexHeader.open(path)
    assert header is not None and header.read() is None
    header.close()

    uninitialised = bytearray(good)
    uninitialised[12] = 0
    _fake_index(path, bytes(uninitialised), bytes(uninitialised))
    header = WalIndexHeader.open(path)
    assert header is not None and header.read() is None
    header.close()

    other = bytearray(good)
    other[0:4] = (WAL_INDEX_VERSION + 1).to_bytes(4, sys.byteorder)
    for unreadable in (bytes(other) * 2, b"short"):  # another format; too short to hold a header
        Path(f"{path}-shm").write_bytes(unreadable)
        header = WalIndexHeader.open(path)
        # Still open (its descriptor is closed only with the database: wal_index.py), never read.
        assert header is not None and not header.mapped and header.read() is None
        header.close()


async def test_database_version_follows_the_wal_index(db: Database) -> None:
    before = db.version()
    assert isinstance(before, bytes)  # the header, not the pragma's count
    assert db.version() == before
    await db.write(lambda txn: txn.execute("INSERT INTO t VALUES ('a', 1)"))
    after = db.version()
    assert isinstance(after, bytes) and after != before
    # Another process's commit (here another connection, which SQLite treats the same way).
    other = sqlite3.connect(db.settings.path, isolation_level=None)
    try:
        other.execute("INSERT INTO t VALUES ('b', 2)")
    finally:
        other.close()
    assert db.version() not in (before, after)


async def test_cached_results_are_recomputed_after_any_commit(db: Database) -> None:
    computed: list[int] = []

    async def count() -> int:
        rows = await db.lookup("SELECT count(*) FROM t")
        computed.append(rows[0][0])
        return int(rows[0][0])

    for record in (False, True):
        computed.clear()
        first = await db.cached(("n", record), count, record=record)
        assert await db.cached(("n", record), count, record=record) == first
        assert len(computed) == 1
        key = f"k{record}"
        await db.write(lambda txn, key=key: txn.execute("INSERT INTO t VALUES (?, 1)", (key,)))
        assert await db.cached(("n", record), count, record=record) == first + 1
        assert len(computed) == 2

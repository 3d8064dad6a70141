"""The read cache's parts on their own: the change version every reused result is checked against
(storage/sqlite/changes.py), the cache's rules and bound (readcache.py), and the triggers that give
a row changed behind the server's back a new update_time (storage migration 4)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest
from dsa110.contimg.server.readcache import ENTRY_OVERHEAD, LARGEST_SHARE, ReadCache, no_cache
from dsa110.contimg.server.storage.sqlite.database import Database, SQLiteSettings

from conftest import open_scratch_database


async def test_every_commit_anywhere_changes_the_version_and_reads_do_not(tmp_path: Path) -> None:
    db = await open_scratch_database(tmp_path / "v.sqlite3")
    try:
        seen = [db.version()]
        assert seen[0] is not None
        await db.fetchall("SELECT * FROM t")
        assert db.version() == seen[-1]  # a read is not a change

        await db.write(lambda txn: txn.execute("INSERT INTO t VALUES ('writer', 1)"))  # this server's writer
        seen.append(db.version())
        other = sqlite3.connect(tmp_path / "v.sqlite3", isolation_level=None)  # another connection
        other.execute("UPDATE t SET v = 2")
        seen.append(db.version())
        other.execute("BEGIN")
        other.execute("UPDATE t SET v = 3")
        assert db.version() == seen[-1]  # not committed yet
        other.execute("ROLLBACK")
        assert db.version() == seen[-1]  # rolled back: nothing changed
        other.close()
        code = "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('DELETE FROM t').connection.commit()"
        other_process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, str(tmp_path / "v.sqlite3"))
        assert await other_process.wait() == 0
        seen.append(db.version())
        assert len(set(seen)) == len(seen), seen
        assert db.version() == seen[-1]
    finally:
        await db.close()
    assert db.version() is None  # closed: cannot tell, so nothing is reused


async def test_results_live_until_the_version_moves_and_items_for_ever() -> None:
    version = [1]
    cache = ReadCache(lambda: version[0], 1 << 20)
    computed = []

    async def compute() -> str:
        computed.append(1)
        return f"result {len(computed)}"

    assert await cache.computed("k", compute) == "result 1"
    assert await cache.computed("k", compute) == "result 1"
    item = cache.item(("image", 1, 100), lambda: b"bytes")
    version[0] = 2
    assert await cache.computed("k", compute) == "result 2"  # recomputed after the change
    assert cache.item(("image", 1, 100), lambda: b"other") == b"bytes" == item  # items do not go stale

    # A result computed while a commit lands is kept under the version read before it: not served after.
    async def slow() -> str:
        version[0] = 3
        return "during the commit"

    assert await cache.computed("j", slow) == "during the commit"
    assert await cache.computed("j", compute) == "result 3"

    unknown = ReadCache(lambda: None, 1 << 20)  # a storage that cannot tell: nothing is kept
    await unknown.computed("k", compute)
    assert len(unknown) == 0 and await unknown.computed("k", compute) == "result 5"


async def test_off_keeps_nothing() -> None:
    cache = ReadCache(lambda: 1, 0)
    calls = []

    async def compute() -> int:
        calls.append(1)
        return len(calls)

    assert [await cache.computed("k", compute) for _ in range(3)] == [1, 2, 3]
    assert cache.item("i", lambda: b"x") == b"x" and len(cache) == 0 and cache.size == 0
    assert len(no_cache()) == 0 and no_cache().max_bytes == 0


def test_bounded_by_bytes_oldest_out_first_and_no_entry_larger_than_a_share() -> None:
    cache = ReadCache(lambda: 1, 100 * (1000 + ENTRY_OVERHEAD))
    for i in range(250):
        cache.keep(("r", i), 1, b"x" * 1000, 1000)
        assert cache.size <= cache.max_bytes
    assert len(cache) == 100
    assert cache.get(("r", 249), 1) is not None and cache.get(("r", 0), 1) is None
    cache.get(("r", 150), 1)  # used: moves to the end
    cache.keep(("r", 250), 1, b"x" * 1000, 1000)
    assert cache.get(("r", 150), 1) is not None and cache.get(("r", 151), 1) is None
    big = cache.max_bytes // LARGEST_SHARE
    cache.keep("big", 1, b"", big)
    assert cache.get("big", 1) is None
    assert cache.item(("i", 1), lambda: b"y" * big) == b"y" * big and cache.get(("i", 1), 1) is None


async def test_items_for_refs_fetch_only_what_is_missing() -> None:
    cache = ReadCache(lambda: 1, 1 << 20)
    fetched: list[list[int]] = []
    rows = {1: (1, 10), 2: (2, 20), 3: (3, 31)}  # id 3 changed since the refs were read

    async def fetch(ids: list[int]) -> list[tuple[int, int] | None]:
        fetched.append(ids)
        return [rows.get(i) for i in ids]

    def build(row: tuple[int, int]) -> bytes:
        return f"{row[0]}@{row[1]}".encode()

    first = await cache.items_for_refs("n", [(1, 10), (2, 20), (3, 30), (4, 40)], fetch, lambda r: r, build)
    assert first == [b"1@10", b"2@20", b"3@31"]  # 3 as it is now; 4 deleted in between: left out
    assert fetched == [[1, 2, 3, 4]]
    again = await cache.items_for_refs("n", [(1, 10), (2, 20), (3, 31)], fetch, lambda r: r, build)
    assert again == first and fetched == [[1, 2, 3, 4]]  # nothing fetched


async def test_a_row_changed_without_a_new_update_time_gets_one(tmp_path: Path) -> None:
    """Migration 4: SQL that changes an image or a source and leaves update_time alone (a pipeline
    script, the sqlite3 shell) moves it on by one microsecond; writes that set it are left as set."""
    db = Database(SQLiteSettings(tmp_path / "t.sqlite3", readers=1))
    await db.open()
    try:
        await db.write(
            lambda txn: [
                txn.execute("INSERT INTO measurement_sets (path, create_time, update_time) VALUES ('/m.ms', 1, 1)"),
                txn.execute(
                    "INSERT INTO images (path, ms_path, create_time, update_time) VALUES ('/i.fits', '/m.ms', 5, 5)"
                ),
                txn.execute(
                    "INSERT INTO sources (id, ra_deg, dec_deg, create_time, update_time) VALUES ('S', 1, 2, 7, 7)"
                ),
            ]
        )
    finally:
        await db.close()
    conn = sqlite3.connect(tmp_path / "t.sqlite3", isolation_level=None)
    conn.execute("UPDATE images SET noise_jy = 0.25")
    conn.execute("UPDATE sources SET designation = 'moved'")
    image_time = conn.execute("SELECT update_time FROM images").fetchone()[0]
    source_time = conn.execute("SELECT update_time FROM sources").fetchone()[0]
    assert (image_time, source_time) == (6, 8)
    conn.execute("UPDATE images SET update_time = 5")  # a writer that sets it: left as set
    assert conn.execute("SELECT update_time FROM images").fetchone()[0] == 5
    conn.execute("UPDATE images SET update_time = update_time")  # unchanged: moved on
    assert conn.execute("SELECT update_time FROM images").fetchone()[0] == 6
    conn.close()


# A query far past the on-loop budget (~1 ms of SQLite VM work): a count over a million generated rows.
_SLOW = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) SELECT count(*) FROM n"


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "pool-only"])
async def test_a_read_past_the_inline_budget_moves_to_the_pool_with_the_same_answer(
    tmp_path: Path, inline: bool
) -> None:
    """Inline reads (docs/performance.md): a quick lookup is answered on the event loop; one that
    needs more than its budget is stopped there and rerun on a reader thread, so the caller gets the
    full answer either way and the loop is never held for the whole query. --no-inline-reads sends
    everything to the pool."""
    db = await open_scratch_database(tmp_path / "i.sqlite3", inline_reads=inline)
    try:
        await db.write(lambda txn: txn.execute("INSERT INTO t VALUES ('a', 1)"))
        assert await db.lookup("SELECT v FROM t WHERE k = ?", ("a",)) == [(1,)]
        assert db.reads.inline_fallbacks == 0
        assert (await db.try_inline("SELECT v FROM t WHERE k = 'a'")) == ([(1,)] if inline else None)

        assert [tuple(r) for r in await db.lookup(_SLOW)] == [(1_000_000,)]
        assert db.reads.inline_fallbacks == (1 if inline else 0)
        assert await db.try_inline(_SLOW) is None  # past the budget: abandoned, not finished on the loop
        # The inline connection is usable after an abandoned statement.
        assert await db.lookup("SELECT v FROM t WHERE k = ?", ("a",)) == [(1,)]
        assert db.reads.inline_fallbacks == (1 if inline else 0)
    finally:
        await db.close()

"""The write process (storage/sqlite/write_process.py): offloaded writes run in a process of their own
on the same SQLite file, keep the writer's guarantees (queue order, all or nothing, errors to their
own caller), and survive the process dying: the write in flight fails UNAVAILABLE with nothing half
written, and the next one starts a new process.

Bodies here are module-level functions so that they pickle; the write process imports this module.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pickle
import platform
import signal
import sqlite3
import sys
import uuid
from contextlib import closing
from functools import partial
from pathlib import Path

import grpc
import pytest
from dsa110.contimg.server.domain.errors import (
    AlreadyExists,
    DomainError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    RequestIdMismatch,
    ShuttingDown,
    StorageUnavailable,
)
from dsa110.contimg.server.storage.sqlite.database import Database
from dsa110.contimg.server.storage.sqlite.writer import Txn
from dsa110.contimg.v1 import sources_pb2

from conftest import ServerFactory, make_stubs, open_scratch_database
from helpers_jobs import make_images, measurement, record


def insert_pid(key: str, txn: Txn) -> int:
    """Write (key, the pid of the process running this body); return that pid."""
    txn.execute("INSERT INTO t VALUES (?, ?)", (key, os.getpid()))
    return os.getpid()


def missing_image(txn: Txn) -> None:
    txn.execute("INSERT INTO t VALUES ('partial', 0)")
    raise NotFound("IMAGE", "images/42")


def die_halfway(txn: Txn) -> None:
    txn.execute("INSERT INTO t VALUES ('doomed', 0)")
    os._exit(3)


def duplicate_key(txn: Txn) -> None:
    txn.execute("INSERT INTO t VALUES ('twice', 0)")
    txn.execute("INSERT INTO t VALUES ('twice', 1)")


def sqlite_module(txn: Txn) -> str:
    return type(txn.conn).__module__


def foreign_keys(txn: Txn) -> int:
    return int(txn.fetchall("PRAGMA foreign_keys")[0][0])


def table(path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT k, v FROM t ORDER BY rowid").fetchall()


def process_of(db: Database):
    assert db._offload is not None
    return db._offload


async def test_offloaded_writes_run_in_another_process_and_local_ones_here(db: Database):
    elsewhere = await db.write(partial(insert_pid, "far"), offload=True)
    here = await db.write(partial(insert_pid, "near"))
    assert here == os.getpid()
    assert elsewhere != os.getpid() and elsewhere == process_of(db).pid
    assert table(db.settings.path) == [("far", elsewhere), ("near", here)]


async def test_offloaded_and_local_writes_commit_in_queue_order(db: Database):
    keys = [f"k{i:02d}" for i in range(40)]
    # Runs of each kind, so groups form on both sides and alternate.
    offload = [(i // 3) % 2 == 0 for i in range(40)]
    results = await asyncio.gather(
        *(db.write(partial(insert_pid, k), offload=o) for k, o in zip(keys, offload, strict=True))
    )
    assert [k for k, _ in table(db.settings.path)] == keys
    for pid, o in zip(results, offload, strict=True):
        assert (pid != os.getpid()) == o
    assert process_of(db).starts == 1


async def test_an_error_in_the_process_reaches_its_own_caller_only(db: Database):
    results = await asyncio.gather(
        db.write(partial(insert_pid, "a"), offload=True),
        db.write(missing_image, offload=True),
        db.write(partial(insert_pid, "b"), offload=True),
        return_exceptions=True,
    )
    assert isinstance(results[1], NotFound)
    assert results[1].metadata == {"resource": "images/42"} and results[1].reason == "IMAGE_NOT_FOUND"
    assert [k for k, _ in table(db.settings.path)] == ["a", "b"]


async def test_the_process_links_its_own_sqlite_where_it_is_installed(db: Database):
    # Asked of the process: importing pysqlite3 here would put two SQLite libraries in this process.
    installed = importlib.util.find_spec("pysqlite3") is not None
    assert await db.write(sqlite_module, offload=True) == ("pysqlite3.dbapi2" if installed else "sqlite3")
    assert await db.write(sqlite_module) == "sqlite3"
    if sys.platform == "linux" and platform.machine() == "x86_64":  # a dependency there (pyproject.toml)
        assert installed


async def test_sqlite_errors_from_the_process_are_the_standard_librarys(db: Database):
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE") as far:
        await db.write(duplicate_key, offload=True)
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE") as near:
        await db.write(duplicate_key)
    assert type(far.value) is type(near.value) is sqlite3.IntegrityError
    assert str(far.value) == str(near.value) == "UNIQUE constraint failed: t.k"
    assert table(db.settings.path) == []


async def test_the_process_writes_without_foreign_key_checks_and_the_server_with_them(db: Database):
    # Deliberate (write_process.py's docstring); the photometry test below checks nothing dangles.
    assert await db.write(foreign_keys, offload=True) == 0
    assert await db.write(foreign_keys) == 1


async def test_a_process_that_dies_mid_write_loses_that_write_whole_and_is_replaced(db: Database):
    first = await db.write(partial(insert_pid, "before"), offload=True)
    with pytest.raises(StorageUnavailable, match="may or may not be committed"):
        await db.write(die_halfway, offload=True)
    after = await db.write(partial(insert_pid, "after"), offload=True)
    assert after != first and process_of(db).starts == 2
    assert [k for k, _ in table(db.settings.path)] == ["before", "after"]


async def test_a_process_killed_while_idle_is_replaced_before_the_next_write(db: Database):
    first = await db.write(partial(insert_pid, "before"), offload=True)
    os.kill(first, signal.SIGKILL)
    while True:  # the process is gone once the kernel says so: wait on that, not on a timer
        try:
            os.kill(first, 0)
        except ProcessLookupError:
            break
        if process_of(db)._proc is not None and process_of(db)._proc.poll() is not None:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    second = await db.write(partial(insert_pid, "after"), offload=True)
    assert second != first
    assert [k for k, _ in table(db.settings.path)] == ["before", "after"]


async def test_a_body_that_does_not_pickle_fails_alone(db: Database):
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        await db.write(lambda txn: None, offload=True)
    assert await db.write(partial(insert_pid, "next"), offload=True) != os.getpid()


async def test_the_process_ignores_sigint_and_sigterm(db: Database):
    pid = await db.write(partial(insert_pid, "a"), offload=True)
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    # Still the same process, writing, and still alive after it.
    assert await db.write(partial(insert_pid, "b"), offload=True) == pid
    assert process_of(db)._proc is not None and process_of(db)._proc.poll() is None


async def test_close_stops_the_process(tmp_path: Path):
    database = await open_scratch_database(tmp_path / "c.sqlite3")
    pid = await database.write(partial(insert_pid, "x"), offload=True)
    await database.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_without_a_write_process_offloaded_writes_run_here(tmp_path: Path):
    database = await open_scratch_database(tmp_path / "n.sqlite3", write_process=False)
    try:
        assert await database.write(partial(insert_pid, "x"), offload=True) == os.getpid()
    finally:
        await database.close()


@pytest.mark.parametrize(
    "error",
    [
        NotFound("IMAGE", "images/7"),
        AlreadyExists("IMAGE", "images/7", reason="PHOTOMETRY_ALREADY_RECORDED", message="already recorded"),
        InvalidArgument([FieldViolation("columns.snr[3]", "must be finite")]),
        RequestIdMismatch("r-1"),
        StorageUnavailable("storage busy: database is locked"),
        ShuttingDown("draining"),
    ],
)
def test_domain_errors_cross_processes_intact(error: DomainError):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (str(copy), copy.reason, copy.metadata) == (str(error), error.reason, error.metadata)
    assert getattr(copy, "violations", None) == getattr(error, "violations", None)


# ---- through the server ---------------------------------------------------------------------------


async def test_photometry_is_stored_the_same_with_and_without_the_write_process(
    server_factory: ServerFactory, tmp_path: Path
):
    tag = uuid.uuid4().hex[:8]
    stored = []
    for write_process in (True, False):
        server = await server_factory(database=tmp_path / f"{write_process}.sqlite3", write_process=write_process)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = make_stubs(channel)
            images = await make_images(stubs, [60400.0 + i for i in range(6)], f"wp-{tag}")
            await asyncio.gather(
                *(
                    record(
                        stubs,
                        img.name,
                        [measurement(f"W{tag}-{j}", 10.0 + j * 0.01, 20.0, flux=0.01 * (1 + i + j)) for j in range(30)],
                    )
                    for i, img in enumerate(images)
                )
            )
            got = await stubs.sources.BatchGetSources(
                sources_pb2.BatchGetSourcesRequest(names=[f"sources/W{tag}-{j}" for j in range(30)])
            )
            stored.append(
                [
                    (s.name, s.detection_count, s.first_detection_mjd, s.variability.mean_flux_jy, s.variability.eta)
                    for s in got.sources
                ]
            )
            offload = server.server.storage.db._offload
            assert (offload is not None and offload.starts == 1) == write_process
        with closing(sqlite3.connect(tmp_path / f"{write_process}.sqlite3")) as conn:
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            assert conn.execute("SELECT count(*) FROM photometry").fetchone()[0] == 6 * 30
    # Running sums may be folded in another order (groups differ): equal to rounding.
    assert [s[:3] for s in stored[0]] == [s[:3] for s in stored[1]]
    assert [v for s in stored[0] for v in s[3:]] == pytest.approx([v for s in stored[1] for v in s[3:]], rel=1e-9)
    assert all(count == 6 for _, count, *_ in stored[0])


async def test_the_process_can_be_started_before_the_first_write(db: Database):
    await db.start_write_process()
    started = process_of(db).pid
    assert started is not None and process_of(db).starts == 1
    assert await db.write(partial(insert_pid, "first"), offload=True) == started
    assert process_of(db).starts == 1


def rows_in_database_file(path: Path) -> list[str]:
    """The keys of t as the main database file holds them, ignoring the WAL (immutable=1): what a
    checkpoint has copied there."""
    with closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as conn:
        try:
            if conn.execute("SELECT count(*) FROM sqlite_schema WHERE name = 't'").fetchone()[0] == 0:
                return []  # not even the table has been copied yet
            return [k for (k,) in conn.execute("SELECT k FROM t ORDER BY rowid")]
        except sqlite3.DatabaseError:  # read while the checkpoint was writing pages: not there yet
            return []


async def test_the_process_checkpoints_beside_its_writes(db: Database):
    # Far below the writer's own automatic checkpoint (thousands of pages): only the checkpoint
    # thread copies these rows from the WAL into the database file.
    for key in ("a", "b", "c"):
        await db.write(partial(insert_pid, key), offload=True)
    deadline = asyncio.get_running_loop().time() + 30
    while rows_in_database_file(db.settings.path) != ["a", "b", "c"]:
        assert asyncio.get_running_loop().time() < deadline, "the WAL was never checkpointed"
        await asyncio.sleep(0.02)

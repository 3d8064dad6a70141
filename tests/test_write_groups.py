"""Group commit: writes that queue up together are committed together, and still each all-or-nothing.

The writer (storage/sqlite/writer.py) is tested directly on a real SQLite file: grouping happens,
a failing write in a group is rolled back alone and gets its own error, a group's `finish` step
runs once after its bodies and before any write that does not share it, a cancelled caller's write
is still committed, and after-commit hooks run in commit order.

Then through the real server: many concurrent RecordPhotometry calls (so they share groups), some
of them failing, leave every source's statistics exactly what its recorded epochs give, computed
the plain way, and nothing of the failed calls.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import uuid
from functools import partial
from pathlib import Path

import grpc
import pytest
from dsa110.contimg.server.domain.errors import NotFound
from dsa110.contimg.server.domain.records import Photometry, PhotometryBatch
from dsa110.contimg.server.storage.sqlite.connect import connect_writer, translate
from dsa110.contimg.server.storage.sqlite.database import Database, SQLiteSettings
from dsa110.contimg.server.storage.sqlite.sources import _ingest, _update_source_statistics
from dsa110.contimg.server.storage.sqlite.writer import Txn, run_group
from dsa110.contimg.v1 import images_pb2, sources_pb2

from conftest import RunningServer
from helpers import violation_fields
from helpers_jobs import Epoch, assert_stats, make_images, measurement, record


def insert(key: str, value: int = 1):
    def body(txn: Txn) -> str:
        txn.execute("INSERT INTO t VALUES (?, ?)", (key, value))
        return key

    return body


def rows(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT k, v FROM t").fetchall())


async def test_concurrent_writes_share_groups_and_all_commit(db: Database):
    groups_before = db._writer.groups
    keys = [f"k{i}" for i in range(40)]
    assert await asyncio.gather(*(db.write(insert(k)) for k in keys)) == keys
    groups = db._writer.groups - groups_before
    # All forty are queued before the writer thread takes any: ceil(40 / MAX_GROUP) commits.
    assert groups == 2
    assert set(rows(db.settings.path)) == set(keys)


async def test_a_failing_write_is_rolled_back_alone(db: Database):
    def half_then_fail(txn: Txn) -> None:
        txn.execute("INSERT INTO t VALUES ('partial', 1)")
        raise NotFound("IMAGE", "images/42")

    def duplicate(txn: Txn) -> None:
        txn.execute("INSERT INTO t VALUES ('a', 2)")  # 'a' is written by an earlier write of the group

    results = await asyncio.gather(
        db.write(insert("a")),
        db.write(half_then_fail),
        db.write(insert("b")),
        db.write(duplicate),
        db.write(insert("c")),
        return_exceptions=True,
    )
    assert results[0] == "a" and results[2] == "b" and results[4] == "c"
    assert isinstance(results[1], NotFound)
    assert isinstance(results[3], sqlite3.IntegrityError)
    assert rows(db.settings.path) == {"a": 1, "b": 1, "c": 1}


async def test_finish_runs_once_per_group_before_any_other_write(db: Database):
    finishes: list[list[str]] = []

    def finish(txn: Txn) -> None:
        seen = txn.scratch.pop("seen")
        finishes.append(seen)
        txn.execute("INSERT INTO t VALUES (?, ?)", ("total", len(seen)))

    def counted(key: str):
        def body(txn: Txn) -> str:
            txn.execute("INSERT INTO t VALUES (?, 0)", (key,))
            txn.scratch.setdefault("seen", []).append(key)
            return key

        return body

    def reads_total(txn: Txn) -> int:
        found = txn.fetchone("SELECT v FROM t WHERE k = 'total'")
        return -1 if found is None else int(found[0])

    blocker = asyncio.ensure_future(db.write(insert("first")))  # a plain write may lead a group
    grouped = [asyncio.ensure_future(db.write(counted(f"c{i}"), finish=finish)) for i in range(5)]
    after = asyncio.ensure_future(db.write(reads_total))
    await asyncio.gather(blocker, *grouped, after)
    assert finishes == [[f"c{i}" for i in range(5)]]
    # The plain write queued after them was not let into their group: it saw the finished total.
    assert after.result() == 5


async def test_a_failing_finish_fails_the_whole_group(db: Database):
    def finish(txn: Txn) -> None:
        raise RuntimeError("disk on fire")

    await db.write(insert("first"))
    results = await asyncio.gather(
        *(db.write(insert(f"g{i}"), finish=finish) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert rows(db.settings.path) == {"first": 1}
    assert await db.write(insert("next")) == "next"  # the writer goes on


async def test_a_finish_that_fails_on_one_writes_data_fails_that_write_alone(db: Database):
    """The group's shared step (here: a sum over what every body left) cannot take one write's data:
    the group runs again write by write, and only that write fails (photometry's statistics are
    such a step: one absurd value once failed 15-18 of 30 concurrent batches)."""

    def finish(txn: Txn) -> None:
        for key in txn.scratch.pop("keys"):
            if key == "poison":
                raise ZeroDivisionError("float division by zero")
            txn.execute("UPDATE t SET v = v + 1 WHERE k = ?", (key,))

    def body(key: str):
        def run(txn: Txn) -> str:
            txn.execute("INSERT INTO t VALUES (?, 0)", (key,))
            txn.scratch.setdefault("keys", []).append(key)
            return key

        return run

    blocker = asyncio.ensure_future(db.write(insert("first")))  # the rest queue up behind it, as one group
    keys = ["a", "b", "poison", "c", "d"]
    results = await asyncio.gather(*(db.write(body(k), finish=finish) for k in keys), return_exceptions=True)
    await blocker
    assert [type(r).__name__ for r in results] == ["str", "str", "ZeroDivisionError", "str", "str"]
    assert rows(db.settings.path) == {"first": 1, "a": 1, "b": 1, "c": 1, "d": 1}  # each finished once


async def test_a_cancelled_caller_still_gets_its_write_committed(db: Database):
    blocker = asyncio.ensure_future(db.write(insert("first")))
    victim = asyncio.ensure_future(db.write(insert("cancelled-caller")))
    await asyncio.sleep(0)
    victim.cancel()
    await blocker
    with pytest.raises(asyncio.CancelledError):
        await victim
    await db.write(insert("later"))  # runs after the victim's group
    assert set(rows(db.settings.path)) == {"first", "cancelled-caller", "later"}


async def test_after_commit_hooks_run_in_commit_order(db: Database):
    published: list[str] = []
    keys = [f"p{i}" for i in range(20)]
    await asyncio.gather(*(db.write(insert(k), published.append) for k in keys))
    assert published == keys


async def test_writes_after_close_are_refused(tmp_path: Path):
    database = Database(SQLiteSettings(tmp_path / "c.sqlite3", readers=1))
    await database.open()
    await database.close()
    with pytest.raises(Exception, match="closed"):
        await database.write(insert("x"))


# ---- through the server ---------------------------------------------------------------------------


async def test_concurrent_photometry_batches_keep_statistics_exact(stubs):
    rng = random.Random(11)
    tag = uuid.uuid4().hex[:8]
    mjds = [60400.0 + i * 0.25 for i in range(24)]
    images = await make_images(stubs, mjds, f"group-{tag}")
    sources = [f"G{tag}-{j}" for j in range(40)]
    history: dict[str, list[Epoch]] = {s: [] for s in sources}
    batches = []
    for img, mjd in zip(images, mjds, strict=True):
        batch = []
        for j, sid in enumerate(sources):
            if rng.random() < 0.7:
                flux = 0.05 * (1 + rng.uniform(-0.3, 0.3)) * (1 + j % 5)
                err = 0.001 * (1 + rng.random())
                batch.append(measurement(sid, 200.0 + j * 0.01, 30.0, flux=flux, err=err))
                history[sid].append(Epoch(flux, err, mjd))
        batches.append((img.name, batch))

    ghost = [measurement(f"GHOST{tag}", 1.0, 1.0)]
    calls = [record(stubs, name, batch) for name, batch in batches]
    # Failures mixed into the same groups: an image that does not exist, and a second recording of
    # an image that one of the concurrent calls records (exactly one of the two may succeed).
    calls.insert(5, record(stubs, "images/999999999", ghost))
    calls.insert(12, record(stubs, batches[3][0], batches[3][1]))
    results = await asyncio.gather(*calls, return_exceptions=True)

    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert sorted(e.code().name for e in errors) == ["ALREADY_EXISTS", "NOT_FOUND"]
    assert sum(1 for r in results if isinstance(r, sources_pb2.RecordPhotometryResponse)) == len(batches)

    got = await stubs.sources.BatchGetSources(
        sources_pb2.BatchGetSourcesRequest(names=[f"sources/{s}" for s in sources if history[s]])
    )
    for src in got.sources:
        assert_stats(src, history[src.name.removeprefix("sources/")])
    for name, batch in batches:
        image = await stubs.images.GetImage(images_pb2.GetImageRequest(name=name))
        assert image.photometry_count == len(batch)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name=f"sources/GHOST{tag}"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_photometry_and_image_deletes_interleaved_keep_statistics_exact(stubs):
    tag = uuid.uuid4().hex[:8]
    mjds = [60500.0 + i for i in range(12)]
    images = await make_images(stubs, mjds, f"mixed-{tag}")
    sources = [f"M{tag}-{j}" for j in range(10)]
    history: dict[str, dict[str, Epoch]] = {s: {} for s in sources}
    first, second = images[:6], images[6:]
    for i, img in enumerate(first):
        batch = [measurement(s, 10.0, 10.0, flux=0.1 + 0.01 * i + 0.001 * j) for j, s in enumerate(sources)]
        await record(stubs, img.name, batch)
        for j, s in enumerate(sources):
            history[s][img.name] = Epoch(0.1 + 0.01 * i + 0.001 * j, 0.001, mjds[i])

    deleted = [first[1].name, first[4].name]
    calls = []
    for i, img in enumerate(second):
        batch = [measurement(s, 10.0, 10.0, flux=0.2 + 0.02 * i + 0.001 * j) for j, s in enumerate(sources)]
        calls.append(record(stubs, img.name, batch))
        for j, s in enumerate(sources):
            history[s][img.name] = Epoch(0.2 + 0.02 * i + 0.001 * j, 0.001, mjds[6 + i])
        if i in (1, 3):
            name = deleted[(i - 1) // 2]
            calls.append(stubs.images.DeleteImage(images_pb2.DeleteImageRequest(name=name, force=True)))
    await asyncio.gather(*calls)
    for s in sources:
        for name in deleted:
            del history[s][name]

    got = await stubs.sources.BatchGetSources(
        sources_pb2.BatchGetSourcesRequest(names=[f"sources/{s}" for s in sources])
    )
    for src in got.sources:
        assert_stats(src, list(history[src.name.removeprefix("sources/")].values()))


async def test_a_failed_batch_leaves_its_group_nothing_to_misuse(tmp_path: Path):
    """A batch that fails after creating a source is rolled back alone; the next batch of the same
    group, naming that source, must create it again rather than reuse the rolled-back sid (the
    write process writes without foreign-key checks), and the failed rows add nothing to its sums.
    The failure here (an error whose 1/err^2 divides by zero) is one validation now refuses, so the
    group is run directly."""
    settings = SQLiteSettings(tmp_path / "g.sqlite3", write_process=False)
    database = Database(settings)
    await database.open()

    def images(txn: Txn) -> None:
        txn.execute("INSERT INTO measurement_sets (path, create_time, update_time) VALUES ('/ms/g.ms', 1, 1)")
        for i in (1, 2):
            txn.execute(
                "INSERT INTO images (id, path, ms_path, create_time, update_time, mid_mjd) "
                "VALUES (?, ?, '/ms/g.ms', 1, 1, ?)",
                (i, f"/img/{i}.fits", 60000.0 + i),
            )

    await database.write(images)
    await database.close()

    def batch(err: float, *sources: str) -> PhotometryBatch:
        return PhotometryBatch.of_rows(
            [Photometry(s, ra_deg=1.0, dec_deg=2.0, peak_flux_jy=0.5, peak_flux_err_jy=err) for s in sources]
        )

    conn = connect_writer(settings)
    conn.execute("PRAGMA foreign_keys = OFF")  # as in the write process
    try:
        outcomes = run_group(
            conn,
            [
                (partial(_ingest, 1, batch(1e-170, "X"), None, "test"), _update_source_statistics),
                (partial(_ingest, 2, batch(0.01, "Y", "X"), None, "test"), _update_source_statistics),
            ],
            translate,
        )
        assert not outcomes[0][0] and outcomes[1][0]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        stored = dict(
            conn.execute(
                "SELECT s.id, s.detection_count FROM sources s JOIN photometry p ON p.source_sid = s.sid"
            ).fetchall()
        )
        assert stored == {"X": 1, "Y": 1}
    finally:
        conn.close()


def test_a_batch_with_uneven_columns_is_refused_before_it_is_written() -> None:
    """Storage zips the columns as SQLite takes them: a short column would silently drop rows while
    the counts still say every source was recorded, so such a batch never reaches a transaction."""
    from dsa110.contimg.server.storage.sqlite.sources import _packed

    even = PhotometryBatch(["A", "B"], [[1.0, 2.0] for _ in range(12)], None, [0.0, 0.0], [0, 0])
    packed = _packed(even)
    assert [c.typecode for c in packed.numbers] == ["d"] * 12 and packed.measure_time.typecode == "q"
    for uneven in (
        PhotometryBatch(["A", "B"], [[1.0, 2.0] for _ in range(11)] + [[1.0]], None, [0.0, 0.0], [0, 0]),
        PhotometryBatch(["A", "B"], [[1.0, 2.0] for _ in range(12)], None, [0.0], [0, 0]),
        PhotometryBatch(["A", "B"], [[1.0, 2.0] for _ in range(12)], ["ok"], [0.0, 0.0], [0, 0]),
        PhotometryBatch(["A", "B"], [[1.0, 2.0] for _ in range(11)], None, [0.0, 0.0], [0, 0]),
    ):
        try:
            _packed(uneven)
        except ValueError:
            pass
        else:
            raise AssertionError(f"{uneven} was accepted")


async def test_an_absurd_error_is_refused_and_fails_no_other_batch(stubs):
    """30 concurrent batches on the same sources, one of them with a peak_flux_err_jy of 1.4e154
    (its weight 1/err^2 underflowed to 0 and the statistics divided by it: 15-18 of the other
    callers' batches failed with INTERNAL)."""
    tag = uuid.uuid4().hex[:8]
    mjds = [60600.0 + i for i in range(30)]
    images = await make_images(stubs, mjds, f"absurd-{tag}")
    sources = [f"A{tag}-{j}" for j in range(5)]
    history: dict[str, list[Epoch]] = {s: [] for s in sources}
    calls = []
    for i, (img, mjd) in enumerate(zip(images, mjds, strict=True)):
        err = 1.4e154 if i == 7 else 0.001
        batch = [measurement(s, 210.0 + j * 0.01, 30.0, flux=0.05 + i * 0.001, err=err) for j, s in enumerate(sources)]
        if i != 7:
            for s in sources:
                history[s].append(Epoch(0.05 + i * 0.001, err, mjd))
        calls.append(record(stubs, img.name, batch))
    results = await asyncio.gather(*calls, return_exceptions=True)
    bad = results.pop(7)
    assert isinstance(bad, grpc.aio.AioRpcError) and bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "measurements[0].peak_flux_err_jy" in violation_fields(bad)
    assert all(isinstance(r, sources_pb2.RecordPhotometryResponse) for r in results), results
    got = await stubs.sources.BatchGetSources(
        sources_pb2.BatchGetSourcesRequest(names=[f"sources/{s}" for s in sources])
    )
    for src in got.sources:
        assert_stats(src, history[src.name.removeprefix("sources/")])


async def test_measurements_stored_before_the_bounds_fail_no_write(server: RunningServer, stubs):
    """A source whose stored measurements divide by zero (errors of 1.4e154 Jy, weights of 0, as the
    old bounds let through) still takes new measurements in a group with other batches, and its
    images can be deleted (which recomputes its statistics from what remains: that divided by zero,
    so the image could not be deleted)."""
    tag = uuid.uuid4().hex[:8]
    images = await make_images(stubs, [60700.0 + i for i in range(5)], f"stored-{tag}")
    poisoned, other = f"P{tag}", f"Q{tag}"
    for image in images[:3]:
        await record(stubs, image.name, [measurement(poisoned, 1.0, 2.0), measurement(other, 1.1, 2.0)])
    with sqlite3.connect(server.config.database_path) as conn:
        [(sid,)] = conn.execute("SELECT sid FROM sources WHERE id = ?", (poisoned,)).fetchall()
        conn.execute("UPDATE photometry SET peak_flux_err_jy = 1.4e154 WHERE source_sid = ?", (sid,))
        conn.execute("UPDATE sources SET sum_w = 0, sum_wf = 0, sum_wf2 = 0 WHERE sid = ?", (sid,))
    conn.close()
    results = await asyncio.gather(
        record(stubs, images[3].name, [measurement(poisoned, 1.0, 2.0), measurement(other, 1.1, 2.0)]),
        record(stubs, images[4].name, [measurement(other, 1.1, 2.0)]),
    )
    assert [r.recorded_count for r in results] == [2, 1]
    await stubs.images.DeleteImage(images_pb2.DeleteImageRequest(name=images[3].name, force=True))
    await stubs.images.DeleteImage(images_pb2.DeleteImageRequest(name=images[2].name, force=True))
    src = await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name=f"sources/{poisoned}"))
    assert src.detection_count == 2 and src.variability.eta == 0.0 and src.variability.mean_flux_jy == 0.05

"""Schema migrations on a database that already holds data: migration 2 replaces photometry's index
by image (and its foreign key to images) with one image_photometry row per image. A database made
under migration 1 keeps every measurement, and deleting an image afterwards still takes its
photometry with it and recomputes its sources."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import grpc
import pytest
from dsa110.contimg.server.storage.sqlite.migrations import MIGRATIONS
from dsa110.contimg.server.storage.sqlite.schema import split_sql as _split_sql
from dsa110.contimg.v1 import images_pb2, sources_pb2

from conftest import ServerFactory, make_stubs

# (source sid, image id, mjd, peak flux): source 1 in both images, source 2 in the first only.
MEASURED = [(1, 1, 60000.5, 1.0), (1, 2, 60001.5, 3.0), (2, 1, 60000.5, 5.0)]


def database_at_version_1(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.execute(
            "CREATE TABLE schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_time INTEGER NOT NULL)"
        )
        version, name, sql = MIGRATIONS[0]
        assert version == 1
        for statement in _split_sql(sql):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (1, ?, 0)", (name,))
        conn.execute("INSERT INTO measurement_sets (path, create_time, update_time) VALUES ('/ms/a.ms', 1, 1)")
        for image_id, mjd in ((1, 60000.5), (2, 60001.5)):
            conn.execute(
                "INSERT INTO images (id, path, ms_path, create_time, update_time, mid_mjd, photometry_count) "
                "VALUES (?, ?, '/ms/a.ms', 1, 1, ?, ?)",
                (image_id, f"/img/{image_id}.fits", mjd, sum(1 for m in MEASURED if m[1] == image_id)),
            )
        for sid in (1, 2):
            conn.execute(
                "INSERT INTO sources (sid, id, ra_deg, dec_deg, create_time, update_time) VALUES (?, ?, ?, 54.0, 1, 1)",
                (sid, f"J000{sid}+5400", float(sid)),
            )
        conn.executemany(
            "INSERT INTO photometry VALUES (?, ?, ?, 1.0, 54.0, 10.0, ?, 0.01, ?, 0.01, 1.0, 0.01, 50.0, 0.001, "
            "0.1, 'good', 7)",
            [(sid, mjd, image_id, flux, flux) for sid, image_id, mjd, flux in MEASURED],
        )
        conn.execute("COMMIT")


def photometry(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT * FROM photometry ORDER BY source_sid, observation_mjd, image_id").fetchall()


async def test_migration_2_keeps_photometry_and_deleting_an_image_still_takes_its_rows(
    server_factory: ServerFactory, tmp_path: Path
):
    path = tmp_path / "v1.sqlite3"
    database_at_version_1(path)
    before = photometry(path)
    server = await server_factory(database=path)
    assert await server.server.storage.db.schema_version() == max(v for v, _, _ in MIGRATIONS)
    assert photometry(path) == before
    with closing(sqlite3.connect(path)) as conn:
        by_image = {
            i: sorted(map(int, s.strip("[]").split(","))) for i, s in conn.execute("SELECT * FROM image_photometry")
        }
        assert by_image == {1: [1, 2], 2: [1]}
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'photometry_by_image'").fetchall() == []
        assert [fk[2] for fk in conn.execute("PRAGMA foreign_key_list(photometry)")] == ["sources"]

    async with grpc.aio.insecure_channel(server.target) as channel:
        stubs = make_stubs(channel)
        await stubs.images.DeleteImage(images_pb2.DeleteImageRequest(name="images/1", force=True))
        points = [
            p.image
            async for msg in stubs.sources.GetLightcurve(sources_pb2.GetLightcurveRequest(name="sources/J0001+5400"))
            for p in msg.points
        ]
        assert points == ["images/2"]
        got = await stubs.sources.BatchGetSources(
            sources_pb2.BatchGetSourcesRequest(names=["sources/J0001+5400", "sources/J0002+5400"])
        )
        assert [s.detection_count for s in got.sources] == [1, 0]
        assert got.sources[0].variability.mean_flux_jy == pytest.approx(3.0)
    assert [row[:3] for row in photometry(path)] == [(1, 60001.5, 2)]
    with closing(sqlite3.connect(path)) as conn:
        assert [i for (i,) in conn.execute("SELECT image_id FROM image_photometry")] == [2]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []

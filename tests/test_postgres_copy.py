"""`contimg-server copy-data` and demo data on PostgreSQL: the same records, the same replies.

A SQLite demo database is copied into an empty PostgreSQL one; then a server on each answers the
same reads, and the replies must be the same bytes (the engines share the row mapping and the
encoders, so any difference is a value lost or changed on the way, or an engine answering
differently). Page tokens handed out by the SQLite server work on the PostgreSQL one: the
page-token key is copied too.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import grpc
import pytest
from dsa110.contimg import demo
from dsa110.contimg.server.config import ServerConfig
from dsa110.contimg.server.domain.errors import StartupError
from dsa110.contimg.server.storage.postgres.copy import copy_database
from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2

from conftest import PostgresDatabases, ServerFactory, make_stubs
from helpers_stress import CONSOLE_SCRIPT

ENGINES = ("postgres",)
IMAGES = 1000


@pytest.fixture
async def demo_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "demo" / "contimg.sqlite3"
    path.parent.mkdir()
    await demo.fill(ServerConfig(data_dir=path.parent, database=str(path)), IMAGES)
    return path


async def _replies(target: str) -> list[bytes]:
    """A spread of reads, each reply's bytes."""
    async with grpc.aio.insecure_channel(target) as channel:
        stubs = make_stubs(channel)
        out: list[bytes] = []
        listing = images_pb2.ListImagesRequest(page_size=50, order_by="noise_jy desc")
        images = await stubs.images.ListImages(listing)
        out.append(images.SerializeToString())
        listing.page_token = images.next_page_token
        out.append((await stubs.images.ListImages(listing)).SerializeToString())
        one = await stubs.images.GetImage(images_pb2.GetImageRequest(name=images.images[3].name))
        out.append(one.SerializeToString())
        first = images.images[0]
        found = await stubs.images.SearchImages(
            images_pb2.SearchImagesRequest(ra_deg=first.center_ra_deg, dec_deg=first.center_dec_deg)
        )
        out.append(found.SerializeToString())
        cone = await stubs.sources.SearchSources(
            sources_pb2.SearchSourcesRequest(ra_deg=first.center_ra_deg, dec_deg=first.center_dec_deg, radius_deg=1.0)
        )
        out.append(cone.SerializeToString())
        variable = await stubs.sources.ListSources(
            sources_pb2.ListSourcesRequest(page_size=20, filter="epoch_count >= 3", order_by="eta desc")
        )
        out.append(variable.SerializeToString())
        source = variable.sources[0].name
        out.append((await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name=source))).SerializeToString())
        points = [p async for p in stubs.sources.GetLightcurve(sources_pb2.GetLightcurveRequest(name=source))]
        out.extend(p.SerializeToString() for p in points)
        jobs = await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=30))
        out.append(jobs.SerializeToString())
        out.append((await stubs.jobs.GetJob(jobs_pb2.GetJobRequest(name=jobs.jobs[0].name))).SerializeToString())
        ms = await stubs.ms.ListMeasurementSets(measurement_sets_pb2.ListMeasurementSetsRequest(page_size=40))
        out.append(ms.SerializeToString())
        return out


async def test_a_copied_database_answers_every_read_as_the_original(
    demo_sqlite: Path, postgres_databases: PostgresDatabases, server_factory: ServerFactory
) -> None:
    url = await postgres_databases.new()
    reports = await copy_database(demo_sqlite, url)
    counts = {r.name: r.rows for r in reports}
    assert counts["images"] == IMAGES and counts["photometry"] > 0 and counts["job_events"] > 0
    lite = await server_factory(database=demo_sqlite)
    pg = await server_factory(database=url)
    assert await _replies(pg.target) == await _replies(lite.target)

    # A page token from the SQLite server continues the list on the PostgreSQL one.
    request = images_pb2.ListImagesRequest(page_size=7, order_by="mid_mjd")
    async with grpc.aio.insecure_channel(lite.target) as a, grpc.aio.insecure_channel(pg.target) as b:
        first = await make_stubs(a).images.ListImages(request)
        request.page_token = first.next_page_token
        assert (await make_stubs(b).images.ListImages(request)) == (await make_stubs(a).images.ListImages(request))

    # New ids continue after the copied ones.
    async with grpc.aio.insecure_channel(pg.target) as channel:
        created = await make_stubs(channel).images.CreateImage(
            images_pb2.CreateImageRequest(
                image=images_pb2.Image(path="/data/new.fits", measurement_set=first.images[0].measurement_set)
            )
        )
    assert int(created.name.split("/")[1]) > IMAGES


async def test_copy_data_refuses_a_target_that_holds_data(
    demo_sqlite: Path, postgres_databases: PostgresDatabases
) -> None:
    url = await postgres_databases.new()
    await copy_database(demo_sqlite, url)
    with pytest.raises(StartupError, match="already holds measurement_sets"):
        await copy_database(demo_sqlite, url)
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM images") == IMAGES  # nothing added twice
    finally:
        await conn.close()


async def test_demo_data_command_fills_postgresql(postgres_databases: PostgresDatabases) -> None:
    url = await postgres_databases.new()
    result = await asyncio.to_thread(
        subprocess.run,
        [str(CONSOLE_SCRIPT), "demo-data", "--images", "1000", "--database", url, "--log-level", "WARNING"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM images") == 1000
        assert await conn.fetchval("SELECT count(*) FROM photometry") > 0
    finally:
        await conn.close()

"""RecordPhotometry's storage on PostgreSQL under concurrency (storage/postgres/sources.py).

Two "replicas" (two Databases, two repositories, one database) record overlapping batches at once:
the statistics stored must be those computed from all the photometry stored, every batch must be
recorded exactly once, and batches for one image, or under one request_id, must resolve as they do
one after the other. The engine-neutral behaviour is held by tests/test_sources.py on both engines.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from dsa110.contimg.server.domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    NotFound,
    RequestIdMismatch,
)
from dsa110.contimg.server.domain.records import Photometry, PhotometryBatch
from dsa110.contimg.server.domain.variability import FluxSums
from dsa110.contimg.server.repositories.protocols import Idempotency
from dsa110.contimg.server.storage.postgres.database import Conn, Database, PostgresSettings
from dsa110.contimg.server.storage.postgres.sources import PostgresSources
from dsa110.contimg.server.storage.statistics import STATS_COLUMNS, stats_values

from conftest import PostgresDatabases


@pytest.fixture
async def replicas(postgres_databases: PostgresDatabases) -> AsyncIterator[tuple[Database, Database]]:
    url = await postgres_databases.new()
    a, b = Database(PostgresSettings(url, pool_max=6)), Database(PostgresSettings(url, pool_max=6))
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


async def make_images(db: Database, mjds: list[float], ms_mjd: float = 60000.0) -> list[int]:
    async def body(conn: Conn) -> list[int]:
        path = f"/ms/{uuid.uuid4()}.ms"
        await conn.execute(
            "INSERT INTO measurement_sets (path, mid_mjd, create_time, update_time) VALUES ($1, $2, 0, 0)", path, ms_mjd
        )
        return [
            await conn.fetchval(
                "INSERT INTO images (path, ms_path, mid_mjd, create_time, update_time) "
                "VALUES ($1, $2, $3, 0, 0) RETURNING id",
                f"/img/{uuid.uuid4()}.fits",
                path,
                mjd,
            )
            for mjd in mjds
        ]

    return await db.write(body)


def batch_of(rng: random.Random, names: list[str], mjd: float = 0.0) -> PhotometryBatch:
    return PhotometryBatch.of_rows(
        [
            Photometry(
                s,
                0,
                sum(map(ord, s)) * 7 % 360 + 0.5,
                54.57,
                10.0,
                rng.uniform(0.01, 2.0),
                rng.uniform(0.001, 0.05),
                observation_mjd=mjd,
            )
            for s in names
        ]
    )


async def stored_vs_recomputed(db: Database) -> int:
    """Every source's statistics against a recompute from its photometry; how many sources."""
    sums: dict[int, FluxSums] = {}
    for sid, flux, err, mjd in await db.fetch(
        "SELECT source_sid, peak_flux_jy, peak_flux_err_jy, observation_mjd FROM photometry "
        "ORDER BY source_sid, observation_mjd, image_id"
    ):
        sums.setdefault(sid, FluxSums()).add(flux, err, mjd)
    stored = {r[0]: list(r[1:]) for r in await db.fetch(f"SELECT sid, {', '.join(STATS_COLUMNS)} FROM sources")}
    assert set(stored) == set(sums)
    for sid, total in sums.items():
        want = stats_values(total)
        for column, got, expected in zip(STATS_COLUMNS, stored[sid], want, strict=True):
            assert float(got) == pytest.approx(float(expected), rel=1e-9, abs=1e-12), (sid, column)
        assert stored[sid][STATS_COLUMNS.index("detection_count")] == total.n
    return len(sums)


async def test_concurrent_overlapping_batches_keep_statistics_exact(replicas: tuple[Database, Database]) -> None:
    a, b = replicas
    repos = [PostgresSources(a), PostgresSources(b)]
    rng = random.Random(11)
    images = await make_images(a, [60000.0 + i / 10 for i in range(60)])
    pool = [f"S{i}" for i in range(400)]
    batches = {image: rng.sample(pool, rng.randint(50, 300)) for image in images}

    async def record(i: int, image: int) -> tuple[int, int]:
        result = await repos[i % 2].record_photometry(image, batch_of(random.Random(image), batches[image]), None)
        assert result.recorded_count == len(batches[image])
        return result.created_source_count, result.updated_source_count

    results = await asyncio.gather(*(record(i, image) for i, image in enumerate(images)))
    assert sum(created for created, _ in results) == len({s for names in batches.values() for s in names})
    assert sum(created + updated for created, updated in results) == sum(map(len, batches.values()))
    assert await stored_vs_recomputed(a) == len({s for names in batches.values() for s in names})
    counts = {r[0]: r[1] for r in await a.fetch("SELECT id, photometry_count FROM images")}
    assert counts == {image: len(names) for image, names in batches.items()}
    measured = {r[0]: sorted(r[1]) for r in await a.fetch("SELECT image_id, source_sids FROM image_photometry")}
    by_name = {r[0]: r[1] for r in await a.fetch("SELECT id, sid FROM sources")}
    assert measured == {image: sorted(by_name[s] for s in names) for image, names in batches.items()}


async def test_one_image_at_once_from_two_replicas(replicas: tuple[Database, Database]) -> None:
    a, b = replicas
    [image] = await make_images(a, [60100.0])
    rng = random.Random(3)
    tries = [
        repo.record_photometry(image, batch_of(rng, [f"D{i}" for i in range(k, k + 50)]), None)
        for k in range(0, 8)
        for repo in (PostgresSources(a), PostgresSources(b))
    ]
    outcomes = await asyncio.gather(*tries, return_exceptions=True)
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(done) == 1 and done[0].recorded_count == 50
    assert all(
        isinstance(o, AlreadyExists) and o.reason == "PHOTOMETRY_ALREADY_RECORDED" for o in outcomes if o not in done
    )
    assert await a.fetchval("SELECT count(*) FROM photometry") == 50
    await stored_vs_recomputed(a)


async def test_one_request_id_at_once_from_two_replicas(replicas: tuple[Database, Database]) -> None:
    a, b = replicas
    [image, other] = await make_images(a, [60200.0, 60201.0])
    idem = Idempotency(str(uuid.uuid4()), "RecordPhotometry", "fp")
    names = [f"R{i}" for i in range(40)]
    repos = [PostgresSources(a), PostgresSources(b)]
    outcomes = await asyncio.gather(
        *(repos[i % 2].record_photometry(image, batch_of(random.Random(1), names), idem) for i in range(10))
    )
    assert len(set(outcomes)) == 1 and outcomes[0].recorded_count == 40 and outcomes[0].created_source_count == 40
    assert await a.fetchval("SELECT count(*) FROM photometry") == 40
    # The same request_id with another body (another fingerprint): refused, nothing written.
    with pytest.raises(RequestIdMismatch):
        await repos[1].record_photometry(
            other, batch_of(random.Random(1), names), Idempotency(idem.request_id, "RecordPhotometry", "other")
        )
    assert await a.fetchval("SELECT photometry_count FROM images WHERE id = $1", other) == 0


async def test_refusals_in_a_group_leave_the_others_alone(replicas: tuple[Database, Database]) -> None:
    a, _ = replicas
    repo = PostgresSources(a)
    good = await make_images(a, [60300.0 + i for i in range(6)])
    timeless = await make_images(a, [0.0, 0.0], ms_mjd=0.0)
    rng = random.Random(9)
    await repo.record_photometry(good[0], batch_of(rng, ["G1"]), None)
    calls = [
        repo.record_photometry(good[0], batch_of(rng, ["G2"]), None),  # already recorded
        repo.record_photometry(987654, batch_of(rng, ["G3"]), None),  # no such image
        repo.record_photometry(timeless[0], batch_of(rng, ["G4"]), None),  # no observation time
        repo.record_photometry(timeless[1], batch_of(rng, ["G5"], mjd=60310.0), None),  # ... but it sends its own
        *(repo.record_photometry(image, batch_of(rng, ["G1", f"N{image}"]), None) for image in good[1:]),
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(outcomes[0], AlreadyExists)
    assert isinstance(outcomes[1], NotFound) and outcomes[1].reason == "IMAGE_NOT_FOUND"
    assert isinstance(outcomes[2], FailedPrecondition) and outcomes[2].reason == "OBSERVATION_TIME_UNKNOWN"
    assert [(o.recorded_count, o.created_source_count) for o in outcomes[3:]] == [(1, 1)] + [(2, 1)] * 5
    names = {r[0] for r in await a.fetch("SELECT id FROM sources")}
    assert names == {"G1", "G5", *(f"N{image}" for image in good[1:])}
    await stored_vs_recomputed(a)


async def test_a_batch_the_database_refuses_fails_alone(replicas: tuple[Database, Database]) -> None:
    """A fault no check foresaw (here a NUL in a quality flag, which the servicer would refuse, sent
    straight to the repository) fails its own batch, not the others of its group."""
    a, _ = replicas
    repo = PostgresSources(a)
    images = await make_images(a, [60400.0 + i for i in range(10)])
    rng = random.Random(4)
    batches = [batch_of(rng, [f"P{i}", "PSHARED"]) for i in range(10)]
    poison = batches[5]
    batches[5] = PhotometryBatch(
        poison.source_ids, poison.numbers, ["ok", "bad\x00"], poison.observation_mjd, poison.measure_time
    )
    outcomes = await asyncio.gather(
        *(repo.record_photometry(image, batch, None) for image, batch in zip(images, batches, strict=True)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[5], asyncpg.PostgresError) and not isinstance(outcomes[5], DomainError)
    assert all(o.recorded_count == 2 for i, o in enumerate(outcomes) if i != 5)
    assert await a.fetchval("SELECT count(*) FROM photometry") == 18
    assert await a.fetchval("SELECT photometry_count FROM images WHERE id = $1", images[5]) == 0
    assert await a.fetchval("SELECT count(*) FROM sources WHERE id = 'P5'") == 0
    await stored_vs_recomputed(a)

"""PostgreSQL image search (footprint boxes in a GiST index) against a brute-force footprint test.

The boxes are the only approximation: a box that misses part of its image's pixel grid would drop
true matches. So the box is checked to hold every pixel position (Hypothesis, pure geometry), and
PostgresImages.search to answer exactly what sky.footprint_contains over every image answers, for
footprints across RA 0/360, on and near both poles, and wider than a hemisphere's RA.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator

import asyncpg
import pytest
from dsa110.contimg.server.domain import sky
from dsa110.contimg.server.domain.query import Condition
from dsa110.contimg.server.domain.records import Image, MeasurementSet
from dsa110.contimg.server.repositories.protocols import ListQuery
from dsa110.contimg.server.storage.postgres import sky as pg_sky
from dsa110.contimg.server.storage.postgres.database import Database, PostgresSettings
from dsa110.contimg.server.storage.postgres.images import SEARCH_SQL, PostgresImages
from dsa110.contimg.server.storage.postgres.measurement_sets import PostgresMeasurementSets
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import PostgresDatabases

MS_PATH = "/ms/sky.ms"


# ---- the boxes (no database) ------------------------------------------------------------------


def _deproject(ra0: float, dec0: float, x_deg: float, y_deg: float) -> tuple[float, float]:
    """The sky position at gnomonic plane offset (x, y) from (ra0, dec0): the inverse of the
    projection sky.footprint_contains applies."""
    xi, eta = math.radians(x_deg), math.radians(y_deg)
    d0 = math.radians(dec0)
    dec = math.asin((math.sin(d0) + eta * math.cos(d0)) / math.sqrt(1.0 + xi * xi + eta * eta))
    ra = math.radians(ra0) + math.atan2(xi, math.cos(d0) - eta * math.sin(d0))
    return math.degrees(ra) % 360.0, math.degrees(dec)


def _holds(box: pg_sky.RaDecBox, ra: float, dec: float) -> bool:
    ra_low, dec_low, ra_high, dec_high = box
    return dec_low <= dec <= dec_high and any(ra_low <= r <= ra_high for r in (ra, ra - 360.0, ra + 360.0))


centers = st.tuples(
    st.floats(0.0, 360.0, exclude_max=True),
    st.one_of(st.floats(-90.0, 90.0), st.sampled_from([-90.0, -89.99, 89.99, 90.0, 0.0])),
)
grids = st.tuples(st.integers(1, 20_000), st.integers(1, 20_000), st.floats(0.1, 60.0))
# Where on the grid: -1..1 of the half-width and half-height (the edges and corners included).
offsets = st.tuples(
    st.one_of(st.floats(-1.0, 1.0), st.sampled_from([-1.0, 1.0])),
    st.one_of(st.floats(-1.0, 1.0), st.sampled_from([-1.0, 1.0])),
)


@settings(max_examples=600, deadline=None)
@given(centers, grids, offsets)
def test_footprint_box_holds_every_pixel_position(
    center: tuple[float, float], grid: tuple[int, int, float], offset: tuple[float, float]
) -> None:
    (ra0, dec0), (nx, ny, cell), (fx, fy) = center, grid, offset
    box = pg_sky.footprint_box(ra0, dec0, nx, ny, cell)
    assert box is not None
    half_x, half_y = nx * cell / 3600.0 / 2.0, ny * cell / 3600.0 / 2.0
    ra, dec = _deproject(ra0, dec0, fx * half_x, fy * half_y)
    assert _holds(box, ra, dec), (box, ra, dec)
    ra_low, dec_low, ra_high, dec_high = box
    # Unwrapped past at most one edge, never wider than the whole sky.
    assert -180.0 < ra_low <= ra_high < 540.0 and ra_high - ra_low <= 360.0
    assert -90.0 <= dec_low <= dec_high <= 90.0


def test_footprint_box_of_an_image_without_geometry_is_none() -> None:
    assert pg_sky.footprint_box(10.0, 10.0, 0, 100, 6.0) is None
    assert pg_sky.footprint_box(10.0, 10.0, 100, 0, 6.0) is None
    assert pg_sky.footprint_box(10.0, 10.0, 100, 100, 0.0) is None


def test_boxes_reaching_a_pole_span_every_ra() -> None:
    for dec in (90.0, 89.9, -89.95, -90.0):
        ra_low, _, ra_high, _ = pg_sky.footprint_box(33.0, dec, 1200, 1200, 6.0) or (0, 0, 0, 0)
        assert (ra_low, ra_high) == (0.0, 360.0), dec


# ---- search in the database against brute force ------------------------------------------------


@pytest.fixture
async def images(postgres_databases: PostgresDatabases) -> AsyncIterator[PostgresImages]:
    db = Database(PostgresSettings(await postgres_databases.new(), pool_min=1, pool_max=4))
    await db.open()
    try:
        await PostgresMeasurementSets(db).create(MeasurementSet(path=MS_PATH, mid_mjd=60976.5), None)
        yield PostgresImages(db)
    finally:
        await db.close()


def _layout(rng: random.Random) -> list[Image]:
    """Images where boxes are hard: across RA 0/360, on and near both poles, tiny and huge."""
    spots = [(0.0, 0.0), (359.8, 40.0), (0.4, -60.0), (180.0, 89.2), (75.0, 90.0), (300.0, -89.5), (200.0, 10.0)]
    made = []
    for i in range(210):
        ra0, dec0 = spots[i % len(spots)]
        dec = max(-90.0, min(90.0, dec0 + rng.uniform(-2.5, 2.5)))
        ra = (ra0 + rng.uniform(-3.0, 3.0)) % 360.0
        nx, ny = rng.randrange(64, 4096), rng.randrange(64, 4096)
        cell = rng.choice([1.5, 6.0, 20.0, 60.0])
        if i % 31 == 0:
            nx, cell = 20_000, 120.0  # hundreds of degrees across: an RA span past 180 degrees
        made.append(
            Image(
                id=0,
                path=f"/img/{i}.fits",
                ms_path=MS_PATH,
                type=i % 2,
                center_ra_deg=ra,
                center_dec_deg=dec,
                size_x_px=0 if i % 17 == 0 else nx,  # no geometry: never found
                size_y_px=ny,
                cell_size_arcsec=cell,
            )
        )
    return made


def _query_points(rng: random.Random, made: list[Image]) -> list[tuple[float, float]]:
    points = [(ra, dec) for ra in (0.0, 0.01, 1.0, 90.0, 180.0, 270.0, 359.0, 359.99) for dec in (-90.0, 90.0)]
    points += [(ra * 10.0, dec * 7.5) for ra in range(36) for dec in range(-12, 13)]
    points += [(0.0, 0.0), (359.999, 0.1), (0.001, -60.0), (359.9, 40.0), (75.0, 89.99), (300.0, -89.9)]
    for img in made:  # around each image's edges and corners, where the exact test decides
        if img.size_x_px <= 0:
            continue
        half_x = img.size_x_px * img.cell_size_arcsec / 3600.0 / 2.0
        half_y = img.size_y_px * img.cell_size_arcsec / 3600.0 / 2.0
        for _ in range(3):
            points.append(
                _deproject(
                    img.center_ra_deg,
                    img.center_dec_deg,
                    rng.uniform(-1.1, 1.1) * half_x,
                    rng.uniform(-1.1, 1.1) * half_y,
                )
            )
    return points


def _brute_force(stored: list[Image], ra: float, dec: float, kind: int | None = None) -> list[tuple[float, int]]:
    return sorted(
        (sky.separation_deg(ra, dec, i.center_ra_deg, i.center_dec_deg), i.id)
        for i in stored
        if (kind is None or i.type == kind)
        and sky.footprint_contains(
            i.center_ra_deg, i.center_dec_deg, i.size_x_px, i.size_y_px, i.cell_size_arcsec, ra, dec
        )
    )


async def _search_all(
    images: PostgresImages, ra: float, dec: float, page_size: int, kind: int | None = None
) -> list[tuple[float, int]]:
    conditions = [Condition("type", "=", kind)] if kind is not None else []
    out: list[tuple[float, int]] = []
    totals = set()
    after: list[object] | None = None
    while True:
        page = await images.search(ra, dec, ListQuery(conditions, [], page_size, after))
        assert len(page.items) <= page_size
        totals.add(page.total_size)
        out.extend((m.separation_deg, m.item.id) for m in page.items)
        after = page.next_after
        if after is None:
            assert totals == {len(out)}
            return out


async def test_search_matches_brute_force(images: PostgresImages) -> None:
    rng = random.Random(60976)
    stored = [await images.create(img, None) for img in _layout(rng)]
    non_empty = 0
    for n, (ra, dec) in enumerate(_query_points(rng, stored)):
        expected = _brute_force(stored, ra, dec)
        found = await images.search(ra, dec, ListQuery([], [], 1000, None))
        assert [m.item.id for m in found.items] == [i for _, i in expected], (ra, dec)
        assert found.total_size == len(expected)
        for match, (sep, _) in zip(found.items, expected, strict=True):
            assert match.separation_deg == pytest.approx(sep, abs=1e-12)
        non_empty += bool(expected)
        if len(expected) > 2 and n % 10 == 0:  # paging: on a sample of the points, for time
            assert await _search_all(images, ra, dec, 2) == expected
            assert await _search_all(images, ra, dec, 3, kind=1) == _brute_force(stored, ra, dec, kind=1)
    assert non_empty > 500, "the layout should put many query points on images"


async def test_search_follows_geometry_updates(images: PostgresImages) -> None:
    rng = random.Random(7)
    stored = [await images.create(img, None) for img in _layout(rng)[:60]]
    moved = []
    for img in stored:
        change = img._replace(
            center_ra_deg=rng.choice([0.05, 359.95, rng.uniform(0.0, 360.0)]),
            center_dec_deg=rng.choice([89.95, -90.0, rng.uniform(-90.0, 90.0)]),
            size_x_px=rng.choice([0, 1200, 3000]),
        )
        moved.append(await images.update(change, ["center_ra_deg", "center_dec_deg", "size_x_px", "size_y_px"], None))
    for ra, dec in _query_points(rng, moved):
        found = await images.search(ra, dec, ListQuery([], [], 1000, None))
        assert [m.item.id for m in found.items] == [i for _, i in _brute_force(moved, ra, dec)], (ra, dec)


async def test_search_reads_the_footprint_index(images: PostgresImages) -> None:
    one = Image(id=0, path="/img/one.fits", ms_path=MS_PATH, size_x_px=100, size_y_px=100, cell_size_arcsec=6.0)
    await images.create(one, None)
    boxes = [asyncpg.Box((r0, d0), (r1, d1)) for r0, d0, r1, d1 in pg_sky.point_boxes(10.0, 20.0)]
    assert images.db.pool is not None
    async with images.db.pool.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")  # a table this small would be read whole
        try:
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {SEARCH_SQL}", *boxes))
        finally:
            await conn.execute("RESET enable_seqscan")
    assert plan.count("Index Cond: (footprint @>") == 3, plan

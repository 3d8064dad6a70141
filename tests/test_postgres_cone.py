"""Cone search on PostgreSQL (storage/postgres/sources.py) against brute force over the same rows.

The repository runs on a database of its own, filled straight with SQL: dense sources at both poles,
on both sides of RA 0/360 and on the domain's edges (RA 0, RA just under 360, Dec +-90), plus the
whole sky. Every cone of a dense grid of centres (the poles, the wrap, the edges of the pole boxes)
and radii is answered by the server and by Python computing each source's squared chord distance
with the same arithmetic (which PostgreSQL and Python share: the same libm, the same constants), so
the answer must be identical: the same sources, in the same order, at the same separations, with
the same total, across pages. The boxes that drive the index are also checked on their own
(Hypothesis): every position within a cone lies in one of its boxes.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Sequence

import pytest
from dsa110.contimg.server.domain import sky
from dsa110.contimg.server.domain.query import Condition
from dsa110.contimg.server.repositories.protocols import ListQuery
from dsa110.contimg.server.storage.postgres.database import Conn, Database, PostgresSettings
from dsa110.contimg.server.storage.postgres.sources import PostgresSources, cone_boxes, cone_query
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import PostgresDatabases


def _sphere(
    rng: random.Random, n: int, dec_lo: float, dec_hi: float, ra_lo: float, ra_hi: float
) -> list[tuple[float, float]]:
    s_lo, s_hi = math.sin(math.radians(dec_lo)), math.sin(math.radians(dec_hi))
    return [(rng.uniform(ra_lo, ra_hi) % 360.0, math.degrees(math.asin(rng.uniform(s_lo, s_hi)))) for _ in range(n)]


def _positions() -> list[tuple[float, float]]:
    rng = random.Random(20260)
    sky_ = (
        _sphere(rng, 4000, -90.0, 90.0, 0.0, 360.0)
        + _sphere(rng, 2500, 78.0, 90.0, 0.0, 360.0)  # north cap
        + _sphere(rng, 2500, -90.0, -78.0, 0.0, 360.0)  # south cap
        + _sphere(rng, 2500, -60.0, 60.0, -12.0, 12.0)  # across RA 0/360
        + _sphere(rng, 1000, 50.0, 60.0, 120.0, 140.0)  # the DSA-110 strip
    )
    # The edges of the domain, and twins (equal distances from every centre).
    sky_ += [(0.0, d) for d in range(-90, 91, 5)] + [(359.9999999, d) for d in range(-85, 90, 5)]
    sky_ += [(ra, 90.0) for ra in (0.0, 45.0, 180.0, 300.0)] + [(ra, -90.0) for ra in (0.0, 200.0)]
    sky_ += [(1.0, 45.5)] * 6 + [(0.0, 0.0)] * 3
    return sky_


POSITIONS = _positions()


def _unit(ra: float, dec: float) -> tuple[float, float, float]:
    """As _CONE computes it in SQL, operation for operation."""
    return (
        math.cos(math.radians(dec)) * math.cos(math.radians(ra)),
        math.cos(math.radians(dec)) * math.sin(math.radians(ra)),
        math.sin(math.radians(dec)),
    )


UNITS = [_unit(ra, dec) for ra, dec in POSITIONS]


def brute_force(ra: float, dec: float, radius: float, keep: set[int] | None = None) -> list[tuple[float, int]]:
    """(d2, sid) of every source within the cone, nearest first (sids are 1.. in POSITIONS' order)."""
    x, y, z = sky.unit_vector(ra, dec)
    chord = sky.chord(radius)
    limit = chord * chord
    found = []
    for sid, (cx, cy, cz) in enumerate(UNITS, start=1):
        if abs(POSITIONS[sid - 1][1] - dec) > radius + 1e-3:  # cannot be within: saves time only
            continue
        dx, dy, dz = cx - x, cy - y, cz - z
        d2 = dx * dx + dy * dy + dz * dz
        if d2 <= limit and (keep is None or sid in keep):
            found.append((d2, sid))
    return sorted(found)


@pytest.fixture
async def pg(postgres_databases: PostgresDatabases) -> AsyncIterator[Database]:
    db = Database(PostgresSettings(await postgres_databases.new(), pool_min=1, pool_max=4))
    await db.open()

    async def fill(conn: Conn) -> None:
        await conn.execute(
            "INSERT INTO sources (sid, id, ra_deg, dec_deg, mean_flux_jy, create_time, update_time) "
            "SELECT sid, 'S' || sid, ra, dec, sid % 7, 0, 0 "
            "FROM unnest($1::bigint[], $2::float8[], $3::float8[]) AS u(sid, ra, dec)",
            list(range(1, len(POSITIONS) + 1)),
            [ra for ra, _ in POSITIONS],
            [dec for _, dec in POSITIONS],
        )
        await conn.execute("ANALYZE sources")

    await db.write(fill)
    yield db
    await db.close()


def query(
    page_size: int = 100_000, after: list[object] | None = None, conditions: Sequence[Condition] = ()
) -> ListQuery:
    return ListQuery(list(conditions), [], page_size, after)


CENTRES_RA = [0.0, 1e-7, 0.3, 7.5, 180.0, 270.25, 352.0, 359.9, 359.9999999]
CENTRES_DEC = [-90.0, -89.9999, -89.0, -85.0, -80.1, -60.0, -30.0, 0.0, 1.5, 45.5, 55.0, 79.95, 84.0, 89.5, 90.0]
RADII = [1e-4, 0.3, 2.0, 6.0, 10.0]


async def test_every_cone_of_a_dense_grid_is_brute_force(pg: Database) -> None:
    repo = PostgresSources(pg)
    nonempty = 0
    for ra in CENTRES_RA:
        for dec in CENTRES_DEC:
            for radius in RADII:
                want = brute_force(ra, dec, radius)
                page = await repo.search(ra, dec, radius, query())
                got = [(int(m.item.id[1:]), m.separation_deg) for m in page.items]
                assert [sid for sid, _ in got] == [sid for _, sid in want], (ra, dec, radius)
                assert [sep for _, sep in got] == [sky.chord_to_deg(math.sqrt(d2)) for d2, _ in want]
                assert page.total_size == len(want) and page.next_after is None
                for m in page.items:
                    assert (m.item.ra_deg, m.item.dec_deg) == POSITIONS[int(m.item.id[1:]) - 1]
                nonempty += bool(want)
    assert nonempty > 400


async def test_random_cones_pages_and_filters(pg: Database) -> None:
    repo = PostgresSources(pg)
    rng = random.Random(5)
    centres = [
        (rng.uniform(0, 360), math.degrees(math.asin(rng.uniform(-1, 1))), rng.uniform(0.5, 10)) for _ in range(40)
    ]
    centres += [(ra, dec, 9.0) for ra, dec in [(0.0, 88.0), (359.0, -88.0), (1.0, 45.5), (0.0, 0.0)]]
    for ra, dec, radius in centres:
        want = brute_force(ra, dec, radius)
        size = max(1, len(want) // 5) if len(want) > 1 else 3
        got: list[tuple[int, float]] = []
        after = None
        while True:
            page = await repo.search(ra, dec, radius, query(size, after))
            assert page.total_size == len(want) and len(page.items) <= size
            got += [(int(m.item.id[1:]), m.separation_deg) for m in page.items]
            after = page.next_after
            if after is None:
                break
        assert got == [(sid, sky.chord_to_deg(math.sqrt(d2))) for d2, sid in want], (ra, dec, radius)

        # A filter narrows the cone, and the total with it.
        keep = {sid for sid in range(1, len(POSITIONS) + 1) if sid % 7 >= 3}
        filtered = await repo.search(ra, dec, radius, query(conditions=[Condition("mean_flux_jy", ">=", 3.0)]))
        assert [int(m.item.id[1:]) for m in filtered.items] == [sid for _, sid in brute_force(ra, dec, radius, keep)]
        assert filtered.total_size == len(filtered.items)


async def test_the_cone_walks_the_position_index(pg: Database) -> None:
    """Index-driven: the plan reads the GiST index over point(ra_deg, dec_deg), never the table."""
    for ra, dec, radius in [(130.0, 55.0, 1.0), (0.2, 30.0, 2.0), (45.0, 89.5, 2.0)]:
        sql, params = cone_query(ra, dec, radius, query(100))
        plan = "\n".join(r[0] for r in await pg.fetch(f"EXPLAIN {sql}", *params))
        assert "sources_by_position" in plan, plan
        assert "Seq Scan on sources" not in plan, plan


def _destination(ra: float, dec: float, bearing: float, distance: float) -> tuple[float, float]:
    """The position `distance` degrees from (ra, dec) along `bearing` (from north, through east)."""
    p1, l1, b, d = map(math.radians, (dec, ra, bearing, distance))
    sin_p2 = math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b)
    p2 = math.asin(max(-1.0, min(1.0, sin_p2)))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * sin_p2)
    return math.degrees(l2) % 360.0, math.degrees(p2)


@settings(max_examples=1500, deadline=None)
@given(
    ra=st.one_of(st.floats(0.0, 360.0, exclude_max=True), st.sampled_from([0.0, 359.9999999])),
    dec=st.one_of(st.floats(-90.0, 90.0), st.sampled_from([-90.0, 90.0, 89.99, -89.99])),
    radius=st.floats(1e-6, 30.0),
    bearing=st.floats(0.0, 360.0),
    fraction=st.one_of(st.floats(0.0, 1.0), st.just(1.0)),
)
def test_every_position_in_a_cone_is_in_one_of_its_boxes(
    ra: float, dec: float, radius: float, bearing: float, fraction: float
) -> None:
    pra, pdec = _destination(ra, dec, bearing, radius * fraction)
    x, y, z = sky.unit_vector(ra, dec)
    cx, cy, cz = _unit(pra, pdec)
    d2 = (cx - x) ** 2 + (cy - y) ** 2 + (cz - z) ** 2
    if d2 > sky.chord(radius) ** 2:
        return  # rounded just outside the cone: not a member, whatever the boxes say
    boxes = cone_boxes(ra, dec, radius)
    assert 1 <= len(boxes) <= 2
    assert any(lo_ra <= pra <= hi_ra and lo_dec <= pdec <= hi_dec for (lo_ra, lo_dec), (hi_ra, hi_dec) in boxes), (
        pra,
        pdec,
        boxes,
    )

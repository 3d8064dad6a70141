"""Cone search on PostgreSQL (storage/postgres/sources.py) against brute force over the same rows.

The repository runs on a database of its own, filled straight with SQL: dense sources at both poles,
on both sides of RA 0/360 and on the domain's edges (RA 0, RA just under 360, Dec +-90), on the rims
of cones the grid asks for, plus the whole sky. Every cone of a dense grid of centres (the poles,
the wrap, the edges of the pole boxes) and radii is answered by the server and by Python computing
each source's squared chord distance with the same arithmetic (which PostgreSQL and Python share:
the same libm, the same constants), so the answer must be identical: the same sources, in the same
order, at the same separations, with the same total, across pages.

Both ways of finding candidates run every test (the `pg` fixture's two parameters on one server):
q3c's index, where the server has the extension (in CI it must: scripts/test.sh installs it, and
the tests fail without it; elsewhere they skip), and the GiST box index, forced with the off switch
PostgresSettings.q3c = False. The boxes are also checked on their own (Hypothesis): every position
within a cone lies in one of them. q3c's coverage is checked by the same brute force, the rims
above included (q3c's own distance test is strict and rounds differently: sources.py pads for it).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
from dsa110.contimg.server.config import from_sources
from dsa110.contimg.server.domain import sky
from dsa110.contimg.server.domain.query import Condition
from dsa110.contimg.server.events.local import LocalEventBus
from dsa110.contimg.server.repositories.protocols import ListQuery
from dsa110.contimg.server.storage.engine import open_storage
from dsa110.contimg.server.storage.postgres.database import Conn, Database, PostgresSettings
from dsa110.contimg.server.storage.postgres.schema import Q3C_INDEX
from dsa110.contimg.server.storage.postgres.sources import PostgresSources, cone_boxes, cone_query
from dsa110.contimg.server.storage.postgres.storage import PostgresStorage
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import POSTGRES_URL, PostgresDatabases


def _sphere(
    rng: random.Random, n: int, dec_lo: float, dec_hi: float, ra_lo: float, ra_hi: float
) -> list[tuple[float, float]]:
    s_lo, s_hi = math.sin(math.radians(dec_lo)), math.sin(math.radians(dec_hi))
    return [(rng.uniform(ra_lo, ra_hi) % 360.0, math.degrees(math.asin(rng.uniform(s_lo, s_hi)))) for _ in range(n)]


def _destination(ra: float, dec: float, bearing: float, distance: float) -> tuple[float, float]:
    """The position `distance` degrees from (ra, dec) along `bearing` (from north, through east)."""
    p1, l1, b, d = map(math.radians, (dec, ra, bearing, distance))
    sin_p2 = math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b)
    p2 = math.asin(max(-1.0, min(1.0, sin_p2)))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * sin_p2)
    return math.degrees(l2) % 360.0, math.degrees(p2)


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
    # On the rims of cones of the grid below (rounded just inside or just outside: brute force says).
    for ra, dec in [(0.0, 0.0), (359.9999999, 45.5), (0.3, -89.0), (180.0, 89.5), (7.5, 84.0), (0.0, -90.0)]:
        for radius in (0.3, 2.0):
            sky_ += [_destination(ra, dec, bearing, radius) for bearing in range(0, 360, 10)]
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


PATHS = ("q3c", "boxes")


def missing_q3c() -> None:
    """The q3c path cannot run here: a failure in CI (where scripts/test.sh installs the extension),
    a skip elsewhere."""
    reason = (
        "the q3c extension is not available on the test PostgreSQL server "
        "(Debian: apt-get install postgresql-15-q3c, as scripts/test.sh does)"
    )
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(params=PATHS)
async def pg(request: pytest.FixtureRequest, postgres_databases: PostgresDatabases) -> AsyncIterator[Database]:
    """A database of POSITIONS whose cone searches take the path of the parameter: q3c's index, or
    (the off switch) the GiST boxes, on a database that has both indexes where q3c is installed."""
    q3c = request.param == "q3c"
    db = Database(PostgresSettings(await postgres_databases.new(), pool_min=1, pool_max=4, q3c=q3c))
    await db.open()
    try:
        if q3c and not db.q3c:
            missing_q3c()
        assert db.q3c == q3c

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
    finally:
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


def _literal(value: object) -> str:
    """A parameter of cone_query as SQL text, for EXECUTE (which takes no bound parameters)."""
    if isinstance(value, tuple):
        (ra_lo, dec_lo), (ra_hi, dec_hi) = value
        return f"'(({ra_lo!r},{dec_lo!r}),({ra_hi!r},{dec_hi!r}))'::box"
    return f"{value!r}::float8" if isinstance(value, float) else repr(value)


async def test_the_cone_walks_the_position_index(pg: Database) -> None:
    """Index-driven: the plan reads q3c's index (or, switched off, the GiST index over
    point(ra_deg, dec_deg)), never the whole table, with and without a filter whose own index could
    compete, and without JIT. Both as a custom plan (the cone's values known to the planner) and as
    the generic plan a prepared statement runs after its first executions (values unknown)."""
    index = Q3C_INDEX if pg.q3c else "sources_by_position"
    assert pg.pool is not None
    cones = [(130.0, 55.0, 1.0), (0.2, 30.0, 2.0), (45.0, 89.5, 2.0), (359.9, -89.9, 0.5), (0.0, 0.0, 10.0)]
    for (ra, dec, radius), conditions in itertools.product(cones, [[], [Condition("mean_flux_jy", ">=", 6.0)]]):
        sql, params = cone_query(ra, dec, radius, query(100, conditions=conditions), q3c=pg.q3c)
        async with pg.pool.acquire() as conn:
            custom = [r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *params)]
            await conn.execute(f"PREPARE cone AS {sql}")
            try:
                await conn.execute("SET plan_cache_mode = force_generic_plan")
                generic = [r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE cone({', '.join(map(_literal, params))})")]
            finally:
                await conn.execute("RESET plan_cache_mode")
                await conn.execute("DEALLOCATE cone")
        for kind, lines in (("custom", custom), ("generic", generic)):
            plan = "\n".join(lines)
            assert index in plan, (kind, plan)
            assert "Seq Scan on sources" not in plan and "JIT" not in plan, (kind, plan)
        if pg.q3c:  # the generic plan is one: the cone's values are parameters, not planned in
            assert "$" in "\n".join(generic)


async def test_a_server_that_cannot_create_q3c_still_opens_and_searches_with_the_boxes(
    postgres_databases: PostgresDatabases, caplog: pytest.LogCaptureFixture
) -> None:
    """The q3c step never fails an open: a role that is not a superuser cannot create the
    extension (q3c is not trusted), so its database opens with the GiST path, which answers."""
    await postgres_databases.new()  # the suite's skip rule (and a server that answers)
    tag = uuid.uuid4().hex[:12]
    role, name = f"contimg_plain_{tag}", f"contimg_noq3c_{tag}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
        url = POSTGRES_URL.replace("://postgres@", f"://{role}@").rsplit("/", 1)[0] + "/" + name
        db = Database(PostgresSettings(url, pool_min=1, pool_max=2))
        await db.open()
        try:
            assert db.q3c is False
            assert not await db.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'q3c')")
            if await db.fetchval("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'q3c')"):
                assert "cannot create the q3c sky index" in caplog.text

            async def fill(conn: Conn) -> None:
                await conn.execute(
                    "INSERT INTO sources (id, ra_deg, dec_deg, create_time, update_time) "
                    "VALUES ('A', 359.99, 10.0, 0, 0), ('B', 0.01, 10.0, 0, 0), ('C', 5.0, 10.0, 0, 0)"
                )

            await db.write(fill)
            page = await PostgresSources(db).search(0.0, 10.0, 1.0, query())
            assert sorted(m.item.id for m in page.items) == ["A", "B"] and page.total_size == 2
        finally:
            await db.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


def test_the_off_switch_reaches_the_database() -> None:
    """--no-q3c / CONTIMG_Q3C=0 is PostgresSettings.q3c = False for the server's storage."""
    url = "postgresql://postgres@127.0.0.1/none"
    for environ, expected in [({}, True), ({"CONTIMG_Q3C": "0"}, False), ({"CONTIMG_Q3C": "on"}, True)]:
        config = from_sources(environ={"CONTIMG_DATABASE": url, **environ})
        storage = open_storage(config, LocalEventBus())
        assert isinstance(storage, PostgresStorage)
        assert storage.db.settings.q3c is expected


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

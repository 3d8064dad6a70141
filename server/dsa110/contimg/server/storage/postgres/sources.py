"""SourceRepository on PostgreSQL: sources with stored statistics, cone search, lightcurves, ingest.

The same behaviour as storage/sqlite/sources.py; what differs is how PostgreSQL is made to do it:

* the cone search takes its candidates from an index, then keeps what the exact squared chord
  distance admits (the same arithmetic as SQLite's and as brute force in Python), so both ways
  answer alike. Two indexes can give them: q3c's over `q3c_ang2ipix(ra_deg, dec_deg)` (the sky
  index of the big astronomy archives), probed for the cells of q3c's radial query (`q3c_cells`),
  where the database has the extension (schema.sky_index, found at open: `Database.q3c`); else the
  GiST index over `point(ra_deg, dec_deg)` with one or two RA/Dec boxes that hold the cone
  (`cone_boxes`), which needs no extension;
* photometry batches recorded at the same time in this process share one transaction (`_Ingest`),
  as the SQLite writer's groups do, so a source measured by every batch of a group has its
  statistics row locked, read and written once per group instead of once per batch.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any, cast

import asyncpg

from ...domain import sky
from ...domain.errors import AlreadyExists, DomainError, FailedPrecondition, NotFound
from ...domain.query import fields_of
from ...domain.records import PHOTOMETRY_NUMBERS, Match, Page, Photometry, PhotometryBatch, PhotometryResult, Source
from ...domain.variability import FluxSums, add_rows, weights
from ...repositories.protocols import Idempotency, ListQuery
from ...slices import map_in_slices
from .. import rows
from ..clock import now_us
from ..statistics import STATS_COLUMNS, stats_values
from .idempotency import check_request_id, remember_request_id
from .sql import Params, Table, check_after, where

if TYPE_CHECKING:
    from .database import Conn, Database

_COLUMNS = {name: f"sources.{name}" for name in rows.SOURCE_COLUMNS}
_TEXT = {"id", "designation", "catalog"}
_INTEGER = {"detection_count", "epoch_count", "is_variable"}
_BIGINT = {"create_time", "update_time"}


def _sql_type(column: str) -> str:
    if column in _TEXT:
        return "text"
    if column in _INTEGER:
        return "integer"
    if column in _BIGINT:
        return "bigint"
    return "double precision"


_TABLE: Table[str, Source] = Table(
    "sources",
    "sources.id",
    rows.SOURCE_SELECT,
    rows.source_from_row,
    _COLUMNS,
    "sources.id",
    {f"sources.{c}": _sql_type(c) for c in rows.SOURCE_COLUMNS},
    "text[]",
)

# ---- cone search -----------------------------------------------------------------------------------

# What the boxes add to the cone on each side, in degrees: the boxes come from trigonometry in
# Python and the distances from trigonometry in PostgreSQL, so a point on the cone's rim must not
# fall outside its box by a rounding of either. The exact distance test decides membership.
_BOX_PAD_DEG = 1e-9

Box = tuple[tuple[float, float], tuple[float, float]]  # (RA, Dec) corners, as asyncpg binds a box


def cone_boxes(ra_deg: float, dec_deg: float, radius_deg: float) -> list[Box]:
    """One or two (RA, Dec) boxes whose union holds every position within `radius_deg` of the centre.

    Dec spans [dec - r, dec + r] clipped to the poles. A cone that reaches a pole holds every RA
    near it; otherwise its positions lie within asin(sin r / cos dec) of the centre's RA (the RA
    offset of the points where great circles through the pole touch the cone). A box crossing RA
    0/360 is cut in two there, because positions are stored with RA in [0, 360).
    """
    r = min(radius_deg, 180.0) + _BOX_PAD_DEG
    dec_lo, dec_hi = max(dec_deg - r, -90.0), min(dec_deg + r, 90.0)
    sin_r, cos_dec = math.sin(math.radians(r)), math.cos(math.radians(dec_deg))
    if dec_hi >= 90.0 or dec_lo <= -90.0 or sin_r >= cos_dec:
        return [((0.0, dec_lo), (360.0, dec_hi))]
    half = math.degrees(math.asin(sin_r / cos_dec)) * (1 + 1e-12) + _BOX_PAD_DEG
    if half >= 180.0:
        return [((0.0, dec_lo), (360.0, dec_hi))]
    lo, hi = ra_deg - half, ra_deg + half
    if lo < 0.0:
        return [((lo + 360.0, dec_lo), (360.0, dec_hi)), ((0.0, dec_lo), (hi, dec_hi))]
    if hi > 360.0:
        return [((lo, dec_lo), (360.0, dec_hi)), ((0.0, dec_lo), (hi - 360.0, dec_hi))]
    return [((lo, dec_lo), (hi, dec_hi))]


# The distance is that of storage/sqlite/sources.py's _CONE, term for term (squared chord between
# unit vectors: monotonic in the angle, and the same double-precision arithmetic as Python's), so
# both engines find the same sources in the same order. $1-$3: the centre's unit vector; $4: the
# chord^2; $5, $6: the keyset (d2, sid); then the candidates' parameters (boxes, or q3c's centre and
# radius) and filter values. The page size + 1 is written into the statement (one statement per
# page size): a generic plan, which a prepared statement runs after its first executions, then
# knows how many rows the page joins back to sources, instead of guessing a tenth of the hits (the
# q3c path's hits are estimated in millions, and a tenth of them would be joined by reading the
# whole primary key: ~320 ms measured). The first column of every row is the total; a cone with
# no page has one row of NULLs after it.
_CONE = (
    "WITH {cells}hits AS MATERIALIZED ("
    "SELECT sid, dx * dx + dy * dy + dz * dz AS d2 FROM ("
    "SELECT sources.sid AS sid, "
    "cos(radians(sources.dec_deg)) * cos(radians(sources.ra_deg)) - $1 AS dx, "
    "cos(radians(sources.dec_deg)) * sin(radians(sources.ra_deg)) - $2 AS dy, "
    "sin(radians(sources.dec_deg)) - $3 AS dz "
    "FROM {source_rows} WHERE ({candidates}){filters} OFFSET 0) AS candidates "
    "WHERE dx * dx + dy * dy + dz * dz <= $4), "
    "page AS (SELECT sid, d2 FROM hits WHERE (d2, sid) > ($5, $6) ORDER BY d2, sid LIMIT {limit}) "
    f"SELECT total.n, page.d2, page.sid, {rows.SOURCE_SELECT} "
    "FROM (SELECT count(*) AS n FROM hits) AS total "
    "LEFT JOIN (page JOIN sources ON sources.sid = page.sid) ON true ORDER BY page.d2, page.sid"
)

# What q3c's radius adds to the cone's, in degrees: q3c computes its cells in its own arithmetic,
# ours decides membership (d2 <= chord^2); they round differently (by ~1e-16 of the radius, and
# ~1e-14 degrees for the smallest cones), so the cells are those of a slightly larger cone, which
# hold every position the exact test can admit.
_Q3C_PAD_DEG = 1e-9
# q3c 2's radial query: up to 50 ranges of q3c_ang2ipix values for cells the cone covers fully and
# 50 for cells it covers in part; slots it does not need read (1, -1).
_Q3C_RANGES = 50


def q3c_cells(ra_deg: float, dec_deg: float, radius_deg: float, params: Params, columns: Sequence[str]) -> str:
    """Two CTEs for _CONE: `ranges`, the cone's cells as ranges of q3c_ang2ipix values (lo, hi
    exclusive), and `cone_cells`, the sources in them (their `columns`: the position and what the
    filters read), found through the index over q3c_ang2ipix(ra_deg, dec_deg) (schema.Q3C_INDEX)
    probed once per range.

    Why not q3c_radial_query(ra_deg, dec_deg, ...) in the WHERE clause, q3c's documented call: it
    expands into an OR of 100 ranges whose ends are computed at planning time, so PostgreSQL plans
    it anew at every execution (~2.8 ms of planning for ~0.4 ms of execution, measured; a 1-degree
    cone over 1,000,001 sources took 4.9 ms against ~1.6 ms this way), and a generic plan that would
    avoid it cannot be costed (q3c 2's selectivity function reads the radius as a constant). Here
    the ranges are rows computed at execution by the function q3c_radial_query calls (it keeps the
    last cone's ranges, so it computes them once per cone), and one plan serves every cone.

    q3c's ranges are distinct cells of its quadtree, hence disjoint: no source is found twice
    (checked on 20,000 cones, the poles and RA 0 among them; a duplicate would also break the
    brute-force tests' totals). Both CTEs are materialized: PostgreSQL cannot know how many rows a
    range holds and assumes a ninth of the table each, an estimate that would make a filter's index
    look cheaper than the cone's; fenced, the cone is always found first and filters apply to its
    rows. (That estimate would also have every execution JIT-compiled, ~300 ms, were JIT not off
    for this server's sessions: database.py.)"""
    radius = min(radius_deg, 180.0) + _Q3C_PAD_DEG
    ra, dec, r = (f"{params.add(v)}::float8" for v in (ra_deg, dec_deg, radius))
    return (
        "ranges AS MATERIALIZED (SELECT lo, hi FROM ("
        f"SELECT q3c_radial_query_it({ra}, {dec}, {r}, 2 * i, f) AS lo, "
        f"q3c_radial_query_it({ra}, {dec}, {r}, 2 * i + 1, f) AS hi "
        f"FROM generate_series(0, {_Q3C_RANGES - 1}) AS i, (VALUES (0), (1)) AS flags(f)) AS cells WHERE lo < hi), "
        f"cone_cells AS MATERIALIZED (SELECT {', '.join(columns)} FROM ranges JOIN sources "
        "ON q3c_ang2ipix(sources.ra_deg, sources.dec_deg) >= ranges.lo "
        "AND q3c_ang2ipix(sources.ra_deg, sources.dec_deg) < ranges.hi), "
    )


def cone_query(
    ra_deg: float, dec_deg: float, radius_deg: float, query: ListQuery, *, q3c: bool = False
) -> tuple[str, list[Any]]:
    """_CONE for this cone, filters and page, with its parameters; candidates from the q3c index
    when `q3c` (the database has it: Database.q3c), else from the GiST index with `cone_boxes`."""
    check_after(query.after, 2, numeric=True)
    x, y, z = sky.unit_vector(ra_deg, dec_deg)
    chord = sky.chord(radius_deg)
    after = (
        (float(cast(float, query.after[0])), int(cast(int, query.after[1]))) if query.after is not None else (-1.0, 0)
    )
    params = Params(x, y, z, chord * chord, *after)
    if q3c:
        # The filters below name sources' columns: the cone's rows stand in for the table.
        columns = dict.fromkeys(["sources.sid", "sources.ra_deg", "sources.dec_deg"])
        columns.update(dict.fromkeys(_COLUMNS[f] for f in fields_of(query.conditions)))
        cells = q3c_cells(ra_deg, dec_deg, radius_deg, params, list(columns))
        source_rows, candidates = "cone_cells AS sources", "true"
    else:
        cells, source_rows = "", "sources"
        candidates = " OR ".join(
            f"point(sources.ra_deg, sources.dec_deg) <@ {params.add(box)}::box"
            for box in cone_boxes(ra_deg, dec_deg, radius_deg)
        )
    filters = "".join(f" AND {c}" for c in where(query.conditions, _COLUMNS, params))
    limit = int(query.page_size) + 1
    sql = _CONE.format(cells=cells, source_rows=source_rows, candidates=candidates, filters=filters, limit=limit)
    return sql, params.values


class PostgresSources:
    def __init__(self, db: Database):
        self.db = db
        self._ingest = _Ingest(db)

    async def get_many(self, ids: Sequence[str]) -> list[Source | None]:
        return await _TABLE.get_many(self.db, ids)

    async def list_page(self, query: ListQuery) -> Page[Source]:
        return await _TABLE.page(self.db, query)

    async def list_refs(self, query: ListQuery) -> Page[tuple[str, int]]:
        return await _TABLE.page_of(self.db, query, "sources.id, sources.update_time", rows.source_ref)

    async def search(self, ra_deg: float, dec_deg: float, radius_deg: float, query: ListQuery) -> Page[Match[Source]]:
        """The cone in one statement (_CONE): candidates from the index, distances, total, one page
        of whole rows. The total is counted over the cone's hits, never over the candidates."""
        sql, params = cone_query(ra_deg, dec_deg, radius_deg, query, q3c=self.db.q3c)
        found = await self.db.fetch(sql, *params)
        total = int(found[0][0])
        hits = [r for r in found if r[1] is not None]
        page = hits[: query.page_size]
        matches = await map_in_slices(_match, page)
        more = len(hits) > query.page_size
        return Page(matches, [float(page[-1][1]), int(page[-1][2])] if more else None, total)

    async def lightcurve(
        self, source_id: str, start_mjd: float, end_mjd: float, chunk: int
    ) -> AsyncGenerator[list[Photometry], None]:
        sid = await self.db.fetchval("SELECT sid FROM sources WHERE id = $1", source_id)
        if sid is None:
            raise NotFound("SOURCE", f"sources/{source_id}")
        lo = start_mjd if start_mjd else -math.inf
        hi = end_mjd if end_mjd else math.inf
        after: tuple[float, int] = (lo, -1)
        while True:
            batch = await self.db.fetch(
                f"SELECT {rows.PHOTOMETRY_SELECT} FROM photometry WHERE source_sid = $1 "
                "AND (observation_mjd, image_id) > ($2, $3) AND observation_mjd <= $4 "
                "ORDER BY observation_mjd, image_id LIMIT $5",
                sid,
                after[0],
                after[1],
                hi,
                chunk,
            )
            if not batch:
                return
            points = [Photometry(source_id, *r) for r in batch]
            yield points
            if len(batch) < chunk:
                return
            after = (points[-1].observation_mjd, points[-1].image_id)

    async def record_photometry(
        self, image_id: int, batch: PhotometryBatch, idem: Idempotency | None, *, actor: str = ""
    ) -> PhotometryResult:
        _check_shape(batch)
        return await self._ingest.record(image_id, batch, idem, actor)


def _match(r: asyncpg.Record) -> Match[Source]:
    return Match(rows.source_from_row(r[3:]), sky.chord_to_deg(math.sqrt(r[1])))


def _check_shape(batch: PhotometryBatch) -> None:
    n = len(batch.source_ids)
    columns = (*batch.numbers, batch.observation_mjd, batch.measure_time)
    even = len(batch.numbers) == len(PHOTOMETRY_NUMBERS) and all(len(c) == n for c in columns)
    if not even or len(batch.quality_flags or ()) not in (0, n):
        raise ValueError("a photometry batch needs one value per source in every column")


# ---- photometry ingest -----------------------------------------------------------------------------

_PEAK = PHOTOMETRY_NUMBERS.index("peak_flux_jy")
_PEAK_ERR = PHOTOMETRY_NUMBERS.index("peak_flux_err_jy")
_RA, _DEC, _CATALOG_FLUX = (PHOTOMETRY_NUMBERS.index(c) for c in ("ra_deg", "dec_deg", "catalog_flux_mjy"))
_PHOTOMETRY_COPY_COLUMNS = ["source_sid", *rows.PHOTOMETRY_COLUMNS]

# The statistics row of each source, locked in sid order: two transactions folding overlapping
# sets of sources then queue on the first source they share instead of deadlocking. NO KEY UPDATE:
# the lock the UPDATE that follows takes anyway (it changes no key), and one a DELETE waits for.
_LOCK_SUMS = (
    "SELECT sid, detection_count, sum_f, sum_f2, sum_w, sum_wf, sum_wf2, min_flux_jy, max_flux_jy, "
    "first_detection_mjd, last_detection_mjd FROM sources WHERE sid = ANY($1::bigint[]) "
    "ORDER BY sid FOR NO KEY UPDATE"
)
_STATS_TYPES = [_sql_type(c) for c in STATS_COLUMNS]
_WRITE_STATS = (
    "UPDATE sources SET "
    + ", ".join(f"{c} = u.{c}" for c in STATS_COLUMNS)
    + f", update_time = ${len(STATS_COLUMNS) + 2} FROM unnest($1::bigint[], "
    + ", ".join(f"${i + 2}::{t}[]" for i, t in enumerate(_STATS_TYPES))
    + f") AS u(sid, {', '.join(STATS_COLUMNS)}) WHERE sources.sid = u.sid"
)
_IS_VARIABLE = STATS_COLUMNS.index("is_variable")
_NEW_SOURCES = (
    "INSERT INTO sources (id, designation, ra_deg, dec_deg, catalog, catalog_flux_mjy, create_time, update_time) "
    "SELECT id, designation, ra, dec, 'NVSS', flux, $6, $6 "
    "FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[], $5::float8[]) "
    "AS n(id, designation, ra, dec, flux) "
    "ON CONFLICT (id) DO NOTHING RETURNING id, sid"
)


_IMAGE = (
    "SELECT images.mid_mjd, images.photometry_count, measurement_sets.mid_mjd FROM images "
    "JOIN measurement_sets ON measurement_sets.path = images.ms_path WHERE images.id = $1 "
    "FOR NO KEY UPDATE OF images"
)
_IMAGES_MEASURED = (
    "UPDATE images SET photometry_count = u.n, update_time = $3, last_modifier = u.actor "
    "FROM unnest($1::bigint[], $2::integer[], $4::text[]) AS u(id, n, actor) WHERE images.id = u.id"
)

# Batches per transaction: enough to share the statistics step widely, few enough that a group
# does not hold the rows it locks for long. And rows: a group of large batches (up to 100,000 rows
# each) must stay well inside the statement timeout; a batch larger than this runs alone.
MAX_GROUP = 32
MAX_GROUP_ROWS = 64_000
# Groups in flight at once: while one holds the statistics locks and commits, the next one copies
# its photometry.
CONCURRENT_GROUPS = 2
# Turns of the event loop from a caller's answer to its next batch's arrival (asyncio.shield's
# future, then the caller's task).
_RESUBMIT_TURNS = 3


@dataclass(slots=True)
class _Request:
    image_id: int
    batch: PhotometryBatch
    idem: Idempotency | None
    actor: str  # who records it: the image's last modifier
    future: asyncio.Future[PhotometryResult]


@dataclass(slots=True)
class _Accepted:
    """A batch that passed its checks, as the group's writes take it."""

    index: int  # in its group
    request: _Request
    mjd: Sequence[float]
    sids: list[int] = field(default_factory=list)
    created: int = 0


class _Ingest:
    """RecordPhotometry's batches, run in groups: batches that arrive while the groups in flight run
    wait together for the next group, which runs as one transaction (`_ingest_group`). A batch
    refused by its checks (its image unknown or already measured, a request_id reused with another
    body) gets its own error and the others of its group commit. Nobody is answered before the
    commit, and a cancelled caller's batch still commits or fails whole."""

    def __init__(self, db: Database):
        self.db = db
        self.pending: list[_Request] = []
        self.running: set[asyncio.Future[None]] = set()

    async def record(
        self, image_id: int, batch: PhotometryBatch, idem: Idempotency | None, actor: str = ""
    ) -> PhotometryResult:
        future: asyncio.Future[PhotometryResult] = asyncio.get_running_loop().create_future()
        self.pending.append(_Request(image_id, batch, idem, actor, future))
        self._start()
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_consume)
            raise

    def _start(self) -> None:
        while self.pending and len(self.running) < CONCURRENT_GROUPS:
            group = self._take_group()
            task = asyncio.ensure_future(self._run(group))
            self.running.add(task)
            task.add_done_callback(self._finished)

    def _take_group(self) -> list[_Request]:
        """The next group, in arrival order. Never two batches of one image or one request_id: the
        second must see the first committed (PHOTOMETRY_ALREADY_RECORDED, or the first's result),
        so it waits for a later group."""
        group: list[_Request] = []
        images: set[int] = set()
        request_ids: set[str] = set()
        rest: list[_Request] = []
        size = 0
        for request in self.pending:
            request_id = request.idem.request_id if request.idem is not None else None
            n = len(request.batch.source_ids)
            full = bool(group) and (len(group) >= MAX_GROUP or size + n > MAX_GROUP_ROWS)
            if full or request.image_id in images or request_id in request_ids:
                rest.append(request)
                continue
            size += n
            group.append(request)
            images.add(request.image_id)
            if request_id is not None:
                request_ids.add(request_id)
        self.pending = rest
        return group

    def _finished(self, task: asyncio.Future[None]) -> None:
        self.running.discard(task)
        self._start()

    async def _run(self, group: list[_Request]) -> None:
        try:
            outcomes = await self._outcomes(group)
        except BaseException as exc:  # cancelled (the loop is closing): nobody waits in vain
            for request in group:
                if not request.future.done():
                    request.future.set_exception(exc)
            raise
        for request, outcome in zip(group, outcomes, strict=True):
            if request.future.done():
                continue
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)
        # A few turns of the loop before the next group is formed (when this task ends): callers
        # just answered that send their next batch at once then join it. Formed at once, it took
        # only what was left over: groups of 15 batches on average instead of 32 at 64 writers.
        for _ in range(_RESUBMIT_TURNS):
            await asyncio.sleep(0)

    async def _outcomes(self, group: list[_Request]) -> list[PhotometryResult | Exception]:
        """Each batch's result or error, from one transaction when it commits."""
        try:
            # A lost race on a key (a request_id, a new source) is rerun by Database.write.
            return list(await self.db.write(lambda conn: _ingest_group(conn, group)))
        except DomainError as exc:  # the database's own state (unreachable, timed out): for all
            return [exc] * len(group)
        except Exception as exc:
            if len(group) == 1:
                return [exc]
        # What no check foresaw, from one batch or another: each batch again alone, so that only
        # the one at fault fails.
        outcomes: list[PhotometryResult | Exception] = []
        for request in group:
            outcomes += await self._outcomes([request])
        return outcomes


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _ingest_group(conn: Conn, group: list[_Request]) -> list[PhotometryResult | DomainError]:
    """One transaction for a group of batches: first every batch's checks (its request_id, its
    image, locked), then the writes of those accepted, then each measured source's statistics once.

    Locks are taken in one order by every transaction: request ids (idempotency.check_request_id) by
    id, images by id, new sources' keys by id (one INSERT), statistics rows by sid. So two groups
    of overlapping batches (here or in another replica) wait for each other but never deadlock.
    Nothing fails between the first write and the commit but the database itself, so no batch
    needs a savepoint of its own. Runs again whole when Database.write retries."""
    outcomes: dict[int, PhotometryResult | DomainError] = {}
    for i, idem in sorted(((i, r.idem) for i, r in enumerate(group) if r.idem is not None), key=_request_id):
        try:
            earlier = await check_request_id(conn, idem)
        except DomainError as exc:
            outcomes[i] = exc
            continue
        if earlier is not None:
            outcomes[i] = PhotometryResult(**earlier)
    accepted: list[_Accepted] = []
    for i in sorted(range(len(group)), key=lambda i: group[i].image_id):
        if i in outcomes:
            continue
        try:
            accepted.append(await _check(conn, i, group[i]))
        except DomainError as exc:
            outcomes[i] = exc
    accepted.sort(key=lambda a: a.index)  # a source new to the group is created by its first batch
    if accepted:
        deltas = await _write(conn, accepted)
        await _fold_statistics(conn, deltas)
        for a in accepted:
            count = len(a.sids)
            outcomes[a.index] = PhotometryResult(a.request.image_id, count, a.created, count - a.created)
    return [outcomes[i] for i in range(len(group))]


def _request_id(item: tuple[int, Idempotency]) -> str:
    return item[1].request_id


async def _check(conn: Conn, index: int, request: _Request) -> _Accepted:
    """A batch's checks after its request_id's, as storage/sqlite/sources.py's _ingest makes them:
    what its writes need; raises what refuses it."""
    image_id = request.image_id
    # Locked: a batch for the same image in another transaction waits here, then finds its count.
    image = await conn.fetchrow(_IMAGE, image_id)
    if image is None:
        raise NotFound("IMAGE", f"images/{image_id}")
    image_mjd, already, ms_mjd = image
    image_mjd = image_mjd or ms_mjd  # the image's is its MS's when 0 (set on the MS after the image)
    if already:
        raise AlreadyExists(
            "IMAGE",
            f"images/{image_id}",
            reason="PHOTOMETRY_ALREADY_RECORDED",
            message=f"photometry of images/{image_id} was already recorded",
        )
    mjd: Sequence[float] = request.batch.observation_mjd
    if 0.0 in mjd:
        if not image_mjd:
            raise FailedPrecondition(
                f"images/{image_id} has no observation time: set mid_mjd on it or its measurement set, "
                "or send each measurement's observation_mjd",
                reason="OBSERVATION_TIME_UNKNOWN",
                metadata={"resource": f"images/{image_id}"},
            )
        mjd = [t or image_mjd for t in mjd]
    return _Accepted(index, request, mjd)


async def _write(conn: Conn, accepted: list[_Accepted]) -> dict[int, list[float]]:
    """The accepted batches' rows: new sources, photometry (one COPY), each image's measured sources
    and count, request ids. Returns the sums of the new measurements per source (`add_rows`)."""
    now = now_us()
    named = list(dict.fromkeys(s for a in accepted for s in a.request.batch.source_ids))
    sids = {r[0]: r[1] for r in await conn.fetch("SELECT id, sid FROM sources WHERE id = ANY($1::text[])", named)}
    made: set[str] = set()
    if len(sids) < len(named):
        made = await _create_sources(conn, accepted, sids, now)
    records: list[Any] = []
    deltas: dict[int, list[float]] = {}
    for a in accepted:
        batch, image_id = a.request.batch, a.request.image_id
        count = len(batch.source_ids)
        a.sids = [sids[s] for s in batch.source_ids]
        if made:
            a.created = sum(s in made for s in batch.source_ids)
            made.difference_update(batch.source_ids)
        times: Sequence[int] = batch.measure_time
        if 0 in times:
            times = [t or now for t in times]
        records.extend(
            zip(
                a.sids,
                repeat(image_id, count),
                *batch.numbers,
                batch.quality_flags or repeat("", count),
                a.mjd,
                times,
                strict=False,
            )
        )
        add_rows(deltas, a.sids, batch.numbers[_PEAK], weights(batch.numbers[_PEAK_ERR]), a.mjd)
    # In source order (each source's rows stay in batch order): consecutive rows then go to the
    # same leaf of the primary key, and a source's rows of one group share heap pages, which its
    # lightcurve then reads together. PostgreSQL's CPU per row fell from 9.3 to 7.8 us
    # (bench/postgres_ingest.py, 64 writers).
    records.sort(key=itemgetter(0))
    await conn.copy_records_to_table("photometry", records=records, columns=_PHOTOMETRY_COPY_COLUMNS)
    await conn.executemany(
        "INSERT INTO image_photometry VALUES ($1, $2::bigint[])",
        [(a.request.image_id, a.sids) for a in accepted if a.sids],
    )
    await conn.execute(
        _IMAGES_MEASURED,
        [a.request.image_id for a in accepted],
        [len(a.sids) for a in accepted],
        now,
        [a.request.actor for a in accepted],
    )
    for a in accepted:
        count = len(a.sids)
        result = PhotometryResult(a.request.image_id, count, a.created, count - a.created)
        await remember_request_id(conn, a.request.idem, result._asdict)
    return deltas


async def _create_sources(conn: Conn, accepted: list[_Accepted], sids: dict[str, int], now: int) -> set[str]:
    """Insert the named sources that `sids` lacks, adding them to it; the ids this transaction made.
    One INSERT in id order, so two transactions making overlapping sets wait on each other instead
    of deadlocking; a source another transaction made meanwhile is skipped (ON CONFLICT) and read
    once that one commits."""
    new: dict[str, tuple[float, float, float]] = {}
    for a in accepted:
        batch = a.request.batch
        ra, dec, flux = batch.numbers[_RA], batch.numbers[_DEC], batch.numbers[_CATALOG_FLUX]
        for i, s in enumerate(batch.source_ids):
            if s not in sids and s not in new:
                new[s] = (ra[i], dec[i], flux[i])
    ids = sorted(new)
    made = await conn.fetch(
        _NEW_SOURCES,
        ids,
        [sky.designation(new[s][0], new[s][1]) for s in ids],
        [new[s][0] for s in ids],
        [new[s][1] for s in ids],
        [new[s][2] for s in ids],
        now,
    )
    sids.update((r[0], r[1]) for r in made)
    if len(made) < len(ids):
        raced = [s for s in ids if s not in sids]
        found = await conn.fetch("SELECT id, sid FROM sources WHERE id = ANY($1::text[])", raced)
        sids.update((r[0], r[1]) for r in found)
    return {r[0] for r in made}


async def _fold_statistics(conn: Conn, deltas: dict[int, list[float]]) -> None:
    """Fold the group's new photometry into each measured source's statistics: the stored sums
    locked (in sid order), merged in Python (domain/variability.py: the engines share the
    arithmetic), written back in one statement."""
    if not deltas:
        return
    stored = await conn.fetch(_LOCK_SUMS, sorted(deltas))
    if len(stored) != len(deltas):
        # What the foreign key photometry lacks would refuse (migrations.py): never seen, as
        # nothing deletes sources; if it happens, nothing of the group is committed.
        raise RuntimeError("a source measured by this photometry was deleted meanwhile")
    updates = []
    for r in stored:
        sid = r[0]
        total = FluxSums(*r[1:]) if r[1] else FluxSums()
        total.merge(FluxSums.of(deltas[sid]))
        values = stats_values(total)
        values[_IS_VARIABLE] = int(cast(bool, values[_IS_VARIABLE]))
        updates.append((sid, *values))
    await conn.execute(_WRITE_STATS, *(list(c) for c in zip(*updates, strict=True)), now_us())

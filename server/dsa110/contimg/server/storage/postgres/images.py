"""ImageRepository on PostgreSQL (the behaviour of storage/sqlite/images.py).

Position searches read a GiST index over each image's footprint box (storage/postgres/sky.py),
kept in the same row, so it changes in the same statement as the geometry it is computed from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import asyncpg

from ...domain import sky
from ...domain.errors import AlreadyExists, FailedPrecondition, NotFound
from ...domain.names import ms_name
from ...domain.records import Image, Match, Page
from ...repositories.protocols import Idempotency, ListQuery
from .. import rows
from ..clock import now_us
from .idempotency import check_request_id, remember_request_id
from .maintenance import delete_images
from .sky import RaDecBox, footprint_box, point_boxes
from .sql import Params, Table, check_after, where

if TYPE_CHECKING:
    from .database import Conn, Database

_COLUMNS = {name: f"images.{name}" for name in rows.IMAGE_COLUMNS}
_COLUMNS.update({"measurement_set": "images.ms_path", "qa.grade": "images.qa_grade"})
# The sortable columns' types (domain/listing.py), for page tokens' values.
_TYPES = {
    "images.id": "bigint",
    "images.create_time": "bigint",
    **{
        f"images.{c}": "double precision"
        for c in ("mid_mjd", "center_ra_deg", "center_dec_deg", "noise_jy", "dynamic_range")
    },
}
_GEOMETRY = ("center_ra_deg", "center_dec_deg", "size_x_px", "size_y_px", "cell_size_arcsec")
_NEW_COLUMNS = (*rows.IMAGE_COLUMNS[1:], "footprint")
_INSERT = (
    f"INSERT INTO images ({', '.join(_NEW_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_NEW_COLUMNS) + 1))}) RETURNING {rows.IMAGE_SELECT}"
)
# Candidates for a position, given as degenerate boxes (sky.point_boxes): the GiST box_ops index
# answers `box @> box` but not `box @> point` (PostgreSQL 15), which would read the whole table.
SEARCH_SQL = (
    "SELECT images.id, images.center_ra_deg, images.center_dec_deg, images.size_x_px, images.size_y_px, "
    "images.cell_size_arcsec FROM images "
    "WHERE (images.footprint @> $1::box OR images.footprint @> $2::box OR images.footprint @> $3::box)"
)

_TABLE: Table[int, Image] = Table(
    "images", "images.id", rows.IMAGE_SELECT, rows.image_from_row, _COLUMNS, "images.id", _TYPES, "bigint[]"
)


def _box(box: RaDecBox | None) -> asyncpg.Box | None:
    if box is None:
        return None
    ra_low, dec_low, ra_high, dec_high = box
    return asyncpg.Box((ra_high, dec_high), (ra_low, dec_low))


def _footprint(img: Image) -> asyncpg.Box | None:
    return _box(
        footprint_box(img.center_ra_deg, img.center_dec_deg, img.size_x_px, img.size_y_px, img.cell_size_arcsec)
    )


def _record(found: asyncpg.Record) -> Image:
    return rows.image_from_row(cast("Sequence[Any]", found))


async def _load(conn: Conn, image_id: int, *, lock: bool = False) -> Image | None:
    sql = f"SELECT {rows.IMAGE_SELECT} FROM images WHERE id = $1"
    found = await conn.fetchrow(sql + " FOR UPDATE" if lock else sql, image_id)
    return _record(found) if found is not None else None


async def _insert(conn: Conn, image: Image, idem: Idempotency | None, actor: str) -> Image:
    now = now_us()
    # The MS row is locked first: a concurrent delete of the MS waits for this image, or this
    # image finds the MS gone.
    ms_mid = await conn.fetchrow(
        "UPDATE measurement_sets SET image_count = image_count + 1, update_time = $2 WHERE path = $1 RETURNING mid_mjd",
        image.ms_path,
        now,
    )
    if ms_mid is None:
        raise NotFound("MEASUREMENT_SET", ms_name(image.ms_path))
    existing = await conn.fetchval("SELECT id FROM images WHERE path = $1", image.path)
    if existing is not None:
        raise AlreadyExists(
            "IMAGE", f"images/{existing}", message=f"an image with path {image.path!r} is already registered"
        )
    new = image._replace(
        create_time=now,
        update_time=now,
        photometry_count=0,
        mid_mjd=image.mid_mjd or ms_mid[0],
        creator=actor,
        last_modifier=actor,
    )
    found = await conn.fetchrow(_INSERT, *(rows.image_value(new, c) for c in rows.IMAGE_COLUMNS[1:]), _footprint(new))
    assert found is not None
    stored = _record(found)
    await remember_request_id(conn, idem, rows.remembered(stored))
    return stored


async def _update(conn: Conn, current: Image, image: Image, fields: Sequence[str], actor: str) -> Image:
    params = Params(current.id)
    sets = [f"{c} = {params.add(rows.image_value(image, c))}" for c in fields]
    sets.append(f"update_time = {params.add(now_us())}")
    sets.append(f"last_modifier = {params.add(actor)}")
    if any(f in _GEOMETRY for f in fields):
        merged = current._replace(**{f: getattr(image, f) for f in fields})
        sets.append(f"footprint = {params.add(_footprint(merged))}")
    found = await conn.fetchrow(
        f"UPDATE images SET {', '.join(sets)} WHERE id = $1 RETURNING {rows.IMAGE_SELECT}", *params.values
    )
    assert found is not None  # locked by the caller
    return _record(found)


class PostgresImages:
    def __init__(self, db: Database):
        self.db = db

    async def get_many(self, ids: Sequence[int]) -> list[Image | None]:
        return await _TABLE.get_many(self.db, ids)

    # Whole rows of a page: not used by the servicers (they read refs).
    async def list_page(self, query: ListQuery) -> Page[Image]:
        return await _TABLE.page(self.db, query)

    async def list_refs(self, query: ListQuery) -> Page[tuple[int, int]]:
        return await _TABLE.page_of(self.db, query, "images.id, images.update_time", rows.image_ref)

    async def search(self, ra_deg: float, dec_deg: float, query: ListQuery) -> Page[Match[Image]]:
        check_after(query.after, 2, numeric=True)
        params = Params(*(_box(b) for b in point_boxes(ra_deg, dec_deg)))
        clauses = where(query.conditions, _COLUMNS, params)
        candidates = await self.db.fetch(" AND ".join([SEARCH_SQL, *clauses]), *params.values)
        hits = sorted(
            (sky.separation_deg(ra_deg, dec_deg, c_ra, c_dec), image_id)
            for image_id, c_ra, c_dec, nx, ny, cell in candidates
            if sky.footprint_contains(c_ra, c_dec, nx, ny, cell, ra_deg, dec_deg)
        )
        return await _match_page(self, hits, query)

    async def create(self, image: Image, idem: Idempotency | None, *, actor: str = "") -> Image:
        async def body(conn: Conn) -> Image:
            earlier = await check_request_id(conn, idem)
            if earlier is None:
                return await _insert(conn, image, idem, actor)
            first = rows.image_remembered(earlier)
            if first is not None:
                return first
            stored = await _load(conn, int(earlier))  # stored before first results were kept
            if stored is None:
                raise NotFound("IMAGE", f"images/{earlier}")
            return stored

        return await self.db.write(body)

    async def update(self, image: Image, fields: Sequence[str], idem: Idempotency | None, *, actor: str = "") -> Image:
        async def body(conn: Conn) -> Image:
            earlier = await check_request_id(conn, idem)
            if earlier is not None:
                first = rows.image_remembered(earlier)
                if first is not None:
                    return first
            current = await _load(conn, image.id, lock=True)
            if current is None:
                raise NotFound("IMAGE", f"images/{image.id}")
            if earlier is not None:
                return current
            updated = await _update(conn, current, image, fields, actor)
            await remember_request_id(conn, idem, rows.remembered(updated))
            return updated

        return await self.db.write(body)

    async def delete(self, image_id: int, force: bool) -> None:
        async def body(conn: Conn) -> None:
            # Locked: photometry recorded meanwhile waits, then finds the image gone.
            current = await _load(conn, image_id, lock=True)
            if current is None:
                raise NotFound("IMAGE", f"images/{image_id}")
            if current.photometry_count and not force:
                raise FailedPrecondition(
                    f"image has {current.photometry_count} photometry measurements; set force to delete them too",
                    reason="IMAGE_HAS_PHOTOMETRY",
                    metadata={"resource": f"images/{image_id}"},
                )
            await delete_images(conn, [image_id])

        await self.db.write(body)


async def _match_page(repo: PostgresImages, hits: list[tuple[float, int]], query: ListQuery) -> Page[Match[Image]]:
    """Page through (separation, id) hits sorted ascending, keyset = the last (separation, id)."""
    if query.after is not None:
        last = (float(cast(float, query.after[0])), int(cast(int, query.after[1])))
        hits_after = [h for h in hits if h > last]
    else:
        hits_after = hits
    page = hits_after[: query.page_size]
    images = await repo.get_many([i for _, i in page]) if page else []
    matches = [Match(img, sep) for (sep, _), img in zip(page, images, strict=True) if img is not None]
    more = len(hits_after) > query.page_size
    return Page(matches, [page[-1][0], page[-1][1]] if more else None, len(hits))

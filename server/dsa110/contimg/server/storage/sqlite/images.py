"""ImageRepository on SQLite, with an R*Tree of footprints for position searches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from ...domain import sky
from ...domain.errors import AlreadyExists, FailedPrecondition, NotFound
from ...domain.names import ms_name
from ...domain.records import Image, Match, Page
from ...repositories.protocols import Idempotency, ListQuery
from .. import rows
from ..clock import now_us
from .database import Database
from .idempotency import check_request_id, remember_request_id
from .maintenance import delete_images
from .sql import Table, keyset, placeholders, where
from .writer import Txn

_COLUMNS = {name: f"images.{name}" for name in rows.IMAGE_COLUMNS}
_COLUMNS.update({"measurement_set": "images.ms_path", "qa.grade": "images.qa_grade"})
_GEOMETRY = ("center_ra_deg", "center_dec_deg", "size_x_px", "size_y_px", "cell_size_arcsec")


def _load(txn: Txn, image_id: int) -> Image | None:
    found = txn.fetchall(f"SELECT {rows.IMAGE_SELECT} FROM images WHERE id = ?", (image_id,))
    return rows.image_from_row(found[0]) if found else None


def _set_footprint(txn: Txn, img: Image) -> None:
    txn.execute("DELETE FROM image_footprints WHERE id = ?", (img.id,))
    if img.size_x_px > 0 and img.size_y_px > 0 and img.cell_size_arcsec > 0:
        radius = sky.footprint_radius_deg(img.size_x_px, img.size_y_px, img.cell_size_arcsec)
        txn.execute(
            "INSERT INTO image_footprints VALUES (?, ?, ?, ?, ?, ?, ?)",
            (img.id, *sky.cap_box(img.center_ra_deg, img.center_dec_deg, radius)),
        )


_TABLE: Table[int, Image] = Table("images", "images.id", rows.IMAGE_SELECT, rows.image_from_row, _COLUMNS, "images.id")


class SQLiteImages:
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
        x, y, z = sky.unit_vector(ra_deg, dec_deg)
        clauses, params = where(query.conditions, _COLUMNS)
        sql = (
            "SELECT images.id, images.center_ra_deg, images.center_dec_deg, images.size_x_px, images.size_y_px, "
            "images.cell_size_arcsec FROM image_footprints f JOIN images ON images.id = f.id "
            "WHERE f.x0 <= ? AND f.x1 >= ? AND f.y0 <= ? AND f.y1 >= ? AND f.z0 <= ? AND f.z1 >= ?"
        )
        candidates = await self.db.lookup(" AND ".join([sql, *clauses]), [x, x, y, y, z, z, *params])
        hits = sorted(
            (sky.separation_deg(ra_deg, dec_deg, c_ra, c_dec), image_id)
            for image_id, c_ra, c_dec, nx, ny, cell in candidates
            if sky.footprint_contains(c_ra, c_dec, nx, ny, cell, ra_deg, dec_deg)
        )
        return await _match_page(self, hits, query)

    async def create(self, image: Image, idem: Idempotency | None, *, actor: str = "") -> Image:
        def body(txn: Txn) -> Image:
            earlier = check_request_id(txn, idem)
            if earlier is not None:
                first = rows.image_remembered(earlier)
                if first is not None:
                    return first
                stored = _load(txn, int(earlier))  # stored before first results were kept
                if stored is None:
                    raise NotFound("IMAGE", f"images/{earlier}")
                return stored
            ms = list(txn.fetchall("SELECT mid_mjd FROM measurement_sets WHERE path = ?", (image.ms_path,)))
            if not ms:
                raise NotFound("MEASUREMENT_SET", ms_name(image.ms_path))
            existing = txn.fetchall("SELECT id FROM images WHERE path = ?", (image.path,))
            if existing:
                raise AlreadyExists(
                    "IMAGE",
                    f"images/{existing[0][0]}",
                    message=f"an image with path {image.path!r} is already registered",
                )
            now = now_us()
            new = image._replace(
                create_time=now,
                update_time=now,
                photometry_count=0,
                mid_mjd=image.mid_mjd or ms[0][0],
                creator=actor,
                last_modifier=actor,
            )
            cols = rows.IMAGE_COLUMNS[1:]
            cursor = txn.execute(
                f"INSERT INTO images ({', '.join(cols)}) VALUES ({placeholders(len(cols))})",
                [rows.image_value(new, c) for c in cols],
            )
            new = new._replace(id=int(cursor.lastrowid or 0))
            _set_footprint(txn, new)
            txn.execute(
                "UPDATE measurement_sets SET image_count = image_count + 1, update_time = ? WHERE path = ?",
                (now, image.ms_path),
            )
            remember_request_id(txn, idem, rows.remembered(new))
            return new

        return await self.db.write(body)

    async def update(self, image: Image, fields: Sequence[str], idem: Idempotency | None, *, actor: str = "") -> Image:
        def body(txn: Txn) -> Image:
            earlier = check_request_id(txn, idem)
            if earlier is not None:
                first = rows.image_remembered(earlier)
                if first is not None:
                    return first
            current = _load(txn, image.id)
            if current is None:
                raise NotFound("IMAGE", f"images/{image.id}")
            if earlier is not None:
                return current
            now = now_us()
            sets = [f"{c} = ?" for c in fields] + ["update_time = ?", "last_modifier = ?"]
            txn.execute(
                f"UPDATE images SET {', '.join(sets)} WHERE id = ?",
                [*(rows.image_value(image, c) for c in fields), now, actor, image.id],
            )
            updated = _load(txn, image.id)
            assert updated is not None
            if any(f in _GEOMETRY for f in fields):
                _set_footprint(txn, updated)
            remember_request_id(txn, idem, rows.remembered(updated))
            return updated

        return await self.db.write(body)

    async def delete(self, image_id: int, force: bool) -> None:
        def body(txn: Txn) -> None:
            current = _load(txn, image_id)
            if current is None:
                raise NotFound("IMAGE", f"images/{image_id}")
            if current.photometry_count and not force:
                raise FailedPrecondition(
                    f"image has {current.photometry_count} photometry measurements; set force to delete them too",
                    reason="IMAGE_HAS_PHOTOMETRY",
                    metadata={"resource": f"images/{image_id}"},
                )
            delete_images(txn, [image_id])

        await self.db.write(body)


async def _match_page(repo: SQLiteImages, hits: list[tuple[float, int]], query: ListQuery) -> Page[Match[Image]]:
    """Page through (separation, id) hits sorted ascending, keyset = the last (separation, id)."""
    keys = [("sep", False), ("id", False)]
    keyset(keys, query.after, numeric=True)  # validates the token's shape
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

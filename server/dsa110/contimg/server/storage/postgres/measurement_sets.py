"""MeasurementSetRepository on PostgreSQL (the behaviour of storage/sqlite/measurement_sets.py).

SQLite runs one write at a time; here writes run side by side, so an upsert reads the row it
merges into `FOR UPDATE`: a second upsert of the same MS waits and merges into the first's result
instead of overwriting it with what it read before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import asyncpg

from ...domain.errors import AlreadyExists, FailedPrecondition, NotFound
from ...domain.measurement_sets import merged, registered
from ...domain.names import ms_name
from ...domain.records import MeasurementSet, Page
from ...repositories.protocols import Idempotency, ListQuery
from .. import rows
from ..clock import now_us
from .idempotency import check_request_id, remember_request_id
from .maintenance import delete_images
from .sql import Table

if TYPE_CHECKING:
    from .database import Conn, Database

_COLUMNS = {name: name for name in rows.MS_COLUMNS}
_TYPES = {
    "path": "text",
    "start_mjd": "double precision",
    "mid_mjd": "double precision",
    "pointing_dec_deg": "double precision",
    "create_time": "bigint",
    "update_time": "bigint",
}
_INSERT = (
    f"INSERT INTO measurement_sets ({rows.MS_SELECT}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(rows.MS_COLUMNS) + 1))})"
)
_UPDATE = (
    "UPDATE measurement_sets SET "
    + ", ".join(f"{c} = ${i}" for i, c in enumerate(rows.MS_COLUMNS[1:], start=2))
    + f" WHERE path = $1 RETURNING {rows.MS_SELECT}"
)

_TABLE: Table[str, MeasurementSet] = Table(
    "measurement_sets", "path", rows.MS_SELECT, rows.ms_from_row, _COLUMNS, "path", _TYPES, "text[]"
)


def _record(found: asyncpg.Record) -> MeasurementSet:
    return rows.ms_from_row(cast("Sequence[Any]", found))


async def _load(conn: Conn, path: str, *, lock: bool = False) -> MeasurementSet | None:
    sql = f"SELECT {rows.MS_SELECT} FROM measurement_sets WHERE path = $1"
    found = await conn.fetchrow(sql + " FOR UPDATE" if lock else sql, path)
    return _record(found) if found is not None else None


async def _stored(conn: Conn, path: str) -> MeasurementSet:
    """The record a replayed request finds, or NOT_FOUND when it has since been deleted (the replay
    must not recreate it)."""
    stored = await _load(conn, path)
    if stored is None:
        raise NotFound("MEASUREMENT_SET", ms_name(path))
    return stored


class PostgresMeasurementSets:
    def __init__(self, db: Database):
        self.db = db

    async def get_many(self, paths: Sequence[str]) -> list[MeasurementSet | None]:
        return await _TABLE.get_many(self.db, paths)

    async def list_page(self, query: ListQuery) -> Page[MeasurementSet]:
        return await _TABLE.page(self.db, query)

    async def create(self, ms: MeasurementSet, idem: Idempotency | None, *, actor: str = "") -> MeasurementSet:
        async def body(conn: Conn) -> MeasurementSet:
            earlier = await check_request_id(conn, idem)
            first = rows.ms_remembered(earlier)
            if first is not None:
                return first
            if earlier is not None:
                return await _stored(conn, ms.path)
            if await _load(conn, ms.path) is not None:
                raise AlreadyExists("MEASUREMENT_SET", ms_name(ms.path))
            new = registered(ms, now_us())._replace(creator=actor, last_modifier=actor)
            found = await conn.fetchrow(f"{_INSERT} RETURNING {rows.MS_SELECT}", *rows.ms_values(new))
            assert found is not None
            stored = _record(found)
            await remember_request_id(conn, idem, rows.remembered(stored))
            return stored

        return await self.db.write(body)

    async def upsert(
        self,
        ms: MeasurementSet,
        fields: Sequence[str],
        allow_missing: bool,
        idem: Idempotency | None,
        *,
        actor: str = "",
    ) -> MeasurementSet:
        async def body(conn: Conn) -> MeasurementSet:
            earlier = await check_request_id(conn, idem)
            first = rows.ms_remembered(earlier)
            if first is not None:
                return first
            if earlier is not None:
                return await _stored(conn, ms.path)
            current = await _load(conn, ms.path, lock=True)
            now = now_us()
            if current is None:
                if not allow_missing:
                    raise NotFound("MEASUREMENT_SET", ms_name(ms.path))
                current = MeasurementSet(path=ms.path, create_time=now, creator=actor)
                await conn.execute(_INSERT, *rows.ms_values(current._replace(update_time=now)))
            updated = merged(current, ms, fields, now)._replace(last_modifier=actor)
            found = await conn.fetchrow(_UPDATE, *rows.ms_values(updated))
            assert found is not None  # locked or inserted above
            stored = _record(found)
            if stored.mid_mjd != current.mid_mjd:
                # An image registered without its own mid_mjd carries its MS's, whenever that comes.
                await conn.execute(
                    "UPDATE images SET mid_mjd = $1, update_time = $2 WHERE ms_path = $3 AND mid_mjd = 0",
                    stored.mid_mjd,
                    now,
                    ms.path,
                )
            await remember_request_id(conn, idem, rows.remembered(stored))
            return stored

        return await self.db.write(body)

    async def delete(self, path: str, force: bool) -> None:
        async def body(conn: Conn) -> None:
            # Locked: an image registered meanwhile waits, then finds the MS gone.
            if await _load(conn, path, lock=True) is None:
                raise NotFound("MEASUREMENT_SET", ms_name(path))
            image_ids = [
                r[0] for r in await conn.fetch("SELECT id FROM images WHERE ms_path = $1 ORDER BY id FOR UPDATE", path)
            ]
            if image_ids and not force:
                raise FailedPrecondition(
                    f"measurement set has {len(image_ids)} images; delete them first or set force",
                    reason="MEASUREMENT_SET_HAS_IMAGES",
                    metadata={"resource": ms_name(path), "image_count": str(len(image_ids))},
                )
            await delete_images(conn, image_ids)
            # Its jobs keep existing and lose the reference (ON DELETE SET NULL): a change to them too.
            await conn.execute("UPDATE jobs SET update_time = $1 WHERE ms_path = $2", now_us(), path)
            await conn.execute("DELETE FROM measurement_sets WHERE path = $1", path)

        await self.db.write(body)

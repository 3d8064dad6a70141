"""MeasurementSetRepository on SQLite."""

from __future__ import annotations

from collections.abc import Sequence

from ...domain.errors import AlreadyExists, FailedPrecondition, NotFound
from ...domain.measurement_sets import merged, registered
from ...domain.names import ms_name
from ...domain.records import MeasurementSet, Page
from ...repositories.protocols import Idempotency, ListQuery
from .. import rows
from ..clock import now_us
from .database import Database
from .idempotency import check_request_id, remember_request_id
from .maintenance import delete_images
from .sql import Table, placeholders
from .writer import Txn

_COLUMNS = {name: name for name in rows.MS_COLUMNS}


def _load(txn: Txn, path: str) -> MeasurementSet | None:
    found = txn.fetchall(f"SELECT {rows.MS_SELECT} FROM measurement_sets WHERE path = ?", (path,))
    return rows.ms_from_row(found[0]) if found else None


def _stored(txn: Txn, path: str) -> MeasurementSet:
    """The record a write just made or found, or NOT_FOUND when a replayed request's record has
    since been deleted (the replay must not recreate it)."""
    stored = _load(txn, path)
    if stored is None:
        raise NotFound("MEASUREMENT_SET", ms_name(path))
    return stored


_TABLE: Table[str, MeasurementSet] = Table(
    "measurement_sets", "path", rows.MS_SELECT, rows.ms_from_row, _COLUMNS, "path"
)


class SQLiteMeasurementSets:
    def __init__(self, db: Database):
        self.db = db

    async def get_many(self, paths: Sequence[str]) -> list[MeasurementSet | None]:
        return await _TABLE.get_many(self.db, paths)

    async def list_page(self, query: ListQuery) -> Page[MeasurementSet]:
        return await _TABLE.page(self.db, query)

    async def create(self, ms: MeasurementSet, idem: Idempotency | None, *, actor: str = "") -> MeasurementSet:
        def body(txn: Txn) -> MeasurementSet:
            earlier = check_request_id(txn, idem)
            first = rows.ms_remembered(earlier)
            if first is not None:
                return first
            if earlier is None:
                if _load(txn, ms.path) is not None:
                    raise AlreadyExists("MEASUREMENT_SET", ms_name(ms.path))
                new = registered(ms, now_us())._replace(creator=actor, last_modifier=actor)
                txn.execute(
                    f"INSERT INTO measurement_sets ({rows.MS_SELECT}) VALUES ({placeholders(len(rows.MS_COLUMNS))})",
                    rows.ms_values(new),
                )
                stored = _stored(txn, ms.path)
                remember_request_id(txn, idem, rows.remembered(stored))
                return stored
            return _stored(txn, ms.path)

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
        def body(txn: Txn) -> MeasurementSet:
            earlier = check_request_id(txn, idem)
            first = rows.ms_remembered(earlier)
            if first is not None:
                return first
            if earlier is None:
                current = _load(txn, ms.path)
                now = now_us()
                if current is None:
                    if not allow_missing:
                        raise NotFound("MEASUREMENT_SET", ms_name(ms.path))
                    current = MeasurementSet(path=ms.path, create_time=now, creator=actor)
                    txn.execute(
                        f"INSERT INTO measurement_sets ({rows.MS_SELECT}) "
                        f"VALUES ({placeholders(len(rows.MS_COLUMNS))})",
                        rows.ms_values(current._replace(update_time=now)),
                    )
                updated = merged(current, ms, fields, now)._replace(last_modifier=actor)
                values = rows.ms_values(updated)
                sets = ", ".join(f"{c} = ?" for c in rows.MS_COLUMNS[1:])
                txn.execute(f"UPDATE measurement_sets SET {sets} WHERE path = ?", [*values[1:], ms.path])
                if updated.mid_mjd != current.mid_mjd:
                    # An image registered without its own mid_mjd carries its MS's, whenever that comes.
                    txn.execute(
                        "UPDATE images SET mid_mjd = ?, update_time = ? WHERE ms_path = ? AND mid_mjd = 0",
                        (updated.mid_mjd, now, ms.path),
                    )
                stored = _stored(txn, ms.path)
                remember_request_id(txn, idem, rows.remembered(stored))
                return stored
            return _stored(txn, ms.path)

        return await self.db.write(body)

    async def delete(self, path: str, force: bool) -> None:
        def body(txn: Txn) -> None:
            current = _load(txn, path)
            if current is None:
                raise NotFound("MEASUREMENT_SET", ms_name(path))
            image_ids = [r[0] for r in txn.fetchall("SELECT id FROM images WHERE ms_path = ?", (path,))]
            if image_ids and not force:
                raise FailedPrecondition(
                    f"measurement set has {len(image_ids)} images; delete them first or set force",
                    reason="MEASUREMENT_SET_HAS_IMAGES",
                    metadata={"resource": ms_name(path), "image_count": str(len(image_ids))},
                )
            delete_images(txn, image_ids)
            # Its jobs keep existing and lose the reference (ON DELETE SET NULL): a change to them too.
            txn.execute("UPDATE jobs SET update_time = ? WHERE ms_path = ?", (now_us(), path))
            txn.execute("DELETE FROM measurement_sets WHERE path = ?", (path,))

        await self.db.write(body)

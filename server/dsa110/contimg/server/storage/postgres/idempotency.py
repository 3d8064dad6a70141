"""request_id on PostgreSQL: a retried write returns its first result (common.proto: "request_id").

The same contract as storage/sqlite/idempotency.py, across replicas: a transaction running a
request_id first takes a transaction-level advisory lock on it, so retries sent together (through
one replica or several) run one after the other, and each later one finds the first's result
(under READ COMMITTED, the statement after the lock sees what the first committed). Without the
lock they would all find no result, and all but the first fail on what the first wrote.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ...repositories.protocols import Idempotency
from ..clock import now_us
from ..request_ids import first_result

# pg_advisory_xact_lock(class, key)'s class for request ids: two-key locks never meet the one-key
# lock of migrations (schema.py).
_REQUEST_LOCK_CLASS = 0x72657169  # "reqi"

if TYPE_CHECKING:
    from .database import Conn


async def check_request_id(conn: Conn, idem: Idempotency | None) -> Any | None:
    """The stored result of an earlier identical request, or None when this one is new."""
    if idem is None:
        return None
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _REQUEST_LOCK_CLASS, idem.request_id)
    row = await conn.fetchrow(
        "SELECT method, fingerprint, result FROM request_ids WHERE request_id = $1", idem.request_id
    )
    return first_result(tuple(row) if row is not None else None, idem)


async def remember_request_id(conn: Conn, idem: Idempotency | None, result: Any) -> None:
    """Keep the first result of a request with a request_id, as JSON; `result` may be a function
    giving it, called only when there is a request_id (rows.remembered(record): a record)."""
    if idem is not None:
        if callable(result):
            result = result()
        await conn.execute(
            "INSERT INTO request_ids VALUES ($1, $2, $3, $4, $5)",
            idem.request_id,
            idem.method,
            idem.fingerprint,
            json.dumps(result),
            now_us(),
        )

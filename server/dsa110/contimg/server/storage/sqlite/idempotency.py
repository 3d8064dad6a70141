"""request_id: a retried write returns its first result (common.proto: "request_id")."""

from __future__ import annotations

import json
from typing import Any

from ...domain.errors import RequestIdMismatch
from ...repositories.protocols import Idempotency
from ..clock import now_us
from .writer import Txn

# How long a request_id is remembered: a retry of a write within this time returns the first
# result; later, the request is new. Long past any client's retries and a pipeline's restart,
# short enough that the table stays small.
REQUEST_ID_RETENTION_US = 7 * 24 * 3600 * 1_000_000
EXPIRE_BATCH = 5000


def check_request_id(txn: Txn, idem: Idempotency | None) -> Any | None:
    """The stored result of an earlier identical request, or None when this one is new."""
    if idem is None:
        return None
    row = txn.fetchone("SELECT method, fingerprint, result FROM request_ids WHERE request_id = ?", (idem.request_id,))
    if row is None:
        return None
    method, fingerprint, result = row
    if method != idem.method or fingerprint != idem.fingerprint:
        raise RequestIdMismatch(idem.request_id)
    return json.loads(result)


def remember_request_id(txn: Txn, idem: Idempotency | None, result: Any) -> None:
    """Keep the first result of a request with a request_id, as JSON; `result` may be a function
    giving it, called only when there is a request_id (rows.remembered(record): a record)."""
    if idem is not None:
        if callable(result):
            result = result()
        txn.execute(
            "INSERT INTO request_ids VALUES (?, ?, ?, ?, ?)",
            (idem.request_id, idem.method, idem.fingerprint, json.dumps(result), now_us()),
        )


def expire_batch(txn: Txn, before_us: int) -> int:
    """Forget up to a batch of request_ids stored before `before_us`, oldest first; how many."""
    cursor = txn.execute(
        "DELETE FROM request_ids WHERE request_id IN "
        "(SELECT request_id FROM request_ids WHERE create_time < ? ORDER BY create_time LIMIT ?)",
        (before_us, EXPIRE_BATCH),
    )
    return int(cursor.rowcount)

"""request_id: a retried write returns its first result (common.proto: "request_id")."""

from __future__ import annotations

import json
from typing import Any

from ...repositories.protocols import Idempotency
from ..clock import now_us
from ..request_ids import EXPIRE_BATCH, first_result
from .writer import Txn


def check_request_id(txn: Txn, idem: Idempotency | None) -> Any | None:
    """The stored result of an earlier identical request, or None when this one is new."""
    if idem is None:
        return None
    row = txn.fetchone("SELECT method, fingerprint, result FROM request_ids WHERE request_id = ?", (idem.request_id,))
    return first_result(row, idem)


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

"""request_id rules shared by the engines (common.proto: "request_id"): how long one is kept, and
what a stored one answers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..domain.errors import RequestIdMismatch
from ..repositories.protocols import Idempotency

# How long a request_id is remembered: a retry of a write within this time returns the first
# result; later, the request is new. Long past any client's retries and a pipeline's restart,
# short enough that the table stays small.
REQUEST_ID_RETENTION_US = 7 * 24 * 3600 * 1_000_000
# Forgotten a batch per write, so that no write waits long behind the expiry.
EXPIRE_BATCH = 5000


def first_result(row: Sequence[Any] | None, idem: Idempotency) -> Any | None:
    """The first result stored in a request_ids row (method, fingerprint, result), None when there
    is none; the same request_id sent with another request is refused."""
    if row is None:
        return None
    method, fingerprint, result = row
    if method != idem.method or fingerprint != idem.fingerprint:
        raise RequestIdMismatch(idem.request_id)
    return json.loads(result)

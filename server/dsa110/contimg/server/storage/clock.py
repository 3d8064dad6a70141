"""The time rows are stamped with."""

from __future__ import annotations

import time


def now_us() -> int:
    """Microseconds since the Unix epoch: every create_time and update_time."""
    return time.time_ns() // 1000

"""Sources' stored statistics as column values, the same for every engine."""

from __future__ import annotations

from ..domain.records import Variability
from ..domain.variability import FluxSums, derive

VARIABILITY_COLUMNS = Variability._fields
# The columns `stats_values` gives values for, in its order.
STATS_COLUMNS = (
    "first_detection_mjd",
    "last_detection_mjd",
    "detection_count",
    *VARIABILITY_COLUMNS,
    "sum_f",
    "sum_f2",
    "sum_w",
    "sum_wf",
    "sum_wf2",
)


def stats_values(sums: FluxSums) -> list[object]:
    """Column values for sources' detection, variability and sums columns (STATS_COLUMNS)."""
    var = derive(sums)
    first = sums.first_mjd if sums.n else 0.0
    last = sums.last_mjd if sums.n else 0.0
    return [
        first,
        last,
        sums.n,
        *(getattr(var, c) for c in VARIABILITY_COLUMNS),
        sums.sum_f,
        sums.sum_f2,
        sums.sum_w,
        sums.sum_wf,
        sums.sum_wf2,
    ]

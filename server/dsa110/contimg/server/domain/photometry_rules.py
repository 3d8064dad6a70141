"""What each photometry field may hold: one table, and every check of a measurement's fields built
from it, so that a bound is stated once.

Two checks read the table. `check_measurements` goes field by field and names every bad one; it is
the truth. `columns_plainly_valid` answers only "is all of it valid", a column at a time in C (sum,
min, max over 1,000 values) instead of a field at a time in Python: batches of a thousand valid
measurements are the normal request, and the field-by-field checks once cost a third of
RecordPhotometry's CPU. It accepts exactly what `check_measurements` accepts (held to it by
tests/test_validation_fastpath.py), so a batch it refuses costs the detailed pass and nothing else.

Both forms of a request take that one fast check: columns as they arrive, rows once turned into the
batch's columns, which storage needs anyway. Rows had a fast check of their own, a hand-written
expression per row (a third copy of every bound); the columns of 1,000 valid rows are checked in
6.0 M instructions against its 8.0 M (callgrind, transposition included), so generating that
expression from the table would have kept a copy only to be slower.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .checks import FLUX_MAX_JY, MJD_MAX, MJD_MIN, Checker
from .records import PHOTOMETRY_NUMBERS, Photometry, PhotometryBatch

MAX_MEASUREMENTS = 100_000  # per RecordPhotometry call
# Physical bounds, far outside any real value but finite, so that a unit mistake is refused with
# the field named instead of stored. Peak flux and its error feed each source's running sums of f,
# f^2, w = 1/err^2, w*f, w*f^2 (variability.py): within these bounds none of them can overflow or
# divide by zero (w is between 1e-18 and 1e24), so one absurd value cannot fail the statistics of a
# write group that other callers' batches share. (An error of ~1.4e154 Jy once passed, made w = 0
# and divided by zero: 15-18 of 30 concurrent batches failed with INTERNAL.)
PEAK_FLUX_ERR_MIN_JY = 1e-12
CATALOG_FLUX_MAX_MJY = FLUX_MAX_JY * 1000.0
RATIO_MAX = 1e9  # |snr|, |normalized_flux|, normalized_flux_err
SEPARATION_MAX_DEG = 180.0


@dataclass(frozen=True, slots=True)
class Number:
    """A number between `lo` and `hi`, each end closed unless marked open. A field not sent reads as
    0 (proto3), which passes only if the range holds it or `zero_is_unset`: a range without 0 makes
    the field required (peak_flux_err_jy)."""

    unit: str  # for readers (and tests: it matches the field name's suffix); no check reads it
    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    zero_is_unset: bool = False  # 0 means "not given" (observation_mjd: the image's) and always passes

    def check(self, field: str, value: float, c: Checker) -> None:
        if self.zero_is_unset and value == 0.0:
            return
        c.finite(field, value, lo=self.lo, lo_open=self.lo_open, hi=self.hi, hi_open=self.hi_open)

    def spans(self, low: float, high: float) -> bool:
        """Whether the range allows both `low` and `high` (finite), and so all between."""
        return (self.lo < low or (self.lo == low and not self.lo_open)) and (
            high < self.hi or (high == self.hi and not self.hi_open)
        )

    def column_valid(self, values: Sequence[float]) -> bool:
        """Whether `check` passes every value; an empty column is all zeros."""
        if not values:
            return self.zero_is_unset or self.spans(0.0, 0.0)
        # A NaN or an infinity makes the sum NaN or infinite; valid values cannot (every bound times
        # MAX_MEASUREMENTS is a finite float). After this, min and max are exact.
        if not math.isfinite(sum(values)):
            return False
        if self.spans(min(values), max(values)):
            return True
        if not self.zero_is_unset:
            return False
        given = list(filter(None, values))  # without the zeros (unset): rare, dates mixed with zeros
        return not given or self.spans(min(given), max(given))


@dataclass(frozen=True, slots=True)
class Text:
    """Text of at most `max_bytes` bytes of UTF-8, without NUL characters; empty is allowed."""

    max_bytes: int

    def check(self, field: str, value: str, c: Checker) -> None:
        c.text(field, value, max_len=self.max_bytes)

    def column_valid(self, values: Sequence[str]) -> bool:
        """Whether `check` passes every value."""
        if not values:
            return True
        if "\x00" in "".join(values):
            return False
        longest = max(map(len, values))
        # A character is at most 4 bytes of UTF-8, so short texts (all of them, in practice) need no encoding.
        return longest <= self.max_bytes // 4 or (
            longest <= self.max_bytes and max(len(v.encode("utf-8", "surrogatepass")) for v in values) <= self.max_bytes
        )


# Every field of a measurement but its source (a name: domain/photometry_request.py), in the order
# check_measurements reports them.
PHOTOMETRY_RULES: dict[str, Number | Text] = {
    "ra_deg": Number("deg", 0.0, 360.0, hi_open=True),
    "dec_deg": Number("deg", -90.0, 90.0),
    "peak_flux_jy": Number("Jy", -FLUX_MAX_JY, FLUX_MAX_JY),
    "peak_flux_err_jy": Number("Jy", PEAK_FLUX_ERR_MIN_JY, FLUX_MAX_JY),  # required: 1/err^2 weights
    "catalog_flux_mjy": Number("mJy", -CATALOG_FLUX_MAX_MJY, CATALOG_FLUX_MAX_MJY),
    "integrated_flux_jy": Number("Jy", -FLUX_MAX_JY, FLUX_MAX_JY),
    "normalized_flux": Number("", -RATIO_MAX, RATIO_MAX),
    "snr": Number("", -RATIO_MAX, RATIO_MAX),
    "integrated_flux_err_jy": Number("Jy", 0.0, FLUX_MAX_JY),
    "normalized_flux_err": Number("", 0.0, RATIO_MAX),
    "local_rms_jy": Number("Jy", 0.0, FLUX_MAX_JY),
    "separation_from_center_deg": Number("deg", 0.0, SEPARATION_MAX_DEG),
    "observation_mjd": Number("MJD", MJD_MIN, MJD_MAX, zero_is_unset=True),
    "quality_flag": Text(max_bytes=32),
}
_RULES = tuple(PHOTOMETRY_RULES.items())


def columns_plainly_valid(source_ids: Sequence[str], column: Callable[[str], Sequence[Any]]) -> bool:
    """Whether check_measurements would find nothing in these measurements, given as columns:
    `column(name)` is the column of field `name`, one value per source or empty (all defaults)."""
    n = len(source_ids)
    if not 1 <= n <= MAX_MEASUREMENTS or len(set(source_ids)) != n:
        return False
    return all(rule.column_valid(column(name)) for name, rule in _RULES)


def batch_plainly_valid(batch: PhotometryBatch) -> bool:
    """columns_plainly_valid for the columns of a batch."""
    columns: dict[str, Sequence[Any]] = dict(zip(PHOTOMETRY_NUMBERS, batch.numbers, strict=True))
    columns["observation_mjd"] = batch.observation_mjd
    columns["quality_flag"] = batch.quality_flags or ()
    return columns_plainly_valid(batch.source_ids, columns.__getitem__)


def check_measurements(
    rows: Sequence[Photometry], c: Checker, field: Callable[[int, str], str], count_field: str
) -> None:
    """Every violation of the rules in the measurements (up to MAX_VIOLATIONS in all), each at
    `field(i, name)`: the count at `count_field`, a source twice, every field against its rule."""
    c.count(count_field, len(rows), lo=1, hi=MAX_MEASUREMENTS)
    seen: set[str] = set()
    for i, m in enumerate(rows[:MAX_MEASUREMENTS]):
        if m.source_id in seen:
            c.add(field(i, "source"), f"source {m.source_id!r} appears twice in one image")
        seen.add(m.source_id)
        for name, rule in _RULES:
            rule.check(field(i, name), getattr(m, name), c)
        if c.full:
            return

"""Argument validation in one place: collect every violation, then raise one InvalidArgument."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import FieldViolation, InvalidArgument

T = TypeVar("T")

MAX_TEXT = 4096
MAX_NAME = 256
MJD_MIN, MJD_MAX = 15000.0, 100000.0  # 1900 .. 2132: anything outside is a unit mistake
FLUX_MAX_JY = 1e9  # any flux density, its error, or an rms; the brightest radio sky is ~1e6 Jy
# A request with this many violations has enough to act on: checks stop collecting there rather
# than build a megabyte of violations.
MAX_VIOLATIONS = 100
# google.protobuf.Timestamp's valid range, 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_MIN_S, TIMESTAMP_MAX_S = -62_135_596_800, 253_402_300_799
# The same range in microseconds since the epoch (how measurement times travel in columns and are stored).
TIMESTAMP_MIN_US, TIMESTAMP_MAX_US = TIMESTAMP_MIN_S * 1_000_000, TIMESTAMP_MAX_S * 1_000_000 + 999_999


def timestamp_ok(seconds: int, nanos: int) -> bool:
    """Whether a google.protobuf.Timestamp is inside its documented range."""
    return TIMESTAMP_MIN_S <= seconds <= TIMESTAMP_MAX_S and 0 <= nanos <= 999_999_999


class Checker:
    """Accumulates field violations so a caller sees all of them at once."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []
        # ErrorInfo carries one reason: the first specific one collected (INVALID_FILTER, ...), if any.
        self.reason: str | None = None

    def add(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    @property
    def full(self) -> bool:
        """MAX_VIOLATIONS collected: checks that may find many stop here."""
        return len(self.violations) >= MAX_VIOLATIONS

    def absorb(self, bad: InvalidArgument) -> None:
        """Collect the violations of an error a parser raised (names.py, query.py)."""
        self.violations.extend(bad.violations)
        if self.reason is None and bad.reason != InvalidArgument.reason:
            self.reason = bad.reason

    def parsed(self, parse: Callable[..., T], *args: Any) -> T | None:
        """`parse(*args)`, or None with its violations collected, so the request's other fields
        are still checked and one error names them all."""
        try:
            return parse(*args)
        except InvalidArgument as bad:
            self.absorb(bad)
            return None

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations, reason=self.reason)

    def finite(
        self,
        field: str,
        value: float,
        *,
        lo: float | None = None,
        hi: float | None = None,
        lo_open: bool = False,
        hi_open: bool = False,
    ) -> bool:
        if not math.isfinite(value):
            self.add(field, "must be a finite number")
            return False
        if lo is not None and (value < lo or (lo_open and value == lo)):
            self.add(field, f"must be {'>' if lo_open else '>='} {lo:g}")
            return False
        if hi is not None and (value > hi or (hi_open and value == hi)):
            self.add(field, f"must be {'<' if hi_open else '<='} {hi:g}")
            return False
        return True

    def non_negative(self, field: str, value: float) -> None:
        self.finite(field, value, lo=0.0)

    def ra(self, field: str, value: float) -> None:
        self.finite(field, value, lo=0.0, hi=360.0, hi_open=True)

    def dec(self, field: str, value: float) -> None:
        self.finite(field, value, lo=-90.0, hi=90.0)

    def mjd(self, field: str, value: float, *, allow_zero: bool = True) -> None:
        if allow_zero and value == 0.0:
            return
        self.finite(field, value, lo=MJD_MIN, hi=MJD_MAX)

    def mjd_range(self, start_field: str, start: float, end_field: str, end: float) -> None:
        before = len(self.violations)
        self.mjd(start_field, start)
        self.mjd(end_field, end)
        if len(self.violations) == before and start and end and start > end:
            self.add(end_field, f"must not be earlier than {start_field}")

    def text(self, field: str, value: str, *, max_len: int = MAX_NAME, required: bool = False) -> None:
        if required and not value:
            self.add(field, "required")
        elif len(value) > max_len or len(value.encode("utf-8", "surrogatepass")) > max_len:
            self.add(field, f"longer than {max_len} bytes")
        elif "\x00" in value:
            self.add(field, "must not contain NUL characters")

    def timestamp(self, field: str, seconds: int, nanos: int) -> None:
        """A google.protobuf.Timestamp inside its documented range (and so storable in microseconds)."""
        if not timestamp_ok(seconds, nanos):
            self.add(field, "must be a valid timestamp between 0001-01-01 and 9999-12-31 (nanos 0 to 999999999)")

    def unix_micros(self, field: str, value: int) -> None:
        """A time in microseconds since the epoch inside the range a Timestamp may hold."""
        if not TIMESTAMP_MIN_US <= value <= TIMESTAMP_MAX_US:
            self.add(field, "must be a valid time between 0001-01-01 and 9999-12-31")

    def enum(self, field: str, value: int, known: type, *, required: bool = False) -> None:
        try:
            member = known(value)
        except ValueError:
            self.add(field, f"unknown enum value {value}")
            return
        if required and int(member) == 0:
            self.add(field, "required")

    def count(self, field: str, value: int, *, lo: int, hi: int) -> None:
        if not lo <= value <= hi:
            self.add(field, f"must contain between {lo} and {hi} items (got {value})")


def page_size(value: int, *, default: int = 50, maximum: int = 1000, field: str = "page_size") -> int:
    """AIP-158: 0 means the default, larger than the maximum is coerced, negative is an error."""
    if value < 0:
        raise InvalidArgument.single(field, "must not be negative")
    if value == 0:
        return default
    return min(value, maximum)

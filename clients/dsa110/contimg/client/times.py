"""Times as astronomers write them, as Modified Julian Dates (UTC days since 1858-11-17T00:00).

Accepted: an MJD (`60976.5625`, `MJD60976.5`), a JD (`JD2460977.0625`), an ISO date or date-time
(`2025-10-28`, `2025-10-28T13:30:07`, `2025-10-28 13:30:07Z`, `2025-10-28T13:30:07+02:00`; no zone
means UTC), `now`, `today` / `yesterday` / `tomorrow` (00:00 UTC of that day), and an offset from
now (`-2d`, `-6h`, `-30min`, `-1w`, `+1d`; units s, min, h, d, w). A bare number must be an MJD in
[15000, 100000] (1900 to 2132), so that a year or a JD given as an MJD is an error, not an
empty result. Leap seconds are ignored, as MJD(UTC) day fractions do.

`time_arg` is the argparse `type=` callable: bad input is an `ArgumentTypeError`.
"""

from __future__ import annotations

import argparse
import math
import re
from datetime import UTC, datetime, timedelta

__all__ = ["MJD_EPOCH", "datetime_to_mjd", "mjd_to_datetime", "parse_time", "time_arg"]

MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)
MJD_RANGE = (15000.0, 100000.0)  # the server's bounds for every MJD field
JD_OFFSET = 2400000.5
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER = re.compile(rf"^(?P<kind>mjd|jd)?\s*(?P<value>{_NUM})$")
_OFFSET = re.compile(rf"^(?P<sign>[+-])\s*(?P<value>{_NUM})\s*(?P<unit>s|sec|m|min|h|hr|d|day|days|w|wk|week|weeks)$")
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
_UNIT_SECONDS |= {"d": 86400, "day": 86400, "days": 86400}
_UNIT_SECONDS |= {"w": 604800, "wk": 604800, "week": 604800, "weeks": 604800}
_DAYS = {"today": 0, "yesterday": -1, "tomorrow": 1}

FORMS = (
    "an MJD (60976.5), an ISO date or date-time (2025-10-28, 2025-10-28T13:30:07Z), "
    "now, today, yesterday, or an offset from now (-2d, -6h, -30min)"
)


def datetime_to_mjd(moment: datetime) -> float:
    """MJD of a datetime; a naive one is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - MJD_EPOCH) / timedelta(days=1)


def mjd_to_datetime(mjd: float) -> datetime:
    """The UTC datetime of an MJD."""
    return MJD_EPOCH + timedelta(days=mjd)


def parse_time(text: str, now: datetime | None = None) -> float:
    """An MJD from any of the forms in the module docstring; `now` (UTC) anchors relative times."""
    raw = text.strip()
    lowered = raw.lower()
    if not raw:
        raise ValueError("time: empty")
    current = now if now is not None else datetime.now(UTC)
    if current.tzinfo is None:
        current = current.replace(tzinfo=UTC)
    if match := _NUMBER.match(lowered):
        value = float(match["value"])
        mjd = value - JD_OFFSET if match["kind"] == "jd" else value
        return _checked(mjd, raw, hint=match["kind"] is None)
    if lowered == "now":
        return datetime_to_mjd(current)
    if lowered in _DAYS:
        midnight = current.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return datetime_to_mjd(midnight + timedelta(days=_DAYS[lowered]))
    if match := _OFFSET.match(lowered):
        seconds = float(match["value"]) * _UNIT_SECONDS[match["unit"]]
        sign = -1 if match["sign"] == "-" else 1
        return _checked(datetime_to_mjd(current) + sign * seconds / 86400.0, raw, hint=False)
    try:
        moment = datetime.fromisoformat(raw[:-1] + "+00:00" if raw[-1:] in "zZ" else raw)
    except ValueError:
        raise ValueError(f"time: cannot read {raw!r}") from None
    return _checked(datetime_to_mjd(moment), raw, hint=False)


def _checked(mjd: float, raw: str, *, hint: bool) -> float:
    low, high = MJD_RANGE
    if not math.isfinite(mjd) or not low <= mjd <= high:
        message = f"time {raw!r} is MJD {mjd:g}, outside [{low:g}, {high:g}] (1900 to 2132)"
        if hint and mjd > 2_000_000:
            message += f"; a Julian Date? write JD{raw}"
        elif hint and 1000 <= mjd <= 9999 and mjd == int(mjd):
            message += f"; a year? write {int(mjd)}-01-01"
        raise ValueError(message)
    return mjd


def time_arg(text: str) -> float:
    """argparse type: a time as an MJD (see parse_time)."""
    try:
        return parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error}; write {FORMS}") from None

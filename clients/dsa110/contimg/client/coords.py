"""Sky positions as astronomers write them: sexagesimal or decimal, parsed without astropy.

Right ascension: decimal degrees (`128.7288`, `128.7288d`), decimal hours (`8.5825h`), or
sexagesimal hours (`08:34:54.9`, `08 34 54.9`, `8h34m54.9s`); sexagesimal degrees need the letters
(`128d43m43.5s`), since `aa:bb:cc` is hours by convention. Declination: decimal degrees (`+55.5725`)
or sexagesimal degrees (`+55:34:21`, `-00:30:00`, `55d34m21s`, `55°34'21"`); the sign applies to
the whole value, so `-00:30:00` is -0.5 deg. Minutes and seconds are below 60; RA is in [0, 360)
deg, where exactly 24h (360 deg) is 0; Dec is in [-90, 90]. Angular radii: degrees, or with a unit
(`30arcmin`, `30'`, `90arcsec`, `90"`, `0.5deg`).

The `*_arg` functions are argparse `type=` callables: bad input is an `ArgumentTypeError` saying
what was wrong and which forms are accepted.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "ArgumentParser",
    "dec_arg",
    "format_dec",
    "format_ra",
    "parse_dec",
    "parse_ra",
    "parse_radius",
    "ra_arg",
    "radius_arg",
]

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_INT = r"\d+"
# 08:34:54.9 / 08 34 54.9 / 08:34 / 08:34.5 (decimal minutes when there are no seconds)
_COLONS = re.compile(rf"^(?P<a>{_INT})(?:\s*:\s*|\s+)(?P<b>{_NUM})(?:(?:\s*:\s*|\s+)(?P<c>{_NUM}))?$")
# 8h34m54.9s / 8h34m54.9 / 8h34m / 8h / 55d34m21s (after _normalized: degree sign -> d, primes -> m and s)
_LETTERS = re.compile(rf"^(?P<a>{_INT})\s*(?P<unit>[hd])(?:\s*(?P<b>{_NUM})\s*m(?:\s*(?P<c>{_NUM})\s*s?)?)?$")
# 128.73 / 128.73d / 128.73deg / 8.58h
_DECIMAL = re.compile(rf"^(?P<value>{_NUM})\s*(?P<unit>deg|d|h|hr)?$")
_RADIUS = re.compile(rf"^(?P<value>[+-]?{_NUM}(?:e[+-]?\d+)?)\s*(?P<unit>deg|d|arcmin|amin|m|arcsec|asec|s)?$")

RA_FORMS = "decimal degrees (128.7288), hours (8.5825h), or sexagesimal hours (08:34:54.9, 8h34m54.9s)"
DEC_FORMS = "decimal degrees (+55.5725) or sexagesimal degrees (+55:34:21, -00:30:00, 55d34m21s)"
RADIUS_FORMS = "degrees (0.5, 0.5deg), arcminutes (30arcmin, 30') or arcseconds (90arcsec, 90\")"


def _normalized(text: str) -> str:
    text = text.strip().lower()
    for symbol, letter in (("°", "d"), ("\u2032", "m"), ("'", "m"), ("\u2033", "s"), ('"', "s"), ("\u2212", "-")):
        text = text.replace(symbol, letter)
    return text


def _signed(text: str) -> tuple[int, str]:
    if text.startswith(("+", "-")):
        return (-1 if text[0] == "-" else 1), text[1:].lstrip()
    return 1, text


def _sexagesimal(a: str, b: str | None, c: str | None, what: str) -> float:
    """a + b/60 + c/3600 in a's unit, checking minutes and seconds are below 60."""
    units = float(a)
    minutes = float(b) if b is not None else 0.0
    seconds = float(c) if c is not None else 0.0
    if c is not None and b is not None and "." in b:
        raise ValueError(f"{what}: minutes with a fraction cannot be followed by seconds")
    if minutes >= 60:
        raise ValueError(f"{what}: minutes must be below 60, got {b}")
    if seconds >= 60:
        raise ValueError(f"{what}: seconds must be below 60, got {c}")
    return units + minutes / 60.0 + seconds / 3600.0


def _parse_angle(text: str, what: str, sexagesimal_unit: str) -> tuple[int, float, str]:
    """(sign, magnitude, unit) with unit 'h' or 'd'; sexagesimal without letters is in `sexagesimal_unit`."""
    if not text.strip():
        raise ValueError(f"{what}: empty")
    sign, body = _signed(_normalized(text))
    if match := _DECIMAL.match(body):
        unit = match["unit"] or "d"
        return sign, float(match["value"]), "h" if unit.startswith("h") else "d"
    if match := _COLONS.match(body):
        return sign, _sexagesimal(match["a"], match["b"], match["c"], what), sexagesimal_unit
    if match := _LETTERS.match(body):
        return sign, _sexagesimal(match["a"], match["b"], match["c"], what), match["unit"]
    raise ValueError(f"{what}: cannot read {text.strip()!r}")


def parse_ra(text: str) -> float:
    """Right ascension in degrees, [0, 360); see the module docstring for the forms."""
    sign, value, unit = _parse_angle(text, "RA", "h")
    if sign < 0 and value != 0:
        raise ValueError(f"RA must not be negative, got {text.strip()!r}")
    if unit == "h":
        if value > 24:
            raise ValueError(f"RA {text.strip()!r} is more than 24 hours")
        degrees = value * 15.0
    else:
        degrees = value
    if not math.isfinite(degrees) or degrees > 360:
        raise ValueError(f"RA {text.strip()!r} is more than 360 degrees")
    # 24h / 360 deg is 0; values just below can round up to 360.0, which is also 0.
    return 0.0 if degrees >= 360.0 else degrees


def parse_dec(text: str) -> float:
    """Declination in degrees, [-90, 90]; see the module docstring for the forms."""
    sign, value, unit = _parse_angle(text, "Dec", "d")
    if unit == "h":
        raise ValueError(f"Dec is in degrees, not hours: {text.strip()!r}")
    if not math.isfinite(value) or value > 90:
        raise ValueError(f"Dec {text.strip()!r} is outside [-90, 90] degrees")
    return sign * value if value else 0.0


def parse_radius(text: str) -> float:
    """An angular radius in degrees (> 0)."""
    match = _RADIUS.match(_normalized(text))
    if not match:
        raise ValueError(f"radius: cannot read {text.strip()!r}")
    value = float(match["value"])
    unit = match["unit"] or "deg"
    if unit in ("arcmin", "amin", "m"):
        value /= 60.0
    elif unit in ("arcsec", "asec", "s"):
        value /= 3600.0
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"radius must be positive, got {text.strip()!r}")
    return value


def _split(value: float, places: int) -> tuple[int, int, float]:
    """Whole units, minutes, seconds of a non-negative value, seconds rounded to `places` with
    carries (59.99995 s never prints as 60.0000)."""
    scale = 10**places
    total = round(value * 3600 * scale)  # in units of 10**-places seconds
    whole, rest = divmod(total, 3600 * scale)
    minutes, seconds = divmod(rest, 60 * scale)
    return int(whole), int(minutes), seconds / scale


def format_ra(degrees: float, places: int = 2) -> str:
    """`08:34:54.91`: RA in sexagesimal hours (seconds to `places` decimals)."""
    hours, minutes, seconds = _split((degrees % 360.0) / 15.0, places)
    hours %= 24
    width = 3 + places if places else 2
    return f"{hours:02d}:{minutes:02d}:{seconds:0{width}.{places}f}"


def format_dec(degrees: float, places: int = 1) -> str:
    """`+55:34:21.0`: Dec in sexagesimal degrees (seconds to `places` decimals), always signed."""
    sign = "-" if degrees < 0 else "+"
    whole, minutes, seconds = _split(abs(degrees), places)
    if (whole, minutes, seconds) == (0, 0, 0.0):
        sign = "+"
    width = 3 + places if places else 2
    return f"{sign}{whole:02d}:{minutes:02d}:{seconds:0{width}.{places}f}"


def ra_arg(text: str) -> float:
    """argparse type: a right ascension (see parse_ra)."""
    return _typed(parse_ra, RA_FORMS, text)


def dec_arg(text: str) -> float:
    """argparse type: a declination (see parse_dec)."""
    return _typed(parse_dec, DEC_FORMS, text)


def radius_arg(text: str) -> float:
    """argparse type: an angular radius in degrees (see parse_radius)."""
    return _typed(parse_radius, RADIUS_FORMS, text)


def _typed(parse: Callable[[str], float], forms: str, text: str) -> float:
    try:
        return parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error}; write {forms}") from None


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that reads `-00:30:00`, `-0d30m`, `-2d` and `-.5` as values, not as
    unknown options: Python 3.13's rule (a dash then a digit, or a dash, a dot and a digit). Before
    3.13 only plain negative numbers were values, so a southern sexagesimal declination needed `--`.
    Subparsers are made of the same class, so one instance at the top covers every command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

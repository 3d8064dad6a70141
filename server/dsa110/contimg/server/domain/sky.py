"""Spherical geometry for cone searches and image footprints (all angles in degrees).

Positions are indexed as unit vectors in 3-D boxes: a cap of angular radius r around c lies inside
the cube c +- 2 sin(r/2) (the chord length), which holds everywhere on the sphere, so RA wrap and
the poles need no special cases.
"""

from __future__ import annotations

import math

Box = tuple[float, float, float, float, float, float]  # x0, x1, y0, y1, z0, z1
# SQLite's R*Tree keeps 32-bit floats; pad query boxes so rounding never drops a true match.
_PAD = 1e-6


def unit_vector(ra_deg: float, dec_deg: float) -> tuple[float, float, float]:
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    cos_dec = math.cos(dec)
    return cos_dec * math.cos(ra), cos_dec * math.sin(ra), math.sin(dec)


def separation_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle distance (Vincenty's formula: accurate at every separation)."""
    d_ra = math.radians(ra2 - ra1)
    p1, p2 = math.radians(dec1), math.radians(dec2)
    sin_d, cos_d = math.sin(d_ra), math.cos(d_ra)
    num = math.hypot(math.cos(p2) * sin_d, math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * cos_d)
    den = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * cos_d
    return math.degrees(math.atan2(num, den))


def chord(radius_deg: float) -> float:
    """Straight-line distance between two unit vectors `radius_deg` apart (at most 2)."""
    return 2.0 * math.sin(math.radians(min(radius_deg, 180.0)) / 2.0)


def chord_to_deg(length: float) -> float:
    """The angle between two unit vectors `length` apart: the inverse of `chord`."""
    return math.degrees(2.0 * math.asin(min(length / 2.0, 1.0)))


def cap_box(ra_deg: float, dec_deg: float, radius_deg: float, pad: float = _PAD) -> Box:
    x, y, z = unit_vector(ra_deg, dec_deg)
    half = chord(radius_deg) + pad
    return (
        max(x - half, -1.0),
        min(x + half, 1.0),
        max(y - half, -1.0),
        min(y + half, 1.0),
        max(z - half, -1.0),
        min(z + half, 1.0),
    )


def point_box(ra_deg: float, dec_deg: float) -> Box:
    return cap_box(ra_deg, dec_deg, 0.0)


def footprint_radius_deg(size_x_px: int, size_y_px: int, cell_arcsec: float) -> float:
    """Angular distance from an image's centre to its corner (gnomonic projection)."""
    half_x = math.radians(size_x_px * cell_arcsec / 3600.0 / 2.0)
    half_y = math.radians(size_y_px * cell_arcsec / 3600.0 / 2.0)
    return math.degrees(math.atan(math.hypot(half_x, half_y)))


def footprint_contains(
    center_ra: float,
    center_dec: float,
    size_x_px: int,
    size_y_px: int,
    cell_arcsec: float,
    ra: float,
    dec: float,
) -> bool:
    """Whether (ra, dec) falls on the pixel grid of an image centred at (center_ra, center_dec)."""
    a0, d0 = math.radians(center_ra), math.radians(center_dec)
    a, d = math.radians(ra), math.radians(dec)
    cos_c = math.sin(d0) * math.sin(d) + math.cos(d0) * math.cos(d) * math.cos(a - a0)
    if cos_c <= 0.0:
        return False
    x = math.cos(d) * math.sin(a - a0) / cos_c
    y = (math.cos(d0) * math.sin(d) - math.sin(d0) * math.cos(d) * math.cos(a - a0)) / cos_c
    half_x = size_x_px * cell_arcsec / 3600.0 / 2.0
    half_y = size_y_px * cell_arcsec / 3600.0 / 2.0
    return abs(math.degrees(x)) <= half_x and abs(math.degrees(y)) <= half_y


def designation(ra_deg: float, dec_deg: float) -> str:
    """J2000 name such as J083454.9+553421 (RA in hours, truncated as catalogs do)."""
    ra_h = (ra_deg % 360.0) / 15.0
    h = int(ra_h)
    m = int((ra_h - h) * 60)
    s = math.floor(((ra_h - h) * 60 - m) * 600) / 10.0
    sign = "+" if dec_deg >= 0 else "-"
    ad = abs(dec_deg)
    dd = int(ad)
    dm = int((ad - dd) * 60)
    ds = int(((ad - dd) * 60 - dm) * 60)
    return f"J{h:02d}{m:02d}{s:04.1f}{sign}{dd:02d}{dm:02d}{ds:02d}"

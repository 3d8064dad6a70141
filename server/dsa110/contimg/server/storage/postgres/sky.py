"""Sky regions as PostgreSQL boxes in (RA, Dec) degrees, for GiST searches.

A plain box cannot wrap, so a region crossing RA 0/360 is stored with its RA unwrapped past the
edge ([-2, 3] or [358, 363]) and a position is looked up at RA, RA - 360 and RA + 360 (`point_boxes`):
one of them lands in the box whenever the position's RA is within the region's. A region reaching
a pole spans every RA.
"""

from __future__ import annotations

import math

from ...domain import sky

# (ra_low, dec_low, ra_high, dec_high)
RaDecBox = tuple[float, float, float, float]

# Widens every box a little: rounding must never drop a position on a region's edge.
_PAD_DEG = 1e-6


def cap_box(ra_deg: float, dec_deg: float, radius_deg: float) -> RaDecBox:
    """A box holding every position within `radius_deg` of (ra_deg, dec_deg).

    Along any path of length s from the centre the RA changes by at most s / cos(dec) at each step,
    and every point of the cap has |dec| <= the cap's largest |dec|: so radius / cos(that) bounds
    the RA half-width.
    """
    radius = radius_deg + _PAD_DEG
    dec_low = max(dec_deg - radius, -90.0)
    dec_high = min(dec_deg + radius, 90.0)
    if dec_low <= -90.0 or dec_high >= 90.0:
        return (0.0, dec_low, 360.0, dec_high)
    half = radius / math.cos(math.radians(max(-dec_low, dec_high)))
    if half >= 180.0:
        return (0.0, dec_low, 360.0, dec_high)
    return (ra_deg - half, dec_low, ra_deg + half, dec_high)


def footprint_box(
    center_ra_deg: float, center_dec_deg: float, size_x_px: int, size_y_px: int, cell_size_arcsec: float
) -> RaDecBox | None:
    """A box holding an image's whole pixel grid (what sky.footprint_contains accepts), or None
    for an image without geometry, which no position search finds."""
    if size_x_px <= 0 or size_y_px <= 0 or cell_size_arcsec <= 0:
        return None
    # The grid's farthest points are its corners (the gnomonic distance grows with the radius).
    radius = sky.footprint_radius_deg(size_x_px, size_y_px, cell_size_arcsec)
    return cap_box(center_ra_deg, center_dec_deg, radius)


def point_boxes(ra_deg: float, dec_deg: float) -> tuple[RaDecBox, RaDecBox, RaDecBox]:
    """A position as the three degenerate boxes a stored box may hold it under (RA as is, and one
    turn either way, for boxes unwrapped past 0 or 360)."""
    west, east = ra_deg - 360.0, ra_deg + 360.0
    return (ra_deg, dec_deg, ra_deg, dec_deg), (west, dec_deg, west, dec_deg), (east, dec_deg, east, dec_deg)

"""The reference catalog: NVSS-like sources where the finished scans looked, plus the calibrator.

The measured sources (power-law fluxes from 10 mJy to a few Jy) lie uniformly over the sky the
finished scans' photometry circles covered, within `SOURCE_BAND_DEG` of a strip. Optionally the
rest of the catalog follows: fainter sources all over NVSS's sky that no image measures.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from dsa110.contimg.server.domain import sky
from dsa110.contimg.server.domain.variability import FluxSums

from .scans import Scan
from .survey import CAL_DEC_DEG, CAL_FLUX_JY, CAL_RA_DEG, DAY_S, MAIN_STRIP, PHOT_RADIUS_DEG, STRIPS

SOURCE_BAND_DEG = 1.75  # catalog sources lie within this of a strip's declination
MIN_SOURCES = 200
SOURCES_PER_IMAGE = 2
MAX_SOURCES = 20_000  # 1,000,000 images -> 20,000 sources, ~60 measured per image, ~15 M rows
FLUX_MIN_MJY = 10.0
FLUX_MAX_MJY = 6_000.0
FLUX_SLOPE = 1.1  # N(>S) ~ S^-slope
CATALOG_FLUX_MIN_MJY = 2.5  # NVSS's completeness limit: fainter than the photometry threshold
NVSS_SOUTH_LIMIT_DEG = -40.0

SOURCE_COLUMNS = (
    "sid",
    "id",
    "designation",
    "ra_deg",
    "dec_deg",
    "catalog",
    "catalog_flux_mjy",
    "create_time",
    "update_time",
)

# "": steady; the others: see variability.flux_multipliers
VariabilityModel = Literal["", "calibrator", "scintillation", "walk", "ese"]


@dataclass(slots=True)
class CatalogSource:
    sid: int
    id: str
    ra: float
    dec: float
    flux_mjy: float
    extent: float = 1.0  # integrated / peak flux
    blended: bool = False
    model: VariabilityModel = ""
    params: tuple[float, ...] = ()
    sums: FluxSums = field(default_factory=FluxSums)  # the running sums photometry adds to
    update_time: int = 0


@dataclass(slots=True)
class Catalog:
    measured: list[CatalogSource]  # the calibrator first; the finished scans measure these
    unmeasured: list[CatalogSource]  # below the photometry threshold: no image measures them

    def all(self) -> list[CatalogSource]:
        return [*self.measured, *self.unmeasured]


class _Designations:
    """Unique source ids: a designation, suffixed `_2`, `_3`, ... when two sources share it."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def new(self, ra: float, dec: float) -> str:
        base = sky.designation(ra, dec)
        candidate, n = base, 1
        while candidate in self._taken:
            n += 1
            candidate = f"{base}_{n}"
        self._taken.add(candidate)
        return candidate


def measured_source_count(images: int) -> int:
    """Sources the scans can measure, the calibrator not counted."""
    return max(MIN_SOURCES, min(SOURCES_PER_IMAGE * images, MAX_SOURCES))


def build_catalog(rng: random.Random, scans: list[Scan], images: int, unmeasured: int) -> Catalog:
    """The calibrator, the sources the finished scans measure, then `unmeasured` faint ones."""
    names = _Designations()
    count = measured_source_count(images)
    calibrator = CatalogSource(
        1, names.new(CAL_RA_DEG, CAL_DEC_DEG), CAL_RA_DEG, CAL_DEC_DEG, CAL_FLUX_JY * 1e3, model="calibrator"
    )
    measured = [calibrator, *_measured_sources(rng, scans, names, first_sid=2, count=count)]
    faint = _unmeasured_sources(names, first_sid=count + 2, count=unmeasured, seed=count * 7919 + unmeasured)
    return Catalog(measured, faint)


def _measured_sources(
    rng: random.Random, scans: list[Scan], names: _Designations, *, first_sid: int, count: int
) -> Iterator[CatalogSource]:
    coverage = _coverage(scans)
    strips = list(coverage)
    cumulative = {s: _cumulative([hi - lo for lo, hi in coverage[s]]) for s in strips}
    # a strip's share: its covered RA length times the cosine of its declination (its area)
    weights = [cumulative[s][-1] * math.cos(math.radians(s)) for s in strips]
    span = 1.0 - (FLUX_MIN_MJY / FLUX_MAX_MJY) ** FLUX_SLOPE
    for sid in range(first_sid, first_sid + count):
        strip = rng.choices(strips, weights)[0]
        cum = cumulative[strip]
        u = rng.random() * cum[-1]
        k = bisect.bisect_right(cum, u) - 1
        ra = (coverage[strip][k][0] + u - cum[k]) % 360.0
        lo = math.sin(math.radians(strip - SOURCE_BAND_DEG))
        hi = math.sin(math.radians(strip + SOURCE_BAND_DEG))
        dec = math.degrees(math.asin(rng.uniform(lo, hi)))
        flux = FLUX_MIN_MJY * (1.0 - rng.random() * span) ** (-1.0 / FLUX_SLOPE)
        src = CatalogSource(sid, names.new(ra, dec), ra, dec, round(flux, 1))
        if rng.random() < 0.15:
            src.extent = rng.uniform(1.1, 2.0)
        src.blended = rng.random() < 0.01
        yield src


def _unmeasured_sources(names: _Designations, *, first_sid: int, count: int, seed: int) -> list[CatalogSource]:
    """Sources below the 10 mJy photometry threshold, uniform over the sky north of dec -40 (NVSS's).

    Their own generator, so the rest of the data does not depend on how many there are.
    """
    crng = random.Random(seed)
    low = math.sin(math.radians(NVSS_SOUTH_LIMIT_DEG))
    out = []
    for sid in range(first_sid, first_sid + count):
        ra = crng.random() * 360.0
        dec = math.degrees(math.asin(crng.uniform(low, 1.0)))
        flux = CATALOG_FLUX_MIN_MJY * (FLUX_MIN_MJY / CATALOG_FLUX_MIN_MJY) ** crng.random()
        out.append(CatalogSource(sid, names.new(ra, dec), ra, dec, round(flux, 1)))
    return out


def _coverage(scans: list[Scan]) -> dict[float, list[tuple[float, float]]]:
    """Per strip, the merged RA intervals that finished scans measured."""
    spans: dict[float, list[tuple[float, float]]] = {}
    for scan in scans:
        if scan.kind != "photometry":
            continue
        half = PHOT_RADIUS_DEG[scan.setup] / math.cos(math.radians(scan.strip))
        lo, hi = scan.ra - half, scan.ra + half
        parts = spans.setdefault(scan.strip, [])
        if lo < 0.0:
            parts += [(lo + 360.0, 360.0), (0.0, hi)]
        elif hi > 360.0:
            parts += [(lo, 360.0), (0.0, hi - 360.0)]
        else:
            parts.append((lo, hi))
    merged: dict[float, list[tuple[float, float]]] = {}
    for strip in STRIPS:
        out: list[tuple[float, float]] = []
        for lo, hi in sorted(spans.get(strip, [])):
            if out and lo <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        if out:
            merged[strip] = out
    return merged or {MAIN_STRIP: [(0.0, 360.0)]}


def _cumulative(lengths: list[float]) -> list[float]:
    out = [0.0]
    for length in lengths:
        out.append(out[-1] + length)
    return out


def source_rows(scans: list[Scan], sources: Iterable[CatalogSource]) -> Iterator[tuple[object, ...]]:
    """Rows in SOURCE_COLUMNS order; statistics come later (photometry updates them)."""
    created = scans[0].times[1] - DAY_S * 1_000_000  # the catalog was loaded the day before
    for s in sources:
        s.update_time = created
        yield (s.sid, s.id, sky.designation(s.ra, s.dec), s.ra, s.dec, "NVSS", s.flux_mjy, created, created)

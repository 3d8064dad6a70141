"""Forced photometry: every finished scan's continuum image measures each catalog source within
its photometry radius (1.73 deg on 5040-px images, 1.13 deg on 4096-px ones).

A steady source scatters by a systematic term (flux scale, pointing) and the local noise, which
grows towards the edge; a variable one is multiplied by its model's curve first. Each measurement
is added to the source's running sums (`FluxSums`) as incremental ingest does, so the sources'
statistics come out as the server would have kept them.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dsa110.contimg.server.domain.records import MSStage
from dsa110.contimg.server.storage.statistics import stats_values

from .catalog import CatalogSource
from .scans import Scan
from .survey import PHOT_RADIUS_DEG
from .variability import flux_multipliers

CAL_SCATTER = 0.026  # the calibrator's true fractional scatter
SYSTEMATIC = 0.025  # true fractional scatter of a steady source (flux scale, pointing)
ERROR_SYSTEMATIC = 0.03  # the fractional term in the reported error
THERMAL = 0.8  # true thermal scatter / local rms (reported errors are a little conservative)
_MIN_SNR = 5.0

PHOTOMETRY_COLUMNS = (
    "source_sid",
    "image_id",
    "ra_deg",
    "dec_deg",
    "catalog_flux_mjy",
    "peak_flux_jy",
    "peak_flux_err_jy",
    "integrated_flux_jy",
    "integrated_flux_err_jy",
    "normalized_flux",
    "normalized_flux_err",
    "snr",
    "local_rms_jy",
    "separation_from_center_deg",
    "quality_flag",
    "observation_mjd",
    "measure_time",
)

# The finished scans of one (strip, imaging setup): the strip's declination, the photometry radius,
# the scans' RAs sorted, and their indexes in the same order.
_ScanGroup = tuple[float, float, list[float], list[int]]


@dataclass(slots=True)
class PhotometryTally:
    """Per scan (by index), what its continuum image measured: the images' rows and jobs quote it."""

    count: list[int]
    peak: list[float]

    @classmethod
    def empty(cls, scans: int) -> PhotometryTally:
        return cls([0] * scans, [0.0] * scans)


def photometry_rows(
    rng: random.Random, scans: list[Scan], sources: Iterable[CatalogSource], tally: PhotometryTally
) -> Iterator[tuple[object, ...]]:
    """Rows in PHOTOMETRY_COLUMNS order, source by source; fills `tally`, each source's sums and
    update time as it goes.

    The hot loop of the generator (~12 M rows for 1 M images): the per-scan values are looked up in
    flat lists and the math functions bound to locals.
    """
    rand = rng.random
    cos, sin, acos, sqrt, log_ = math.cos, math.sin, math.acos, math.sqrt, math.log
    radians, degrees, two_pi = math.radians, math.degrees, 2.0 * math.pi
    thermal, err_sys2 = THERMAL, ERROR_SYSTEMATIC * ERROR_SYSTEMATIC
    groups = _groups(scans)
    mid = [scan.mid_mjd for scan in scans]
    ra_c = [scan.ra for scan in scans]
    noise = [scan.noise_jy for scan in scans]
    image = [scan.first_image_id for scan in scans]
    measured = [scan.times[MSStage.PHOTOMETRY_DONE] for scan in scans]
    inv_r2 = [1.0 / PHOT_RADIUS_DEG[scan.setup] ** 2 for scan in scans]
    edge = [0.81 * PHOT_RADIUS_DEG[scan.setup] ** 2 for scan in scans]  # outside 90 % of the radius
    sin0 = [math.sin(radians(scan.strip)) for scan in scans]
    cos0 = [math.cos(radians(scan.strip)) for scan in scans]
    count, peak_max = tally.count, tally.peak
    for src in sources:
        epochs = _epochs(groups, src.ra, src.dec)
        if not epochs:
            continue
        s_jy = src.flux_mjy * 1e-3
        inv_s = 1.0 / s_jy
        mults = flux_multipliers(rng, src, [mid[i] for i in epochs])
        sys_frac = CAL_SCATTER if src.model == "calibrator" else SYSTEMATIC
        a = math.sin(radians(src.dec))
        b = math.cos(radians(src.dec))
        sid, ra_s, dec_s, cat = src.sid, src.ra, src.dec, src.flux_mjy
        extent, sqrt_extent = src.extent, sqrt(src.extent)
        base_flag = "blended" if src.blended else "good"
        add = src.sums.add
        for n, i in enumerate(epochs):
            c = a * sin0[i] + b * cos0[i] * cos(radians(ra_c[i] - ra_s))
            sep = degrees(acos(c if c < 1.0 else 1.0))
            sep2 = sep * sep
            rms = noise[i] * (1.0 + 0.4 * sep2 * inv_r2[i])  # the primary beam raises the noise outwards
            flux = s_jy if mults is None else s_jy * mults[n]
            # two standard normal deviates at once (Box-Muller)
            angle, radius = two_pi * rand(), sqrt(-2.0 * log_(1.0 - rand()))
            peak = flux * (1.0 + sys_frac * cos(angle) * radius) + thermal * rms * sin(angle) * radius
            err = sqrt(rms * rms + err_sys2 * peak * peak)
            snr = peak / rms
            if snr < _MIN_SNR:
                flag = "low_snr"
            elif sep2 > edge[i]:
                flag = "edge"
            else:
                flag = base_flag
            mjd = mid[i]
            add(peak, err, mjd)
            count[i] += 1
            if peak > peak_max[i]:
                peak_max[i] = peak
            yield (
                sid,
                image[i],
                ra_s,
                dec_s,
                cat,
                peak,
                err,
                peak * extent + 0.3 * rms * (rand() - 0.5),
                err * sqrt_extent,
                peak * inv_s,
                err * inv_s,
                snr,
                rms,
                sep,
                flag,
                mjd,
                measured[i],
            )
        src.update_time = measured[epochs[-1]]


def statistics_rows(sources: Iterable[CatalogSource]) -> Iterator[tuple[object, ...]]:
    """(*`maintenance.STATS_SET` values, update_time, sid) per source, from the sums photometry kept."""
    for s in sources:
        yield (*stats_values(s.sums), s.update_time, s.sid)


def _groups(scans: list[Scan]) -> list[_ScanGroup]:
    """Finished scans per (strip, imaging setup), in key order."""
    by_key: dict[tuple[float, int], list[tuple[float, int]]] = {}
    for scan in scans:
        if scan.kind == "photometry":
            by_key.setdefault((scan.strip, scan.setup), []).append((scan.ra, scan.index))
    groups = []
    for (strip, setup), items in sorted(by_key.items()):
        items.sort()
        groups.append((strip, PHOT_RADIUS_DEG[setup], [r for r, _ in items], [i for _, i in items]))
    return groups


def _epochs(groups: list[_ScanGroup], ra: float, dec: float) -> list[int]:
    """Indexes (in time order) of the finished scans whose centre lies within the photometry radius.

    Scan centres sit exactly on their strip's declination, so for a given source the radius
    becomes an RA half-width: every centre inside it is a match and none outside.
    """
    found: list[int] = []
    sin_d, cos_d = math.sin(math.radians(dec)), math.cos(math.radians(dec))
    for strip, radius, ras, indexes in groups:
        if abs(dec - strip) >= radius:
            continue
        d0 = math.radians(strip)
        c = (math.cos(math.radians(radius)) - sin_d * math.sin(d0)) / (cos_d * math.cos(d0))
        if c >= 1.0:
            continue
        half = math.degrees(math.acos(max(-1.0, c)))
        lo, hi = ra - half, ra + half
        windows = [(lo, hi)]
        if half >= 180.0:
            windows = [(0.0, 360.0)]
        elif lo < 0.0:
            windows = [(lo + 360.0, 360.0), (0.0, hi)]
        elif hi >= 360.0:
            windows = [(lo, 360.0), (0.0, hi - 360.0)]
        for w_lo, w_hi in windows:
            found.extend(indexes[bisect.bisect_left(ras, w_lo) : bisect.bisect_right(ras, w_hi)])
    found.sort()
    return found

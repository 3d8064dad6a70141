"""The instrument and the survey the demo data simulates, and the clocks they run on.

Constants shared by several resources live here (the strips, the scan length, the imaging setups,
the calibrator); a constant only one resource uses stays in that resource's module.
"""

from __future__ import annotations

import time

STRIPS = (16.27, 50.5, 54.57, 65.72)
MAIN_STRIP = 54.57
STRIP_WEIGHTS = (1.0, 1.0, 6.0, 1.0)  # -> about two thirds of the days on 54.57
SCAN_S = 309
DAY_S = 86_400
SCANS_PER_DAY = (110, 279)  # 279 * 309 s fills a day
STRIP_RUN_DAYS = (3, 20)
OVRO_LON_DEG = -118.2817
SIDEREAL_DEG_PER_DAY = 360.98564736629
UNIX_EPOCH_MJD = 40587
FIRST_DAY_MJD = 60900  # small databases start here ...
LAST_DAY_MJD = 60990  # ... large ones end here (and start earlier)
FREQUENCY_GHZ = 1.405
SUBBAND_MHZ = 15.625
INTEGRATION_S = 12.884901888  # one DSA-110 integration; 24 make a scan

# (pixels, arcsec per pixel): 5040 px at 2.5" (3.5 deg), 4096 px at 2" (2.3 deg)
IMAGING = ((5040, 2.5), (4096, 2.0))
IMAGING_WEIGHTS = (3.0, 1.0)
# Forced photometry radius per imaging setup: a circle just inside the pixel grid.
PHOT_RADIUS_DEG = tuple(0.99 * n * cell / 3600.0 / 2.0 for n, cell in IMAGING)

# The flux calibrator: the first observing block starts just before it transits, the calibration
# tables are solved on it, and it is the catalog's first source.
CAL_NAME = "0834+555"
CAL_RA_DEG = 128.7289
CAL_DEC_DEG = 55.57254
CAL_FLUX_JY = 4.85


def mjd(unix_s: float) -> float:
    return UNIX_EPOCH_MJD + unix_s / DAY_S


def lst_deg(mjd: float) -> float:
    """Local sidereal time at OVRO: the RA a drift scan points at."""
    return (280.46061837 + SIDEREAL_DEG_PER_DAY * (mjd - 51544.5) + OVRO_LON_DEG) % 360.0


def iso(unix_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix_s))

"""Rows of `images` and `image_footprints`: 3 to 5 FITS products per imaged scan.

Every imaged scan has its continuum image first, then pbcor, residual (sometimes clean), psf and
model (sometimes dirty), cut to the scan's image count. The products share the scan's beam, band
and QA verdict; their noise and peak follow from what each product is.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dsa110.contimg.server.domain import sky
from dsa110.contimg.server.domain.records import ImageType, MSStage, QAGrade
from dsa110.contimg.server.storage import rows

from .photometry import PhotometryTally
from .scans import Scan
from .survey import FREQUENCY_GHZ, IMAGING, INTEGRATION_S, SUBBAND_MHZ

# The server's own column order (image_rows yields in it), up to who wrote them: demo rows have no caller.
IMAGE_COLUMNS = rows.IMAGE_COLUMNS[: rows.IMAGE_COLUMNS.index("creator")]
FOOTPRINT_COLUMNS = ("id", "x0", "x1", "y0", "y1", "z0", "z1")

_IMAGE_SUFFIX = {
    ImageType.CONTINUUM: "-image.fits",
    ImageType.PBCOR: "-image-pb.fits",
    ImageType.RESIDUAL: "-residual.fits",
    ImageType.PSF: "-psf.fits",
    ImageType.MODEL: "-model.fits",
    ImageType.DIRTY: "-dirty.fits",
    ImageType.CLEAN: "-clean.fits",
}
_PRODUCT_INTERVAL_US = 1_500_000  # the imager writes one product after the other
# QA metrics as json.dumps(..., sort_keys=True) writes them (a float's JSON text is its repr), built
# without the encoder because a million images make it noticeable.
_METRICS_KEYS = (
    "beam_major_arcsec",
    "beam_minor_arcsec",
    "dynamic_range",
    "flagged_fraction",
    "noise_jy",
    "peak_flux_jy",
    "source_count",
)
_METRICS_JSON = "{" + ", ".join(f'"{k}": %r' for k in sorted(_METRICS_KEYS)) + "}"


@dataclass(slots=True)
class _ScanImaging:
    """What all the images of one scan share: the beam, the band, and the continuum image's QA."""

    beam_major: float
    beam_minor: float
    beam_pa: float
    bandwidth_mhz: float
    integration_s: float
    flagged: float
    measured: int  # photometry measurements on the continuum image
    peak_jy: float
    sources: int
    grade: QAGrade
    summary: str


def image_rows(rng: random.Random, scans: Iterable[Scan], tally: PhotometryTally) -> Iterator[tuple[object, ...]]:
    """Rows in IMAGE_COLUMNS order, image ids ascending. Needs the photometry done (`tally` full)."""
    for scan in scans:
        if not scan.n_images:
            continue
        yield from _products(rng, scan, _scan_imaging(rng, scan, tally))


def _scan_imaging(rng: random.Random, scan: Scan, tally: PhotometryTally) -> _ScanImaging:
    beam_major = round(30.0 * (1.0 + 0.05 * rng.gauss(0.0, 1.0)), 2)
    beam_minor = round(min(beam_major, 25.0 * (1.0 + 0.04 * rng.gauss(0.0, 1.0))), 2)
    beam_pa = round(rng.gauss(0.0, 8.0), 1)
    bandwidth = SUBBAND_MHZ * rng.choices((16, 15, 14, 13, 12), (0.7, 0.12, 0.08, 0.06, 0.04))[0]
    integration = round(INTEGRATION_S * rng.choices((24, 23, 22), (0.9, 0.07, 0.03))[0], 3)
    noise = scan.noise_jy
    flagged = rng.betavariate(2.0, 12.0)
    measured = tally.count[scan.index]
    if scan.kind == "photometry":
        # at least the brightest source photometry measured
        peak = max(tally.peak[scan.index], noise * rng.uniform(80.0, 150.0))
        sources = measured + rng.randint(0, measured // 5 + 2)
    else:
        peak = noise * math.exp(rng.uniform(math.log(100.0), math.log(3000.0)))
        sources = rng.randint(30, 120)
    grade, summary = _qa(noise, flagged, peak / noise, antennas_flagged=rng.random() < 0.01)
    return _ScanImaging(
        beam_major, beam_minor, beam_pa, bandwidth, integration, flagged, measured, peak, sources, grade, summary
    )


def _qa(noise: float, flagged: float, dr: float, *, antennas_flagged: bool) -> tuple[QAGrade, str]:
    """The continuum image's QA grade and one-line summary."""
    problems = []
    if noise > 1.1e-3:
        problems.append("high noise")
    if flagged > 0.3:
        problems.append(f"RFI: {flagged:.0%} flagged")
    if dr < 100.0:
        problems.append("low dynamic range")
    if antennas_flagged:
        problems.append("calibration solutions flagged for 12 antennas")
    grade = QAGrade.GOOD
    if problems:
        grade = QAGrade.WARNING
    if noise > 1.3e-3 or flagged > 0.45 or antennas_flagged:
        grade = QAGrade.BAD
    summary = f"noise {noise * 1e3:.2f} mJy/beam, DR {dr:.0f}, {flagged:.0%} flagged"
    if problems:
        summary += "; " + "; ".join(problems)
    return grade, summary


def _product_types(rng: random.Random, n_images: int) -> list[ImageType]:
    extras = [ImageType.PBCOR, ImageType.RESIDUAL, ImageType.PSF, ImageType.MODEL]
    if rng.random() < 0.05:
        extras[1] = ImageType.CLEAN
    if rng.random() < 0.1:
        extras[3] = ImageType.DIRTY
    return [ImageType.CONTINUUM, *extras][:n_images]


def _products(rng: random.Random, scan: Scan, shared: _ScanImaging) -> Iterator[tuple[object, ...]]:
    """The scan's products' rows: the continuum image, then the others in _product_types order."""
    size, cell = IMAGING[scan.setup]
    field_name = f"drift_dec{scan.strip:+.2f}"
    noise, peak = scan.noise_jy, shared.peak_jy
    imaged = scan.times[MSStage.IMAGED]
    for j, itype in enumerate(_product_types(rng, scan.n_images)):
        created = imaged + j * _PRODUCT_INTERVAL_US
        updated = created
        count = 0
        i_noise, i_peak, i_sources = noise, peak, shared.sources
        if itype == ImageType.CONTINUUM:
            count = shared.measured
            if scan.kind == "photometry":
                updated = scan.times[MSStage.PHOTOMETRY_DONE]  # photometry updated the image's count
        elif itype == ImageType.PBCOR:
            i_noise, i_peak = noise * 1.8, peak * 1.02
        elif itype in (ImageType.RESIDUAL, ImageType.CLEAN):
            i_noise, i_peak, i_sources = noise * 1.02, noise * rng.uniform(4.0, 8.0), 0
        elif itype == ImageType.DIRTY:
            i_noise, i_peak = noise * 1.5, peak * 1.1
        if itype in (ImageType.PSF, ImageType.MODEL):
            # not images of the sky: no noise, no QA
            i_noise, i_dr, i_grade, i_summary, metrics = 0.0, 0.0, QAGrade.UNSPECIFIED, "", "{}"
            i_peak = 1.0 if itype == ImageType.PSF else peak * 0.97
            i_sources = 0
        else:
            i_dr = i_peak / i_noise
            i_grade, i_summary = shared.grade, shared.summary
            metrics = _METRICS_JSON % (
                shared.beam_major,
                shared.beam_minor,
                round(i_dr, 1),
                round(shared.flagged, 4),
                round(i_noise, 9),
                round(i_peak, 6),
                float(i_sources),
            )
        yield (
            scan.first_image_id + j,
            f"/stage/dsa110-contimg/images/{scan.group_id}{_IMAGE_SUFFIX[itype]}",
            scan.path,
            int(itype),
            "fits",
            created,
            updated,
            scan.mid_mjd,
            shared.beam_major,
            shared.beam_minor,
            shared.beam_pa,
            i_noise,
            i_dr,
            int(itype == ImageType.PBCOR),
            field_name,
            scan.ra,
            scan.strip,
            size,
            size,
            cell,
            FREQUENCY_GHZ,
            shared.bandwidth_mhz,
            shared.integration_s,
            int(i_grade),
            i_summary,
            metrics,
            i_sources,
            i_peak,
            count,
        )


def footprint_rows(scans: Iterable[Scan]) -> Iterator[tuple[object, ...]]:
    """Rows in FOOTPRINT_COLUMNS order: every product of a scan covers the same sky."""
    for scan in scans:
        if not scan.n_images:
            continue
        size, cell = IMAGING[scan.setup]
        box = sky.cap_box(scan.ra, scan.strip, sky.footprint_radius_deg(size, size, cell))
        for j in range(scan.n_images):
            yield (scan.first_image_id + j, *box)

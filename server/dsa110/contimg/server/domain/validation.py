"""Validation of every record a caller can write. Field paths name the request field."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from . import names
from .checks import MAX_TEXT, MJD_MAX, MJD_MIN, Checker
from .records import (
    CalTableType,
    Image,
    ImageType,
    Job,
    JobType,
    MeasurementSet,
    MSStage,
    MSStatus,
    Photometry,
    QAGrade,
)

MAX_BATCH_GET = 1000
MAX_MEASUREMENTS = 100_000
MAX_LOG_LINES = 1000
MAX_ARTIFACTS = 1000
MAX_PARAMETERS_BYTES = 64 * 1024
MAX_METRICS = 64
MAX_CAL_TABLES = 64
# Physical bounds of every number a caller can write, far outside any real value but finite, so that
# a unit mistake is refused with the field named instead of stored. Peak flux and its error feed each
# source's running sums of f, f^2, w = 1/err^2, w*f, w*f^2 (variability.py): within these bounds none
# of them can overflow or divide by zero (w is between 1e-18 and 1e24), so one absurd value cannot
# fail the statistics of a write group that other callers' batches share. (An error of ~1.4e154 Jy
# once passed, made w = 0 and divided by zero: 15-18 of 30 concurrent batches failed with INTERNAL.)
FLUX_MAX_JY = 1e9  # any flux density, its error, or an rms; the brightest radio sky is ~1e6 Jy
PEAK_FLUX_MAX_JY = FLUX_MAX_JY  # |peak_flux_jy|
PEAK_FLUX_ERR_MIN_JY = 1e-12  # peak_flux_err_jy in [1e-12, 1e9]
PEAK_FLUX_ERR_MAX_JY = FLUX_MAX_JY
CATALOG_FLUX_MAX_MJY = FLUX_MAX_JY * 1000.0
RATIO_MAX = 1e9  # |snr|, |normalized_flux|, normalized_flux_err
SEPARATION_MAX_DEG = 180.0
# Image numbers: (lowest, highest) of each, none of them reachable by a real image.
IMAGE_BOUNDS: dict[str, tuple[float, float]] = {
    "beam_major_arcsec": (0.0, 648_000.0),  # 180 degrees
    "beam_minor_arcsec": (0.0, 648_000.0),
    "noise_jy": (0.0, FLUX_MAX_JY),
    "dynamic_range": (0.0, 1e12),
    "cell_size_arcsec": (0.0, 36_000.0),  # 10-degree pixels
    "frequency_ghz": (0.0, 1e6),
    "bandwidth_mhz": (0.0, 1e9),
    "integration_s": (0.0, 1e9),  # ~32 years
}
_REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def check_request_id(request_id: str, c: Checker) -> None:
    if request_id and (len(request_id) > 64 or not set(request_id) <= _REQUEST_ID_CHARS):
        c.add("request_id", "must be at most 64 characters of A-Z a-z 0-9 - _ (a UUID)")


def check_measurement_set(ms: MeasurementSet, fields: Sequence[str], prefix: str, c: Checker) -> None:
    p = prefix
    for f in ("start_mjd", "mid_mjd", "end_mjd"):
        if f in fields:
            c.mjd(f"{p}.{f}", getattr(ms, f))
    if {"start_mjd", "end_mjd"} <= set(fields) and ms.start_mjd and ms.end_mjd and ms.start_mjd > ms.end_mjd:
        c.add(f"{p}.end_mjd", "must not be earlier than start_mjd")
    for f in ("pointing_ra_deg", "phase_center_ra_deg"):
        if f in fields:
            c.ra(f"{p}.{f}", getattr(ms, f))
    for f in ("pointing_dec_deg", "phase_center_dec_deg"):
        if f in fields:
            c.dec(f"{p}.{f}", getattr(ms, f))
    for f in ("group_id", "field_name"):
        if f in fields:
            c.text(f"{p}.{f}", getattr(ms, f))
    if "stage" in fields:
        c.enum(f"{p}.stage", ms.stage, MSStage)
    if "status" in fields:
        c.enum(f"{p}.status", ms.status, MSStatus)
    if "calibration_tables" in fields:
        if len(ms.calibration_tables) > MAX_CAL_TABLES:
            c.add(f"{p}.calibration_tables", f"at most {MAX_CAL_TABLES} tables")
        for i, t in enumerate(ms.calibration_tables[:MAX_CAL_TABLES]):
            q = f"{p}.calibration_tables[{i}]"
            try:
                names.check_path(t.path, f"{q}.path")
            except Exception as exc:  # InvalidArgument: collect instead of stopping
                c.add(f"{q}.path", str(getattr(exc, "violations", [exc])[0].description))  # type: ignore[union-attr]
            c.enum(f"{q}.type", t.type, CalTableType)
            c.mjd_range(f"{q}.valid_start_mjd", t.valid_start_mjd, f"{q}.valid_end_mjd", t.valid_end_mjd)


def check_image(img: Image, fields: Sequence[str], prefix: str, c: Checker) -> None:
    p = prefix
    present = set(fields)
    if "type" in present:
        c.enum(f"{p}.type", img.type, ImageType)
    if "format" in present:
        c.text(f"{p}.format", img.format, max_len=16)
    if "mid_mjd" in present:
        c.mjd(f"{p}.mid_mjd", img.mid_mjd)
    for f, (lo, hi) in IMAGE_BOUNDS.items():
        if f in present:
            c.finite(f"{p}.{f}", getattr(img, f), lo=lo, hi=hi)
    if "beam_pa_deg" in present:
        c.finite(f"{p}.beam_pa_deg", img.beam_pa_deg, lo=-360.0, hi=360.0)
    if "center_ra_deg" in present:
        c.ra(f"{p}.center_ra_deg", img.center_ra_deg)
    if "center_dec_deg" in present:
        c.dec(f"{p}.center_dec_deg", img.center_dec_deg)
    for f in ("size_x_px", "size_y_px"):
        if f in present and not 0 <= getattr(img, f) <= 1_000_000:
            c.add(f"{p}.{f}", "must be between 0 and 1000000")
    if "field_name" in present:
        c.text(f"{p}.field_name", img.field_name)
    if "qa_grade" in present:
        c.enum(f"{p}.qa.grade", img.qa_grade, QAGrade)
    if "qa_summary" in present:
        c.text(f"{p}.qa.summary", img.qa_summary, max_len=MAX_TEXT)
    if "qa_metrics" in present:
        if len(img.qa_metrics) > MAX_METRICS:
            c.add(f"{p}.qa.metrics", f"at most {MAX_METRICS} entries")
        for key, value in list(img.qa_metrics.items())[:MAX_METRICS]:
            if not key or len(key) > 64:
                c.add(f"{p}.qa.metrics", "keys must be 1 to 64 characters")
            elif not math.isfinite(value):
                c.add(f"{p}.qa.metrics[{key}]", "must be a finite number")
    if "qa_source_count" in present and img.qa_source_count < 0:
        c.add(f"{p}.qa.source_count", "must not be negative")
    if "qa_peak_flux_jy" in present:
        c.finite(f"{p}.qa.peak_flux_jy", img.qa_peak_flux_jy, lo=-FLUX_MAX_JY, hi=FLUX_MAX_JY)


def _all_plainly_valid(rows: Sequence[Photometry]) -> bool:
    """The per-field checks below, folded into one expression per row (NaN fails every comparison).

    Batches of thousands of valid rows are the normal case; running the Checker on each field of
    each row cost a third of RecordPhotometry's CPU. Any doubt falls through to the detailed checks,
    which name the fields.
    """
    # Locals, not globals: this runs once per measurement of every batch.
    flux, err_lo, err_hi, cat, ratio, sep = (
        FLUX_MAX_JY, PEAK_FLUX_ERR_MIN_JY, PEAK_FLUX_ERR_MAX_JY, CATALOG_FLUX_MAX_MJY, RATIO_MAX, SEPARATION_MAX_DEG
    )  # fmt: skip
    seen: set[str] = set()
    for m in rows:
        if m.source_id in seen:
            return False
        seen.add(m.source_id)
        flag = m.quality_flag
        if not (
            0.0 <= m.ra_deg < 360.0
            and -90.0 <= m.dec_deg <= 90.0
            and -flux <= m.peak_flux_jy <= flux
            and err_lo <= m.peak_flux_err_jy <= err_hi
            and -cat <= m.catalog_flux_mjy <= cat
            and -flux <= m.integrated_flux_jy <= flux
            and -ratio <= m.normalized_flux <= ratio
            and -ratio <= m.snr <= ratio
            and 0.0 <= m.integrated_flux_err_jy <= flux
            and 0.0 <= m.normalized_flux_err <= ratio
            and 0.0 <= m.local_rms_jy <= flux
            and 0.0 <= m.separation_from_center_deg <= sep
            and (m.observation_mjd == 0.0 or MJD_MIN <= m.observation_mjd <= MJD_MAX)
            and (not flag or (len(flag.encode("utf-8", "surrogatepass")) <= 32 and "\x00" not in flag))
        ):
            return False
    return True


# (lowest allowed, lowest is open, highest allowed, highest is open) of each photometry number:
# what `_all_plainly_valid` and `check_measurements` test, as `columns_plainly_valid` tests columns.
_COLUMN_RANGES: dict[str, tuple[float, bool, float, bool]] = {
    "ra_deg": (0.0, False, 360.0, True),
    "dec_deg": (-90.0, False, 90.0, False),
    "peak_flux_jy": (-PEAK_FLUX_MAX_JY, False, PEAK_FLUX_MAX_JY, False),
    "peak_flux_err_jy": (PEAK_FLUX_ERR_MIN_JY, False, PEAK_FLUX_ERR_MAX_JY, False),
    "catalog_flux_mjy": (-CATALOG_FLUX_MAX_MJY, False, CATALOG_FLUX_MAX_MJY, False),
    "integrated_flux_jy": (-FLUX_MAX_JY, False, FLUX_MAX_JY, False),
    "normalized_flux": (-RATIO_MAX, False, RATIO_MAX, False),
    "snr": (-RATIO_MAX, False, RATIO_MAX, False),
    "integrated_flux_err_jy": (0.0, False, FLUX_MAX_JY, False),
    "normalized_flux_err": (0.0, False, RATIO_MAX, False),
    "local_rms_jy": (0.0, False, FLUX_MAX_JY, False),
    "separation_from_center_deg": (0.0, False, SEPARATION_MAX_DEG, False),
}


def columns_plainly_valid(
    source_ids: Sequence[str], column: Callable[[str], Sequence[float]], quality_flags: Sequence[str]
) -> bool:
    """_all_plainly_valid for measurements given as columns, a column at a time in C (sum, min, max)
    instead of a field at a time in Python. `column(name)` is a column of one value per source or
    empty (every value the default 0). Any doubt (a sum that is not finite, zeros mixed with dates)
    answers False: then the rows go through the per-measurement checks, which name the fields."""
    n = len(source_ids)
    if not 1 <= n <= MAX_MEASUREMENTS or len(set(source_ids)) != n:
        return False
    for name, (lo, lo_open, hi, hi_open) in _COLUMN_RANGES.items():
        values = column(name)
        low = high = 0.0
        if values:
            if not math.isfinite(sum(values)):  # NaN or infinity somewhere (or a sum too large: doubt)
                return False
            low, high = min(values), max(values)
        if low < lo or (lo_open and low == lo) or high > hi or (hi_open and high == hi):
            return False
    mjds = column("observation_mjd")
    if mjds:
        if not math.isfinite(sum(mjds)):
            return False
        low, high = min(mjds), max(mjds)
        if not (low == high == 0.0 or MJD_MIN <= low <= high <= MJD_MAX):
            return False
    # 8 characters are at most 32 bytes of UTF-8; a NUL is never plain.
    return not quality_flags or (max(map(len, quality_flags)) <= 8 and "\x00" not in "".join(quality_flags))


def row_field(i: int, name: str) -> str:
    """Where field `name` of measurement i is in a RecordPhotometryRequest's `measurements`."""
    return f"measurements[{i}].{name}"


def column_field(i: int, name: str) -> str:
    """Where field `name` of measurement i is in a RecordPhotometryRequest's `columns`."""
    return f"columns.{name}[{i}]"


def check_measurements(
    rows: Sequence[Photometry],
    c: Checker,
    field: Callable[[int, str], str] = row_field,
    count_field: str = "measurements",
) -> None:
    if 1 <= len(rows) <= MAX_MEASUREMENTS and _all_plainly_valid(rows):
        return
    c.count(count_field, len(rows), lo=1, hi=MAX_MEASUREMENTS)
    seen: set[str] = set()
    for i, m in enumerate(rows[:MAX_MEASUREMENTS]):
        if m.source_id in seen:
            c.add(field(i, "source"), f"source {m.source_id!r} appears twice in one image")
        seen.add(m.source_id)
        for f, (lo, lo_open, hi, hi_open) in _COLUMN_RANGES.items():
            c.finite(field(i, f), getattr(m, f), lo=lo, lo_open=lo_open, hi=hi, hi_open=hi_open)
        c.mjd(field(i, "observation_mjd"), m.observation_mjd)
        c.text(field(i, "quality_flag"), m.quality_flag, max_len=32)
        if len(c.violations) >= 100:  # enough to act on; do not build a megabyte of violations
            return


def check_job(job: Job, c: Checker) -> None:
    c.enum("job.type", job.type, JobType, required=True)
    if not 1 <= job.max_attempts <= 10:
        c.add("job.max_attempts", "must be between 1 and 10")
    if len(job.parameters_json.encode()) > MAX_PARAMETERS_BYTES:
        c.add("job.parameters", f"larger than {MAX_PARAMETERS_BYTES} bytes")
    if job.target_path:
        try:
            names.check_path(job.target_path, "job.ms_path")
        except Exception:
            c.add("job.ms_path", "must be an absolute path of at most 1024 characters")


def check_lines(lines: Sequence[str], field: str, c: Checker, *, max_items: int) -> None:
    c.count(field, len(lines), lo=1, hi=max_items)
    for i, line in enumerate(lines[:max_items]):
        c.text(f"{field}[{i}]", line, max_len=MAX_TEXT)

"""Validation of the records a caller can write (photometry: photometry_rules.py and
photometry_request.py). Field paths name the request field."""

from __future__ import annotations

import math
from collections.abc import Sequence

from . import names
from .checks import FLUX_MAX_JY, MAX_TEXT, Checker
from .records import (
    CalTableType,
    Image,
    ImageType,
    Job,
    JobType,
    MeasurementSet,
    MSStage,
    MSStatus,
    QAGrade,
)

MAX_BATCH_GET = 1000
MAX_LOG_LINES = 1000
MAX_ARTIFACTS = 1000
MAX_PARAMETERS_BYTES = 64 * 1024
MAX_METRICS = 64
MAX_CAL_TABLES = 64
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

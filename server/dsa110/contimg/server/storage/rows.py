"""Row <-> record mapping for every table (column lists in record-field order)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import orjson

from ..domain.records import (
    NO_METRICS,
    CalibrationTable,
    Image,
    Job,
    JobEvent,
    JobTransition,
    MeasurementSet,
    Photometry,
    Source,
    Variability,
)

MS_COLUMNS = (
    "path",
    "group_id",
    "field_name",
    "start_mjd",
    "mid_mjd",
    "end_mjd",
    "pointing_ra_deg",
    "pointing_dec_deg",
    "phase_center_ra_deg",
    "phase_center_dec_deg",
    "stage",
    "status",
    "cal_applied",
    "calibration_tables",
    "create_time",
    "update_time",
    "stage_update_time",
    "process_time",
    "image_count",
    "creator",
    "last_modifier",
)
MS_SELECT = ", ".join(MS_COLUMNS)


_CAL_APPLIED = MS_COLUMNS.index("cal_applied")
_CAL_TABLES = MS_COLUMNS.index("calibration_tables")


def ms_from_row(r: Sequence[Any]) -> MeasurementSet:
    values = list(r)
    values[_CAL_APPLIED] = bool(values[_CAL_APPLIED])
    values[_CAL_TABLES] = tuple(CalibrationTable(**t) for t in json.loads(r[_CAL_TABLES]))
    return MeasurementSet._make(values)


def ms_values(ms: MeasurementSet) -> list[Any]:
    values = [getattr(ms, c) for c in MS_COLUMNS]
    values[_CAL_TABLES] = json.dumps([t._asdict() for t in ms.calibration_tables])
    values[_CAL_APPLIED] = int(ms.cal_applied)
    return values


IMAGE_COLUMNS = (
    "id",
    "path",
    "ms_path",
    "type",
    "format",
    "create_time",
    "update_time",
    "mid_mjd",
    "beam_major_arcsec",
    "beam_minor_arcsec",
    "beam_pa_deg",
    "noise_jy",
    "dynamic_range",
    "pbcor",
    "field_name",
    "center_ra_deg",
    "center_dec_deg",
    "size_x_px",
    "size_y_px",
    "cell_size_arcsec",
    "frequency_ghz",
    "bandwidth_mhz",
    "integration_s",
    "qa_grade",
    "qa_summary",
    "qa_metrics",
    "qa_source_count",
    "qa_peak_flux_jy",
    "photometry_count",
    "creator",
    "last_modifier",
)
IMAGE_SELECT = ", ".join(f"images.{c}" for c in IMAGE_COLUMNS)
_METRICS = IMAGE_COLUMNS.index("qa_metrics")


_PBCOR = IMAGE_COLUMNS.index("pbcor")


def image_from_row(r: Sequence[Any]) -> Image:
    values = list(r)
    values[_PBCOR] = bool(values[_PBCOR])
    values[_METRICS] = MappingProxyType(orjson.loads(r[_METRICS])) if r[_METRICS] != "{}" else NO_METRICS
    return Image._make(values)


def image_ref(r: Sequence[Any]) -> tuple[int, int]:
    """(id, update_time) of a list page's row (ImageRepository.list_refs)."""
    return int(r[0]), int(r[1])


def image_value(img: Image, column: str) -> Any:
    value = getattr(img, column)
    if column == "qa_metrics":
        return json.dumps(dict(value), sort_keys=True)
    if column == "pbcor":
        return int(value)
    return value


_VAR_COLUMNS = Variability._fields
SOURCE_COLUMNS = (
    "id",
    "designation",
    "ra_deg",
    "dec_deg",
    "catalog",
    "catalog_flux_mjy",
    "first_detection_mjd",
    "last_detection_mjd",
    "detection_count",
    *_VAR_COLUMNS,
    "create_time",
    "update_time",
)
SOURCE_SELECT = ", ".join(f"sources.{c}" for c in SOURCE_COLUMNS)
_VAR_START = SOURCE_COLUMNS.index(_VAR_COLUMNS[0])  # Source's nested Variability, flattened
_VAR_END = _VAR_START + len(_VAR_COLUMNS)


def source_ref(r: Sequence[Any]) -> tuple[str, int]:
    """(id, update_time) of a list page's row (SourceRepository.list_refs)."""
    return str(r[0]), int(r[1])


def source_from_row(r: Sequence[Any]) -> Source:
    var = Variability._make((*r[_VAR_START : _VAR_END - 1], bool(r[_VAR_END - 1])))  # the last is a flag
    return Source._make((*r[:_VAR_START], var, *r[_VAR_END:]))


PHOTOMETRY_COLUMNS = Photometry._fields[1:]
PHOTOMETRY_SELECT = ", ".join(PHOTOMETRY_COLUMNS)


def photometry_from_row(source_id: str, r: Sequence[Any]) -> Photometry:
    return Photometry(source_id, *r)


JOB_COLUMNS = (
    "id",
    "type",
    "ms_path",
    "target_path",
    "parameters",
    "state",
    "stage",
    "progress_percent",
    "attempt",
    "max_attempts",
    "create_time",
    "start_time",
    "end_time",
    "update_time",
    "error_message",
    "artifacts",
    "log_line_count",
    "priority",
    "lease_holder",
    "lease_expire_time",
    "lease_duration",
    "lease_token_hash",
)
JOB_SELECT = ", ".join(JOB_COLUMNS)


def job_from_row(r: Sequence[Any]) -> Job:
    values = list(r)
    values[2] = values[2] or ""  # ms_path: NULL once its measurement set is deleted
    values[15] = tuple(json.loads(r[15]))
    return Job._make((*values, ()))  # no transitions: read apart


def job_values(job: Job) -> list[Any]:
    values = [getattr(job, "parameters_json" if c == "parameters" else c) for c in JOB_COLUMNS]
    values[2] = job.ms_path or None
    values[15] = json.dumps(job.artifacts)
    return values


def job_snapshot(job: Job) -> str:
    data = job._asdict()
    data.pop("transitions")
    data.pop("lease_token_hash")  # events carry the job as watchers see it: no part of its lease's secret
    return json.dumps(data, separators=(",", ":"))


EVENT_SELECT = "sequence, type, from_state, to_state, stage, message, time, snapshot, actor"


def event_from_row(r: Sequence[Any]) -> JobEvent:
    seq, etype, from_state, to_state, stage, message, when, snapshot, actor = r
    data = json.loads(snapshot)
    job = Job(**{**data, "artifacts": tuple(data["artifacts"])})
    return JobEvent(
        sequence=seq,
        type=etype,
        job=job,
        transition=JobTransition(from_state, to_state, stage, message, when, seq, actor),
    )


# ---- first results of requests with a request_id (request_ids.result) ------------------------------
# A write with a request_id stores the record it returned (database.remember_request_id), so that a
# replay returns that first result (AIP-155), not the resource as it is now. Results stored before
# this form existed hold only the key (an image id, an MS path, a job id): `*_remembered` answer
# None for them and the caller reads the current record, as it did then.


def remembered(record: Image | MeasurementSet | Job) -> Callable[[], dict[str, Any]]:
    """`record` as remember_request_id keeps it: {"record": its fields}, nested records as objects."""
    return lambda: {"record": _plain(record)}


def _plain(value: Any) -> Any:
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _record(result: Any) -> dict[str, Any] | None:
    return result.get("record") if isinstance(result, dict) else None


def image_remembered(result: Any) -> Image | None:
    data = _record(result)
    return Image(**{**data, "qa_metrics": MappingProxyType(data["qa_metrics"])}) if data is not None else None


def ms_remembered(result: Any) -> MeasurementSet | None:
    data = _record(result)
    if data is None:
        return None
    tables = tuple(CalibrationTable(**t) for t in data.pop("calibration_tables"))
    return MeasurementSet(**data, calibration_tables=tables)


def job_remembered(result: Any) -> Job | None:
    data = _record(result)
    if data is None:
        return None
    transitions = tuple(JobTransition(**t) for t in data.pop("transitions"))
    return Job(**{**data, "artifacts": tuple(data["artifacts"])}, transitions=transitions)

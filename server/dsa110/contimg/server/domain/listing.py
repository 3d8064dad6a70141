"""Which fields each List/Search RPC can filter and sort on, and the default orders."""

from __future__ import annotations

from .names import parse_ms_name
from .query import FieldSpec, Kind, OrderKey
from .records import ImageType, JobStage, JobState, JobType, MSStage, MSStatus, QAGrade

N, INT, S, B, T = Kind.NUMBER, Kind.INTEGER, Kind.STRING, Kind.BOOL, Kind.TIME


def _ms_ref(text: str) -> object:
    return parse_ms_name(text, "filter")


MS_FIELDS: dict[str, FieldSpec] = {
    "stage": FieldSpec(Kind.ENUM, enum=MSStage),
    "status": FieldSpec(Kind.ENUM, enum=MSStatus),
    "cal_applied": FieldSpec(B),
    "field_name": FieldSpec(S),
    "group_id": FieldSpec(S),
    "start_mjd": FieldSpec(N, sortable=True),
    "mid_mjd": FieldSpec(N, sortable=True),
    "end_mjd": FieldSpec(N),
    "pointing_dec_deg": FieldSpec(N, sortable=True),
    "pointing_ra_deg": FieldSpec(N),
    "create_time": FieldSpec(T, sortable=True),
    "update_time": FieldSpec(T, sortable=True),
}
MS_DEFAULT_ORDER = (OrderKey("start_mjd", desc=True),)

IMAGE_FIELDS: dict[str, FieldSpec] = {
    "measurement_set": FieldSpec(Kind.REF, parse=_ms_ref),
    "type": FieldSpec(Kind.ENUM, enum=ImageType),
    "mid_mjd": FieldSpec(N, sortable=True),
    "create_time": FieldSpec(T, sortable=True),
    "center_ra_deg": FieldSpec(N, sortable=True),
    "center_dec_deg": FieldSpec(N, sortable=True),
    "noise_jy": FieldSpec(N, sortable=True),
    "dynamic_range": FieldSpec(N, sortable=True),
    "frequency_ghz": FieldSpec(N),
    "qa.grade": FieldSpec(Kind.ENUM, enum=QAGrade),
    "pbcor": FieldSpec(B),
    "field_name": FieldSpec(S),
}
IMAGE_DEFAULT_ORDER = (OrderKey("create_time", desc=True),)

SOURCE_FIELDS: dict[str, FieldSpec] = {
    "eta": FieldSpec(N, sortable=True),
    "v": FieldSpec(N, sortable=True),
    "chi2_reduced": FieldSpec(N, sortable=True),
    "sigma_deviation": FieldSpec(N, sortable=True),
    "mean_flux_jy": FieldSpec(N, sortable=True),
    "max_flux_jy": FieldSpec(N, sortable=True),
    "epoch_count": FieldSpec(INT, sortable=True),
    "is_variable": FieldSpec(B),
    "ra_deg": FieldSpec(N, sortable=True),
    "dec_deg": FieldSpec(N, sortable=True),
    "catalog": FieldSpec(S),
    "catalog_flux_mjy": FieldSpec(N),
    "last_detection_mjd": FieldSpec(N, sortable=True),
}
SOURCE_DEFAULT_ORDER: tuple[OrderKey, ...] = ()

JOB_FIELDS: dict[str, FieldSpec] = {
    "state": FieldSpec(Kind.ENUM, enum=JobState),
    "type": FieldSpec(Kind.ENUM, enum=JobType),
    "stage": FieldSpec(Kind.ENUM, enum=JobStage),
    "measurement_set": FieldSpec(Kind.REF, parse=_ms_ref),
    "create_time": FieldSpec(T, sortable=True),
    "update_time": FieldSpec(T, sortable=True),
    "attempt": FieldSpec(INT),
    "priority": FieldSpec(INT),
    "lease_holder": FieldSpec(S),
}
JOB_DEFAULT_ORDER = (OrderKey("create_time", desc=True),)
# WatchJobs filters are evaluated in memory on each event: equality on these only.
JOB_WATCH_FIELDS = {k: JOB_FIELDS[k] for k in ("state", "type", "measurement_set")}

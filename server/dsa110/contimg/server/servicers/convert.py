"""Messages <-> domain records. Enum numbers are shared, so enums are plain int copies."""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable
from functools import partial
from typing import Any

from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from ..domain import names
from ..domain.records import (
    PHOTOMETRY_NUMBERS,
    CalibrationTable,
    Heartbeat,
    Image,
    Job,
    JobEvent,
    JobLogEntry,
    JobTransition,
    MeasurementSet,
    Photometry,
    PhotometryBatch,
    Source,
)


def _enum(value: int) -> Any:
    """Domain enums share the contract's numbers; mypy-protobuf types them as distinct NewTypes."""
    return value


def timestamp(us: int) -> timestamp_pb2.Timestamp | None:
    if not us:
        return None
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def micros(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


# ---- measurement sets -------------------------------------------------------------------------


def ms_to_proto(ms: MeasurementSet) -> measurement_sets_pb2.MeasurementSet:
    return measurement_sets_pb2.MeasurementSet(
        name=names.ms_name(ms.path),
        path=ms.path,
        group_id=ms.group_id,
        field_name=ms.field_name,
        start_mjd=ms.start_mjd,
        mid_mjd=ms.mid_mjd,
        end_mjd=ms.end_mjd,
        pointing_ra_deg=ms.pointing_ra_deg,
        pointing_dec_deg=ms.pointing_dec_deg,
        phase_center_ra_deg=ms.phase_center_ra_deg,
        phase_center_dec_deg=ms.phase_center_dec_deg,
        stage=_enum(ms.stage),
        status=_enum(ms.status),
        cal_applied=ms.cal_applied,
        calibration_tables=[
            measurement_sets_pb2.CalibrationTable(
                path=t.path,
                type=_enum(t.type),
                valid_start_mjd=t.valid_start_mjd,
                valid_end_mjd=t.valid_end_mjd,
            )
            for t in ms.calibration_tables
        ],
        create_time=timestamp(ms.create_time),
        update_time=timestamp(ms.update_time),
        stage_update_time=timestamp(ms.stage_update_time),
        process_time=timestamp(ms.process_time),
        image_count=ms.image_count,
        creator=ms.creator,
        last_modifier=ms.last_modifier,
    )


def ms_from_proto(msg: measurement_sets_pb2.MeasurementSet, path: str) -> MeasurementSet:
    return MeasurementSet(
        path=path,
        group_id=msg.group_id,
        field_name=msg.field_name,
        start_mjd=msg.start_mjd,
        mid_mjd=msg.mid_mjd,
        end_mjd=msg.end_mjd,
        pointing_ra_deg=msg.pointing_ra_deg,
        pointing_dec_deg=msg.pointing_dec_deg,
        phase_center_ra_deg=msg.phase_center_ra_deg,
        phase_center_dec_deg=msg.phase_center_dec_deg,
        stage=_enum(msg.stage),
        status=_enum(msg.status),
        cal_applied=msg.cal_applied,
        calibration_tables=tuple(
            CalibrationTable(t.path, t.type, t.valid_start_mjd, t.valid_end_mjd) for t in msg.calibration_tables
        ),
        process_time=micros(msg.process_time) if msg.HasField("process_time") else 0,
    )


def set_fields(msg: measurement_sets_pb2.MeasurementSet) -> list[str]:
    """The implied update mask: every field the caller set to a non-default value."""
    return [f.name for f, _ in msg.ListFields()]


# ---- images -----------------------------------------------------------------------------------


def image_to_proto(img: Image) -> images_pb2.Image:
    return images_pb2.Image(
        name=f"images/{img.id}",
        path=img.path,
        measurement_set=names.ms_name(img.ms_path),
        type=_enum(img.type),
        format=img.format,
        create_time=timestamp(img.create_time),
        update_time=timestamp(img.update_time),
        mid_mjd=img.mid_mjd,
        beam_major_arcsec=img.beam_major_arcsec,
        beam_minor_arcsec=img.beam_minor_arcsec,
        beam_pa_deg=img.beam_pa_deg,
        noise_jy=img.noise_jy,
        dynamic_range=img.dynamic_range,
        pbcor=img.pbcor,
        field_name=img.field_name,
        center_ra_deg=img.center_ra_deg,
        center_dec_deg=img.center_dec_deg,
        size_x_px=img.size_x_px,
        size_y_px=img.size_y_px,
        cell_size_arcsec=img.cell_size_arcsec,
        frequency_ghz=img.frequency_ghz,
        bandwidth_mhz=img.bandwidth_mhz,
        integration_s=img.integration_s,
        qa=images_pb2.QualityAssessment(
            grade=_enum(img.qa_grade),
            summary=img.qa_summary,
            metrics=img.qa_metrics,
            source_count=img.qa_source_count,
            peak_flux_jy=img.qa_peak_flux_jy,
        ),
        photometry_count=img.photometry_count,
        creator=img.creator,
        last_modifier=img.last_modifier,
    )


def image_from_proto(msg: images_pb2.Image, image_id: int, ms_path: str) -> Image:
    return Image(
        id=image_id,
        path=msg.path,
        ms_path=ms_path,
        type=_enum(msg.type),
        format=msg.format or "fits",
        mid_mjd=msg.mid_mjd,
        beam_major_arcsec=msg.beam_major_arcsec,
        beam_minor_arcsec=msg.beam_minor_arcsec,
        beam_pa_deg=msg.beam_pa_deg,
        noise_jy=msg.noise_jy,
        dynamic_range=msg.dynamic_range,
        pbcor=msg.pbcor,
        field_name=msg.field_name,
        center_ra_deg=msg.center_ra_deg,
        center_dec_deg=msg.center_dec_deg,
        size_x_px=msg.size_x_px,
        size_y_px=msg.size_y_px,
        cell_size_arcsec=msg.cell_size_arcsec,
        frequency_ghz=msg.frequency_ghz,
        bandwidth_mhz=msg.bandwidth_mhz,
        integration_s=msg.integration_s,
        qa_grade=msg.qa.grade,
        qa_summary=msg.qa.summary,
        qa_metrics=dict(msg.qa.metrics),
        qa_source_count=msg.qa.source_count,
        qa_peak_flux_jy=msg.qa.peak_flux_jy,
    )


# ---- sources and photometry -------------------------------------------------------------------


def source_to_proto(s: Source) -> sources_pb2.Source:
    v = s.variability
    return sources_pb2.Source(
        name=names.source_name(s.id),
        designation=s.designation,
        ra_deg=s.ra_deg,
        dec_deg=s.dec_deg,
        catalog=s.catalog,
        catalog_flux_mjy=s.catalog_flux_mjy,
        first_detection_mjd=s.first_detection_mjd,
        last_detection_mjd=s.last_detection_mjd,
        detection_count=s.detection_count,
        variability=sources_pb2.VariabilityStats(
            epoch_count=v.epoch_count,
            mean_flux_jy=v.mean_flux_jy,
            std_flux_jy=v.std_flux_jy,
            min_flux_jy=v.min_flux_jy,
            max_flux_jy=v.max_flux_jy,
            chi2_reduced=v.chi2_reduced,
            eta=v.eta,
            v=v.v,
            sigma_deviation=v.sigma_deviation,
            last_mjd=v.last_mjd,
            is_variable=v.is_variable,
        ),
        create_time=timestamp(s.create_time),
        update_time=timestamp(s.update_time),
    )


def photometry_to_proto(p: Photometry) -> sources_pb2.PhotometryMeasurement:
    return sources_pb2.PhotometryMeasurement(
        source=names.source_name(p.source_id),
        image=f"images/{p.image_id}",
        ra_deg=p.ra_deg,
        dec_deg=p.dec_deg,
        catalog_flux_mjy=p.catalog_flux_mjy,
        peak_flux_jy=p.peak_flux_jy,
        peak_flux_err_jy=p.peak_flux_err_jy,
        integrated_flux_jy=p.integrated_flux_jy,
        integrated_flux_err_jy=p.integrated_flux_err_jy,
        normalized_flux=p.normalized_flux,
        normalized_flux_err=p.normalized_flux_err,
        snr=p.snr,
        local_rms_jy=p.local_rms_jy,
        separation_from_center_deg=p.separation_from_center_deg,
        quality_flag=p.quality_flag,
        observation_mjd=p.observation_mjd,
        measure_time=timestamp(p.measure_time),
    )


def photometry_from_proto(m: sources_pb2.PhotometryMeasurement, source_id: str) -> Photometry:
    # Runs once per ingested row: the tuple is built in field order by tuple.__new__ (C), skipping
    # the NamedTuple's Python-level __new__ (a fifth of this function's cost).
    return _new_tuple(
        Photometry,
        (
            source_id,
            0,
            m.ra_deg,
            m.dec_deg,
            m.catalog_flux_mjy,
            m.peak_flux_jy,
            m.peak_flux_err_jy,
            m.integrated_flux_jy,
            m.integrated_flux_err_jy,
            m.normalized_flux,
            m.normalized_flux_err,
            m.snr,
            m.local_rms_jy,
            m.separation_from_center_deg,
            m.quality_flag,
            m.observation_mjd,
            micros(m.measure_time) if m.HasField("measure_time") else 0,
        ),
    )


_new_tuple = tuple.__new__


def photometry_from_columns(
    columns: sources_pb2.PhotometryColumns, source_ids: list[str]
) -> tuple[PhotometryBatch, list[str]]:
    """The measurements held as columns, and the names of the columns whose length is neither 0 nor
    one per source (those read as empty; the caller reports them).

    The columns are taken as they are (no per-measurement Python); an empty one stands for its
    default: decoding and converting columns costs a fraction of a message per measurement.
    """
    n = len(source_ids)
    wrong: list[str] = []

    def column(name: str, empty: Callable[[], Any]) -> Any:
        values = getattr(columns, name)
        if len(values) == n:
            return values
        if values:
            wrong.append(name)
        return empty()

    zeros = partial(array, "d", bytes(8 * n))
    numbers = [column(name, zeros) for name in PHOTOMETRY_NUMBERS]
    flags = column("quality_flag", list)
    mjd = column("observation_mjd", zeros)
    times = column("measure_time_unix_micros", partial(array, "q", bytes(8 * n)))
    return PhotometryBatch(source_ids, numbers, list(flags) if any(flags) else None, mjd, times), wrong


# ---- jobs -------------------------------------------------------------------------------------


def transition_to_proto(t: JobTransition) -> jobs_pb2.JobTransition:
    return jobs_pb2.JobTransition(
        from_state=_enum(t.from_state),
        to_state=_enum(t.to_state),
        stage=_enum(t.stage),
        message=t.message,
        time=timestamp(t.time),
        sequence=t.sequence,
        actor=t.actor,
    )


def job_to_proto(job: Job) -> jobs_pb2.Job:
    params = struct_pb2.Struct()
    if job.parameters_json not in ("", "{}"):
        params.update(json.loads(job.parameters_json))
    return jobs_pb2.Job(
        name=names.job_name(job.id),
        type=_enum(job.type),
        measurement_set=names.ms_name(job.ms_path) if job.ms_path else "",
        ms_path=job.target_path or job.ms_path,
        parameters=params,
        state=_enum(job.state),
        stage=_enum(job.stage),
        progress_percent=job.progress_percent,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        create_time=timestamp(job.create_time),
        start_time=timestamp(job.start_time),
        end_time=timestamp(job.end_time),
        update_time=timestamp(job.update_time),
        error_message=job.error_message,
        artifacts=job.artifacts,
        log_line_count=job.log_line_count,
        transitions=[transition_to_proto(t) for t in job.transitions],
        priority=job.priority,
        lease_holder=job.lease_holder,
        lease_expire_time=timestamp(job.lease_expire_time),
    )


def parameters_json(params: struct_pb2.Struct) -> str:
    return json.dumps(json_format.MessageToDict(params), separators=(",", ":"), sort_keys=True)


def event_to_proto(event: JobEvent | Heartbeat) -> jobs_pb2.JobEvent:
    if isinstance(event, Heartbeat):
        return jobs_pb2.JobEvent(sequence=event.sequence, type=jobs_pb2.JobEvent.TYPE_HEARTBEAT)
    return jobs_pb2.JobEvent(
        sequence=event.sequence,
        type=_enum(event.type),
        transition=transition_to_proto(event.transition) if event.transition else None,
        job=job_to_proto(event.job),
    )


def log_entry_to_proto(e: JobLogEntry) -> jobs_pb2.JobLogEntry:
    return jobs_pb2.JobLogEntry(line_number=e.line_number, time=timestamp(e.time), text=e.text)

"""The client API, described once: the table both clients are built from.

`Methods` holds one entry per RPC: a request builder, a function whose signature is the client
method's signature (arguments for the common fields, or `request=` a complete request message)
and which returns the request to send, decorated with its kind (see _rpc). `Client` and
`AsyncClient` both inherit the table, each flavour turning every entry into its own method, so
adding an RPC means adding its builder here and nothing else, and the clients cannot drift apart.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from dsa110.contimg.v1 import (
    images_pb2,
    images_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    measurement_sets_pb2,
    measurement_sets_pb2_grpc,
    sources_pb2,
    sources_pb2_grpc,
)
from google.protobuf import duration_pb2, empty_pb2, field_mask_pb2

from ._rpc import collected, paged, unary, watch
from .names import IMAGES, SOURCES, named

IMAGE_SERVICE = images_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name
MS_SERVICE = measurement_sets_pb2.DESCRIPTOR.services_by_name["MSService"].full_name
SOURCE_SERVICE = sources_pb2.DESCRIPTOR.services_by_name["SourceService"].full_name
JOB_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name

# Stub classes by service; each takes either a grpc.Channel or a grpc.aio.Channel.
STUBS: dict[str, Callable[[Any], Any]] = {
    IMAGE_SERVICE: images_pb2_grpc.ImageServiceStub,
    MS_SERVICE: measurement_sets_pb2_grpc.MSServiceStub,
    SOURCE_SERVICE: sources_pb2_grpc.SourceServiceStub,
    JOB_SERVICE: jobs_pb2_grpc.JobServiceStub,
}

MS = measurement_sets_pb2.MeasurementSet
Job = jobs_pb2.Job


def _strings(values: Iterable[str], argument: str) -> list[str]:
    """A list of strings; one bare string would otherwise be taken as its characters."""
    if isinstance(values, str | bytes):
        raise TypeError(f"{argument} takes a list of strings, not one string: [{values!r}]")
    return list(values)


def _mask(paths: Iterable[str] | field_mask_pb2.FieldMask | None) -> field_mask_pb2.FieldMask | None:
    if paths is None or isinstance(paths, field_mask_pb2.FieldMask):
        return paths
    return field_mask_pb2.FieldMask(paths=_strings(paths, "update_mask"))


Mask = Iterable[str] | field_mask_pb2.FieldMask | None


def _named(values: Iterable[str], argument: str, prefix: str) -> list[str]:
    """Resource names, each bare id given the collection's prefix (as the CLI does)."""
    return [named(prefix, value) for value in _strings(values, argument)]


Seconds = float | timedelta | None


def _duration(value: Seconds, argument: str) -> duration_pb2.Duration | None:
    """Seconds (or a timedelta) as a Duration; None leaves the field unset (the server's default)."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds >= 0:  # negative or NaN
        raise ValueError(f"{argument} must be a non-negative number of seconds, got {value!r}")
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=seconds))
    return duration


def default_worker() -> str:
    """The worker identity used when none is given: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim_wait_s(request: jobs_pb2.ClaimJobRequest) -> float:
    return request.wait.ToTimedelta().total_seconds() if request.HasField("wait") else 0.0


class Methods:
    """One entry per RPC, grouped by service; Client and AsyncClient inherit it.

    The builders take no `self`: the decorator replaces each with its entry, and the builder is
    only ever called with the generated method's arguments. A new RPC is one more builder here,
    under the decorator of its kind; tests/test_client.py checks that every RPC of the services
    has its method, with the same signature and docstring in both clients.
    """

    # ---------------------------------------------------------------------------------------------
    # ImageService

    @unary(IMAGE_SERVICE, "GetImage", images_pb2.Image)
    def get_image(name: str = "", *, request: images_pb2.GetImageRequest | None = None) -> images_pb2.GetImageRequest:
        """Returns one image, `images/{id}` (or the bare id)."""
        return request or images_pb2.GetImageRequest(name=named(IMAGES, name))

    @unary(IMAGE_SERVICE, "BatchGetImages", images_pb2.BatchGetImagesResponse)
    def batch_get_images(
        names: Iterable[str] = (), *, request: images_pb2.BatchGetImagesRequest | None = None
    ) -> images_pb2.BatchGetImagesRequest:
        """Returns several images (names or bare ids) in the order asked for; NOT_FOUND if any is missing."""
        return request or images_pb2.BatchGetImagesRequest(names=_named(names, "names", IMAGES))

    @paged(IMAGE_SERVICE, "ListImages", images_pb2.ListImagesResponse, lambda r: r.images)
    def list_images(
        filter: str = "",
        order_by: str = "",
        page_size: int = 0,
        *,
        request: images_pb2.ListImagesRequest | None = None,
    ) -> images_pb2.ListImagesRequest:
        """Iterates images matching an AIP-160 `filter`, e.g. `mid_mjd >= 60900 AND noise_jy < 0.001`."""
        return request or images_pb2.ListImagesRequest(filter=filter, order_by=order_by, page_size=page_size)

    @unary(IMAGE_SERVICE, "CreateImage", images_pb2.Image)
    def create_image(
        image: images_pb2.Image | None = None,
        *,
        request_id: str = "",
        request: images_pb2.CreateImageRequest | None = None,
    ) -> images_pb2.CreateImageRequest:
        """Registers an image of an existing measurement set (`path` and `measurement_set` required)."""
        return request or images_pb2.CreateImageRequest(image=image, request_id=request_id)

    @unary(IMAGE_SERVICE, "UpdateImage", images_pb2.Image)
    def update_image(
        image: images_pb2.Image | None = None,
        update_mask: Mask = None,
        *,
        request_id: str = "",
        request: images_pb2.UpdateImageRequest | None = None,
    ) -> images_pb2.UpdateImageRequest:
        """Writes the fields named in `update_mask` (e.g. `["qa", "noise_jy"]`) of `image.name`."""
        return request or images_pb2.UpdateImageRequest(
            image=image, update_mask=_mask(update_mask), request_id=request_id
        )

    @unary(IMAGE_SERVICE, "DeleteImage", empty_pb2.Empty)
    def delete_image(
        name: str = "", force: bool = False, *, request: images_pb2.DeleteImageRequest | None = None
    ) -> images_pb2.DeleteImageRequest:
        """Deletes an image; `force` also deletes its photometry."""
        return request or images_pb2.DeleteImageRequest(name=name, force=force)

    @paged(IMAGE_SERVICE, "SearchImages", images_pb2.SearchImagesResponse, lambda r: r.matches)
    def search_images(
        ra_deg: float = 0.0,
        dec_deg: float = 0.0,
        filter: str = "",
        page_size: int = 0,
        *,
        request: images_pb2.SearchImagesRequest | None = None,
    ) -> images_pb2.SearchImagesRequest:
        """Iterates the images covering a sky position, nearest centre first."""
        return request or images_pb2.SearchImagesRequest(
            ra_deg=ra_deg, dec_deg=dec_deg, filter=filter, page_size=page_size
        )

    # ---------------------------------------------------------------------------------------------
    # MSService

    @unary(MS_SERVICE, "GetMeasurementSet", measurement_sets_pb2.MeasurementSet)
    def get_measurement_set(
        name: str = "", *, request: measurement_sets_pb2.GetMeasurementSetRequest | None = None
    ) -> measurement_sets_pb2.GetMeasurementSetRequest:
        """Returns one measurement set, by name or by bare absolute path."""
        return request or measurement_sets_pb2.GetMeasurementSetRequest(name=name)

    @unary(MS_SERVICE, "BatchGetMeasurementSets", measurement_sets_pb2.BatchGetMeasurementSetsResponse)
    def batch_get_measurement_sets(
        names: Iterable[str] = (), *, request: measurement_sets_pb2.BatchGetMeasurementSetsRequest | None = None
    ) -> measurement_sets_pb2.BatchGetMeasurementSetsRequest:
        """Returns several measurement sets in the order asked for; NOT_FOUND if any is missing."""
        return request or measurement_sets_pb2.BatchGetMeasurementSetsRequest(names=_strings(names, "names"))

    @paged(
        MS_SERVICE,
        "ListMeasurementSets",
        measurement_sets_pb2.ListMeasurementSetsResponse,
        lambda r: r.measurement_sets,
    )
    def list_measurement_sets(
        filter: str = "",
        order_by: str = "",
        page_size: int = 0,
        *,
        request: measurement_sets_pb2.ListMeasurementSetsRequest | None = None,
    ) -> measurement_sets_pb2.ListMeasurementSetsRequest:
        """Iterates measurement sets matching an AIP-160 `filter`, e.g. `stage = IMAGED`."""
        return request or measurement_sets_pb2.ListMeasurementSetsRequest(
            filter=filter, order_by=order_by, page_size=page_size
        )

    @unary(MS_SERVICE, "CreateMeasurementSet", measurement_sets_pb2.MeasurementSet)
    def create_measurement_set(
        measurement_set: measurement_sets_pb2.MeasurementSet | None = None,
        *,
        request_id: str = "",
        request: measurement_sets_pb2.CreateMeasurementSetRequest | None = None,
    ) -> measurement_sets_pb2.CreateMeasurementSetRequest:
        """Registers a new measurement set (`path` required)."""
        return request or measurement_sets_pb2.CreateMeasurementSetRequest(
            measurement_set=measurement_set, request_id=request_id
        )

    @unary(MS_SERVICE, "UpdateMeasurementSet", measurement_sets_pb2.MeasurementSet)
    def update_measurement_set(
        measurement_set: measurement_sets_pb2.MeasurementSet | None = None,
        update_mask: Mask = None,
        allow_missing: bool = False,
        *,
        request_id: str = "",
        request: measurement_sets_pb2.UpdateMeasurementSetRequest | None = None,
    ) -> measurement_sets_pb2.UpdateMeasurementSetRequest:
        """Writes the masked fields; with `allow_missing` creates the measurement set (upsert)."""
        return request or measurement_sets_pb2.UpdateMeasurementSetRequest(
            measurement_set=measurement_set,
            update_mask=_mask(update_mask),
            allow_missing=allow_missing,
            request_id=request_id,
        )

    @unary(MS_SERVICE, "AdvanceMeasurementSetStage", measurement_sets_pb2.MeasurementSet)
    def advance_measurement_set_stage(
        name: str = "",
        stage: MS.Stage.ValueType = MS.STAGE_UNSPECIFIED,
        status: MS.Status.ValueType = MS.STATUS_UNSPECIFIED,
        *,
        request_id: str = "",
        request: measurement_sets_pb2.AdvanceMeasurementSetStageRequest | None = None,
    ) -> measurement_sets_pb2.AdvanceMeasurementSetStageRequest:
        """Moves a measurement set to a later (or the same) stage."""
        return request or measurement_sets_pb2.AdvanceMeasurementSetStageRequest(
            name=name, stage=stage, status=status, request_id=request_id
        )

    @unary(MS_SERVICE, "DeleteMeasurementSet", empty_pb2.Empty)
    def delete_measurement_set(
        name: str = "",
        force: bool = False,
        *,
        request: measurement_sets_pb2.DeleteMeasurementSetRequest | None = None,
    ) -> measurement_sets_pb2.DeleteMeasurementSetRequest:
        """Deletes a measurement set; `force` also deletes its images and their photometry."""
        return request or measurement_sets_pb2.DeleteMeasurementSetRequest(name=name, force=force)

    # ---------------------------------------------------------------------------------------------
    # SourceService

    @unary(SOURCE_SERVICE, "GetSource", sources_pb2.Source)
    def get_source(
        name: str = "", *, request: sources_pb2.GetSourceRequest | None = None
    ) -> sources_pb2.GetSourceRequest:
        """Returns one source with its variability statistics: `sources/{designation}` or the bare
        designation (`J083454.9+553421`)."""
        return request or sources_pb2.GetSourceRequest(name=named(SOURCES, name))

    @unary(SOURCE_SERVICE, "BatchGetSources", sources_pb2.BatchGetSourcesResponse)
    def batch_get_sources(
        names: Iterable[str] = (), *, request: sources_pb2.BatchGetSourcesRequest | None = None
    ) -> sources_pb2.BatchGetSourcesRequest:
        """Returns several sources (names or bare designations) in the order asked for; NOT_FOUND if
        any is missing."""
        return request or sources_pb2.BatchGetSourcesRequest(names=_named(names, "names", SOURCES))

    @paged(SOURCE_SERVICE, "ListSources", sources_pb2.ListSourcesResponse, lambda r: r.sources)
    def list_sources(
        filter: str = "",
        order_by: str = "",
        page_size: int = 0,
        *,
        request: sources_pb2.ListSourcesRequest | None = None,
    ) -> sources_pb2.ListSourcesRequest:
        """Iterates sources matching an AIP-160 `filter`, e.g. `eta > 2 AND epoch_count >= 3`."""
        return request or sources_pb2.ListSourcesRequest(filter=filter, order_by=order_by, page_size=page_size)

    @paged(SOURCE_SERVICE, "SearchSources", sources_pb2.SearchSourcesResponse, lambda r: r.matches)
    def search_sources(
        ra_deg: float = 0.0,
        dec_deg: float = 0.0,
        radius_deg: float = 0.0,
        filter: str = "",
        page_size: int = 0,
        *,
        request: sources_pb2.SearchSourcesRequest | None = None,
    ) -> sources_pb2.SearchSourcesRequest:
        """Cone search: iterates the sources within `radius_deg` of a position, nearest first."""
        return request or sources_pb2.SearchSourcesRequest(
            ra_deg=ra_deg, dec_deg=dec_deg, radius_deg=radius_deg, filter=filter, page_size=page_size
        )

    @collected(SOURCE_SERVICE, "GetLightcurve", sources_pb2.GetLightcurveResponse)
    def get_lightcurve(
        name: str = "",
        start_mjd: float = 0.0,
        end_mjd: float = 0.0,
        max_points_per_message: int = 0,
        *,
        request: sources_pb2.GetLightcurveRequest | None = None,
    ) -> sources_pb2.GetLightcurveRequest:
        """Returns the source (a name or a bare designation) and every point of its lightcurve (MJD
        range, 0 = unbounded)."""
        return request or sources_pb2.GetLightcurveRequest(
            name=named(SOURCES, name),
            start_mjd=start_mjd,
            end_mjd=end_mjd,
            max_points_per_message=max_points_per_message,
        )

    @unary(SOURCE_SERVICE, "RecordPhotometry", sources_pb2.RecordPhotometryResponse)
    def record_photometry(
        image: str = "",
        measurements: Iterable[sources_pb2.PhotometryMeasurement] = (),
        *,
        columns: sources_pb2.PhotometryColumns | None = None,
        request_id: str = "",
        request: sources_pb2.RecordPhotometryRequest | None = None,
    ) -> sources_pb2.RecordPhotometryRequest:
        """Records every forced-photometry measurement of one image, atomically: as messages, or as
        `columns` (one array per field, cheaper for the server to decode; not both)."""
        return request or sources_pb2.RecordPhotometryRequest(
            image=image, measurements=measurements, columns=columns, request_id=request_id
        )

    # ---------------------------------------------------------------------------------------------
    # JobService

    @unary(JOB_SERVICE, "GetJob", jobs_pb2.Job)
    def get_job(name: str = "", *, request: jobs_pb2.GetJobRequest | None = None) -> jobs_pb2.GetJobRequest:
        """Returns one job with its transition history."""
        return request or jobs_pb2.GetJobRequest(name=name)

    @paged(JOB_SERVICE, "ListJobs", jobs_pb2.ListJobsResponse, lambda r: r.jobs)
    def list_jobs(
        filter: str = "",
        order_by: str = "",
        page_size: int = 0,
        *,
        request: jobs_pb2.ListJobsRequest | None = None,
    ) -> jobs_pb2.ListJobsRequest:
        """Iterates jobs matching an AIP-160 `filter`, e.g. `state = RUNNING`; newest first."""
        return request or jobs_pb2.ListJobsRequest(filter=filter, order_by=order_by, page_size=page_size)

    @unary(JOB_SERVICE, "CreateJob", jobs_pb2.Job)
    def create_job(
        job: jobs_pb2.Job | None = None,
        job_id: str = "",
        *,
        request_id: str = "",
        request: jobs_pb2.CreateJobRequest | None = None,
    ) -> jobs_pb2.CreateJobRequest:
        """Creates a PENDING job; `job_id` is generated by the server when empty."""
        return request or jobs_pb2.CreateJobRequest(job=job, job_id=job_id, request_id=request_id)

    @unary(JOB_SERVICE, "StartJob", jobs_pb2.Job)
    def start_job(
        name: str = "",
        *,
        worker: str = "",
        lease_duration_s: Seconds = None,
        request_id: str = "",
        request: jobs_pb2.StartJobRequest | None = None,
    ) -> jobs_pb2.StartJobRequest:
        """PENDING -> RUNNING. With a `worker`, also takes a lease (`lease_duration_s`, server default
        60 s), whose token is in the returned job's `lease_token`."""
        return request or jobs_pb2.StartJobRequest(
            name=name,
            worker=worker,
            lease_duration=_duration(lease_duration_s, "lease_duration_s"),
            request_id=request_id,
        )

    @unary(JOB_SERVICE, "ClaimJob", jobs_pb2.ClaimJobResponse, waits=_claim_wait_s)
    def claim_job(
        types: Iterable[Job.Type.ValueType] = (),
        *,
        worker: str = "",
        lease_duration_s: Seconds = None,
        wait_s: Seconds = None,
        measurement_set: str = "",
        min_priority: int | None = None,
        request: jobs_pb2.ClaimJobRequest | None = None,
    ) -> jobs_pb2.ClaimJobRequest:
        """Takes the next PENDING job of `types` (any when empty), highest priority then oldest, as
        RUNNING under a lease held by `worker` (default `host:pid`); waits up to `wait_s` for one.
        The response has no `job` when none came; else `lease_token` for the job's later calls.
        The call's deadline is extended by the wait."""
        return request or jobs_pb2.ClaimJobRequest(
            types=list(types),
            measurement_set=measurement_set,
            min_priority=min_priority,
            worker=worker or default_worker(),
            lease_duration=_duration(lease_duration_s, "lease_duration_s"),
            wait=_duration(wait_s, "wait_s"),
        )

    @unary(JOB_SERVICE, "HeartbeatJob", jobs_pb2.HeartbeatJobResponse)
    def heartbeat_job(
        name: str = "",
        lease_token: str = "",
        *,
        lease_duration_s: Seconds = None,
        request: jobs_pb2.HeartbeatJobRequest | None = None,
    ) -> jobs_pb2.HeartbeatJobRequest:
        """Renews the lease of a running job (optionally with a new length); FailedPreconditionError
        with reason LEASE_LOST once the lease is no longer the caller's."""
        return request or jobs_pb2.HeartbeatJobRequest(
            name=name, lease_token=lease_token, lease_duration=_duration(lease_duration_s, "lease_duration_s")
        )

    @unary(JOB_SERVICE, "UpdateJob", jobs_pb2.Job)
    def update_job(
        job: jobs_pb2.Job | None = None,
        update_mask: Mask = None,
        *,
        request_id: str = "",
        request: jobs_pb2.UpdateJobRequest | None = None,
    ) -> jobs_pb2.UpdateJobRequest:
        """Writes the fields named in `update_mask` of `job.name` (only `priority` is mutable)."""
        return request or jobs_pb2.UpdateJobRequest(job=job, update_mask=_mask(update_mask), request_id=request_id)

    @unary(JOB_SERVICE, "ReportJobProgress", jobs_pb2.Job)
    def report_job_progress(
        name: str = "",
        stage: Job.Stage.ValueType = Job.STAGE_UNSPECIFIED,
        progress_percent: float = 0.0,
        message: str = "",
        *,
        lease_token: str = "",
        request_id: str = "",
        request: jobs_pb2.ReportJobProgressRequest | None = None,
    ) -> jobs_pb2.ReportJobProgressRequest:
        """Reports a running job's stage and/or progress; with a `lease_token`, also renews the lease."""
        return request or jobs_pb2.ReportJobProgressRequest(
            name=name,
            stage=stage,
            progress_percent=progress_percent,
            message=message,
            lease_token=lease_token,
            request_id=request_id,
        )

    @unary(JOB_SERVICE, "SucceedJob", jobs_pb2.Job)
    def succeed_job(
        name: str = "",
        artifacts: Iterable[str] = (),
        message: str = "",
        *,
        lease_token: str = "",
        request_id: str = "",
        request: jobs_pb2.SucceedJobRequest | None = None,
    ) -> jobs_pb2.SucceedJobRequest:
        """RUNNING -> SUCCEEDED, recording the artifacts produced."""
        return request or jobs_pb2.SucceedJobRequest(
            name=name,
            artifacts=_strings(artifacts, "artifacts"),
            message=message,
            lease_token=lease_token,
            request_id=request_id,
        )

    @unary(JOB_SERVICE, "FailJob", jobs_pb2.Job)
    def fail_job(
        name: str = "",
        error_message: str = "",
        *,
        lease_token: str = "",
        request_id: str = "",
        request: jobs_pb2.FailJobRequest | None = None,
    ) -> jobs_pb2.FailJobRequest:
        """PENDING or RUNNING -> FAILED."""
        return request or jobs_pb2.FailJobRequest(
            name=name, error_message=error_message, lease_token=lease_token, request_id=request_id
        )

    @unary(JOB_SERVICE, "CancelJob", jobs_pb2.Job)
    def cancel_job(
        name: str = "",
        reason: str = "",
        *,
        request_id: str = "",
        request: jobs_pb2.CancelJobRequest | None = None,
    ) -> jobs_pb2.CancelJobRequest:
        """PENDING or RUNNING -> CANCELLED."""
        return request or jobs_pb2.CancelJobRequest(name=name, reason=reason, request_id=request_id)

    @unary(JOB_SERVICE, "RetryJob", jobs_pb2.Job)
    def retry_job(
        name: str = "",
        *,
        ignore_attempt_limit: bool = False,
        request_id: str = "",
        request: jobs_pb2.RetryJobRequest | None = None,
    ) -> jobs_pb2.RetryJobRequest:
        """FAILED -> PENDING while attempts remain, or beyond them with `ignore_attempt_limit` (an
        operator's override, recorded in the transition)."""
        return request or jobs_pb2.RetryJobRequest(
            name=name, ignore_attempt_limit=ignore_attempt_limit, request_id=request_id
        )

    @unary(JOB_SERVICE, "AppendJobLog", jobs_pb2.AppendJobLogResponse)
    def append_job_log(
        name: str = "",
        lines: Iterable[str] = (),
        *,
        request_id: str = "",
        request: jobs_pb2.AppendJobLogRequest | None = None,
    ) -> jobs_pb2.AppendJobLogRequest:
        """Appends log lines to a job."""
        return request or jobs_pb2.AppendJobLogRequest(name=name, lines=_strings(lines, "lines"), request_id=request_id)

    @paged(JOB_SERVICE, "ListJobLogEntries", jobs_pb2.ListJobLogEntriesResponse, lambda r: r.entries)
    def list_job_log_entries(
        parent: str = "", page_size: int = 0, *, request: jobs_pb2.ListJobLogEntriesRequest | None = None
    ) -> jobs_pb2.ListJobLogEntriesRequest:
        """Iterates a job's log lines, oldest first."""
        return request or jobs_pb2.ListJobLogEntriesRequest(parent=parent, page_size=page_size)

    @watch(JOB_SERVICE, "WatchJob", single_job=True)
    def watch_job(
        name: str = "", after_sequence: int = 0, *, request: jobs_pb2.WatchJobRequest | None = None
    ) -> jobs_pb2.WatchJobRequest:
        """Iterates one job's events (a SNAPSHOT first unless resuming) until it reaches a final
        state, reconnecting after UNAVAILABLE without losing or repeating an event."""
        return request or jobs_pb2.WatchJobRequest(name=name, after_sequence=after_sequence)

    @watch(JOB_SERVICE, "WatchJobs", single_job=False)
    def watch_jobs(
        filter: str = "", after_sequence: int = 0, *, request: jobs_pb2.WatchJobsRequest | None = None
    ) -> jobs_pb2.WatchJobsRequest:
        """Iterates the events of all jobs (optionally filtered) forever, reconnecting after
        UNAVAILABLE and resuming after the last event seen. Events from before the first one received
        cannot be resumed unless `after_sequence` is given."""
        return request or jobs_pb2.WatchJobsRequest(filter=filter, after_sequence=after_sequence)

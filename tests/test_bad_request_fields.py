"""One INVALID_ARGUMENT names every bad field of the request, not only the first one found.

Each request below is wrong in two or more fields (a malformed resource name, a bad request_id,
a bad page token next to a bad page size, ...), and the BadRequest must name all of them: a
client fixing one field at a time should not need one round trip per field. None of these
requests reaches storage, so no data is needed.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2
from google.protobuf import field_mask_pb2, message

from helpers import DOMAIN, error_info, expect_error, make_image, make_ms, violation_fields

INVALID = grpc.StatusCode.INVALID_ARGUMENT
ENGINES = ("sqlite", "postgres")
BAD_REQUEST_ID = "not a uuid!"
BAD_FILTER = "no_such_field = 1"

Image = images_pb2.Image
MS = measurement_sets_pb2.MeasurementSet
Job = jobs_pb2.Job


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


# (id, stub attribute, method, request, the fields the BadRequest must name)
CASES: list[tuple[str, str, str, message.Message, set[str]]] = [
    # ---- ImageService
    (
        "BatchGetImages",
        "images",
        "BatchGetImages",
        images_pb2.BatchGetImagesRequest(names=["images/x", "images/1", "sources/2"]),
        {"names[0]", "names[2]"},
    ),
    (
        "ListImages",
        "images",
        "ListImages",
        images_pb2.ListImagesRequest(page_size=-1, filter=BAD_FILTER, order_by="no_such_field desc"),
        {"page_size", "filter", "order_by"},
    ),
    (
        "ListImages-token",
        "images",
        "ListImages",
        images_pb2.ListImagesRequest(page_size=-1, page_token="not-a-token"),
        {"page_size", "page_token"},
    ),
    (
        "SearchImages",
        "images",
        "SearchImages",
        images_pb2.SearchImagesRequest(ra_deg=400, dec_deg=-100, filter=BAD_FILTER, page_size=-1),
        {"ra_deg", "dec_deg", "filter", "page_size"},
    ),
    (
        "CreateImage",
        "images",
        "CreateImage",
        images_pb2.CreateImageRequest(
            image=Image(path="relative.fits", measurement_set="images/1", center_dec_deg=100, noise_jy=-1),
            request_id=BAD_REQUEST_ID,
        ),
        {"image.path", "image.measurement_set", "image.center_dec_deg", "image.noise_jy", "request_id"},
    ),
    (
        "CreateImage-no-ms",
        "images",
        "CreateImage",
        images_pb2.CreateImageRequest(image=Image(path="/data/a.fits", center_ra_deg=-1)),
        {"image.measurement_set", "image.center_ra_deg"},
    ),
    (
        "UpdateImage",
        "images",
        "UpdateImage",
        images_pb2.UpdateImageRequest(
            image=Image(name="images/x", center_dec_deg=100),
            update_mask=mask("center_dec_deg", "no_such_field"),
            request_id=BAD_REQUEST_ID,
        ),
        {"image.name", "update_mask.paths[1]", "image.center_dec_deg", "request_id"},
    ),
    (
        "UpdateImage-no-mask",
        "images",
        "UpdateImage",
        images_pb2.UpdateImageRequest(image=Image(name="images/0")),
        {"image.name", "update_mask"},
    ),
    # ---- MSService
    (
        "BatchGetMeasurementSets",
        "ms",
        "BatchGetMeasurementSets",
        measurement_sets_pb2.BatchGetMeasurementSetsRequest(names=["relative.ms", "/ok.ms", "measurementSets/a/b"]),
        {"names[0]", "names[2]"},
    ),
    (
        "ListMeasurementSets",
        "ms",
        "ListMeasurementSets",
        measurement_sets_pb2.ListMeasurementSetsRequest(page_size=-1, filter=BAD_FILTER),
        {"page_size", "filter"},
    ),
    (
        "CreateMeasurementSet",
        "ms",
        "CreateMeasurementSet",
        measurement_sets_pb2.CreateMeasurementSetRequest(
            measurement_set=MS(path="relative.ms", pointing_dec_deg=100, stage=99), request_id=BAD_REQUEST_ID
        ),
        {"measurement_set.path", "measurement_set.pointing_dec_deg", "measurement_set.stage", "request_id"},
    ),
    (
        "UpdateMeasurementSet",
        "ms",
        "UpdateMeasurementSet",
        measurement_sets_pb2.UpdateMeasurementSetRequest(
            measurement_set=MS(name="images/1", pointing_dec_deg=100),
            update_mask=mask("pointing_dec_deg", "no_such_field"),
            request_id=BAD_REQUEST_ID,
        ),
        {"measurement_set.name", "update_mask.paths[1]", "measurement_set.pointing_dec_deg", "request_id"},
    ),
    (
        "AdvanceMeasurementSetStage",
        "ms",
        "AdvanceMeasurementSetStage",
        measurement_sets_pb2.AdvanceMeasurementSetStageRequest(
            name="images/1", stage=0, status=99, request_id=BAD_REQUEST_ID
        ),
        {"name", "stage", "status", "request_id"},
    ),
    # ---- SourceService
    (
        "BatchGetSources",
        "sources",
        "BatchGetSources",
        sources_pb2.BatchGetSourcesRequest(names=["J1", "sources/J2", "sources/"]),
        {"names[0]", "names[2]"},
    ),
    (
        "ListSources",
        "sources",
        "ListSources",
        sources_pb2.ListSourcesRequest(page_size=-1, order_by="no_such_field"),
        {"page_size", "order_by"},
    ),
    (
        "SearchSources",
        "sources",
        "SearchSources",
        sources_pb2.SearchSourcesRequest(ra_deg=-1, dec_deg=0, radius_deg=20, filter=BAD_FILTER, page_size=-1),
        {"ra_deg", "radius_deg", "filter", "page_size"},
    ),
    (
        "GetLightcurve",
        "sources",
        "GetLightcurve",
        sources_pb2.GetLightcurveRequest(name="J1", start_mjd=1, max_points_per_message=-1),
        {"name", "start_mjd", "max_points_per_message"},
    ),
    (
        "RecordPhotometry",
        "sources",
        "RecordPhotometry",
        sources_pb2.RecordPhotometryRequest(
            image="images/x",
            measurements=[sources_pb2.PhotometryMeasurement(source="J1", peak_flux_jy=1, peak_flux_err_jy=0)],
            request_id=BAD_REQUEST_ID,
        ),
        {"image", "measurements[0].source", "measurements[0].peak_flux_err_jy", "request_id"},
    ),
    (
        "RecordPhotometry-columns",
        "sources",
        "RecordPhotometry",
        sources_pb2.RecordPhotometryRequest(
            image="images/x",
            columns=sources_pb2.PhotometryColumns(source=["sources/J1"], peak_flux_jy=[1], peak_flux_err_jy=[0]),
        ),
        {"image", "columns.peak_flux_err_jy[0]"},
    ),
    # ---- JobService
    (
        "ListJobs",
        "jobs",
        "ListJobs",
        jobs_pb2.ListJobsRequest(page_size=-1, filter=BAD_FILTER),
        {"page_size", "filter"},
    ),
    (
        "CreateJob",
        "jobs",
        "CreateJob",
        jobs_pb2.CreateJobRequest(
            job=Job(type=0, max_attempts=99, measurement_set="images/1"), job_id="Bad Id", request_id=BAD_REQUEST_ID
        ),
        {"job_id", "job.measurement_set", "job.type", "job.max_attempts", "request_id"},
    ),
    (
        "StartJob",
        "jobs",
        "StartJob",
        jobs_pb2.StartJobRequest(name="jobs/Bad", request_id=BAD_REQUEST_ID),
        {"name", "request_id"},
    ),
    (
        "ReportJobProgress",
        "jobs",
        "ReportJobProgress",
        jobs_pb2.ReportJobProgressRequest(name="job-1", progress_percent=101, stage=99),
        {"name", "progress_percent", "stage"},
    ),
    (
        "SucceedJob",
        "jobs",
        "SucceedJob",
        jobs_pb2.SucceedJobRequest(name="jobs/", artifacts=["relative/path"]),
        {"name", "artifacts[0]"},
    ),
    (
        "FailJob",
        "jobs",
        "FailJob",
        jobs_pb2.FailJobRequest(name="job-1", error_message=""),
        {"name", "error_message"},
    ),
    (
        "CancelJob",
        "jobs",
        "CancelJob",
        jobs_pb2.CancelJobRequest(name="job-1", reason="x" * 5000, request_id=BAD_REQUEST_ID),
        {"name", "reason", "request_id"},
    ),
    (
        "RetryJob",
        "jobs",
        "RetryJob",
        jobs_pb2.RetryJobRequest(name="job-1", request_id=BAD_REQUEST_ID),
        {"name", "request_id"},
    ),
    (
        "AppendJobLog",
        "jobs",
        "AppendJobLog",
        jobs_pb2.AppendJobLogRequest(name="job-1", lines=[], request_id=BAD_REQUEST_ID),
        {"name", "lines", "request_id"},
    ),
    (
        "ListJobLogEntries",
        "jobs",
        "ListJobLogEntries",
        jobs_pb2.ListJobLogEntriesRequest(parent="job-1", page_size=-1),
        {"parent", "page_size"},
    ),
    (
        "ListJobLogEntries-token",
        "jobs",
        "ListJobLogEntries",
        jobs_pb2.ListJobLogEntriesRequest(parent="jobs/job-1", page_size=-1, page_token="not-a-token"),
        {"page_size", "page_token"},
    ),
    (
        "WatchJob",
        "jobs",
        "WatchJob",
        jobs_pb2.WatchJobRequest(name="job-1", after_sequence=-1),
        {"name", "after_sequence"},
    ),
    (
        "WatchJobs",
        "jobs",
        "WatchJobs",
        jobs_pb2.WatchJobsRequest(filter=BAD_FILTER, after_sequence=-1),
        {"filter", "after_sequence"},
    ),
]


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


def expected_reason(fields: set[str]) -> str:
    """ErrorInfo has one reason: a specific one (the first collected) wins over the generic one."""
    for field, reason in (
        ("filter", "INVALID_FILTER"),
        ("order_by", "INVALID_ORDER_BY"),
        ("page_token", "INVALID_PAGE_TOKEN"),
    ):
        if field in fields:
            return reason
    return "INVALID_ARGUMENT"


@pytest.mark.parametrize(("stub", "method", "request_", "fields"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_every_bad_field_is_named(
    stubs: Any, stub: str, method: str, request_: message.Message, fields: set[str]
) -> None:
    call = getattr(getattr(stubs, stub), method)(request_, timeout=10)
    awaitable = _drain(call) if method in ("GetLightcurve", "WatchJob", "WatchJobs") else call
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    err = caught.value
    assert err.code() == INVALID, f"{method}: {err.code()} {err.details()}"
    named = set(violation_fields(err))
    assert fields <= named, f"{method}: missing {sorted(fields - named)}; named {sorted(named)}"
    info = error_info(err)
    assert info.domain == DOMAIN
    assert info.reason == expected_reason(fields), f"{method}: {info.reason}"


async def test_page_token_is_not_blamed_for_a_bad_filter(stubs: Any) -> None:
    """A token is bound to the filter: when the filter is wrong, the (good) token is not named."""
    ms = await make_ms(stubs)
    for _ in range(2):
        await make_image(stubs, ms.name)
    first = await stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=1, filter="mid_mjd > 0"))
    assert first.next_page_token
    request = images_pb2.ListImagesRequest(page_size=-1, filter=BAD_FILTER, page_token=first.next_page_token)
    err = await expect_error(stubs.images.ListImages(request), INVALID, "INVALID_FILTER")
    assert sorted(violation_fields(err)) == ["filter", "page_size"]

"""Small builders and error decoders shared by the ImageService / MSService tests.

Errors: every failure carries a `google.rpc.Status` in the `grpc-status-details-bin` trailer with
an `ErrorInfo` (reason, domain, metadata) and, for INVALID_ARGUMENT, a `BadRequest` naming the
offending request fields. `expect_error` awaits a call and checks all of that at once.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Iterable
from typing import Any

import grpc
import pytest
from dsa110.contimg.v1 import images_pb2, measurement_sets_pb2, sources_pb2
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "contimg.dsa110.org"
DETAILS_KEY = "grpc-status-details-bin"

Image = images_pb2.Image
QA = images_pb2.QualityAssessment
MeasurementSet = measurement_sets_pb2.MeasurementSet
CalibrationTable = measurement_sets_pb2.CalibrationTable

_serial = itertools.count(1)

# ---------------------------------------------------------------------------------------------
# Errors


def rpc_status(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status the server attached to a failed call."""
    for key, value in err.trailing_metadata() or ():
        if key == DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    raise AssertionError(f"no {DETAILS_KEY} trailer on {err.code()}: {err.details()}")


def _unpack(err: grpc.aio.AioRpcError, kind: type[Any]) -> list[Any]:
    found = []
    for detail in rpc_status(err).details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    infos = _unpack(err, error_details_pb2.ErrorInfo)
    assert len(infos) == 1, f"expected exactly one ErrorInfo, got {infos}"
    return infos[0]  # type: ignore[no-any-return]


def bad_request(err: grpc.aio.AioRpcError) -> error_details_pb2.BadRequest | None:
    found = _unpack(err, error_details_pb2.BadRequest)
    assert len(found) <= 1
    return found[0] if found else None


def violation_fields(err: grpc.aio.AioRpcError) -> list[str]:
    br = bad_request(err)
    return [v.field for v in br.field_violations] if br else []


async def expect_error(
    call: Awaitable[Any], code: grpc.StatusCode, reason: str, *, field: str | None = None, resource: str | None = None
) -> grpc.aio.AioRpcError:
    """Await `call`, which must fail with `code`; check the rich status and return the error.

    `field` must be one of the BadRequest field violations (required for INVALID_ARGUMENT);
    `resource` must be ErrorInfo.metadata["resource"].
    """
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
    status = rpc_status(err)
    assert status.code == code.value[0]
    assert status.message == err.details()
    info = error_info(err)
    assert info.domain == DOMAIN
    assert info.reason == reason, f"expected reason {reason}, got {info.reason} ({err.details()})"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        fields = violation_fields(err)
        assert fields, "INVALID_ARGUMENT without a BadRequest"
        assert all(v.description for v in bad_request(err).field_violations)  # type: ignore[union-attr]
        if field is not None:
            assert field in fields, f"expected a violation of {field!r}, got {fields}"
    else:
        assert field is None, "field violations only come with INVALID_ARGUMENT"
        assert bad_request(err) is None
    if resource is not None:
        assert info.metadata.get("resource") == resource, dict(info.metadata)
    return err


# ---------------------------------------------------------------------------------------------
# Names and times


def unique_path(kind: str, suffix: str = "") -> str:
    return f"/data/dsa110/test/{kind}/{next(_serial):06d}-{uuid.uuid4().hex[:8]}{suffix}"


def micros(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def image_id(name: str) -> int:
    prefix, _, number = name.partition("/")
    assert prefix == "images", name
    return int(number)


def new_request_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------------------------
# Measurement sets


def ms_message(path: str | None = None, **fields: Any) -> measurement_sets_pb2.MeasurementSet:
    """A plausible MS (a 309 s drift scan on the 54.57 deg strip); keyword arguments override."""
    values: dict[str, Any] = dict(
        path=unique_path("ms", ".ms") if path is None else path,
        group_id="2025-10-28T13:30:07",
        field_name="drift_54.57",
        start_mjd=60976.5625,
        mid_mjd=60976.56429,
        end_mjd=60976.56608,
        pointing_ra_deg=123.4,
        pointing_dec_deg=54.57,
        phase_center_ra_deg=123.45,
        phase_center_dec_deg=54.57,
        stage=MeasurementSet.STAGE_CONVERTED,
        status=MeasurementSet.STATUS_COMPLETED,
    )
    values.update(fields)
    return MeasurementSet(**values)


async def make_ms(stubs: Any, path: str | None = None, **fields: Any) -> measurement_sets_pb2.MeasurementSet:
    request = measurement_sets_pb2.CreateMeasurementSetRequest(measurement_set=ms_message(path, **fields))
    return await stubs.ms.CreateMeasurementSet(request)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Images


def image_message(measurement_set: str, path: str | None = None, **fields: Any) -> images_pb2.Image:
    """A plausible continuum image of `measurement_set` (name or path); keyword arguments override."""
    values: dict[str, Any] = dict(
        path=unique_path("images", ".fits") if path is None else path,
        measurement_set=measurement_set,
        type=Image.TYPE_CONTINUUM,
        mid_mjd=60976.56429,
        beam_major_arcsec=36.0,
        beam_minor_arcsec=24.0,
        beam_pa_deg=12.5,
        noise_jy=0.0012,
        dynamic_range=350.0,
        field_name="drift_54.57",
        center_ra_deg=123.45,
        center_dec_deg=54.57,
        size_x_px=2048,
        size_y_px=2048,
        cell_size_arcsec=6.0,
        frequency_ghz=1.405,
        bandwidth_mhz=187.5,
        integration_s=309.0,
        qa=QA(grade=QA.GRADE_GOOD, summary="ok", metrics={"rms_ratio": 1.05}, source_count=120, peak_flux_jy=0.42),
    )
    values.update(fields)
    return Image(**values)


async def make_image(
    stubs: Any, measurement_set: str, path: str | None = None, *, request_id: str = "", **fields: Any
) -> images_pb2.Image:
    request = images_pb2.CreateImageRequest(image=image_message(measurement_set, path, **fields), request_id=request_id)
    return await stubs.images.CreateImage(request)  # type: ignore[no-any-return]


async def list_all_images(
    stubs: Any, *, filter: str = "", order_by: str = "", page_size: int = 1000
) -> list[images_pb2.Image]:
    out: list[images_pb2.Image] = []
    token = ""
    while True:
        page = await stubs.images.ListImages(
            images_pb2.ListImagesRequest(filter=filter, order_by=order_by, page_size=page_size, page_token=token)
        )
        out.extend(page.images)
        token = page.next_page_token
        if not token:
            return out


async def list_all_ms(
    stubs: Any, *, filter: str = "", order_by: str = "", page_size: int = 1000
) -> list[measurement_sets_pb2.MeasurementSet]:
    out: list[measurement_sets_pb2.MeasurementSet] = []
    token = ""
    while True:
        page = await stubs.ms.ListMeasurementSets(
            measurement_sets_pb2.ListMeasurementSetsRequest(
                filter=filter, order_by=order_by, page_size=page_size, page_token=token
            )
        )
        out.extend(page.measurement_sets)
        token = page.next_page_token
        if not token:
            return out


# ---------------------------------------------------------------------------------------------
# Photometry


async def record_photometry(
    stubs: Any,
    image_name: str,
    fluxes: Iterable[tuple[str, float]],
    *,
    ra_deg: float = 123.45,
    dec_deg: float = 54.57,
    err_jy: float = 0.001,
) -> sources_pb2.RecordPhotometryResponse:
    """Record one measurement per (source_id, peak flux) on an image."""
    measurements = [
        sources_pb2.PhotometryMeasurement(
            source=f"sources/{source_id}",
            ra_deg=ra_deg,
            dec_deg=dec_deg,
            peak_flux_jy=flux,
            peak_flux_err_jy=err_jy,
            integrated_flux_jy=flux,
            snr=flux / err_jy,
            quality_flag="good",
        )
        for source_id, flux in fluxes
    ]
    return await stubs.sources.RecordPhotometry(  # type: ignore[no-any-return]
        sources_pb2.RecordPhotometryRequest(image=image_name, measurements=measurements)
    )


async def get_source(stubs: Any, source_id: str) -> sources_pb2.Source:
    return await stubs.sources.GetSource(  # type: ignore[no-any-return]
        sources_pb2.GetSourceRequest(name=f"sources/{source_id}")
    )

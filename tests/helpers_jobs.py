"""Small helpers for test_sources.py, test_jobs.py, test_write_groups.py and test_e2e.py.

Rich-status decoding (google.rpc.Status from the `grpc-status-details-bin` trailer), builders
for the measurement sets, images and photometry those tests need, and source statistics computed
the plain way (two-pass) to compare the server's running sums against.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable
from typing import Any

import grpc
from dsa110.contimg.v1 import images_pb2, measurement_sets_pb2, sources_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "contimg.dsa110.org"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclasses.dataclass
class RichError:
    code: grpc.StatusCode
    message: str
    status: status_pb2.Status
    info: error_details_pb2.ErrorInfo | None
    fields: list[str]

    @property
    def reason(self) -> str:
        return self.info.reason if self.info else ""

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.info.metadata) if self.info else {}


def decode_error(exc: grpc.aio.AioRpcError) -> RichError:
    """The google.rpc.Status carried in the trailing metadata, with its ErrorInfo and BadRequest."""
    raw = [v for k, v in (exc.trailing_metadata() or ()) if k == STATUS_DETAILS_KEY]
    assert raw, f"no {STATUS_DETAILS_KEY} in the trailers of {exc.code()} {exc.details()!r}"
    status = status_pb2.Status.FromString(raw[0])
    assert status.code == exc.code().value[0], "Status.code disagrees with the gRPC status code"
    info: error_details_pb2.ErrorInfo | None = None
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    assert info is not None, "every error carries an ErrorInfo"
    assert info.domain == DOMAIN
    return RichError(exc.code(), exc.details() or "", status, info, fields)


async def expect_error(
    call: Awaitable[Any], code: grpc.StatusCode, reason: str | None = None, field: str | None = None
) -> RichError:
    """Await `call`, which must fail with `code` (and ErrorInfo `reason`, and a BadRequest naming `field`)."""
    try:
        result = await call
    except grpc.aio.AioRpcError as exc:
        err = decode_error(exc)
    else:
        raise AssertionError(f"expected {code.name}, got a result: {str(result)[:300]}")
    assert err.code == code, f"expected {code.name}, got {err.code.name}: {err.message}"
    if reason is not None:
        assert err.reason == reason, f"expected reason {reason}, got {err.reason}: {err.message}"
    if field is not None:
        assert field in err.fields, f"expected a violation of {field!r}, got {err.fields}"
    if code == grpc.StatusCode.INVALID_ARGUMENT and (reason is None or reason == "INVALID_ARGUMENT"):
        assert err.fields, "INVALID_ARGUMENT carries a BadRequest"
    return err


async def make_ms(
    stubs: Any, path: str = "/data/ms/2025-01-01T00:00:00.ms", mid_mjd: float = 60000.0
) -> measurement_sets_pb2.MeasurementSet:
    return await stubs.ms.CreateMeasurementSet(
        measurement_sets_pb2.CreateMeasurementSetRequest(
            measurement_set=measurement_sets_pb2.MeasurementSet(
                path=path,
                start_mjd=mid_mjd - 0.002,
                mid_mjd=mid_mjd,
                end_mjd=mid_mjd + 0.002,
                pointing_ra_deg=128.7,
                pointing_dec_deg=55.57,
            )
        )
    )


async def make_image(
    stubs: Any, ms_name: str, path: str, mid_mjd: float, center: tuple[float, float] = (128.7, 55.57)
) -> images_pb2.Image:
    return await stubs.images.CreateImage(
        images_pb2.CreateImageRequest(
            image=images_pb2.Image(
                path=path,
                measurement_set=ms_name,
                mid_mjd=mid_mjd,
                type=images_pb2.Image.TYPE_PBCOR,
                center_ra_deg=center[0],
                center_dec_deg=center[1],
                size_x_px=4800,
                size_y_px=4800,
                cell_size_arcsec=6.0,
                frequency_ghz=1.405,
                noise_jy=0.0004,
            )
        )
    )


async def make_images(stubs: Any, mjds: list[float], tag: str = "img") -> list[images_pb2.Image]:
    """One MS and one image per MJD (in the order given)."""
    ms = await make_ms(stubs, f"/data/ms/{tag}.ms", mid_mjd=min(mjds))
    return [await make_image(stubs, ms.name, f"/data/images/{tag}-{i:04d}.fits", mjd) for i, mjd in enumerate(mjds)]


def measurement(
    source_id: str, ra: float, dec: float, flux: float = 0.05, err: float = 0.001, **extra: Any
) -> sources_pb2.PhotometryMeasurement:
    return sources_pb2.PhotometryMeasurement(
        source=f"sources/{source_id}",
        ra_deg=ra,
        dec_deg=dec,
        catalog_flux_mjy=flux * 1000.0,
        peak_flux_jy=flux,
        peak_flux_err_jy=err,
        integrated_flux_jy=flux * 1.05,
        integrated_flux_err_jy=err,
        normalized_flux=1.0,
        normalized_flux_err=0.01,
        snr=flux / err,
        local_rms_jy=err,
        separation_from_center_deg=0.5,
        quality_flag="good",
        **extra,
    )


async def record(
    stubs: Any, image: str, measurements: list[sources_pb2.PhotometryMeasurement], request_id: str = ""
) -> sources_pb2.RecordPhotometryResponse:
    return await stubs.sources.RecordPhotometry(
        sources_pb2.RecordPhotometryRequest(image=image, measurements=measurements, request_id=request_id)
    )


# ---- expected statistics, computed the plain way --------------------------------------------------


@dataclasses.dataclass
class Epoch:
    flux: float
    err: float
    mjd: float


def expected_stats(epochs: list[Epoch]) -> dict[str, float]:
    n = len(epochs)
    fluxes = [e.flux for e in epochs]
    mean = sum(fluxes) / n
    weights = [1.0 / (e.err * e.err) for e in epochs]
    if n > 1:
        std = math.sqrt(sum((f - mean) ** 2 for f in fluxes) / (n - 1))
        weighted_mean = sum(w * f for w, f in zip(weights, fluxes, strict=True)) / sum(weights)
        eta = sum(w * (f - weighted_mean) ** 2 for w, f in zip(weights, fluxes, strict=True)) / (n - 1)
        chi2 = sum(w * (f - mean) ** 2 for w, f in zip(weights, fluxes, strict=True)) / (n - 1)
    else:
        std = eta = chi2 = 0.0
    v = std / mean if mean > 0 else 0.0
    sigma = max(abs(f - mean) for f in fluxes) / std if std > 0 else 0.0
    return {
        "epoch_count": n,
        "mean_flux_jy": mean,
        "std_flux_jy": std,
        "min_flux_jy": min(fluxes),
        "max_flux_jy": max(fluxes),
        "chi2_reduced": chi2,
        "eta": eta,
        "v": v,
        "sigma_deviation": sigma,
        "last_mjd": max(e.mjd for e in epochs),
        "is_variable": n >= 3 and (eta > 2.0 or v > 0.1),
    }


def assert_stats(src: sources_pb2.Source, epochs: list[Epoch]) -> None:
    want = expected_stats(epochs)
    got = src.variability
    assert got.epoch_count == want["epoch_count"] == src.detection_count
    assert got.is_variable == want["is_variable"], src.name
    for key, value in want.items():
        if key in ("epoch_count", "is_variable"):
            continue
        assert math.isclose(getattr(got, key), value, rel_tol=1e-7, abs_tol=1e-12), (
            f"{src.name} {key}: server {getattr(got, key)!r}, expected {value!r}"
        )
    assert src.first_detection_mjd == min(e.mjd for e in epochs)
    assert src.last_detection_mjd == max(e.mjd for e in epochs)

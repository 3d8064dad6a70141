"""RecordPhotometry with `columns`: the same measurements as packed arrays, over the real server.

Each test records the same numbers both ways where it can and compares what the server stores, so
the columnar path is held to the message path rather than to a second copy of the rules.
"""

from __future__ import annotations

import uuid

import grpc
from dsa110.contimg.server.domain.records import Photometry
from dsa110.contimg.v1 import images_pb2, sources_pb2
from google.protobuf import timestamp_pb2

from helpers_jobs import expect_error, make_images, measurement, record

INVALID = grpc.StatusCode.INVALID_ARGUMENT
ENGINES = ("sqlite", "postgres")
FLOATS = [*Photometry._fields[2:14], "observation_mjd"]  # the float fields, both forms name them alike


def as_columns(measurements: list[sources_pb2.PhotometryMeasurement]) -> sources_pb2.PhotometryColumns:
    columns = sources_pb2.PhotometryColumns(
        source=[m.source for m in measurements], quality_flag=[m.quality_flag for m in measurements]
    )
    for name in FLOATS:
        getattr(columns, name).extend(getattr(m, name) for m in measurements)
    columns.measure_time_unix_micros.extend(
        m.measure_time.seconds * 1_000_000 + m.measure_time.nanos // 1000 if m.HasField("measure_time") else 0
        for m in measurements
    )
    return columns


async def record_columns(
    stubs, image: str, columns: sources_pb2.PhotometryColumns, request_id: str = ""
) -> sources_pb2.RecordPhotometryResponse:
    return await stubs.sources.RecordPhotometry(
        sources_pb2.RecordPhotometryRequest(image=image, columns=columns, request_id=request_id)
    )


async def points(stubs, source: str) -> list[sources_pb2.PhotometryMeasurement]:
    request = sources_pb2.GetLightcurveRequest(name=source)
    return [p for msg in [m async for m in stubs.sources.GetLightcurve(request)] for p in msg.points]


async def test_columns_store_what_measurements_store(stubs):
    by_rows, by_columns = await make_images(stubs, [60500.0, 60500.0], "cols")
    when = timestamp_pb2.Timestamp(seconds=1_790_000_000, nanos=123_456_000)
    ms = [
        measurement("ROW1", 10.0, 50.0, flux=0.11),
        measurement("ROW2", 10.5, 50.5, flux=0.22, observation_mjd=60499.5, measure_time=when),
        measurement("ROW3", 11.0, 51.0, flux=0.33),
    ]
    ms[2].quality_flag = "edge"
    row_reply = await record(stubs, by_rows.name, ms)
    columns = as_columns(ms)
    columns.source[:] = [s.replace("ROW", "COL") for s in columns.source]
    column_reply = await record_columns(stubs, by_columns.name, columns)
    assert (column_reply.recorded_count, column_reply.created_source_count) == (3, 3)
    assert (row_reply.recorded_count, row_reply.created_source_count) == (3, 3)

    for i in (1, 2, 3):
        [row_point] = await points(stubs, f"sources/ROW{i}")
        [column_point] = await points(stubs, f"sources/COL{i}")
        assert column_point.image == by_columns.name and row_point.image == by_rows.name
        for field in [*FLOATS, "quality_flag"]:
            assert getattr(column_point, field) == getattr(row_point, field), (i, field)
        row_source = await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name=f"sources/ROW{i}"))
        column_source = await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name=f"sources/COL{i}"))
        assert column_source.variability == row_source.variability
        assert (column_source.ra_deg, column_source.dec_deg) == (row_source.ra_deg, row_source.dec_deg)
    [explicit] = await points(stubs, "sources/COL2")
    assert explicit.observation_mjd == 60499.5 and explicit.measure_time == when


async def test_empty_columns_take_the_defaults(stubs):
    [img] = await make_images(stubs, [60501.25], "coldef")
    columns = sources_pb2.PhotometryColumns(
        source=["sources/D1", "sources/D2"], ra_deg=[20.0, 21.0], peak_flux_jy=[0.5, 0.6], peak_flux_err_jy=[0.01, 0.02]
    )
    reply = await record_columns(stubs, img.name, columns)
    assert reply.recorded_count == 2
    [p] = await points(stubs, "sources/D2")
    assert (p.ra_deg, p.dec_deg, p.peak_flux_jy, p.peak_flux_err_jy) == (21.0, 0.0, 0.6, 0.02)
    assert p.observation_mjd == 60501.25  # the image's
    assert p.quality_flag == "" and p.snr == 0.0
    assert p.HasField("measure_time") and p.measure_time.seconds > 1_700_000_000  # set by the server


async def test_bad_columns_are_reported_at_their_index_and_nothing_is_written(stubs):
    [img] = await make_images(stubs, [60502.0], "colbad")

    def good() -> sources_pb2.PhotometryColumns:
        return sources_pb2.PhotometryColumns(
            source=["sources/B1", "sources/B2"], ra_deg=[30.0, 31.0], peak_flux_jy=[0.1, 0.2], peak_flux_err_jy=[1, 1]
        )

    cases: list[tuple[sources_pb2.PhotometryColumns, str]] = []
    c = good()
    c.peak_flux_err_jy[:] = [0.01]
    cases.append((c, "columns.peak_flux_err_jy"))
    c = good()
    c.ra_deg[1] = 360.0
    cases.append((c, "columns.ra_deg[1]"))
    c = good()
    c.peak_flux_err_jy[0] = 0.0
    cases.append((c, "columns.peak_flux_err_jy[0]"))
    c = good()
    c.peak_flux_err_jy[1] = 1e-170  # 1/err^2 would divide by zero
    cases.append((c, "columns.peak_flux_err_jy[1]"))
    c = good()
    c.peak_flux_jy[0] = -1e200  # its square would overflow the sums
    cases.append((c, "columns.peak_flux_jy[0]"))
    c = good()
    c.source[0] = "B1"
    cases.append((c, "columns.source[0]"))
    c = good()
    c.source[1] = "sources/B1"
    cases.append((c, "columns.source[1]"))
    c = good()
    c.source[1] = "sources/B2\nsources/B3"
    cases.append((c, "columns.source[1]"))
    c = good()
    c.measure_time_unix_micros[:] = [-(10**18), 0]
    cases.append((c, "columns.measure_time_unix_micros[0]"))
    c = good()
    c.quality_flag[:] = ["x" * 33, ""]
    cases.append((c, "columns.quality_flag[0]"))
    cases.append((sources_pb2.PhotometryColumns(), "columns.source"))
    for columns, field in cases:
        err = await expect_error(record_columns(stubs, img.name, columns), INVALID, "INVALID_ARGUMENT")
        assert field in err.fields, (field, err.fields)

    both = sources_pb2.RecordPhotometryRequest(image=img.name, columns=good(), measurements=[measurement("B9", 1, 1)])
    err = await expect_error(stubs.sources.RecordPhotometry(both), INVALID, "INVALID_ARGUMENT")
    assert "columns" in err.fields

    image = await stubs.images.GetImage(images_pb2.GetImageRequest(name=img.name))
    assert image.photometry_count == 0
    missing = stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/B1"))
    await expect_error(missing, grpc.StatusCode.NOT_FOUND, "SOURCE_NOT_FOUND")


async def test_a_retried_columnar_batch_returns_the_first_result(stubs):
    [img] = await make_images(stubs, [60503.0], "colretry")
    columns = sources_pb2.PhotometryColumns(
        source=["sources/R9"], ra_deg=[40.0], peak_flux_jy=[0.3], peak_flux_err_jy=[0.01]
    )
    request_id = str(uuid.uuid4())
    first = await record_columns(stubs, img.name, columns, request_id)
    again = await record_columns(stubs, img.name, columns, request_id)
    assert again == first and first.recorded_count == 1

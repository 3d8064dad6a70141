"""MSService over the real server: every RPC's happy path and its documented errors.

ListMeasurementSets pagination, filters and ordering are covered in depth by test_pagination.py.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import grpc
import pytest
from dsa110.contimg.client import ms_name
from dsa110.contimg.v1 import images_pb2
from dsa110.contimg.v1 import measurement_sets_pb2 as pb

from helpers import (
    CalibrationTable,
    MeasurementSet,
    error_info,
    expect_error,
    get_source,
    list_all_ms,
    make_image,
    make_ms,
    micros,
    ms_message,
    new_request_id,
    record_photometry,
    unique_path,
)

ENGINES = ("sqlite", "postgres")
Code = grpc.StatusCode
INVALID = Code.INVALID_ARGUMENT
MS = MeasurementSet
OUTPUT_ONLY = ("name", "create_time", "update_time", "stage_update_time", "image_count", "creator", "last_modifier")


async def _get(stubs: Any, name: str) -> pb.MeasurementSet:
    return await stubs.ms.GetMeasurementSet(pb.GetMeasurementSetRequest(name=name))  # type: ignore[no-any-return]


async def _update(
    stubs: Any,
    ms: pb.MeasurementSet,
    paths: list[str] | None = None,
    *,
    allow_missing: bool = False,
    request_id: str = "",
) -> pb.MeasurementSet:
    request = pb.UpdateMeasurementSetRequest(measurement_set=ms, allow_missing=allow_missing, request_id=request_id)
    if paths is not None:
        request.update_mask.paths.extend(paths)
    return await stubs.ms.UpdateMeasurementSet(request)  # type: ignore[no-any-return]


async def _advance(stubs: Any, name: str, stage: int, status: int = 0, request_id: str = "") -> pb.MeasurementSet:
    return await stubs.ms.AdvanceMeasurementSetStage(  # type: ignore[no-any-return]
        pb.AdvanceMeasurementSetStageRequest(name=name, stage=stage, status=status, request_id=request_id)
    )


async def _delete(stubs: Any, name: str, force: bool = False) -> None:
    await stubs.ms.DeleteMeasurementSet(pb.DeleteMeasurementSetRequest(name=name, force=force))


def _same_except(a: pb.MeasurementSet, b: pb.MeasurementSet, *fields: str) -> None:
    """a and b agree on every field but `fields`."""
    left, right = pb.MeasurementSet(), pb.MeasurementSet()
    left.CopyFrom(a)
    right.CopyFrom(b)
    for f in fields:
        left.ClearField(f)  # type: ignore[arg-type]
        right.ClearField(f)  # type: ignore[arg-type]
    assert left == right


def _tables() -> list[pb.CalibrationTable]:
    return [
        CalibrationTable(
            path="/cal/2025-10-28T13:00.bpcal",
            type=CalibrationTable.TYPE_BP,
            valid_start_mjd=60976.0,
            valid_end_mjd=60977.0,
        ),
        CalibrationTable(
            path="/cal/2025-10-28T13:00.g2cal",
            type=CalibrationTable.TYPE_2G,
            valid_start_mjd=60976.5,
            valid_end_mjd=60976.6,
        ),
    ]


def _assert_identifies(err: grpc.aio.AioRpcError, name: str, path: str) -> None:
    # The contract asks for the resource name; the bare path (also accepted as a name) identifies it too.
    assert error_info(err).metadata.get("resource") in (name, path), dict(error_info(err).metadata)


# ---------------------------------------------------------------------------------------------
# CreateMeasurementSet / GetMeasurementSet


async def test_create_then_get_round_trips(stubs: Any) -> None:
    sent = ms_message(
        "/stage/dsa110-contimg/ms/science/2025-10-28/2025-10-28T13:30:07.ms",
        cal_applied=True,
        calibration_tables=_tables(),
        stage=MS.STAGE_CALIBRATED,
        status=MS.STATUS_IN_PROGRESS,
    )
    created = await stubs.ms.CreateMeasurementSet(pb.CreateMeasurementSetRequest(measurement_set=sent))
    assert created.name == (
        "measurementSets/%2Fstage%2Fdsa110-contimg%2Fms%2Fscience%2F2025-10-28%2F2025-10-28T13%3A30%3A07.ms"
    )
    _same_except(created, sent, *OUTPUT_ONLY)
    assert list(created.calibration_tables) == _tables()
    assert created.HasField("create_time") and created.update_time == created.create_time
    assert created.stage_update_time == created.create_time
    assert created.image_count == 0 and not created.HasField("process_time")
    assert await _get(stubs, created.name) == created
    assert await _get(stubs, created.path) == created


async def test_create_without_stage_has_no_stage_time(stubs: Any) -> None:
    created = await make_ms(stubs, stage=MS.STAGE_UNSPECIFIED, status=MS.STATUS_UNSPECIFIED)
    assert created.stage == MS.STAGE_UNSPECIFIED and not created.HasField("stage_update_time")


async def test_create_ignores_output_only_fields(stubs: Any) -> None:
    path = unique_path("ms", ".ms")
    sent = ms_message(path, name="measurementSets/%2Fother.ms", image_count=7, create_time={"seconds": 5})
    # The name, when given, must match the path; an output-only image_count / create_time are dropped.
    await expect_error(
        stubs.ms.CreateMeasurementSet(pb.CreateMeasurementSetRequest(measurement_set=sent)),
        INVALID,
        "INVALID_ARGUMENT",
        field="measurement_set.path",
    )
    sent.ClearField("name")
    created = await stubs.ms.CreateMeasurementSet(pb.CreateMeasurementSetRequest(measurement_set=sent))
    assert created.image_count == 0 and created.create_time.seconds > 5


async def test_create_by_name_only(stubs: Any) -> None:
    path = unique_path("ms", ".ms")
    sent = ms_message("", name=ms_name(path))
    created = await stubs.ms.CreateMeasurementSet(pb.CreateMeasurementSetRequest(measurement_set=sent))
    assert created.path == path and created.name == ms_name(path)


async def test_canonical_names_percent_encode_everything_but_unreserved(stubs: Any) -> None:
    path = "/data/ms/a b+c~d_e.f-g:h%i/é.ms"
    created = await make_ms(stubs, path)
    assert created.name == "measurementSets/%2Fdata%2Fms%2Fa%20b%2Bc~d_e.f-g%3Ah%25i%2F%C3%A9.ms"
    # Other spellings of the same path resolve to it and answer with the canonical name.
    for spelling in ("measurementSets/%2fdata%2fms%2Fa%20b%2Bc%7Ed_e.f-g%3ah%25i%2F%C3%A9.ms", path):
        assert (await _get(stubs, spelling)) == created


async def test_create_same_path_twice_is_already_exists(stubs: Any) -> None:
    first = await make_ms(stubs)
    err = await expect_error(
        make_ms(stubs, first.path, field_name="other"), Code.ALREADY_EXISTS, "MEASUREMENT_SET_ALREADY_EXISTS"
    )
    _assert_identifies(err, first.name, first.path)
    assert await _get(stubs, first.name) == first
    assert [m.name for m in await list_all_ms(stubs)] == [first.name]


async def test_create_with_request_id_is_idempotent(stubs: Any) -> None:
    request = pb.CreateMeasurementSetRequest(measurement_set=ms_message(), request_id=new_request_id())
    first = await stubs.ms.CreateMeasurementSet(request)
    again = await stubs.ms.CreateMeasurementSet(request)
    assert again == first
    results = await asyncio.gather(*(stubs.ms.CreateMeasurementSet(request) for _ in range(5)))
    assert all(r == first for r in results)
    assert [m.name for m in await list_all_ms(stubs)] == [first.name]
    changed = pb.CreateMeasurementSetRequest(
        measurement_set=ms_message(first.path, field_name="other"), request_id=request.request_id
    )
    await expect_error(stubs.ms.CreateMeasurementSet(changed), Code.ABORTED, "REQUEST_ID_MISMATCH")
    # The same id on another method is a mismatch too.
    upsert = pb.UpdateMeasurementSetRequest(measurement_set=ms_message(first.path), request_id=request.request_id)
    await expect_error(stubs.ms.UpdateMeasurementSet(upsert), Code.ABORTED, "REQUEST_ID_MISMATCH")
    assert await _get(stubs, first.name) == first


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"path": ""}, "measurement_set.path"),
        ({"path": "relative/x.ms"}, "measurement_set.path"),
        ({"path": "/a\tb.ms"}, "measurement_set.path"),
        ({"path": "/" + "p" * 1100}, "measurement_set.path"),
        # One file, one spelling (a path that aliases another would be a second resource).
        ({"path": "/"}, "measurement_set.path"),
        ({"path": "/data//x.ms"}, "measurement_set.path"),
        ({"path": "/data/./x.ms"}, "measurement_set.path"),
        ({"path": "/data/y/../x.ms"}, "measurement_set.path"),
        ({"path": "/data/x.ms/"}, "measurement_set.path"),
        ({"path": "//data/x.ms"}, "measurement_set.path"),
        ({"path": "/data/x\x7f.ms"}, "measurement_set.path"),
        ({"name": "measurementSets/relative"}, "measurement_set.name"),
        ({"name": "images/3"}, "measurement_set.name"),
        ({"pointing_dec_deg": 91.0}, "measurement_set.pointing_dec_deg"),
        ({"phase_center_dec_deg": -90.01}, "measurement_set.phase_center_dec_deg"),
        ({"pointing_ra_deg": 360.0}, "measurement_set.pointing_ra_deg"),
        ({"phase_center_ra_deg": math.nan}, "measurement_set.phase_center_ra_deg"),
        ({"start_mjd": math.nan}, "measurement_set.start_mjd"),
        ({"mid_mjd": math.inf}, "measurement_set.mid_mjd"),
        ({"end_mjd": 1e6}, "measurement_set.end_mjd"),
        ({"start_mjd": 60977.0, "end_mjd": 60976.0}, "measurement_set.end_mjd"),
        ({"stage": 42}, "measurement_set.stage"),
        ({"status": -1}, "measurement_set.status"),
        ({"group_id": "g" * 300}, "measurement_set.group_id"),
        ({"field_name": "nul\x00"}, "measurement_set.field_name"),
        ({"calibration_tables": [CalibrationTable(path="cal.bp")]}, "measurement_set.calibration_tables[0].path"),
        (
            {"calibration_tables": [*_tables(), CalibrationTable(path="/c", type=99)]},
            "measurement_set.calibration_tables[2].type",
        ),
        (
            {"calibration_tables": [CalibrationTable(path="/c", valid_start_mjd=60977.0, valid_end_mjd=60976.0)]},
            "measurement_set.calibration_tables[0].valid_end_mjd",
        ),
        (
            {"calibration_tables": [CalibrationTable(path=f"/c{i}") for i in range(65)]},
            "measurement_set.calibration_tables",
        ),
    ],
)
async def test_create_invalid_argument_names_the_field(stubs: Any, overrides: dict[str, Any], field: str) -> None:
    overrides = dict(overrides)  # the parametrized dict is shared by each engine's run
    path = overrides.pop("path", None)
    sent = ms_message(path, **overrides)
    if "name" in overrides:
        sent.ClearField("path")
    await expect_error(
        stubs.ms.CreateMeasurementSet(pb.CreateMeasurementSetRequest(measurement_set=sent)),
        INVALID,
        "INVALID_ARGUMENT",
        field=field,
    )
    assert await list_all_ms(stubs) == []


async def test_create_without_measurement_set_is_invalid(stubs: Any) -> None:
    await expect_error(
        stubs.ms.CreateMeasurementSet(pb.CreateMeasurementSetRequest()),
        INVALID,
        "INVALID_ARGUMENT",
        field="measurement_set",
    )


async def test_get_missing_is_not_found(stubs: Any) -> None:
    name = "measurementSets/%2Fno%2Fsuch.ms"
    await expect_error(_get(stubs, name), Code.NOT_FOUND, "MEASUREMENT_SET_NOT_FOUND", resource=name)
    await expect_error(_get(stubs, "/no/such.ms"), Code.NOT_FOUND, "MEASUREMENT_SET_NOT_FOUND", resource=name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "measurementSets/",
        "measurementSets/%2Fa/b.ms",
        "measurementSets/a.ms",
        "measurementSets/a%2Fb.ms",
        "images/1",
        "relative/x.ms",
        "measurementSets/%FF%FE",
        "measurementSets/%2Fa%0Ab.ms",
        "/a\x01b",
        "measurementSets/%2F" + "x" * 1100,
    ],
)
async def test_get_malformed_name_is_invalid(stubs: Any, name: str) -> None:
    await expect_error(_get(stubs, name), INVALID, "INVALID_ARGUMENT", field="name")


# ---------------------------------------------------------------------------------------------
# BatchGetMeasurementSets


async def test_batch_get_preserves_order_and_duplicates(stubs: Any) -> None:
    a, b, c = [await make_ms(stubs, start_mjd=60970.0 + i) for i in range(3)]
    names = [b.name, a.path, b.name, c.name, a.name]
    response = await stubs.ms.BatchGetMeasurementSets(pb.BatchGetMeasurementSetsRequest(names=names))
    assert [m.name for m in response.measurement_sets] == [b.name, a.name, b.name, c.name, a.name]
    assert list(response.measurement_sets) == [b, a, b, c, a]


async def test_batch_get_is_atomic_and_names_the_first_missing(stubs: Any) -> None:
    a = await make_ms(stubs)
    missing = ["measurementSets/%2Fgone1.ms", "/gone2.ms"]
    request = pb.BatchGetMeasurementSetsRequest(names=[a.name, missing[0], a.name, missing[1]])
    await expect_error(
        stubs.ms.BatchGetMeasurementSets(request), Code.NOT_FOUND, "MEASUREMENT_SET_NOT_FOUND", resource=missing[0]
    )
    request = pb.BatchGetMeasurementSetsRequest(names=[missing[1], missing[0]])
    await expect_error(
        stubs.ms.BatchGetMeasurementSets(request),
        Code.NOT_FOUND,
        "MEASUREMENT_SET_NOT_FOUND",
        resource="measurementSets/%2Fgone2.ms",
    )


@pytest.mark.parametrize(
    ("names", "field"),
    [
        ([], "names"),
        (["/a.ms"] * 1001, "names"),
        (["/a.ms", "/b.ms", "c.ms"], "names[2]"),
        (["measurementSets/"], "names[0]"),
    ],
)
async def test_batch_get_invalid(stubs: Any, names: list[str], field: str) -> None:
    await expect_error(
        stubs.ms.BatchGetMeasurementSets(pb.BatchGetMeasurementSetsRequest(names=names)),
        INVALID,
        "INVALID_ARGUMENT",
        field=field,
    )


# ---------------------------------------------------------------------------------------------
# ListMeasurementSets (happy path and argument errors; see test_pagination.py for the rest)


async def test_list_default_order_is_latest_start_first(stubs: Any) -> None:
    made = [
        await make_ms(stubs, start_mjd=s, mid_mjd=s + 0.002, end_mjd=s + 0.004) for s in (60976.2, 60976.9, 60976.5)
    ]
    response = await stubs.ms.ListMeasurementSets(pb.ListMeasurementSetsRequest())
    assert [m.name for m in response.measurement_sets] == [made[1].name, made[2].name, made[0].name]
    assert response.total_size == 3 and not response.next_page_token
    imaged = await _advance(stubs, made[0].name, MS.STAGE_IMAGED)
    only = await stubs.ms.ListMeasurementSets(pb.ListMeasurementSetsRequest(filter="stage = IMAGED"))
    assert list(only.measurement_sets) == [imaged] and only.total_size == 1


async def test_list_negative_page_size_is_invalid(stubs: Any) -> None:
    await expect_error(
        stubs.ms.ListMeasurementSets(pb.ListMeasurementSetsRequest(page_size=-5)),
        INVALID,
        "INVALID_ARGUMENT",
        field="page_size",
    )


@pytest.mark.parametrize(
    "filter_",
    [
        "bogus = 1",
        "image_count > 0",
        'path = "/a"',
        "stage > IMAGED",
        "stage = DONE",
        "status = OK",
        "cal_applied = yes",
        "mid_mjd >= x",
        "mid_mjd >= 1 OR",  # a dangling OR (OR itself is valid: tests/test_filter_grammar.py)
        "mid_mjd",
        "stage = IMAGED AND",
        'create_time < "tomorrow"',
        "pointing_dec_deg > inf",
    ],
)
async def test_list_bad_filter_is_invalid_filter(stubs: Any, filter_: str) -> None:
    await expect_error(
        stubs.ms.ListMeasurementSets(pb.ListMeasurementSetsRequest(filter=filter_)),
        INVALID,
        "INVALID_FILTER",
        field="filter",
    )


@pytest.mark.parametrize(
    "order_by", ["bogus", "end_mjd", "stage", "path", "mid_mjd up", "mid_mjd, mid_mjd", "start_mjd desc desc"]
)
async def test_list_bad_order_by_is_invalid_order_by(stubs: Any, order_by: str) -> None:
    await expect_error(
        stubs.ms.ListMeasurementSets(pb.ListMeasurementSetsRequest(order_by=order_by)),
        INVALID,
        "INVALID_ORDER_BY",
        field="order_by",
    )


# ---------------------------------------------------------------------------------------------
# UpdateMeasurementSet


async def test_upsert_with_allow_missing_creates(stubs: Any) -> None:
    path = unique_path("ms", ".ms")
    sent = MS(
        path=path,
        group_id="2025-10-28T13:30:07",
        start_mjd=60976.5625,
        stage=MS.STAGE_CONVERTED,
        status=MS.STATUS_COMPLETED,
        calibration_tables=_tables(),
    )
    created = await _update(stubs, sent, allow_missing=True)
    assert created.path == path and created.group_id == sent.group_id and created.start_mjd == sent.start_mjd
    assert created.stage == MS.STAGE_CONVERTED and list(created.calibration_tables) == _tables()
    assert created.HasField("create_time") and created.HasField("stage_update_time")
    assert created.image_count == 0 and created.pointing_dec_deg == 0.0
    assert await _get(stubs, created.name) == created
    # A second upsert updates the same row.
    again = await _update(stubs, MS(path=path, pointing_dec_deg=54.57), allow_missing=True)
    assert again.pointing_dec_deg == 54.57 and again.group_id == sent.group_id
    assert again.create_time == created.create_time
    assert [m.name for m in await list_all_ms(stubs)] == [created.name]


async def test_update_without_allow_missing_is_not_found(stubs: Any) -> None:
    path = unique_path("ms", ".ms")
    err = await expect_error(_update(stubs, MS(path=path, field_name="x")), Code.NOT_FOUND, "MEASUREMENT_SET_NOT_FOUND")
    _assert_identifies(err, ms_name(path), path)
    assert await list_all_ms(stubs) == []


async def test_implied_mask_never_nulls_unsent_fields(stubs: Any) -> None:
    before = await make_ms(
        stubs, cal_applied=True, calibration_tables=_tables(), stage=MS.STAGE_CALIBRATED, status=MS.STATUS_IN_PROGRESS
    )
    # A partial report: only the status (everything else at its default, i.e. not sent).
    after = await _update(stubs, MS(path=before.path, status=MS.STATUS_FAILED))
    assert after.status == MS.STATUS_FAILED
    _same_except(after, before, "status", "update_time")
    assert micros(after.update_time) >= micros(before.update_time)
    assert after.stage_update_time == before.stage_update_time  # the stage did not change
    # Another by name, with a default bool and an empty list: neither is written.
    after2 = await _update(stubs, MS(name=before.name, field_name="renamed", cal_applied=False))
    assert after2.field_name == "renamed" and after2.cal_applied is True
    assert list(after2.calibration_tables) == _tables()
    _same_except(after2, after, "field_name", "update_time")


async def test_explicit_mask_writes_only_the_masked_fields(stubs: Any) -> None:
    before = await make_ms(stubs, cal_applied=True, calibration_tables=_tables())
    noisy = ms_message(
        before.path,
        group_id="other",
        field_name="other",
        pointing_dec_deg=10.0,
        status=MS.STATUS_FAILED,
        calibration_tables=[],
    )
    after = await _update(stubs, noisy, ["status"])
    assert after.status == MS.STATUS_FAILED
    _same_except(after, before, "status", "update_time")
    # With an explicit mask default values are written: this is how a field is cleared.
    cleared = await _update(stubs, MS(path=before.path), ["cal_applied", "calibration_tables", "field_name"])
    assert cleared.cal_applied is False and list(cleared.calibration_tables) == [] and cleared.field_name == ""
    _same_except(cleared, after, "cal_applied", "calibration_tables", "field_name", "update_time")


async def test_star_mask_writes_every_writable_field(stubs: Any) -> None:
    before = await make_ms(stubs, cal_applied=True, calibration_tables=_tables(), stage=MS.STAGE_FLAGGED)
    after = await _update(stubs, MS(path=before.path, stage=MS.STAGE_FLAGGED, group_id="g"), ["*"])
    expected = MS(path=before.path, name=before.name, stage=MS.STAGE_FLAGGED, group_id="g")
    _same_except(after, expected, *OUTPUT_ONLY)
    assert after.create_time == before.create_time


async def test_update_stage_backwards_is_failed_precondition(stubs: Any) -> None:
    before = await make_ms(stubs, stage=MS.STAGE_IMAGED)
    err = await expect_error(
        _update(stubs, MS(path=before.path, stage=MS.STAGE_FLAGGED, field_name="x")),
        Code.FAILED_PRECONDITION,
        "INVALID_STAGE_TRANSITION",
    )
    info = error_info(err)
    assert info.metadata["from_stage"] == "IMAGED" and info.metadata["to_stage"] == "FLAGGED"
    assert await _get(stubs, before.name) == before  # nothing of the request was written
    # Explicitly masking stage with the default value is a move back too.
    await expect_error(
        _update(stubs, MS(path=before.path), ["stage"]), Code.FAILED_PRECONDITION, "INVALID_STAGE_TRANSITION"
    )
    forward = await _update(stubs, MS(path=before.path, stage=MS.STAGE_PHOTOMETRY_DONE))
    assert forward.stage == MS.STAGE_PHOTOMETRY_DONE
    assert micros(forward.stage_update_time) > micros(before.stage_update_time)


@pytest.mark.parametrize(
    ("paths", "field"),
    [
        (["bogus"], "update_mask.paths[0]"),
        (["status", "image_count"], "update_mask.paths[1]"),
        (["name"], "update_mask.paths[0]"),
        (["path"], "update_mask.paths[0]"),
        (["create_time"], "update_mask.paths[0]"),
        (["stage_update_time"], "update_mask.paths[0]"),
        (["calibration_tables.path"], "update_mask.paths[0]"),
        (["*", "status"], "update_mask.paths[0]"),
    ],
)
async def test_update_bad_mask_is_invalid(stubs: Any, paths: list[str], field: str) -> None:
    before = await make_ms(stubs)
    await expect_error(
        _update(stubs, MS(path=before.path, status=MS.STATUS_FAILED), paths), INVALID, "INVALID_ARGUMENT", field=field
    )
    assert await _get(stubs, before.name) == before


@pytest.mark.parametrize(
    ("sent", "paths", "field"),
    [
        (MS(pointing_dec_deg=95.0), None, "measurement_set.pointing_dec_deg"),
        (MS(pointing_dec_deg=95.0), ["pointing_dec_deg"], "measurement_set.pointing_dec_deg"),
        (MS(mid_mjd=math.nan), None, "measurement_set.mid_mjd"),
        (MS(stage=77), ["stage"], "measurement_set.stage"),
        (MS(calibration_tables=[CalibrationTable(path="")]), None, "measurement_set.calibration_tables[0].path"),
        (MS(start_mjd=60977.0, end_mjd=60976.0), None, "measurement_set.end_mjd"),
    ],
)
async def test_update_invalid_values_are_rejected(
    stubs: Any, sent: pb.MeasurementSet, paths: list[str] | None, field: str
) -> None:
    before = await make_ms(stubs)
    sent.path = before.path
    await expect_error(_update(stubs, sent, paths), INVALID, "INVALID_ARGUMENT", field=field)
    assert await _get(stubs, before.name) == before


async def test_update_identity_errors(stubs: Any) -> None:
    a = await make_ms(stubs)
    b = await make_ms(stubs)
    await expect_error(
        _update(stubs, MS(name=a.name, path=b.path, field_name="x")),
        INVALID,
        "INVALID_ARGUMENT",
        field="measurement_set.path",
    )
    await expect_error(
        _update(stubs, MS(field_name="x"), allow_missing=True),
        INVALID,
        "INVALID_ARGUMENT",
        field="measurement_set.path",
    )
    await expect_error(
        _update(stubs, MS(name="measurementSets/x.ms", field_name="x")),
        INVALID,
        "INVALID_ARGUMENT",
        field="measurement_set.name",
    )
    await expect_error(
        stubs.ms.UpdateMeasurementSet(pb.UpdateMeasurementSetRequest()),
        INVALID,
        "INVALID_ARGUMENT",
        field="measurement_set",
    )
    assert [await _get(stubs, a.name), await _get(stubs, b.name)] == [a, b]


async def test_update_with_request_id(stubs: Any) -> None:
    before = await make_ms(stubs)
    rid = new_request_id()
    first = await _update(stubs, MS(path=before.path, field_name="first"), request_id=rid)
    await _update(stubs, MS(path=before.path, field_name="someone else"))
    retry = await _update(stubs, MS(path=before.path, field_name="first"), request_id=rid)
    assert retry == first and first.field_name == "first"  # the first result, as it was then (AIP-155)
    got = await stubs.ms.GetMeasurementSet(pb.GetMeasurementSetRequest(name=before.name))
    assert got.field_name == "someone else"  # the retry did not write again
    await expect_error(
        _update(stubs, MS(path=before.path, field_name="third"), request_id=rid), Code.ABORTED, "REQUEST_ID_MISMATCH"
    )
    # An upsert retried after it created the MS does not fail on the now-existing row.
    path = unique_path("ms", ".ms")
    rid2 = new_request_id()
    created = await _update(stubs, MS(path=path, field_name="new"), allow_missing=True, request_id=rid2)
    assert await _update(stubs, MS(path=path, field_name="new"), allow_missing=True, request_id=rid2) == created


async def test_reaching_the_final_stage_completed_sets_process_time(stubs: Any) -> None:
    ms = await make_ms(stubs, stage=MS.STAGE_IMAGED)
    running = await _update(stubs, MS(path=ms.path, stage=MS.STAGE_PHOTOMETRY_DONE, status=MS.STATUS_IN_PROGRESS))
    assert not running.HasField("process_time")
    done = await _update(stubs, MS(path=ms.path, status=MS.STATUS_COMPLETED))
    assert done.HasField("process_time")
    later = await _update(stubs, MS(path=ms.path, field_name="annotated"))
    assert later.process_time == done.process_time


async def test_registering_a_finished_ms_sets_process_time_by_either_route(stubs: Any) -> None:
    finished = {"stage": MS.STAGE_PHOTOMETRY_DONE, "status": MS.STATUS_COMPLETED}
    created = await make_ms(stubs, **finished)
    assert created.HasField("process_time") and created.process_time == created.create_time
    upserted = await _update(stubs, ms_message(**finished), allow_missing=True)
    assert upserted.HasField("process_time") and upserted.process_time == upserted.create_time
    given = await make_ms(stubs, **finished, process_time={"seconds": 1_761_658_207})
    assert given.process_time.seconds == 1_761_658_207  # a reported time is kept
    unfinished = await make_ms(stubs, stage=MS.STAGE_PHOTOMETRY_DONE, status=MS.STATUS_FAILED)
    assert not unfinished.HasField("process_time")


# ---------------------------------------------------------------------------------------------
# AdvanceMeasurementSetStage


async def test_advance_moves_forward_and_records_the_time(stubs: Any) -> None:
    ms = await make_ms(stubs, stage=MS.STAGE_CONVERTED, status=MS.STATUS_COMPLETED, cal_applied=True)
    flagged = await _advance(stubs, ms.name, MS.STAGE_FLAGGED)
    assert flagged.stage == MS.STAGE_FLAGGED and flagged.status == MS.STATUS_IN_PROGRESS  # the default status
    assert micros(flagged.stage_update_time) > micros(ms.stage_update_time)
    _same_except(flagged, ms, "stage", "status", "update_time", "stage_update_time")
    # Same stage: allowed, only the status changes, the stage time stays.
    same = await _advance(stubs, ms.path, MS.STAGE_FLAGGED, MS.STATUS_FAILED)
    assert same.status == MS.STATUS_FAILED and same.stage_update_time == flagged.stage_update_time
    # Skipping stages forward is allowed.
    done = await _advance(stubs, ms.name, MS.STAGE_PHOTOMETRY_DONE, MS.STATUS_COMPLETED)
    assert done.stage == MS.STAGE_PHOTOMETRY_DONE and done.HasField("process_time")
    assert await _get(stubs, ms.name) == done


async def test_advance_backwards_is_invalid_stage_transition(stubs: Any) -> None:
    ms = await make_ms(stubs, stage=MS.STAGE_CALIBRATED, status=MS.STATUS_COMPLETED)
    for stage in (MS.STAGE_CONVERTED, MS.STAGE_CALIBRATION_SOLVED):
        err = await expect_error(_advance(stubs, ms.name, stage), Code.FAILED_PRECONDITION, "INVALID_STAGE_TRANSITION")
        _assert_identifies(err, ms.name, ms.path)
        assert error_info(err).metadata["from_stage"] == "CALIBRATED"
    assert await _get(stubs, ms.name) == ms


async def test_advance_missing_is_not_found(stubs: Any) -> None:
    name = "measurementSets/%2Fno%2Fsuch.ms"
    err = await expect_error(_advance(stubs, name, MS.STAGE_FLAGGED), Code.NOT_FOUND, "MEASUREMENT_SET_NOT_FOUND")
    _assert_identifies(err, name, "/no/such.ms")
    assert await list_all_ms(stubs) == []  # never an implicit create


@pytest.mark.parametrize(
    ("name", "stage", "status", "field"),
    [
        ("", MS.STAGE_FLAGGED, 0, "name"),
        ("measurementSets/bad", MS.STAGE_FLAGGED, 0, "name"),
        (None, MS.STAGE_UNSPECIFIED, 0, "stage"),
        (None, 99, 0, "stage"),
        (None, MS.STAGE_FLAGGED, 17, "status"),
    ],
)
async def test_advance_invalid(stubs: Any, name: str | None, stage: int, status: int, field: str) -> None:
    ms = await make_ms(stubs)
    await expect_error(
        _advance(stubs, ms.name if name is None else name, stage, status), INVALID, "INVALID_ARGUMENT", field=field
    )
    assert await _get(stubs, ms.name) == ms


async def test_advance_with_request_id(stubs: Any) -> None:
    ms = await make_ms(stubs, stage=MS.STAGE_CONVERTED)
    rid = new_request_id()
    first = await _advance(stubs, ms.name, MS.STAGE_FLAGGED, MS.STATUS_COMPLETED, request_id=rid)
    assert await _advance(stubs, ms.name, MS.STAGE_FLAGGED, MS.STATUS_COMPLETED, request_id=rid) == first
    await expect_error(_advance(stubs, ms.name, MS.STAGE_IMAGED, request_id=rid), Code.ABORTED, "REQUEST_ID_MISMATCH")
    assert (await _get(stubs, ms.name)).stage == MS.STAGE_FLAGGED


# ---------------------------------------------------------------------------------------------
# DeleteMeasurementSet


async def test_delete_then_get_is_not_found(stubs: Any) -> None:
    ms = await make_ms(stubs)
    other = await make_ms(stubs)
    await _delete(stubs, ms.name)
    await expect_error(_get(stubs, ms.name), Code.NOT_FOUND, "MEASUREMENT_SET_NOT_FOUND", resource=ms.name)
    assert await list_all_ms(stubs) == [other]
    # Deleting twice: NOT_FOUND; by bare path works too; the path can be registered again.
    err = await expect_error(_delete(stubs, ms.name), Code.NOT_FOUND, "MEASUREMENT_SET_NOT_FOUND")
    _assert_identifies(err, ms.name, ms.path)
    await _delete(stubs, other.path)
    assert await list_all_ms(stubs) == []
    again = await make_ms(stubs, ms.path)
    assert again.name == ms.name


@pytest.mark.parametrize("name", ["", "measurementSets/", "x.ms", "images/1"])
async def test_delete_malformed_name_is_invalid(stubs: Any, name: str) -> None:
    await expect_error(_delete(stubs, name), INVALID, "INVALID_ARGUMENT", field="name")


async def test_delete_with_images_needs_force(stubs: Any) -> None:
    ms = await make_ms(stubs)
    images = [await make_image(stubs, ms.name) for _ in range(2)]
    err = await expect_error(_delete(stubs, ms.name), Code.FAILED_PRECONDITION, "MEASUREMENT_SET_HAS_IMAGES")
    _assert_identifies(err, ms.name, ms.path)
    assert error_info(err).metadata["image_count"] == "2"
    assert (await _get(stubs, ms.name)).image_count == 2
    response = await stubs.images.BatchGetImages(images_pb2.BatchGetImagesRequest(names=[i.name for i in images]))
    assert list(response.images) == images


async def test_force_delete_removes_images_and_photometry_and_recomputes_sources(stubs: Any) -> None:
    doomed = await make_ms(stubs, mid_mjd=60976.5)
    kept = await make_ms(stubs, mid_mjd=60978.5)
    doomed_images = [await make_image(stubs, doomed.name, mid_mjd=0.0) for _ in range(2)]
    kept_image = await make_image(stubs, kept.name, mid_mjd=0.0)
    await record_photometry(stubs, doomed_images[0].name, [("J1200+5400", 1.0), ("J1201+5400", 4.0)])
    await record_photometry(stubs, doomed_images[1].name, [("J1200+5400", 2.0)])
    await record_photometry(stubs, kept_image.name, [("J1200+5400", 6.0)])
    assert (await get_source(stubs, "J1200+5400")).detection_count == 3

    await _delete(stubs, doomed.name, force=True)
    await expect_error(_get(stubs, doomed.name), Code.NOT_FOUND, "MEASUREMENT_SET_NOT_FOUND")
    for img in doomed_images:
        await expect_error(
            stubs.images.GetImage(images_pb2.GetImageRequest(name=img.name)), Code.NOT_FOUND, "IMAGE_NOT_FOUND"
        )
    listed = await stubs.images.ListImages(images_pb2.ListImagesRequest())
    assert [i.name for i in listed.images] == [kept_image.name]
    source = await get_source(stubs, "J1200+5400")
    assert source.detection_count == 1
    assert source.variability.mean_flux_jy == pytest.approx(6.0)
    assert source.first_detection_mjd == pytest.approx(60978.5) == source.last_detection_mjd
    assert (await get_source(stubs, "J1201+5400")).detection_count == 0
    assert (await _get(stubs, kept.name)).image_count == 1
    # Images can no longer be registered on the deleted MS.
    await expect_error(make_image(stubs, doomed.name), Code.NOT_FOUND, "MEASUREMENT_SET_NOT_FOUND")


async def test_force_delete_without_images(stubs: Any) -> None:
    ms = await make_ms(stubs)
    await _delete(stubs, ms.path, force=True)
    assert await list_all_ms(stubs) == []


async def test_replaying_a_request_after_the_delete_recreates_nothing(stubs: Any) -> None:
    """A request_id replayed after its MS was deleted answers with its first result (AIP-155: the
    client most likely never received it) and recreates nothing."""
    create = pb.CreateMeasurementSetRequest(measurement_set=ms_message(), request_id=new_request_id())
    created = await stubs.ms.CreateMeasurementSet(create)
    upsert_rid, advance_rid = new_request_id(), new_request_id()
    upserted = await _update(stubs, ms_message(created.path, field_name="x"), ["field_name"], request_id=upsert_rid)
    advanced = await _advance(stubs, created.name, MS.STAGE_FLAGGED, request_id=advance_rid)
    await _delete(stubs, created.name)
    replays = [
        (lambda: stubs.ms.CreateMeasurementSet(create), created),
        (
            lambda: _update(stubs, ms_message(created.path, field_name="x"), ["field_name"], request_id=upsert_rid),
            upserted,
        ),
        (lambda: _advance(stubs, created.name, MS.STAGE_FLAGGED, request_id=advance_rid), advanced),
    ]
    for replay, first in replays:
        assert await replay() == first
    assert created.path not in {m.path for m in await list_all_ms(stubs)}


async def test_images_without_mid_mjd_take_their_ms_one_when_it_comes(stubs: Any) -> None:
    """An image registered before its MS knows its mid-time carries the MS's once it is set, and so
    does its photometry; with no time anywhere, photometry is refused rather than dated MJD 0."""
    ms = await make_ms(stubs, mid_mjd=0.0, start_mjd=0.0, end_mjd=0.0)
    image = await make_image(stubs, ms.name, mid_mjd=0.0)
    other = await make_image(stubs, ms.name, mid_mjd=60111.5)
    assert image.mid_mjd == 0.0
    await expect_error(
        record_photometry(stubs, image.name, [("LATEMJD", 0.05)]),
        Code.FAILED_PRECONDITION,
        "OBSERVATION_TIME_UNKNOWN",
        resource=image.name,
    )
    assert (await stubs.images.GetImage(images_pb2.GetImageRequest(name=image.name))).photometry_count == 0

    await _update(stubs, ms_message(ms.path, mid_mjd=60100.5), ["mid_mjd"])
    updated = await stubs.images.GetImage(images_pb2.GetImageRequest(name=image.name))
    assert updated.mid_mjd == 60100.5 and updated.update_time.ToMicroseconds() > image.update_time.ToMicroseconds()
    assert (await stubs.images.GetImage(images_pb2.GetImageRequest(name=other.name))).mid_mjd == 60111.5
    await record_photometry(stubs, image.name, [("LATEMJD", 0.05)])
    source = await get_source(stubs, "LATEMJD")
    assert source.first_detection_mjd == source.last_detection_mjd == 60100.5

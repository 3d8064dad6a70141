"""ImageService over the real server: every RPC's happy path and its documented errors.

Pagination, filters and ordering of ListImages are covered in depth by test_pagination.py; here
ListImages gets its happy path and argument errors. SearchImages is checked against a brute-force
evaluation of domain/sky.py's footprint test over many random images.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import grpc
import pytest
from dsa110.contimg.server.domain import sky
from dsa110.contimg.v1 import images_pb2, measurement_sets_pb2

from helpers import (
    QA,
    Image,
    expect_error,
    get_source,
    image_id,
    image_message,
    list_all_images,
    make_image,
    make_ms,
    micros,
    new_request_id,
    record_photometry,
    unique_path,
    violation_fields,
)

ENGINES = ("sqlite", "postgres")
pb = images_pb2
Code = grpc.StatusCode
INVALID = Code.INVALID_ARGUMENT


async def _ms(stubs: Any, **fields: Any) -> measurement_sets_pb2.MeasurementSet:
    return await make_ms(stubs, **fields)


async def _get(stubs: Any, name: str) -> pb.Image:
    return await stubs.images.GetImage(pb.GetImageRequest(name=name))  # type: ignore[no-any-return]


async def _get_ms(stubs: Any, name: str) -> measurement_sets_pb2.MeasurementSet:
    return await stubs.ms.GetMeasurementSet(  # type: ignore[no-any-return]
        measurement_sets_pb2.GetMeasurementSetRequest(name=name)
    )


# ---------------------------------------------------------------------------------------------
# CreateImage / GetImage


async def test_create_then_get_round_trips_every_field(stubs: Any) -> None:
    ms = await _ms(stubs)
    sent = image_message(
        ms.name,
        type=Image.TYPE_PBCOR,
        pbcor=True,
        format="fits",
        qa=QA(
            grade=QA.GRADE_WARNING,
            summary="rms high",
            metrics={"rms_ratio": 1.7, "x_jy": 2e-3},
            source_count=17,
            peak_flux_jy=0.3,
        ),
    )
    created = await stubs.images.CreateImage(pb.CreateImageRequest(image=sent))
    assert created.name.startswith("images/") and image_id(created.name) > 0
    assert created.measurement_set == ms.name
    assert created.photometry_count == 0
    assert created.HasField("create_time") and created.update_time == created.create_time
    for field in (
        "path",
        "type",
        "format",
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
        "qa",
    ):
        assert getattr(created, field) == getattr(sent, field), field
    assert await _get(stubs, created.name) == created
    assert (await _get_ms(stubs, ms.name)).image_count == 1


async def test_create_defaults_format_and_copies_mid_mjd_from_the_ms(stubs: Any) -> None:
    ms = await _ms(stubs, mid_mjd=60977.25)
    created = await make_image(stubs, ms.name, mid_mjd=0.0, format="")
    assert created.mid_mjd == 60977.25
    assert created.format == "fits"
    explicit = await make_image(stubs, ms.name, mid_mjd=60980.5)
    assert explicit.mid_mjd == 60980.5


async def test_create_accepts_the_bare_ms_path_and_answers_the_canonical_name(stubs: Any) -> None:
    ms = await _ms(stubs, path="/stage/ms/2025-10-28T13:30:07.ms")
    assert ms.name == "measurementSets/%2Fstage%2Fms%2F2025-10-28T13%3A30%3A07.ms"
    created = await make_image(stubs, ms.path)
    assert created.measurement_set == ms.name
    assert (await _get_ms(stubs, ms.name)).image_count == 1


async def test_create_output_only_fields_are_ignored(stubs: Any) -> None:
    ms = await _ms(stubs)
    created = await make_image(stubs, ms.name, name="images/777", photometry_count=12)
    assert created.name != "images/777"
    assert created.photometry_count == 0


async def test_create_unknown_ms_is_not_found(stubs: Any) -> None:
    await expect_error(make_image(stubs, "/no/such/file.ms"), Code.NOT_FOUND, "MEASUREMENT_SET_NOT_FOUND")
    assert await list_all_images(stubs) == []


async def test_create_same_path_twice_is_already_exists(stubs: Any) -> None:
    ms = await _ms(stubs)
    path = unique_path("images", ".fits")
    first = await make_image(stubs, ms.name, path)
    await expect_error(make_image(stubs, ms.name, path, noise_jy=0.5), Code.ALREADY_EXISTS, "IMAGE_ALREADY_EXISTS")
    assert [i.name for i in await list_all_images(stubs)] == [first.name]
    assert (await _get_ms(stubs, ms.name)).image_count == 1
    other_ms = await _ms(stubs)  # the path is unique across measurement sets too
    await expect_error(make_image(stubs, other_ms.name, path), Code.ALREADY_EXISTS, "IMAGE_ALREADY_EXISTS")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"center_dec_deg": 91.0}, "image.center_dec_deg"),
        ({"center_dec_deg": -90.5}, "image.center_dec_deg"),
        ({"center_ra_deg": 360.0}, "image.center_ra_deg"),
        ({"center_ra_deg": -0.1}, "image.center_ra_deg"),
        ({"center_ra_deg": math.inf}, "image.center_ra_deg"),
        ({"noise_jy": math.nan}, "image.noise_jy"),
        ({"noise_jy": -1e-3}, "image.noise_jy"),
        ({"dynamic_range": math.inf}, "image.dynamic_range"),
        ({"beam_major_arcsec": math.nan}, "image.beam_major_arcsec"),
        ({"beam_pa_deg": 400.0}, "image.beam_pa_deg"),
        ({"cell_size_arcsec": -6.0}, "image.cell_size_arcsec"),
        ({"size_x_px": -1}, "image.size_x_px"),
        ({"size_y_px": 2_000_000}, "image.size_y_px"),
        ({"mid_mjd": 5.0}, "image.mid_mjd"),
        ({"mid_mjd": math.nan}, "image.mid_mjd"),
        ({"type": 42}, "image.type"),
        ({"format": "x" * 17}, "image.format"),
        ({"field_name": "a\x00b"}, "image.field_name"),
        ({"qa": QA(grade=9)}, "image.qa.grade"),
        ({"qa": QA(metrics={"rms": math.nan})}, "image.qa.metrics[rms]"),
        ({"qa": QA(metrics={f"m{i}": 1.0 for i in range(65)})}, "image.qa.metrics"),
        ({"qa": QA(source_count=-3)}, "image.qa.source_count"),
        ({"qa": QA(peak_flux_jy=math.inf)}, "image.qa.peak_flux_jy"),
        ({"path": ""}, "image.path"),
        ({"path": "relative/image.fits"}, "image.path"),
        ({"path": "/bad\nname.fits"}, "image.path"),
        ({"path": "/" + "x" * 1100}, "image.path"),
        ({"measurement_set": ""}, "image.measurement_set"),
        ({"measurement_set": "measurementSets/"}, "image.measurement_set"),
        ({"measurement_set": "measurementSets/a/b"}, "image.measurement_set"),
        ({"measurement_set": "ms/1"}, "image.measurement_set"),
    ],
)
async def test_create_invalid_argument_names_the_field(stubs: Any, overrides: dict[str, Any], field: str) -> None:
    ms = await _ms(stubs)
    fields = {"measurement_set": ms.name, **overrides}
    request = pb.CreateImageRequest(image=image_message(**fields))
    await expect_error(stubs.images.CreateImage(request), INVALID, "INVALID_ARGUMENT", field=field)
    assert await list_all_images(stubs) == []


async def test_create_reports_every_violation_at_once(stubs: Any) -> None:
    ms = await _ms(stubs)
    request = pb.CreateImageRequest(
        image=image_message(ms.name, center_ra_deg=400.0, center_dec_deg=-91.0, noise_jy=math.nan)
    )
    err = await expect_error(stubs.images.CreateImage(request), INVALID, "INVALID_ARGUMENT")
    assert set(violation_fields(err)) == {"image.center_ra_deg", "image.center_dec_deg", "image.noise_jy"}


async def test_create_without_image_is_invalid(stubs: Any) -> None:
    await expect_error(stubs.images.CreateImage(pb.CreateImageRequest()), INVALID, "INVALID_ARGUMENT", field="image")


async def test_create_with_request_id_is_idempotent(stubs: Any) -> None:
    ms = await _ms(stubs)
    request = pb.CreateImageRequest(image=image_message(ms.name), request_id=new_request_id())
    first = await stubs.images.CreateImage(request)
    again = await stubs.images.CreateImage(request)
    assert again == first
    assert [i.name for i in await list_all_images(stubs)] == [first.name]
    assert (await _get_ms(stubs, ms.name)).image_count == 1
    # Concurrent retries of one request also converge on one row.
    request2 = pb.CreateImageRequest(image=image_message(ms.name), request_id=new_request_id())
    results = await asyncio.gather(*(stubs.images.CreateImage(request2) for _ in range(8)))
    assert len({r.name for r in results}) == 1
    assert len(await list_all_images(stubs)) == 2


async def test_create_request_id_reused_with_a_different_body_is_aborted(stubs: Any) -> None:
    ms = await _ms(stubs)
    rid = new_request_id()
    first = await make_image(stubs, ms.name, request_id=rid)
    changed = pb.CreateImageRequest(
        image=image_message(ms.name, first.path, noise_jy=first.noise_jy * 2), request_id=rid
    )
    await expect_error(stubs.images.CreateImage(changed), Code.ABORTED, "REQUEST_ID_MISMATCH")
    other_path = pb.CreateImageRequest(image=image_message(ms.name), request_id=rid)
    await expect_error(stubs.images.CreateImage(other_path), Code.ABORTED, "REQUEST_ID_MISMATCH")
    assert [i.name for i in await list_all_images(stubs)] == [first.name]


async def test_ids_are_not_reused_so_a_retry_never_returns_another_image(stubs: Any) -> None:
    ms = await _ms(stubs)
    request = pb.CreateImageRequest(image=image_message(ms.name), request_id=new_request_id())
    first = await stubs.images.CreateImage(request)
    await stubs.images.DeleteImage(pb.DeleteImageRequest(name=first.name))
    other = await make_image(stubs, ms.name)
    assert image_id(other.name) > image_id(first.name)
    # A late retry of the first create answers with its first result (AIP-155), never with the
    # unrelated newer image, and does not create the deleted one again.
    assert await stubs.images.CreateImage(request) == first
    assert [i.name for i in await list_all_images(stubs)] == [other.name]


@pytest.mark.parametrize("request_id", ["not a uuid", "x" * 65, "id/with/slash"])
async def test_create_malformed_request_id_is_invalid(stubs: Any, request_id: str) -> None:
    ms = await _ms(stubs)
    request = pb.CreateImageRequest(image=image_message(ms.name), request_id=request_id)
    await expect_error(stubs.images.CreateImage(request), INVALID, "INVALID_ARGUMENT", field="request_id")


async def test_get_missing_is_not_found(stubs: Any) -> None:
    await expect_error(_get(stubs, "images/999999"), Code.NOT_FOUND, "IMAGE_NOT_FOUND", resource="images/999999")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "images/",
        "images/0",
        "images/-1",
        "images/abc",
        "image/1",
        "images/1/x",
        "images/01",
        "images/1 ",
        "images/1\n",
        "images/99999999999999999999",
        "sources/1",
        "images/9223372036854775808",
    ],
)
async def test_get_malformed_name_is_invalid(stubs: Any, name: str) -> None:
    await expect_error(_get(stubs, name), INVALID, "INVALID_ARGUMENT", field="name")


# ---------------------------------------------------------------------------------------------
# BatchGetImages


async def test_batch_get_preserves_order_and_duplicates(stubs: Any) -> None:
    ms = await _ms(stubs)
    a, b, c = [await make_image(stubs, ms.name, noise_jy=n) for n in (0.1, 0.2, 0.3)]
    names = [c.name, a.name, c.name, b.name, a.name]
    response = await stubs.images.BatchGetImages(pb.BatchGetImagesRequest(names=names))
    assert [i.name for i in response.images] == names
    assert [i.noise_jy for i in response.images] == [0.3, 0.1, 0.3, 0.2, 0.1]
    assert response.images[0] == c and response.images[1] == a
    single = await stubs.images.BatchGetImages(pb.BatchGetImagesRequest(names=[b.name]))
    assert list(single.images) == [b]


async def test_batch_get_is_atomic_and_names_the_first_missing(stubs: Any) -> None:
    ms = await _ms(stubs)
    a = await make_image(stubs, ms.name)
    request = pb.BatchGetImagesRequest(names=[a.name, "images/900001", a.name, "images/900002"])
    await expect_error(
        stubs.images.BatchGetImages(request), Code.NOT_FOUND, "IMAGE_NOT_FOUND", resource="images/900001"
    )


@pytest.mark.parametrize(
    ("names", "field"),
    [
        ([], "names"),
        (["images/1"] * 1001, "names"),
        (["images/1", "images/2", "images/x"], "names[2]"),
        (["nope"], "names[0]"),
    ],
)
async def test_batch_get_invalid(stubs: Any, names: list[str], field: str) -> None:
    await expect_error(
        stubs.images.BatchGetImages(pb.BatchGetImagesRequest(names=names)), INVALID, "INVALID_ARGUMENT", field=field
    )


async def test_batch_get_accepts_1000_names(stubs: Any) -> None:
    ms = await _ms(stubs)
    a = await make_image(stubs, ms.name)
    response = await stubs.images.BatchGetImages(pb.BatchGetImagesRequest(names=[a.name] * 1000))
    assert len(response.images) == 1000 and all(i == a for i in response.images)


# ---------------------------------------------------------------------------------------------
# ListImages (happy path and argument errors; see test_pagination.py for the rest)


async def test_list_default_order_is_newest_first_and_filters_by_ms(stubs: Any) -> None:
    ms1, ms2 = await _ms(stubs), await _ms(stubs)
    made = [await make_image(stubs, ms.name) for ms in (ms1, ms2, ms1, ms2, ms1)]
    response = await stubs.images.ListImages(pb.ListImagesRequest())
    assert [i.name for i in response.images] == [i.name for i in reversed(made)]
    assert response.total_size == 5 and response.next_page_token == ""
    for ref in (ms1.name, ms1.path):
        only = await stubs.images.ListImages(pb.ListImagesRequest(filter=f'measurement_set = "{ref}"'))
        assert [i.name for i in only.images] == [made[4].name, made[2].name, made[0].name]
        assert only.total_size == 3
    others = await stubs.images.ListImages(pb.ListImagesRequest(filter=f'measurement_set != "{ms1.name}"'))
    assert {i.name for i in others.images} == {made[1].name, made[3].name}
    nothing = await stubs.images.ListImages(pb.ListImagesRequest(filter='measurement_set = "/not/there.ms"'))
    assert list(nothing.images) == [] and nothing.total_size == 0


async def test_list_page_size_default_and_small_pages(stubs: Any) -> None:
    ms = await _ms(stubs)
    await asyncio.gather(*(make_image(stubs, ms.name) for _ in range(55)))
    first = await stubs.images.ListImages(pb.ListImagesRequest())
    assert len(first.images) == 50 and first.total_size == 55 and first.next_page_token
    rest = await stubs.images.ListImages(pb.ListImagesRequest(page_token=first.next_page_token, page_size=100))
    assert len(rest.images) == 5 and rest.next_page_token == ""
    huge = await stubs.images.ListImages(pb.ListImagesRequest(page_size=2**31 - 1))
    assert len(huge.images) == 55 and huge.next_page_token == ""


async def test_list_negative_page_size_is_invalid(stubs: Any) -> None:
    await expect_error(
        stubs.images.ListImages(pb.ListImagesRequest(page_size=-1)), INVALID, "INVALID_ARGUMENT", field="page_size"
    )


@pytest.mark.parametrize(
    "filter_",
    [
        "bogus = 1",
        'path = "/x"',
        "photometry_count > 0",
        "noise_jy <",
        "noise_jy < abc",
        "noise_jy < nan",
        "type > CONTINUUM",
        "type = SPECTRAL",
        "qa.grade = EXCELLENT",
        "pbcor = maybe",
        "mid_mjd > 1 OR",  # OR, NOT and parentheses are valid (test_filter_grammar.py), not dangling or unbalanced
        "(mid_mjd > 1 OR noise_jy < 2",
        "NOT mid_mjd",
        "mid_mjd > 1 AND",
        "mid_mjd > 1 noise_jy < 2",
        'create_time > "yesterday"',
        'create_time > "2025-01-01T00:00:00"',
        'measurement_set = "relative.ms"',
        'measurement_set > "/a.ms"',
        'field_name = "\\ud800"',  # a lone surrogate: decodes from JSON, but is not text
        'measurement_set = "/a\\udc00.ms"',
        "= 3",
        "noise_jy ~ 3",
        "x" * 2049,
    ],
)
async def test_list_bad_filter_is_invalid_filter(stubs: Any, filter_: str) -> None:
    await expect_error(
        stubs.images.ListImages(pb.ListImagesRequest(filter=filter_)), INVALID, "INVALID_FILTER", field="filter"
    )


@pytest.mark.parametrize(
    "order_by",
    [
        "bogus",
        "noise_jy sideways",
        "noise_jy desc extra",
        "path",
        "qa.grade",
        "frequency_ghz",
        "noise_jy, noise_jy desc",
        "noise_jy,",
        ",",
    ],
)
async def test_list_bad_order_by_is_invalid_order_by(stubs: Any, order_by: str) -> None:
    await expect_error(
        stubs.images.ListImages(pb.ListImagesRequest(order_by=order_by)), INVALID, "INVALID_ORDER_BY", field="order_by"
    )


# ---------------------------------------------------------------------------------------------
# UpdateImage


async def test_update_qa_grade_changes_only_the_grade(stubs: Any) -> None:
    ms = await _ms(stubs)
    before = await make_image(stubs, ms.name)
    change = image_message(
        ms.name,
        before.path,
        name=before.name,
        noise_jy=9.0,
        center_dec_deg=-10.0,
        qa=QA(grade=QA.GRADE_BAD, summary="changed", metrics={"other": 3.0}, source_count=1),
    )
    after = await stubs.images.UpdateImage(pb.UpdateImageRequest(image=change, update_mask={"paths": ["qa.grade"]}))
    assert after.qa.grade == QA.GRADE_BAD
    expected = pb.Image()
    expected.CopyFrom(before)
    expected.qa.grade = QA.GRADE_BAD
    expected.update_time.CopyFrom(after.update_time)
    assert after == expected
    assert micros(after.update_time) >= micros(before.update_time)
    assert await _get(stubs, before.name) == after


async def test_update_whole_qa_replaces_the_sub_message(stubs: Any) -> None:
    ms = await _ms(stubs)
    before = await make_image(stubs, ms.name)
    change = pb.Image(name=before.name, qa=QA(grade=QA.GRADE_WARNING, metrics={"k": 2.0}))
    after = await stubs.images.UpdateImage(pb.UpdateImageRequest(image=change, update_mask={"paths": ["qa"]}))
    assert after.qa == QA(grade=QA.GRADE_WARNING, metrics={"k": 2.0})
    assert after.noise_jy == before.noise_jy and after.path == before.path


async def test_update_several_fields_and_default_values_under_the_mask(stubs: Any) -> None:
    ms = await _ms(stubs)
    before = await make_image(stubs, ms.name, pbcor=True)
    change = pb.Image(
        name=before.name,
        noise_jy=0.004,
        type=Image.TYPE_CLEAN,
        pbcor=False,
        qa=QA(summary="rerun", metrics={"a": 1.0, "b": -2.5}),
    )
    after = await stubs.images.UpdateImage(
        pb.UpdateImageRequest(
            image=change, update_mask={"paths": ["noise_jy", "type", "pbcor", "qa.summary", "qa.metrics"]}
        )
    )
    assert (after.noise_jy, after.type, after.pbcor) == (0.004, Image.TYPE_CLEAN, False)
    assert after.qa.summary == "rerun" and dict(after.qa.metrics) == {"a": 1.0, "b": -2.5}
    assert after.qa.grade == before.qa.grade and after.qa.source_count == before.qa.source_count
    assert after.dynamic_range == before.dynamic_range and after.mid_mjd == before.mid_mjd
    assert after.create_time == before.create_time and after.measurement_set == before.measurement_set


async def test_update_values_outside_the_mask_are_ignored_even_if_invalid(stubs: Any) -> None:
    ms = await _ms(stubs)
    before = await make_image(stubs, ms.name)
    change = pb.Image(name=before.name, center_dec_deg=95.0, noise_jy=math.nan, dynamic_range=7.0)
    after = await stubs.images.UpdateImage(
        pb.UpdateImageRequest(image=change, update_mask={"paths": ["dynamic_range"]})
    )
    assert after.dynamic_range == 7.0
    assert after.center_dec_deg == before.center_dec_deg and after.noise_jy == before.noise_jy


async def test_update_geometry_moves_the_footprint(stubs: Any) -> None:
    ms = await _ms(stubs)
    img = await make_image(stubs, ms.name, center_ra_deg=10.0, center_dec_deg=20.0)
    found = await stubs.images.SearchImages(pb.SearchImagesRequest(ra_deg=10.0, dec_deg=20.0))
    assert [m.image.name for m in found.matches] == [img.name]
    await stubs.images.UpdateImage(
        pb.UpdateImageRequest(
            image=pb.Image(name=img.name, center_ra_deg=200.0, center_dec_deg=-30.0),
            update_mask={"paths": ["center_ra_deg", "center_dec_deg"]},
        )
    )
    old = await stubs.images.SearchImages(pb.SearchImagesRequest(ra_deg=10.0, dec_deg=20.0))
    new = await stubs.images.SearchImages(pb.SearchImagesRequest(ra_deg=200.0, dec_deg=-30.0))
    assert list(old.matches) == [] and [m.image.name for m in new.matches] == [img.name]
    await stubs.images.UpdateImage(
        pb.UpdateImageRequest(image=pb.Image(name=img.name, size_x_px=0), update_mask={"paths": ["size_x_px"]})
    )
    gone = await stubs.images.SearchImages(pb.SearchImagesRequest(ra_deg=200.0, dec_deg=-30.0))
    assert list(gone.matches) == []


async def test_update_missing_image_is_not_found(stubs: Any) -> None:
    request = pb.UpdateImageRequest(
        image=pb.Image(name="images/123456", noise_jy=1.0), update_mask={"paths": ["noise_jy"]}
    )
    await expect_error(stubs.images.UpdateImage(request), Code.NOT_FOUND, "IMAGE_NOT_FOUND", resource="images/123456")


@pytest.mark.parametrize(
    ("paths", "field"),
    [
        ([], "update_mask"),
        (["bogus"], "update_mask.paths[0]"),
        (["noise_jy", "path"], "update_mask.paths[1]"),
        (["measurement_set"], "update_mask.paths[0]"),
        (["name"], "update_mask.paths[0]"),
        (["create_time"], "update_mask.paths[0]"),
        (["update_time"], "update_mask.paths[0]"),
        (["photometry_count"], "update_mask.paths[0]"),
        (["qa.bogus"], "update_mask.paths[0]"),
        (["*"], "update_mask.paths[0]"),
    ],
)
async def test_update_bad_mask_is_invalid(stubs: Any, paths: list[str], field: str) -> None:
    ms = await _ms(stubs)
    img = await make_image(stubs, ms.name)
    request = pb.UpdateImageRequest(
        image=pb.Image(name=img.name, noise_jy=1.0, path="/x"), update_mask={"paths": paths}
    )
    await expect_error(stubs.images.UpdateImage(request), INVALID, "INVALID_ARGUMENT", field=field)
    assert await _get(stubs, img.name) == img


@pytest.mark.parametrize(
    ("change", "path", "field"),
    [
        (pb.Image(center_dec_deg=91.0), "center_dec_deg", "image.center_dec_deg"),
        (pb.Image(noise_jy=math.nan), "noise_jy", "image.noise_jy"),
        (pb.Image(qa=QA(grade=7)), "qa.grade", "image.qa.grade"),
        (pb.Image(qa=QA(grade=7)), "qa", "image.qa.grade"),
        (pb.Image(type=99), "type", "image.type"),
    ],
)
async def test_update_invalid_value_under_the_mask(stubs: Any, change: pb.Image, path: str, field: str) -> None:
    ms = await _ms(stubs)
    img = await make_image(stubs, ms.name)
    change.name = img.name
    request = pb.UpdateImageRequest(image=change, update_mask={"paths": [path]})
    await expect_error(stubs.images.UpdateImage(request), INVALID, "INVALID_ARGUMENT", field=field)
    assert await _get(stubs, img.name) == img


@pytest.mark.parametrize("name", ["", "images/0", "images/x", "measurementSets/%2Fa"])
async def test_update_malformed_name_is_invalid(stubs: Any, name: str) -> None:
    request = pb.UpdateImageRequest(image=pb.Image(name=name, noise_jy=1.0), update_mask={"paths": ["noise_jy"]})
    await expect_error(stubs.images.UpdateImage(request), INVALID, "INVALID_ARGUMENT", field="image.name")


async def test_update_without_image_is_invalid(stubs: Any) -> None:
    await expect_error(
        stubs.images.UpdateImage(pb.UpdateImageRequest(update_mask={"paths": ["noise_jy"]})),
        INVALID,
        "INVALID_ARGUMENT",
        field="image",
    )


async def test_update_with_request_id(stubs: Any) -> None:
    ms = await _ms(stubs)
    img = await make_image(stubs, ms.name)
    rid = new_request_id()
    request = pb.UpdateImageRequest(
        image=pb.Image(name=img.name, noise_jy=0.5), update_mask={"paths": ["noise_jy"]}, request_id=rid
    )
    first = await stubs.images.UpdateImage(request)
    assert first.noise_jy == 0.5
    # Someone else changes the image; a retry of the first request must not write again.
    await stubs.images.UpdateImage(
        pb.UpdateImageRequest(image=pb.Image(name=img.name, noise_jy=0.7), update_mask={"paths": ["noise_jy"]})
    )
    retry = await stubs.images.UpdateImage(request)
    assert retry == first  # the first result, as it was then (AIP-155); the image keeps 0.7 (below)
    changed = pb.UpdateImageRequest(
        image=pb.Image(name=img.name, noise_jy=0.9), update_mask={"paths": ["noise_jy"]}, request_id=rid
    )
    await expect_error(stubs.images.UpdateImage(changed), Code.ABORTED, "REQUEST_ID_MISMATCH")
    assert (await _get(stubs, img.name)).noise_jy == 0.7


# ---------------------------------------------------------------------------------------------
# DeleteImage


async def test_delete_removes_the_image_everywhere(stubs: Any) -> None:
    ms = await _ms(stubs)
    keep = await make_image(stubs, ms.name)
    img = await make_image(stubs, ms.name, center_ra_deg=keep.center_ra_deg + 0.5)
    await stubs.images.DeleteImage(pb.DeleteImageRequest(name=img.name))
    await expect_error(_get(stubs, img.name), Code.NOT_FOUND, "IMAGE_NOT_FOUND", resource=img.name)
    assert [i.name for i in await list_all_images(stubs)] == [keep.name]
    found = await stubs.images.SearchImages(
        pb.SearchImagesRequest(ra_deg=keep.center_ra_deg + 0.5, dec_deg=keep.center_dec_deg)
    )
    assert [m.image.name for m in found.matches] == [keep.name]
    assert (await _get_ms(stubs, ms.name)).image_count == 1
    # The path can be registered again afterwards.
    again = await make_image(stubs, ms.name, img.path)
    assert again.name != img.name and again.path == img.path
    await expect_error(
        stubs.images.DeleteImage(pb.DeleteImageRequest(name=img.name)),
        Code.NOT_FOUND,
        "IMAGE_NOT_FOUND",
        resource=img.name,
    )


@pytest.mark.parametrize("name", ["", "images/0", "images/abc", "img/1"])
async def test_delete_malformed_name_is_invalid(stubs: Any, name: str) -> None:
    await expect_error(
        stubs.images.DeleteImage(pb.DeleteImageRequest(name=name)), INVALID, "INVALID_ARGUMENT", field="name"
    )


async def test_delete_with_photometry_needs_force_and_recomputes_sources(stubs: Any) -> None:
    ms = await _ms(stubs)
    first = await make_image(stubs, ms.name, mid_mjd=60976.5)
    second = await make_image(stubs, ms.name, mid_mjd=60977.5)
    await record_photometry(stubs, first.name, [("J0001+5400", 1.0), ("J0002+5400", 5.0)])
    await record_photometry(stubs, second.name, [("J0001+5400", 3.0)])
    source = await get_source(stubs, "J0001+5400")
    assert source.detection_count == 2 and source.variability.mean_flux_jy == pytest.approx(2.0)
    assert (await _get(stubs, first.name)).photometry_count == 2

    err = await expect_error(
        stubs.images.DeleteImage(pb.DeleteImageRequest(name=first.name)),
        Code.FAILED_PRECONDITION,
        "IMAGE_HAS_PHOTOMETRY",
        resource=first.name,
    )
    assert "force" in err.details()
    assert (await _get(stubs, first.name)).photometry_count == 2
    assert (await get_source(stubs, "J0001+5400")).detection_count == 2

    await stubs.images.DeleteImage(pb.DeleteImageRequest(name=first.name, force=True))
    await expect_error(_get(stubs, first.name), Code.NOT_FOUND, "IMAGE_NOT_FOUND")
    source = await get_source(stubs, "J0001+5400")
    assert source.detection_count == 1
    assert source.variability.mean_flux_jy == pytest.approx(3.0)
    assert source.first_detection_mjd == pytest.approx(60977.5)
    assert source.last_detection_mjd == pytest.approx(60977.5)
    orphan = await get_source(stubs, "J0002+5400")
    assert orphan.detection_count == 0 and orphan.variability.epoch_count == 0
    assert (await _get_ms(stubs, ms.name)).image_count == 1
    # The remaining image's photometry is untouched.
    assert (await _get(stubs, second.name)).photometry_count == 1


async def test_force_delete_without_photometry_is_a_plain_delete(stubs: Any) -> None:
    ms = await _ms(stubs)
    img = await make_image(stubs, ms.name)
    await stubs.images.DeleteImage(pb.DeleteImageRequest(name=img.name, force=True))
    assert await list_all_images(stubs) == []


# ---------------------------------------------------------------------------------------------
# SearchImages


def _expected_search(images: list[pb.Image], ra: float, dec: float) -> list[tuple[str, float]]:
    hits = sorted(
        (sky.separation_deg(ra, dec, i.center_ra_deg, i.center_dec_deg), image_id(i.name), i.name)
        for i in images
        if sky.footprint_contains(
            i.center_ra_deg, i.center_dec_deg, i.size_x_px, i.size_y_px, i.cell_size_arcsec, ra, dec
        )
    )
    return [(name, sep) for sep, _, name in hits]


async def _search_all(
    stubs: Any, ra: float, dec: float, *, filter: str = "", page_size: int = 1000
) -> tuple[list[pb.ImageMatch], int]:
    out: list[pb.ImageMatch] = []
    token = ""
    totals = set()
    while True:
        page = await stubs.images.SearchImages(
            pb.SearchImagesRequest(ra_deg=ra, dec_deg=dec, filter=filter, page_size=page_size, page_token=token)
        )
        out.extend(page.matches)
        totals.add(page.total_size)
        token = page.next_page_token
        if not token:
            assert len(totals) == 1, totals
            return out, totals.pop()


def _random_sky_images(rng: random.Random, ms_name: str) -> list[pb.Image]:
    """Images clustered on a few spots (so positions fall on many of them): RA wrap, pole, strips."""
    spots = [(0.0, 16.27), (359.7, 54.57), (0.3, -30.0), (123.4, 54.57), (200.0, 86.5), (45.0, 89.7), (310.0, -88.0)]
    out = []
    for i in range(160):
        ra0, dec0 = spots[i % len(spots)]
        dec = max(-90.0, min(90.0, dec0 + rng.uniform(-3.0, 3.0)))
        ra = (ra0 + rng.uniform(-4.0, 4.0)) % 360.0
        size_x, size_y = rng.randrange(256, 4096), rng.randrange(256, 4096)
        cell = rng.choice([1.5, 3.0, 6.0, 10.0, 20.0])
        if i % 23 == 0:
            size_x = 0  # no geometry: never found
        out.append(
            image_message(
                ms_name,
                center_ra_deg=ra,
                center_dec_deg=dec,
                size_x_px=size_x,
                size_y_px=size_y,
                cell_size_arcsec=cell,
                type=rng.choice([Image.TYPE_CONTINUUM, Image.TYPE_CLEAN]),
                noise_jy=rng.choice([0.001, 0.002]),
            )
        )
    return out


def _query_points(rng: random.Random, images: list[pb.Image]) -> list[tuple[float, float]]:
    points = [
        (0.0, 16.27),
        (359.95, 16.0),
        (0.05, 54.57),
        (359.99, 54.57),
        (0.0, -30.0),
        (359.9, -30.2),
        (200.0, 90.0),
        (17.0, 89.99),
        (290.0, 88.5),
        (45.0, 89.7),
        (310.0, -90.0),
        (130.0, -89.5),
        (123.4, 54.57),
        (180.0, 0.0),
        (90.0, -45.0),
    ]
    for img in rng.sample(images, 25):  # near image corners and edges: where the footprint test matters
        half = img.size_x_px * img.cell_size_arcsec / 3600.0 / 2.0
        dec = max(-90.0, min(90.0, img.center_dec_deg + rng.uniform(-1.2, 1.2) * half))
        cos_dec = max(math.cos(math.radians(dec)), 0.05)
        ra = (img.center_ra_deg + rng.uniform(-1.2, 1.2) * half / cos_dec) % 360.0
        points.append((ra, dec))
    return points


async def test_search_matches_brute_force_footprints(stubs: Any) -> None:
    rng = random.Random(20251028)
    ms = await _ms(stubs)
    sent = _random_sky_images(rng, ms.name)
    images = list(await asyncio.gather(*(stubs.images.CreateImage(pb.CreateImageRequest(image=m)) for m in sent)))
    non_empty = 0
    for ra, dec in _query_points(rng, images):
        expected = _expected_search(images, ra, dec)
        matches, total = await _search_all(stubs, ra, dec)
        assert [m.image.name for m in matches] == [name for name, _ in expected], (ra, dec)
        assert total == len(expected)
        for match, (_, sep) in zip(matches, expected, strict=True):
            assert match.separation_deg == pytest.approx(sep, abs=1e-9)
        non_empty += bool(expected)
        # Paging through small pages yields the same sequence.
        if len(expected) > 3:
            paged, paged_total = await _search_all(stubs, ra, dec, page_size=2)
            assert [m.image.name for m in paged] == [name for name, _ in expected]
            assert paged_total == len(expected)
        # The filter restricts the same matches.
        filtered, _ = await _search_all(stubs, ra, dec, filter="type = CLEAN AND noise_jy < 0.0015")
        wanted = {i.name for i in images if i.type == Image.TYPE_CLEAN and i.noise_jy < 0.0015}
        assert [m.image.name for m in filtered] == [name for name, _ in expected if name in wanted]
    assert non_empty >= 25, "the random layout should put most query points on images"


async def test_search_across_ra_wrap_and_pole(stubs: Any) -> None:
    ms = await _ms(stubs)
    # 2 x 2 degree image centred just east of RA 0: covers RA 359..1.
    wrap = await make_image(
        stubs, ms.name, center_ra_deg=0.2, center_dec_deg=0.0, size_x_px=1200, size_y_px=1200, cell_size_arcsec=6.0
    )
    # Polar cap image: the pole lies on it, so every RA at dec 89.9 does too.
    polar = await make_image(
        stubs, ms.name, center_ra_deg=77.0, center_dec_deg=90.0, size_x_px=1200, size_y_px=1200, cell_size_arcsec=6.0
    )
    for ra in (359.0 + 0.25, 359.99, 0.0, 1.0):
        names = [
            m.image.name
            for m in (await stubs.images.SearchImages(pb.SearchImagesRequest(ra_deg=ra, dec_deg=0.5))).matches
        ]
        assert names == [wrap.name], ra
    outside = await stubs.images.SearchImages(pb.SearchImagesRequest(ra_deg=358.9, dec_deg=0.0))
    assert list(outside.matches) == []
    for ra in (0.0, 90.0, 180.0, 270.0, 359.999):
        found = await stubs.images.SearchImages(pb.SearchImagesRequest(ra_deg=ra, dec_deg=89.5))
        assert [m.image.name for m in found.matches] == [polar.name], ra
        assert found.matches[0].separation_deg == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize(
    ("ra", "dec", "field"),
    [
        (360.0, 0.0, "ra_deg"),
        (-0.5, 0.0, "ra_deg"),
        (math.nan, 0.0, "ra_deg"),
        (0.0, 90.5, "dec_deg"),
        (0.0, -91.0, "dec_deg"),
        (0.0, math.inf, "dec_deg"),
    ],
)
async def test_search_position_out_of_range_is_invalid(stubs: Any, ra: float, dec: float, field: str) -> None:
    await expect_error(
        stubs.images.SearchImages(pb.SearchImagesRequest(ra_deg=ra, dec_deg=dec)),
        INVALID,
        "INVALID_ARGUMENT",
        field=field,
    )


async def test_search_argument_errors(stubs: Any) -> None:
    await expect_error(
        stubs.images.SearchImages(pb.SearchImagesRequest(ra_deg=1.0, page_size=-2)),
        INVALID,
        "INVALID_ARGUMENT",
        field="page_size",
    )
    await expect_error(
        stubs.images.SearchImages(pb.SearchImagesRequest(ra_deg=1.0, filter="radius < 2")),
        INVALID,
        "INVALID_FILTER",
        field="filter",
    )
    await expect_error(
        stubs.images.SearchImages(pb.SearchImagesRequest(ra_deg=1.0, page_token="abc")),
        INVALID,
        "INVALID_PAGE_TOKEN",
        field="page_token",
    )


async def test_search_token_is_bound_to_the_position(stubs: Any) -> None:
    ms = await _ms(stubs)
    await asyncio.gather(
        *(make_image(stubs, ms.name, center_ra_deg=100.0 + i * 0.01, center_dec_deg=10.0) for i in range(5))
    )
    page = await stubs.images.SearchImages(pb.SearchImagesRequest(ra_deg=100.0, dec_deg=10.0, page_size=2))
    assert len(page.matches) == 2 and page.total_size == 5 and page.next_page_token
    for moved in (
        pb.SearchImagesRequest(ra_deg=100.01, dec_deg=10.0),
        pb.SearchImagesRequest(ra_deg=100.0, dec_deg=10.1),
        pb.SearchImagesRequest(ra_deg=100.0, dec_deg=10.0, filter="noise_jy > 0"),
    ):
        moved.page_token = page.next_page_token
        await expect_error(stubs.images.SearchImages(moved), INVALID, "INVALID_PAGE_TOKEN", field="page_token")
    # Token from ListImages is not a SearchImages token.
    listed = await stubs.images.ListImages(pb.ListImagesRequest(page_size=1))
    await expect_error(
        stubs.images.SearchImages(
            pb.SearchImagesRequest(ra_deg=100.0, dec_deg=10.0, page_token=listed.next_page_token)
        ),
        INVALID,
        "INVALID_PAGE_TOKEN",
        field="page_token",
    )

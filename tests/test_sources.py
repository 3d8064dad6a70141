"""SourceService over the real server: reads, list filters, photometry ingest, lightcurves, cone search.

Sources only come into being through RecordPhotometry, so every test first registers a measurement
set and images, then records photometry on them. Expectations are computed here, from the numbers
the test recorded, by straightforward code (two-pass statistics, brute-force cone membership).
"""

from __future__ import annotations

import math
import random
import uuid

import grpc
import pytest
from dsa110.contimg.server.domain.sky import separation_deg
from dsa110.contimg.server.storage.sqlite import database
from dsa110.contimg.v1 import images_pb2, sources_pb2

from conftest import make_stubs
from helpers_jobs import (
    Epoch,
    assert_stats,
    expect_error,
    expected_stats,
    make_image,
    make_images,
    make_ms,
    measurement,
    record,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
ENGINES = ("sqlite", "postgres")


# ---- GetSource / BatchGetSources ------------------------------------------------------------------


async def test_get_and_batch_get_sources(stubs):
    [img] = await make_images(stubs, [60100.25], "get")
    positions = {f"SRC{i:03d}": (120.0 + i, 50.0 + i / 10) for i in range(5)}
    resp = await record(
        stubs,
        img.name,
        [measurement(s, ra, dec, flux=0.01 * (i + 1)) for i, (s, (ra, dec)) in enumerate(positions.items())],
    )
    assert (resp.recorded_count, resp.created_source_count, resp.updated_source_count) == (5, 5, 0)

    src = await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/SRC002"))
    assert src.name == "sources/SRC002"
    assert (src.ra_deg, src.dec_deg) == positions["SRC002"]
    assert src.detection_count == 1
    assert src.first_detection_mjd == src.last_detection_mjd == 60100.25  # taken from the image
    assert src.variability.mean_flux_jy == pytest.approx(0.03)
    assert src.designation.startswith("J08") and "+50" in src.designation  # RA 122 deg = 8h08m
    assert src.HasField("create_time") and src.HasField("update_time")

    wanted = ["sources/SRC004", "sources/SRC000", "sources/SRC003", "sources/SRC000"]
    batch = await stubs.sources.BatchGetSources(sources_pb2.BatchGetSourcesRequest(names=wanted))
    assert [s.name for s in batch.sources] == wanted

    # Atomic: any missing name fails the whole call, naming the first missing one.
    err = await expect_error(
        stubs.sources.BatchGetSources(
            sources_pb2.BatchGetSourcesRequest(
                names=["sources/SRC001", "sources/NOPE1", "sources/SRC002", "sources/NOPE2"]
            )
        ),
        NOT_FOUND,
        "SOURCE_NOT_FOUND",
    )
    assert err.metadata["resource"] == "sources/NOPE1"
    assert "NOPE1" in err.message

    err = await expect_error(
        stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/NOPE")), NOT_FOUND, "SOURCE_NOT_FOUND"
    )
    assert err.metadata["resource"] == "sources/NOPE"
    await expect_error(
        stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="SRC001")), INVALID, "INVALID_ARGUMENT", "name"
    )
    await expect_error(
        stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/bad id")),
        INVALID,
        "INVALID_ARGUMENT",
        "name",
    )
    await expect_error(
        stubs.sources.BatchGetSources(
            sources_pb2.BatchGetSourcesRequest(names=["sources/SRC001", "sources/has space"])
        ),
        INVALID,
        "INVALID_ARGUMENT",
        "names[1]",
    )
    await expect_error(
        stubs.sources.BatchGetSources(sources_pb2.BatchGetSourcesRequest()), INVALID, "INVALID_ARGUMENT", "names"
    )
    await expect_error(
        stubs.sources.BatchGetSources(sources_pb2.BatchGetSourcesRequest(names=["sources/SRC001"] * 1001)),
        INVALID,
        "INVALID_ARGUMENT",
        "names",
    )


# ---- RecordPhotometry -----------------------------------------------------------------------------


async def test_record_photometry_updates_statistics(stubs):
    rng = random.Random(7)
    mjds = [60200.0, 60201.5, 60203.25, 60207.0, 60210.0]
    images = await make_images(stubs, mjds, "stats")
    # Which images each source appears on: a steady one, strong variables, a single-epoch one...
    appears = {
        "STEADY": [0, 1, 2, 3, 4],
        "FLARE": [0, 1, 2, 3, 4],
        "SCATTER": [0, 2, 4],
        "PAIR": [1, 3],
        "ONCE": [2],
        "LATE": [3, 4],
        "FADE": [0, 1, 2, 3],
    }
    base = {"STEADY": 0.2, "FLARE": 0.05, "SCATTER": 0.3, "PAIR": 0.01, "ONCE": 0.7, "LATE": 0.02, "FADE": 1.0}
    history: dict[str, list[Epoch]] = {s: [] for s in appears}
    for i, img in enumerate(images):
        batch = []
        for sid, idx in appears.items():
            if i not in idx:
                continue
            if sid == "STEADY":
                flux = base[sid] * (1 + rng.uniform(-0.01, 0.01))
            elif sid == "FLARE":
                flux = base[sid] * (8.0 if i == 3 else 1 + rng.uniform(-0.05, 0.05))
            elif sid == "FADE":
                flux = base[sid] / (i + 1)
            else:
                flux = base[sid] * (1 + rng.uniform(-0.4, 0.4))
            err = base[sid] * rng.uniform(0.005, 0.05)
            batch.append(measurement(sid, 128.0 + len(batch), 55.0, flux=flux, err=err))
            history[sid].append(Epoch(flux, err, mjds[i]))
        seen_before = {s for s in batch_sources(batch) if any(j < i for j in appears[s])}
        resp = await record(stubs, img.name, batch)
        assert resp.image == img.name
        assert resp.recorded_count == len(batch)
        assert resp.created_source_count == len(batch) - len(seen_before)
        assert resp.updated_source_count == len(seen_before)
        # Statistics are current after every batch, not only at the end.
        got = await stubs.sources.BatchGetSources(sources_pb2.BatchGetSourcesRequest(names=[m.source for m in batch]))
        for src in got.sources:
            assert_stats(src, history[src.name.removeprefix("sources/")])
        image = await stubs.images.GetImage(images_pb2.GetImageRequest(name=img.name))
        assert image.photometry_count == len(batch)

    final = await stubs.sources.BatchGetSources(
        sources_pb2.BatchGetSourcesRequest(names=[f"sources/{s}" for s in appears])
    )
    by_id = {s.name.removeprefix("sources/"): s for s in final.sources}
    for sid, epochs in history.items():
        assert_stats(by_id[sid], epochs)
    assert by_id["FLARE"].variability.is_variable and by_id["FADE"].variability.is_variable
    assert not by_id["STEADY"].variability.is_variable
    assert not by_id["PAIR"].variability.is_variable  # fewer than 3 epochs, however variable
    assert by_id["ONCE"].variability.std_flux_jy == 0.0 and by_id["ONCE"].variability.sigma_deviation == 0.0


def batch_sources(batch: list[sources_pb2.PhotometryMeasurement]) -> list[str]:
    return [m.source.removeprefix("sources/") for m in batch]


async def test_record_photometry_is_atomic(stubs):
    img_a, img_b = await make_images(stubs, [60300.0, 60301.0], "atomic")
    await record(stubs, img_a.name, [measurement("OLD1", 10.0, 20.0, flux=0.1)])
    before = await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/OLD1"))

    batch = [measurement("OLD1", 10.0, 20.0, flux=0.5)] + [measurement(f"NEW{i}", 10.0 + i, 20.0) for i in range(1, 6)]
    batch[3].peak_flux_err_jy = 0.0  # the one bad measurement
    err = await expect_error(
        record(stubs, img_b.name, batch), INVALID, "INVALID_ARGUMENT", "measurements[3].peak_flux_err_jy"
    )
    assert err.fields == ["measurements[3].peak_flux_err_jy"]
    assert "measurements[3].peak_flux_err_jy" in err.message

    # Nothing was stored: no new source, the old one untouched, the image without photometry.
    await expect_error(
        stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/NEW1")), NOT_FOUND, "SOURCE_NOT_FOUND"
    )
    listed = await stubs.sources.ListSources(sources_pb2.ListSourcesRequest())
    assert [s.name for s in listed.sources] == ["sources/OLD1"] and listed.total_size == 1
    after = await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/OLD1"))
    assert after == before
    image = await stubs.images.GetImage(images_pb2.GetImageRequest(name=img_b.name))
    assert image.photometry_count == 0

    # Several problems are all reported, each with its own field path.
    bad = [
        measurement("X1", 400.0, 20.0),
        measurement("X2", 1.0, 20.0, flux=math.nan),
        measurement("X1", 2.0, 20.0),
        measurement("x y", 3.0, 20.0),
        measurement("X3\nsources/X4", 4.0, 20.0),  # two well-formed names, if split at the newline
        measurement("X5", 5.0, 20.0, flux=1e200),  # finite, but its square would overflow the sums
        measurement("X6", 6.0, 20.0),
    ]
    bad[6].peak_flux_err_jy = 1e-170  # > 0, but 1/err^2 would divide by zero
    err = await expect_error(record(stubs, img_b.name, bad), INVALID, "INVALID_ARGUMENT")
    assert {
        "measurements[0].ra_deg",
        "measurements[1].peak_flux_jy",
        "measurements[2].source",
        "measurements[3].source",
        "measurements[4].source",
        "measurements[5].peak_flux_jy",
        "measurements[6].peak_flux_err_jy",
    } <= set(err.fields)
    await expect_error(record(stubs, img_b.name, []), INVALID, "INVALID_ARGUMENT", "measurements")

    # The corrected batch then goes through in full.
    batch[3].peak_flux_err_jy = 0.002
    resp = await record(stubs, img_b.name, batch)
    assert (resp.recorded_count, resp.created_source_count, resp.updated_source_count) == (6, 5, 1)
    old = await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/OLD1"))
    assert old.detection_count == 2 and old.variability.mean_flux_jy == pytest.approx(0.3)


async def test_record_photometry_already_recorded_and_not_found(stubs):
    img, other = await make_images(stubs, [60400.0, 60401.0], "dup")
    first = await record(stubs, img.name, [measurement("A1", 1.0, 2.0), measurement("A2", 3.0, 4.0)])
    assert first.recorded_count == 2
    err = await expect_error(
        record(stubs, img.name, [measurement("A3", 5.0, 6.0)]),
        grpc.StatusCode.ALREADY_EXISTS,
        "PHOTOMETRY_ALREADY_RECORDED",
    )
    assert err.metadata["resource"] == img.name
    await expect_error(stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/A3")), NOT_FOUND)
    a1 = await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/A1"))
    assert a1.detection_count == 1

    err = await expect_error(
        record(stubs, "images/987654", [measurement("A4", 5.0, 6.0)]), NOT_FOUND, "IMAGE_NOT_FOUND"
    )
    assert err.metadata["resource"] == "images/987654"
    await expect_error(stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/A4")), NOT_FOUND)
    await expect_error(record(stubs, "img/1", [measurement("A4", 5.0, 6.0)]), INVALID, "INVALID_ARGUMENT", "image")
    # A different image is still free to take photometry.
    assert (await record(stubs, other.name, [measurement("A1", 1.0, 2.0)])).updated_source_count == 1


async def test_record_photometry_idempotent_retry(stubs):
    img_a, img_b = await make_images(stubs, [60500.0, 60501.0], "idem")
    await record(stubs, img_a.name, [measurement("R1", 1.0, 2.0, flux=0.1)])
    request_id = str(uuid.uuid4())
    batch = [measurement("R1", 1.0, 2.0, flux=0.3), measurement("R2", 3.0, 4.0, flux=0.2)]
    first = await record(stubs, img_b.name, batch, request_id=request_id)
    assert (first.recorded_count, first.created_source_count, first.updated_source_count) == (2, 1, 1)
    r1_after_first = await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/R1"))

    retry = await record(stubs, img_b.name, batch, request_id=request_id)
    assert retry == first  # the first result, not ALREADY_EXISTS
    r1 = await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/R1"))
    assert r1 == r1_after_first and r1.detection_count == 2
    points = [
        p
        async for msg in stubs.sources.GetLightcurve(sources_pb2.GetLightcurveRequest(name="sources/R1"))
        for p in msg.points
    ]
    assert len(points) == 2
    image = await stubs.images.GetImage(images_pb2.GetImageRequest(name=img_b.name))
    assert image.photometry_count == 2

    # The same key with a different body is refused; a new key hits the real duplicate check.
    await expect_error(
        record(stubs, img_b.name, batch[:1], request_id=request_id), grpc.StatusCode.ABORTED, "REQUEST_ID_MISMATCH"
    )
    await expect_error(
        record(stubs, img_b.name, batch, request_id=str(uuid.uuid4())),
        grpc.StatusCode.ALREADY_EXISTS,
        "PHOTOMETRY_ALREADY_RECORDED",
    )
    await expect_error(
        record(stubs, img_b.name, batch, request_id="not a uuid!"), INVALID, "INVALID_ARGUMENT", "request_id"
    )


# ---- ListSources ----------------------------------------------------------------------------------


async def list_all(stubs, **kwargs) -> tuple[list[sources_pb2.Source], int]:
    out: list[sources_pb2.Source] = []
    token = ""
    totals = set()
    while True:
        resp = await stubs.sources.ListSources(sources_pb2.ListSourcesRequest(page_token=token, **kwargs))
        out.extend(resp.sources)
        totals.add(resp.total_size)
        token = resp.next_page_token
        if not token:
            break
    assert len(totals) == 1
    return out, totals.pop()


async def test_list_sources_filters_and_order(stubs):
    rng = random.Random(11)
    mjds = [60600.0 + d for d in (0, 1, 2, 3, 5)]
    images = await make_images(stubs, mjds, "list")
    history: dict[str, list[Epoch]] = {}
    positions: dict[str, tuple[float, float]] = {}
    n_sources = 120
    for i in range(n_sources):
        positions[f"L{i:04d}"] = (rng.uniform(0, 360), rng.uniform(53.5, 56.0))
    for k, img in enumerate(images):
        batch = []
        for sid, (ra, dec) in positions.items():
            if rng.random() < 0.25 and k > 0:
                continue  # not every source on every image: varied epoch counts
            base = 0.01 + (int(sid[1:]) % 17) * 0.02
            scatter = 0.5 if int(sid[1:]) % 5 == 0 else 0.02
            flux = base * (1 + rng.uniform(-scatter, scatter))
            err = base * rng.uniform(0.01, 0.1)
            batch.append(measurement(sid, ra, dec, flux=flux, err=err))
            history.setdefault(sid, []).append(Epoch(flux, err, mjds[k]))
        await record(stubs, img.name, batch)
    want = {sid: expected_stats(ep) for sid, ep in history.items()}

    everything, total = await list_all(stubs, page_size=33)
    assert total == n_sources
    assert [s.name for s in everything] == sorted(f"sources/{s}" for s in positions)  # default: by id
    for src in everything:
        assert_stats(src, history[src.name.removeprefix("sources/")])

    def expected_names(predicate, near: tuple[str, float] | None) -> set[str]:
        expected = {f"sources/{s}" for s in want if predicate(want[s], positions[s])}
        if near is not None:  # no value sits within rounding of the threshold
            key, threshold = near
            assert all(abs(w[key] - threshold) > 1e-9 for w in want.values())
        return expected

    cases = [
        ("eta > 2", lambda w, p: w["eta"] > 2, ("eta", 2.0)),
        ("v >= 0.1", lambda w, p: w["v"] >= 0.1, ("v", 0.1)),
        ("v < 0.05 AND epoch_count >= 3", lambda w, p: w["v"] < 0.05 and w["epoch_count"] >= 3, ("v", 0.05)),
        ("epoch_count = 5", lambda w, p: w["epoch_count"] == 5, None),
        ("epoch_count <= 3", lambda w, p: w["epoch_count"] <= 3, None),
        ("dec_deg > 54 AND dec_deg < 55.2", lambda w, p: 54 < p[1] < 55.2, None),
        ("is_variable = true", lambda w, p: w["is_variable"], None),
        ("is_variable = false", lambda w, p: not w["is_variable"], None),
        ("mean_flux_jy >= 0.15", lambda w, p: w["mean_flux_jy"] >= 0.15, ("mean_flux_jy", 0.15)),
        (
            "eta > 2 AND epoch_count >= 3 AND dec_deg > 54 AND dec_deg < 55.2",
            lambda w, p: w["eta"] > 2 and w["epoch_count"] >= 3 and 54 < p[1] < 55.2,
            None,
        ),
    ]
    nonempty = 0
    for filter_, predicate, near in cases:
        expected = expected_names(predicate, near)
        got, total = await list_all(stubs, filter=filter_, page_size=17)
        assert [s.name for s in got] == sorted(expected), filter_
        assert total == len(expected), filter_
        nonempty += bool(expected) and len(expected) < n_sources
    assert nonempty >= 8  # the data actually splits on these filters

    by_eta, _ = await list_all(stubs, order_by="eta desc", page_size=19)
    assert {s.name for s in by_eta} == {s.name for s in everything}
    etas = [s.variability.eta for s in by_eta]
    assert etas == sorted(etas, reverse=True)
    for src in by_eta:  # ordered by the server's values, which are the statistics computed here
        assert src.variability.eta == pytest.approx(want[src.name.removeprefix("sources/")]["eta"], rel=1e-7, abs=1e-12)

    by_v, _ = await list_all(stubs, order_by="v", filter="epoch_count >= 2", page_size=23)
    assert {s.name for s in by_v} == {f"sources/{s}" for s in want if want[s]["epoch_count"] >= 2}
    vs = [s.variability.v for s in by_v]
    assert vs == sorted(vs)
    two_keys, _ = await list_all(stubs, order_by="epoch_count desc, mean_flux_jy", page_size=50)
    keys = [(-s.variability.epoch_count, s.variability.mean_flux_jy) for s in two_keys]
    assert keys == sorted(keys) and len(two_keys) == n_sources

    await expect_error(
        stubs.sources.ListSources(sources_pb2.ListSourcesRequest(filter="flux > 1")),
        INVALID,
        "INVALID_FILTER",
        "filter",
    )
    await expect_error(
        stubs.sources.ListSources(sources_pb2.ListSourcesRequest(order_by="catalog")),
        INVALID,
        "INVALID_ORDER_BY",
        "order_by",
    )


# ---- GetLightcurve --------------------------------------------------------------------------------


async def lightcurve(stubs, name: str, **kwargs) -> list[sources_pb2.GetLightcurveResponse]:
    return [msg async for msg in stubs.sources.GetLightcurve(sources_pb2.GetLightcurveRequest(name=name, **kwargs))]


async def test_lightcurve_ordered_by_observation_mjd(stubs):
    # Recorded in this order; observed in a different one.
    mjds = [60710.0, 60700.0, 60730.0, 60705.0, 60720.0, 60701.0]
    images = await make_images(stubs, mjds, "lc")
    for i, img in enumerate(images):
        await record(stubs, img.name, [measurement("LC1", 150.0, 60.0, flux=0.1 + i / 100)])
    # One measurement names its own observation time, which wins over the image's.
    ms = await make_ms(stubs, "/data/ms/lc-extra.ms", 60740.0)
    extra = await make_image(stubs, ms.name, "/data/images/lc-extra.fits", 60740.0)
    await record(stubs, extra.name, [measurement("LC1", 150.0, 60.0, flux=0.5, observation_mjd=60702.5)])

    msgs = await lightcurve(stubs, "sources/LC1")
    assert len(msgs) == 1 and msgs[0].source.name == "sources/LC1"
    points = msgs[0].points
    assert [p.observation_mjd for p in points] == sorted([*mjds, 60702.5])
    by_mjd = {mjd: (img.name, 0.1 + i / 100) for i, (mjd, img) in enumerate(zip(mjds, images, strict=True))}
    for p in points:
        assert p.source == "sources/LC1"
        if p.observation_mjd == 60702.5:
            assert p.image == extra.name and p.peak_flux_jy == 0.5
        else:
            assert p.image == by_mjd[p.observation_mjd][0]
            assert p.peak_flux_jy == pytest.approx(by_mjd[p.observation_mjd][1])
        assert p.quality_flag == "good" and p.HasField("measure_time")
    src = msgs[0].source
    assert src.first_detection_mjd == 60700.0 and src.last_detection_mjd == 60730.0
    assert src.variability.last_mjd == 60730.0

    # MJD range: inclusive bounds, 0 means unbounded.
    ranged = [
        p.observation_mjd
        for m in await lightcurve(stubs, "sources/LC1", start_mjd=60701.0, end_mjd=60710.0)
        for p in m.points
    ]
    assert ranged == [60701.0, 60702.5, 60705.0, 60710.0]
    assert [p.observation_mjd for m in await lightcurve(stubs, "sources/LC1", start_mjd=60720.0) for p in m.points] == [
        60720.0,
        60730.0,
    ]
    assert [p.observation_mjd for m in await lightcurve(stubs, "sources/LC1", end_mjd=60701.0) for p in m.points] == [
        60700.0,
        60701.0,
    ]
    empty = await lightcurve(stubs, "sources/LC1", start_mjd=60800.0, end_mjd=60900.0)
    assert len(empty) == 1 and empty[0].source.name == "sources/LC1" and not empty[0].points


async def test_lightcurve_chunking_and_errors(stubs):
    rng = random.Random(3)
    mjds = [60800.0 + d for d in rng.sample(range(1000), 30)]
    images = await make_images(stubs, mjds, "chunk")
    for img in images:
        await record(stubs, img.name, [measurement("CH1", 200.0, 30.0, flux=rng.uniform(0.1, 0.2))])

    msgs = await lightcurve(stubs, "sources/CH1", max_points_per_message=7)
    assert [len(m.points) for m in msgs] == [7, 7, 7, 7, 2]
    assert msgs[0].HasField("source") and msgs[0].source.detection_count == 30
    assert not any(m.HasField("source") for m in msgs[1:])
    all_mjds = [p.observation_mjd for m in msgs for p in m.points]
    assert all_mjds == sorted(mjds)
    exact = await lightcurve(stubs, "sources/CH1", max_points_per_message=10)
    assert [len(m.points) for m in exact] == [10, 10, 10]
    assert [len(m.points) for m in await lightcurve(stubs, "sources/CH1")] == [30]

    # Equal observation times across a chunk boundary: every point exactly once.
    same = await make_images(stubs, [60790.0] * 8, "same-mjd")
    for img in same:
        await record(stubs, img.name, [measurement("CH1", 200.0, 30.0, flux=0.15)])
    msgs = await lightcurve(stubs, "sources/CH1", max_points_per_message=3, end_mjd=60790.0)
    assert [len(m.points) for m in msgs] == [3, 3, 2]
    assert sorted(p.image for m in msgs for p in m.points) == sorted(img.name for img in same)

    async def fails(code, reason, field=None, **kwargs):
        return await expect_error(lightcurve(stubs, kwargs.pop("name", "sources/CH1"), **kwargs), code, reason, field)

    await fails(INVALID, "INVALID_ARGUMENT", "end_mjd", start_mjd=60900.0, end_mjd=60850.0)
    await fails(INVALID, "INVALID_ARGUMENT", "start_mjd", start_mjd=math.nan)
    await fails(INVALID, "INVALID_ARGUMENT", "end_mjd", end_mjd=math.inf)
    await fails(INVALID, "INVALID_ARGUMENT", "max_points_per_message", max_points_per_message=10001)
    await fails(INVALID, "INVALID_ARGUMENT", "max_points_per_message", max_points_per_message=-1)
    err = await fails(NOT_FOUND, "SOURCE_NOT_FOUND", name="sources/NOSUCH")
    assert err.metadata["resource"] == "sources/NOSUCH"
    await fails(INVALID, "INVALID_ARGUMENT", "name", name="CH1")


# ---- SearchSources --------------------------------------------------------------------------------


def random_sky(
    rng: random.Random, n: int, dec_lo: float = -90.0, dec_hi: float = 90.0, ra_lo: float = 0.0, ra_hi: float = 360.0
) -> list[tuple[float, float]]:
    """Uniform on the sphere within a dec band and RA range (RA taken modulo 360)."""
    s_lo, s_hi = math.sin(math.radians(dec_lo)), math.sin(math.radians(dec_hi))
    return [(rng.uniform(ra_lo, ra_hi) % 360.0, math.degrees(math.asin(rng.uniform(s_lo, s_hi)))) for _ in range(n)]


async def search_all(stubs, page_size: int = 1000, **kwargs) -> tuple[list[sources_pb2.SourceMatch], int]:
    out: list[sources_pb2.SourceMatch] = []
    token = ""
    totals = set()
    while True:
        resp = await stubs.sources.SearchSources(
            sources_pb2.SearchSourcesRequest(page_size=page_size, page_token=token, **kwargs)
        )
        out.extend(resp.matches)
        totals.add(resp.total_size)
        token = resp.next_page_token
        if not token:
            break
    assert len(totals) == 1
    return out, totals.pop()


async def test_search_sources_cone_vs_brute_force(stubs):
    rng = random.Random(110)
    sky = (
        random_sky(rng, 1500)  # whole sky
        + random_sky(rng, 700, 84.0, 90.0)  # north cap
        + random_sky(rng, 500, -90.0, -85.0)  # south cap
        + random_sky(rng, 800, 25.0, 40.0, -6.0, 6.0)  # across RA 0/360
        + random_sky(rng, 500, 50.0, 60.0, 120.0, 140.0)
    )  # the DSA-110 strip
    sky += [(0.0, 30.0), (359.9999999, 30.0), (45.0, 90.0), (200.0, -90.0)]  # edges of the domain
    positions = {f"C{i:05d}": p for i, p in enumerate(sky)}
    [img] = await make_images(stubs, [61000.0], "cone")
    resp = await record(
        stubs,
        img.name,
        [
            measurement(sid, ra, dec, flux=0.001 + (i % 100) / 1000)
            for i, (sid, (ra, dec)) in enumerate(positions.items())
        ],
    )
    assert resp.created_source_count == len(positions)

    cones = [
        (0.5, 30.0, 3.0),  # straddles RA 0/360 from the east
        (359.0, 33.0, 2.5),  # ... and from the west
        (0.0, 30.0, 0.5),
        (45.0, 89.5, 2.0),  # contains the north pole
        (200.0, 88.0, 3.0),  # crosses the pole to the other side
        (10.0, -88.5, 2.5),  # contains the south pole
        (130.0, 55.0, 4.0),
        (300.0, -20.0, 10.0),  # the largest radius allowed
        (77.0, 12.0, 0.0001),  # tiny: probably empty
    ]
    checked = 0
    for ra, dec, radius in cones:
        seps = {sid: separation_deg(ra, dec, sra, sdec) for sid, (sra, sdec) in positions.items()}
        inside = {sid for sid, s in seps.items() if s <= radius}
        borderline = {sid for sid, s in seps.items() if abs(s - radius) < 1e-9}
        matches, total = await search_all(stubs, ra_deg=ra, dec_deg=dec, radius_deg=radius)
        names = [m.source.name.removeprefix("sources/") for m in matches]
        assert len(names) == len(set(names)) == total
        assert set(names) - borderline == inside - borderline, (ra, dec, radius)
        got_seps = [m.separation_deg for m in matches]
        assert got_seps == sorted(got_seps), "nearest first"
        for m, sid in zip(matches, names, strict=True):
            assert m.separation_deg == pytest.approx(seps[sid], abs=1e-9)
            assert (m.source.ra_deg, m.source.dec_deg) == positions[sid]
        checked += len(inside)
    assert checked > 300  # the cones really contain sources

    # Pole and wrap cones found sources on both sides of the discontinuity.
    pole, _ = await search_all(stubs, ra_deg=45.0, dec_deg=89.5, radius_deg=2.0)
    assert min(m.source.ra_deg for m in pole) < 60 and max(m.source.ra_deg for m in pole) > 300
    wrap, _ = await search_all(stubs, ra_deg=0.5, dec_deg=30.0, radius_deg=3.0)
    assert any(m.source.ra_deg > 355 for m in wrap) and any(m.source.ra_deg < 3 for m in wrap)
    over, _ = await search_all(stubs, ra_deg=200.0, dec_deg=88.0, radius_deg=3.0)
    assert any(abs(((m.source.ra_deg - 200.0 + 180) % 360) - 180) > 90 for m in over)  # beyond the pole

    # A filter further restricts the cone.
    filtered, total = await search_all(stubs, ra_deg=130.0, dec_deg=55.0, radius_deg=4.0, filter="mean_flux_jy >= 0.05")
    unfiltered, _ = await search_all(stubs, ra_deg=130.0, dec_deg=55.0, radius_deg=4.0)
    assert [m.source.name for m in filtered] == [
        m.source.name for m in unfiltered if m.source.variability.mean_flux_jy >= 0.05
    ]
    assert 0 < total < len(unfiltered)


async def test_search_sources_pagination_and_errors(stubs):
    rng = random.Random(5)
    positions = {f"P{i:04d}": p for i, p in enumerate(random_sky(rng, 400, 40.0, 50.0, 350.0, 370.0))}
    for i in range(12):  # sources at one position: equal separations must not break paging
        positions[f"TWIN{i:02d}"] = (1.0, 45.5)
    [img] = await make_images(stubs, [61100.0], "page")
    await record(stubs, img.name, [measurement(s, ra, dec) for s, (ra, dec) in positions.items()])

    whole, total = await search_all(stubs, page_size=1000, ra_deg=0.0, dec_deg=45.0, radius_deg=4.0)
    assert 30 < total < 400
    pages = []
    token = ""
    while True:
        resp = await stubs.sources.SearchSources(
            sources_pb2.SearchSourcesRequest(ra_deg=0.0, dec_deg=45.0, radius_deg=4.0, page_size=7, page_token=token)
        )
        assert resp.total_size == total
        assert len(resp.matches) <= 7
        pages.append(resp.matches)
        token = resp.next_page_token
        if not token:
            break
    assert len(pages) == math.ceil(total / 7)
    paged = [m for page in pages for m in page]
    assert [m.source.name for m in paged] == [m.source.name for m in whole]
    assert [m.separation_deg for m in paged] == [m.separation_deg for m in whole]
    assert sum(m.source.name.startswith("sources/TWIN") for m in paged) == 12

    # A token is bound to its cone.
    first = await stubs.sources.SearchSources(
        sources_pb2.SearchSourcesRequest(ra_deg=0.0, dec_deg=45.0, radius_deg=4.0, page_size=7)
    )
    await expect_error(
        stubs.sources.SearchSources(
            sources_pb2.SearchSourcesRequest(
                ra_deg=0.0, dec_deg=45.0, radius_deg=5.0, page_size=7, page_token=first.next_page_token
            )
        ),
        INVALID,
        "INVALID_PAGE_TOKEN",
        "page_token",
    )

    for kwargs, field in [
        ({"radius_deg": 0.0}, "radius_deg"),
        ({"radius_deg": -1.0}, "radius_deg"),
        ({"radius_deg": 10.0001}, "radius_deg"),
        ({"radius_deg": math.nan}, "radius_deg"),
        ({"radius_deg": math.inf}, "radius_deg"),
        ({"ra_deg": 360.0}, "ra_deg"),
        ({"ra_deg": -0.1}, "ra_deg"),
        ({"ra_deg": math.nan}, "ra_deg"),
        ({"dec_deg": 90.5}, "dec_deg"),
        ({"dec_deg": math.nan}, "dec_deg"),
    ]:
        request = {"ra_deg": 10.0, "dec_deg": 45.0, "radius_deg": 1.0, **kwargs}
        err = await expect_error(
            stubs.sources.SearchSources(sources_pb2.SearchSourcesRequest(**request)), INVALID, "INVALID_ARGUMENT", field
        )
        assert err.fields == [field], kwargs
    await expect_error(
        stubs.sources.SearchSources(
            sources_pb2.SearchSourcesRequest(ra_deg=10.0, dec_deg=45.0, radius_deg=1.0, filter="nope = 1")
        ),
        INVALID,
        "INVALID_FILTER",
        "filter",
    )


async def test_cone_search_without_sqlites_math_functions(server_factory, monkeypatch, tmp_path, engine):
    """Some SQLite builds lack cos/sin/radians (SQLITE_ENABLE_MATH_FUNCTIONS), which the cone
    search's SQL uses: Python's stand in, and the answer is the same. (Failure injection: this
    machine's SQLite has them, so the server is told it has not.)"""
    if engine != "sqlite":
        pytest.skip("SQLite's optional math functions: PostgreSQL always has them")
    answers = []
    for has_math in (True, False):
        monkeypatch.setattr(database, "has_math", lambda _conn, has_math=has_math: has_math)
        server = await server_factory(database=tmp_path / f"math-{has_math}.sqlite3")
        assert server.server.storage.db.reads._math is has_math
        async with grpc.aio.insecure_channel(server.target) as channel:
            stubs = make_stubs(channel)
            [img] = await make_images(stubs, [61000.0], "math")
            sky = random_sky(random.Random(7), 300, 40.0, 70.0, 100.0, 160.0)
            await record(stubs, img.name, [measurement(f"M{i:04d}", ra, dec) for i, (ra, dec) in enumerate(sky)])
            matches, total = await search_all(stubs, page_size=30, ra_deg=130.0, dec_deg=55.0, radius_deg=8.0)
            answers.append(([(m.source.name, m.separation_deg) for m in matches], total))
        await server.stop()
    assert answers[0] == answers[1] and answers[0][1] > 30

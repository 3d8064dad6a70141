"""ListImages / ListMeasurementSets: keyset pagination, filters and ordering against brute force.

* Walking every page while rows are inserted between pages yields each row at most once, every
  row that existed before the walk, and exactly those new rows that sort after the cursor at the
  moment they were inserted (keyset semantics), in the requested order; for several order_by
  values with mixed directions and many ties.
* Page tokens are opaque and bound to the query: tampered, garbage, forged and foreign tokens, or
  a token sent with a different filter / order_by, fail with INVALID_PAGE_TOKEN on `page_token`.
* Filters and orderings are compared with a Python evaluation over ~200 random images and ~120
  random measurement sets (module-scoped server, read-only after it is populated).

Every test runs on both engines (ENGINES; the module-scoped data set is made once per engine).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from dsa110.contimg.server.app import ContimgServer
from dsa110.contimg.server.config import ServerConfig
from dsa110.contimg.v1 import images_pb2, measurement_sets_pb2
from google.protobuf import timestamp_pb2

from conftest import PostgresDatabases, make_stubs
from helpers import (
    QA,
    Image,
    MeasurementSet,
    expect_error,
    image_id,
    image_message,
    list_all_images,
    list_all_ms,
    make_ms,
    micros,
    ms_message,
    unique_path,
)

MS = MeasurementSet
INVALID = grpc.StatusCode.INVALID_ARGUMENT
ENGINES = ("sqlite", "postgres")
STRIPS = (16.27, 50.5, 54.57, 65.72)

# ---------------------------------------------------------------------------------------------
# Sort keys as the server documents them: each order_by field, then the id (images) or path (MS)
# in the direction of the last field.

IMAGE_KEYS: dict[str, Callable[[images_pb2.Image], Any]] = {
    "create_time": lambda i: micros(i.create_time),
    "mid_mjd": lambda i: i.mid_mjd,
    "noise_jy": lambda i: i.noise_jy,
    "dynamic_range": lambda i: i.dynamic_range,
    "center_dec_deg": lambda i: i.center_dec_deg,
    "center_ra_deg": lambda i: i.center_ra_deg,
}
MS_KEYS: dict[str, Callable[[measurement_sets_pb2.MeasurementSet], Any]] = {
    "start_mjd": lambda m: m.start_mjd,
    "mid_mjd": lambda m: m.mid_mjd,
    "pointing_dec_deg": lambda m: m.pointing_dec_deg,
    "create_time": lambda m: micros(m.create_time),
    "update_time": lambda m: micros(m.update_time),
}


def _parse_order(order_by: str, default: str) -> list[tuple[str, bool]]:
    text = order_by.strip() or default
    keys = []
    for part in text.split(","):
        words = part.split()
        keys.append((words[0], len(words) == 2 and words[1].lower() == "desc"))
    return keys


class _Desc:
    """Inverts the order of any comparable value (for a mixed-direction composite key)."""

    __slots__ = ("v",)

    def __init__(self, v: Any):
        self.v = v

    def __lt__(self, other: _Desc) -> bool:
        return bool(other.v < self.v)

    def __gt__(self, other: _Desc) -> bool:
        return bool(other.v > self.v)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.v == other.v

    def __hash__(self) -> int:
        return hash(self.v)


def image_sort_key(order_by: str) -> Callable[[images_pb2.Image], tuple[Any, ...]]:
    keys = _parse_order(order_by, "create_time desc")
    keys.append(("__id", keys[-1][1]))
    getters = {**IMAGE_KEYS, "__id": lambda i: image_id(i.name)}

    def key(img: images_pb2.Image) -> tuple[Any, ...]:
        return tuple(_Desc(getters[f](img)) if desc else getters[f](img) for f, desc in keys)

    return key


def ms_sort_key(order_by: str) -> Callable[[measurement_sets_pb2.MeasurementSet], tuple[Any, ...]]:
    keys = _parse_order(order_by, "start_mjd desc")
    keys.append(("__path", keys[-1][1]))
    getters = {**MS_KEYS, "__path": lambda m: m.path}

    def key(ms: measurement_sets_pb2.MeasurementSet) -> tuple[Any, ...]:
        return tuple(_Desc(getters[f](ms)) if desc else getters[f](ms) for f, desc in keys)

    return key


# ---------------------------------------------------------------------------------------------
# Random rows with plenty of ties


def _random_image(rng: random.Random, ms_name: str) -> images_pb2.Image:
    strip = rng.choice(STRIPS)
    return image_message(
        ms_name,
        type=rng.choice([Image.TYPE_CONTINUUM, Image.TYPE_CLEAN, Image.TYPE_DIRTY, Image.TYPE_PBCOR]),
        mid_mjd=rng.choice([60976.25, 60976.5, 60977.0])
        if rng.random() < 0.5
        else round(rng.uniform(60970.0, 60990.0), 4),
        noise_jy=rng.choice([0.0008, 0.001, 0.0012, 0.0015, 0.002])
        if rng.random() < 0.7
        else round(rng.uniform(0.0005, 0.003), 6),
        dynamic_range=rng.choice([100.0, 250.0, 500.0]),
        center_ra_deg=round(rng.uniform(0.0, 359.99), 3),
        center_dec_deg=strip if rng.random() < 0.4 else round(strip + rng.uniform(-1.5, 1.5), 4),
        frequency_ghz=rng.choice([1.311, 1.405, 1.498]),
        pbcor=rng.random() < 0.3,
        field_name=f"drift_{strip}",
        qa=QA(grade=rng.choice([QA.GRADE_UNSPECIFIED, QA.GRADE_GOOD, QA.GRADE_WARNING, QA.GRADE_BAD])),
    )


def _random_ms(rng: random.Random) -> measurement_sets_pb2.MeasurementSet:
    start = rng.choice([60976.25, 60976.5, 60977.0]) if rng.random() < 0.4 else round(rng.uniform(60970.0, 60990.0), 4)
    strip = rng.choice(STRIPS)
    return ms_message(
        start_mjd=start,
        mid_mjd=round(start + 0.0018, 6),
        end_mjd=round(start + 0.0036, 6),
        pointing_dec_deg=strip if rng.random() < 0.6 else round(strip + rng.uniform(-1.0, 1.0), 3),
        pointing_ra_deg=round(rng.uniform(0.0, 359.99), 3),
        phase_center_ra_deg=0.0,
        phase_center_dec_deg=0.0,
        stage=rng.choice(list(range(1, 7))),
        status=rng.choice(list(range(0, 5))),
        cal_applied=rng.random() < 0.5,
        field_name=f"drift_{strip}",
        group_id=rng.choice(["2025-10-28T13:30:07", "2025-10-28T13:35:16"]),
    )


# ---------------------------------------------------------------------------------------------
# Walking pages while inserting


async def _walk_images_with_inserts(
    stubs: Any, rng: random.Random, ms_name: str, order_by: str, filter_: str, match: Callable[[images_pb2.Image], bool]
) -> None:
    before = [
        await stubs.images.CreateImage(images_pb2.CreateImageRequest(image=_random_image(rng, ms_name)))
        for _ in range(30)
    ]
    key = image_sort_key(order_by)
    expected_before = [i for i in before if match(i)]
    seen: list[images_pb2.Image] = []
    must_see: set[str] = set()
    must_not_see: set[str] = set()
    inserted = 0
    token = ""
    first = True
    while True:
        page = await stubs.images.ListImages(
            images_pb2.ListImagesRequest(page_size=4, page_token=token, order_by=order_by, filter=filter_)
        )
        if first:
            assert page.total_size == len(expected_before)
            first = False
        assert page.total_size == len(expected_before) + inserted
        seen.extend(page.images)
        token = page.next_page_token
        if not token:
            break
        cursor = key(page.images[-1])
        for _ in range(2):
            new = await stubs.images.CreateImage(images_pb2.CreateImageRequest(image=_random_image(rng, ms_name)))
            if match(new):
                inserted += 1
                (must_see if key(new) > cursor else must_not_see).add(new.name)
    names = [i.name for i in seen]
    assert len(names) == len(set(names)), "an image was returned twice"
    assert all(match(i) for i in seen)
    assert {i.name for i in expected_before} <= set(names), "an image that existed before the walk was skipped"
    assert must_see <= set(names), "an image inserted after the cursor was skipped"
    assert not must_not_see & set(names), "an image inserted before the cursor was returned"
    keys = [key(i) for i in seen]
    assert all(a < b for a, b in itertools.pairwise(keys)), "pages are not in the requested order"
    assert inserted > 0 and len(seen) >= len(expected_before)


@pytest.mark.parametrize(
    ("order_by", "filter_"),
    [
        ("", ""),
        ("create_time", ""),
        ("noise_jy desc, mid_mjd", ""),
        ("mid_mjd desc, noise_jy", ""),
        ("center_dec_deg, create_time desc", ""),
        ("dynamic_range desc", "type != DIRTY"),
        ("noise_jy, dynamic_range desc, mid_mjd", "noise_jy <= 0.0015"),
    ],
)
async def test_list_images_walk_while_inserting(stubs: Any, order_by: str, filter_: str) -> None:
    rng = random.Random(f"images {order_by} {filter_}")
    ms = await make_ms(stubs)
    match: Callable[[images_pb2.Image], bool] = lambda i: True  # noqa: E731
    if filter_ == "type != DIRTY":
        match = lambda i: i.type != Image.TYPE_DIRTY  # noqa: E731
    elif filter_:
        match = lambda i: i.noise_jy <= 0.0015  # noqa: E731
    await _walk_images_with_inserts(stubs, rng, ms.name, order_by, filter_, match)


@pytest.mark.parametrize(
    "order_by",
    [
        "",
        "start_mjd",
        "mid_mjd desc, pointing_dec_deg",
        "pointing_dec_deg, start_mjd desc",
        "create_time",
        "update_time desc",
        "pointing_dec_deg desc",
    ],
)
async def test_list_measurement_sets_walk_while_inserting(stubs: Any, order_by: str) -> None:
    rng = random.Random(f"ms {order_by}")
    create = measurement_sets_pb2.CreateMeasurementSetRequest
    before = [await stubs.ms.CreateMeasurementSet(create(measurement_set=_random_ms(rng))) for _ in range(30)]
    key = ms_sort_key(order_by)
    seen: list[measurement_sets_pb2.MeasurementSet] = []
    must_see: set[str] = set()
    must_not_see: set[str] = set()
    token = ""
    inserted = 0
    while True:
        page = await stubs.ms.ListMeasurementSets(
            measurement_sets_pb2.ListMeasurementSetsRequest(page_size=4, page_token=token, order_by=order_by)
        )
        assert page.total_size == len(before) + inserted
        seen.extend(page.measurement_sets)
        token = page.next_page_token
        if not token:
            break
        cursor = key(page.measurement_sets[-1])
        for _ in range(2):
            new = await stubs.ms.CreateMeasurementSet(create(measurement_set=_random_ms(rng)))
            inserted += 1
            (must_see if key(new) > cursor else must_not_see).add(new.name)
    names = [m.name for m in seen]
    assert len(names) == len(set(names)), "a measurement set was returned twice"
    assert {m.name for m in before} <= set(names)
    assert must_see <= set(names) and not must_not_see & set(names)
    keys = [key(m) for m in seen]
    assert all(a < b for a, b in itertools.pairwise(keys)), "pages are not in the requested order"


async def test_walk_survives_deletes_between_pages(stubs: Any) -> None:
    ms = await make_ms(stubs)
    made = [
        await stubs.images.CreateImage(
            images_pb2.CreateImageRequest(image=image_message(ms.name, noise_jy=0.001 * (1 + i % 3)))
        )
        for i in range(12)
    ]
    page = await stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=5, order_by="noise_jy"))
    # Delete the cursor row itself and one row after it: the walk continues from the keyset.
    await stubs.images.DeleteImage(images_pb2.DeleteImageRequest(name=page.images[-1].name))
    rest_all = sorted(made, key=image_sort_key("noise_jy"))[5:]
    await stubs.images.DeleteImage(images_pb2.DeleteImageRequest(name=rest_all[0].name))
    names = [i.name for i in page.images]
    token = page.next_page_token
    while token:
        page = await stubs.images.ListImages(
            images_pb2.ListImagesRequest(page_size=5, order_by="noise_jy", page_token=token)
        )
        names.extend(i.name for i in page.images)
        token = page.next_page_token
    assert names[5:] == [i.name for i in rest_all[1:]]


async def test_last_page_has_no_token_and_an_exact_fit_ends_cleanly(stubs: Any) -> None:
    ms = await make_ms(stubs)
    for _ in range(6):
        await stubs.images.CreateImage(images_pb2.CreateImageRequest(image=image_message(ms.name)))
    first = await stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=3))
    second = await stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=3, page_token=first.next_page_token))
    assert len(first.images) == 3 and len(second.images) == 3
    assert second.next_page_token == ""  # no empty trailing page
    assert {i.name for i in first.images}.isdisjoint(i.name for i in second.images)
    # Tokens are stateless: the same token gives the same page again, and page_size may change.
    again = await stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=3, page_token=first.next_page_token))
    assert again == second
    bigger = await stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=1, page_token=first.next_page_token))
    assert list(bigger.images) == [second.images[0]] and bigger.next_page_token
    empty = await stubs.images.ListImages(images_pb2.ListImagesRequest(filter="noise_jy > 100"))
    assert list(empty.images) == [] and empty.total_size == 0 and empty.next_page_token == ""


# ---------------------------------------------------------------------------------------------
# Page token errors


def _flip(token: str, index: int) -> str:
    c = token[index]
    replacement = "A" if c != "A" else "B"
    return token[:index] + replacement + token[index + 1 :]


def _forged(payload: dict[str, Any], mac: bytes = bytes(16)) -> str:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")


async def test_tampered_and_garbage_tokens_are_invalid_page_token(stubs: Any) -> None:
    ms = await make_ms(stubs)
    for _ in range(4):
        await stubs.images.CreateImage(images_pb2.CreateImageRequest(image=image_message(ms.name)))
    page = await stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=1, order_by="noise_jy"))
    token = page.next_page_token
    assert token
    bad_tokens = [_flip(token, i) for i in (0, 5, 15, 21, len(token) // 2, len(token) - 3)]
    bad_tokens += [
        "garbage",
        "!!!!",
        "a",
        "=",
        token[:-4],
        token + "AAAA",
        token[4:],
        "x" * 5000,
        base64.urlsafe_b64encode(random.Random(1).randbytes(80)).decode(),
        _forged({"a": [0.001, 1], "q": "0" * 16}),
        base64.urlsafe_b64encode(b'{"a":[0.001,1],"q":"x"}').decode(),
    ]
    for bad in bad_tokens:
        request = images_pb2.ListImagesRequest(page_size=1, order_by="noise_jy", page_token=bad)
        await expect_error(stubs.images.ListImages(request), INVALID, "INVALID_PAGE_TOKEN", field="page_token")
    for bad in bad_tokens[:6]:
        ms_request = measurement_sets_pb2.ListMeasurementSetsRequest(page_token=bad)
        await expect_error(stubs.ms.ListMeasurementSets(ms_request), INVALID, "INVALID_PAGE_TOKEN", field="page_token")
    # The untouched token still works.
    ok = await stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=1, order_by="noise_jy", page_token=token))
    assert len(ok.images) == 1


async def test_token_reused_with_other_parameters_is_invalid_page_token(stubs: Any) -> None:
    ms = await make_ms(stubs)
    for _ in range(4):
        await stubs.images.CreateImage(images_pb2.CreateImageRequest(image=image_message(ms.name)))
    await make_ms(stubs)
    base = images_pb2.ListImagesRequest(page_size=1, order_by="noise_jy desc, mid_mjd", filter="noise_jy > 0")
    token = (await stubs.images.ListImages(base)).next_page_token
    ms_token = (
        await stubs.ms.ListMeasurementSets(measurement_sets_pb2.ListMeasurementSetsRequest(page_size=1))
    ).next_page_token
    assert token and ms_token
    changed = [
        images_pb2.ListImagesRequest(order_by=base.order_by, filter="noise_jy > 1"),
        images_pb2.ListImagesRequest(order_by=base.order_by, filter=""),
        images_pb2.ListImagesRequest(order_by="noise_jy, mid_mjd", filter=base.filter),
        images_pb2.ListImagesRequest(order_by="", filter=base.filter),
        images_pb2.ListImagesRequest(order_by="mid_mjd, noise_jy desc", filter=base.filter),
    ]
    for request in changed:
        request.page_token = token
        await expect_error(stubs.images.ListImages(request), INVALID, "INVALID_PAGE_TOKEN", field="page_token")
    # Tokens do not cross methods.
    await expect_error(
        stubs.ms.ListMeasurementSets(measurement_sets_pb2.ListMeasurementSetsRequest(page_token=token)),
        INVALID,
        "INVALID_PAGE_TOKEN",
        field="page_token",
    )
    await expect_error(
        stubs.images.ListImages(images_pb2.ListImagesRequest(page_token=ms_token)),
        INVALID,
        "INVALID_PAGE_TOKEN",
        field="page_token",
    )
    await expect_error(
        stubs.ms.ListMeasurementSets(
            measurement_sets_pb2.ListMeasurementSetsRequest(page_token=ms_token, filter="stage = IMAGED")
        ),
        INVALID,
        "INVALID_PAGE_TOKEN",
        field="page_token",
    )
    # Same parameters (only the page size differs): accepted.
    same = images_pb2.ListImagesRequest(page_size=50, order_by=base.order_by, filter=base.filter, page_token=token)
    assert len((await stubs.images.ListImages(same)).images) == 3


async def test_token_from_another_database_is_invalid_page_token(
    stubs: Any, server_factory: Any, tmp_path: Path, engine: str, postgres_databases: PostgresDatabases
) -> None:
    ms = await make_ms(stubs)
    for _ in range(3):
        await stubs.images.CreateImage(images_pb2.CreateImageRequest(image=image_message(ms.name)))
    token = (await stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=1))).next_page_token
    other_database = await postgres_databases.new() if engine == "postgres" else tmp_path / "other.sqlite3"
    other = await server_factory(database=other_database)
    async with grpc.aio.insecure_channel(other.target) as channel:
        other_stubs = make_stubs(channel)
        await expect_error(
            other_stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=1, page_token=token)),
            INVALID,
            "INVALID_PAGE_TOKEN",
            field="page_token",
        )


# ---------------------------------------------------------------------------------------------
# Filters and orderings against brute force


@dataclasses.dataclass
class Dataset:
    stubs: Any
    images: list[images_pb2.Image]
    mss: list[measurement_sets_pb2.MeasurementSet]


@pytest.fixture(scope="module", params=ENGINES)
async def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dataset]:
    root = tmp_path_factory.mktemp("pagination")
    postgres = PostgresDatabases()  # the `engine` fixture is per test: this one is per module
    database = await postgres.new() if request.param == "postgres" else str(root / "contimg.sqlite3")
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=root,
        database=database,
        synchronous="NORMAL",
        allow_anonymous_writes=True,
    )
    server = ContimgServer(config)
    try:
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stubs = make_stubs(channel)
            rng = random.Random(110)
            create_ms = measurement_sets_pb2.CreateMeasurementSetRequest
            parents = list(
                await asyncio.gather(
                    *(stubs.ms.CreateMeasurementSet(create_ms(measurement_set=_random_ms(rng))) for _ in range(120))
                )
            )
            # Images on 8 of them (so the measurement_set filter has something to select).
            owners = parents[:8]
            await asyncio.gather(
                *(
                    stubs.images.CreateImage(
                        images_pb2.CreateImageRequest(image=_random_image(rng, rng.choice(owners).name))
                    )
                    for _ in range(200)
                )
            )
            # Touch some measurement sets so update_time differs from create_time.
            for m in rng.sample(parents, 30):
                await stubs.ms.UpdateMeasurementSet(
                    measurement_sets_pb2.UpdateMeasurementSetRequest(
                        measurement_set=MS(path=m.path, status=MS.STATUS_FAILED)
                    )
                )
            images = await list_all_images(stubs)
            mss = await list_all_ms(stubs)
            assert len(images) == 200 and len(mss) == 120
            yield Dataset(stubs, images, mss)
    finally:
        await server.stop(0.5)
        await postgres.drop_all()


def _rfc3339(us: int) -> str:
    ts = timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=us % 1_000_000 * 1000)
    return ts.ToJsonString()


def _middle_create_time(rows: list[Any]) -> int:
    return sorted(micros(r.create_time) for r in rows)[len(rows) // 2]


def _owner(d: Dataset) -> measurement_sets_pb2.MeasurementSet:
    return max(d.mss, key=lambda m: (m.image_count, m.path))


ImageCase = Callable[[Dataset], tuple[str, Callable[[images_pb2.Image], bool]]]
IMAGE_CASES: dict[str, ImageCase] = {
    "all": lambda d: ("", lambda i: True),
    "type": lambda d: ("type = CONTINUUM", lambda i: i.type == Image.TYPE_CONTINUUM),
    "type-prefixed-and-noise": lambda d: (
        "type = TYPE_CLEAN AND noise_jy <= 0.0012",
        lambda i: i.type == Image.TYPE_CLEAN and i.noise_jy <= 0.0012,
    ),
    "type-not": lambda d: ("type != PBCOR", lambda i: i.type != Image.TYPE_PBCOR),
    "mjd-range": lambda d: ("mid_mjd >= 60976.5 AND mid_mjd < 60983", lambda i: 60976.5 <= i.mid_mjd < 60983),
    "mjd-equal": lambda d: ("mid_mjd = 60976.25", lambda i: i.mid_mjd == 60976.25),
    "dec-band": lambda d: ("center_dec_deg > 54 AND center_dec_deg < 55", lambda i: 54 < i.center_dec_deg < 55),
    "dec-strip-exact": lambda d: ("center_dec_deg = 65.72", lambda i: i.center_dec_deg == 65.72),
    "noise-range": lambda d: ("noise_jy > 0.0009 AND noise_jy < 0.0016", lambda i: 0.0009 < i.noise_jy < 0.0016),
    "noise-not": lambda d: ("noise_jy != 0.001", lambda i: i.noise_jy != 0.001),
    "grade": lambda d: ("qa.grade = GOOD", lambda i: i.qa.grade == QA.GRADE_GOOD),
    "grade-not-and-pbcor": lambda d: (
        "qa.grade != BAD AND pbcor = true",
        lambda i: i.qa.grade != QA.GRADE_BAD and i.pbcor,
    ),
    "pbcor-false": lambda d: ("pbcor = false", lambda i: not i.pbcor),
    "ms-name": lambda d: (f'measurement_set = "{_owner(d).name}"', lambda i: i.measurement_set == _owner(d).name),
    "ms-path-and-type": lambda d: (
        f'measurement_set = "{d.images[0].measurement_set}" AND type = DIRTY',
        lambda i: i.measurement_set == d.images[0].measurement_set and i.type == Image.TYPE_DIRTY,
    ),
    "created-since": lambda d: (
        f'create_time >= "{_rfc3339(_middle_create_time(d.images))}"',
        lambda i: micros(i.create_time) >= _middle_create_time(d.images),
    ),
    "created-before": lambda d: (
        f'create_time < "{_rfc3339(_middle_create_time(d.images))}" AND type != DIRTY',
        lambda i: micros(i.create_time) < _middle_create_time(d.images) and i.type != Image.TYPE_DIRTY,
    ),
    "field-name": lambda d: ('field_name = "drift_16.27"', lambda i: i.field_name == "drift_16.27"),
    "frequency": lambda d: (
        "frequency_ghz > 1.4 AND dynamic_range >= 250",
        lambda i: i.frequency_ghz > 1.4 and i.dynamic_range >= 250,
    ),
    "ra-range": lambda d: (
        "center_ra_deg >= 350 AND center_ra_deg <= 359.99",
        lambda i: 350 <= i.center_ra_deg <= 359.99,
    ),
    "nothing": lambda d: ("noise_jy < 0", lambda i: False),
}
IMAGE_ORDERS = [
    "",
    "create_time",
    "mid_mjd",
    "noise_jy desc, mid_mjd",
    "center_dec_deg desc, noise_jy",
    "dynamic_range, create_time desc",
    "center_ra_deg desc",
    "mid_mjd asc, center_ra_deg desc",
    "noise_jy, dynamic_range desc, center_dec_deg",
]
IMAGE_COMBOS = [(case, IMAGE_ORDERS[n % len(IMAGE_ORDERS)]) for n, case in enumerate(IMAGE_CASES)]
IMAGE_COMBOS += [("all", order) for order in IMAGE_ORDERS]


@pytest.mark.parametrize(("case", "order_by"), IMAGE_COMBOS)
async def test_list_images_filter_and_order_match_brute_force(dataset: Dataset, case: str, order_by: str) -> None:
    filter_, match = IMAGE_CASES[case](dataset)
    expected = sorted((i for i in dataset.images if match(i)), key=image_sort_key(order_by))
    if case != "nothing":
        assert expected, f"case {case} selects nothing: not a useful check"
    got: list[images_pb2.Image] = []
    token = ""
    while True:
        page = await dataset.stubs.images.ListImages(
            images_pb2.ListImagesRequest(filter=filter_, order_by=order_by, page_size=23, page_token=token)
        )
        assert page.total_size == len(expected)
        assert len(page.images) <= 23
        got.extend(page.images)
        token = page.next_page_token
        if not token:
            break
        assert len(page.images) == 23
    assert [i.name for i in got] == [i.name for i in expected]
    assert got == expected  # whole messages, not just names


MSCase = Callable[[Dataset], tuple[str, Callable[[measurement_sets_pb2.MeasurementSet], bool]]]
MS_CASES: dict[str, MSCase] = {
    "all": lambda d: ("", lambda m: True),
    "stage": lambda d: ("stage = IMAGED", lambda m: m.stage == MS.STAGE_IMAGED),
    "stage-prefixed": lambda d: ("stage = STAGE_CALIBRATED", lambda m: m.stage == MS.STAGE_CALIBRATED),
    "stage-not-and-status": lambda d: (
        "stage != CONVERTED AND status = COMPLETED",
        lambda m: m.stage != MS.STAGE_CONVERTED and m.status == MS.STATUS_COMPLETED,
    ),
    "status-failed": lambda d: ("status = FAILED", lambda m: m.status == MS.STATUS_FAILED),
    "mjd-range": lambda d: ("mid_mjd >= 60976.5 AND mid_mjd < 60985", lambda m: 60976.5 <= m.mid_mjd < 60985),
    "start-end": lambda d: (
        "start_mjd > 60972 AND end_mjd <= 60980.0036",
        lambda m: m.start_mjd > 60972 and m.end_mjd <= 60980.0036,
    ),
    "start-equal": lambda d: ("start_mjd = 60977.0", lambda m: m.start_mjd == 60977.0),
    "dec-band": lambda d: ("pointing_dec_deg > 54 AND pointing_dec_deg < 55", lambda m: 54 < m.pointing_dec_deg < 55),
    "dec-strip-and-cal": lambda d: (
        "pointing_dec_deg = 65.72 AND cal_applied = true",
        lambda m: m.pointing_dec_deg == 65.72 and m.cal_applied,
    ),
    "cal-applied": lambda d: ("cal_applied = true", lambda m: m.cal_applied),
    "not-cal-and-not-failed": lambda d: (
        "cal_applied = false AND status != FAILED",
        lambda m: not m.cal_applied and m.status != MS.STATUS_FAILED,
    ),
    "field-name": lambda d: ('field_name = "drift_50.5"', lambda m: m.field_name == "drift_50.5"),
    "group-id": lambda d: ('group_id != "2025-10-28T13:30:07"', lambda m: m.group_id != "2025-10-28T13:30:07"),
    "ra": lambda d: ("pointing_ra_deg < 180", lambda m: m.pointing_ra_deg < 180),
    "created-since": lambda d: (
        f'create_time >= "{_rfc3339(_middle_create_time(d.mss))}"',
        lambda m: micros(m.create_time) >= _middle_create_time(d.mss),
    ),
    "updated": lambda d: (
        f'update_time > "{_rfc3339(max(micros(m.create_time) for m in d.mss))}"',
        lambda m: micros(m.update_time) > max(micros(x.create_time) for x in d.mss),
    ),
    "nothing": lambda d: ("stage = IMAGED AND stage = FLAGGED", lambda m: False),
}
MS_ORDERS = [
    "",
    "start_mjd",
    "mid_mjd desc, pointing_dec_deg",
    "pointing_dec_deg, start_mjd desc",
    "create_time desc",
    "update_time",
    "pointing_dec_deg desc, mid_mjd",
    "update_time desc, start_mjd",
]
MS_COMBOS = [(case, MS_ORDERS[n % len(MS_ORDERS)]) for n, case in enumerate(MS_CASES)]
MS_COMBOS += [("all", order) for order in MS_ORDERS]


@pytest.mark.parametrize(("case", "order_by"), MS_COMBOS)
async def test_list_ms_filter_and_order_match_brute_force(dataset: Dataset, case: str, order_by: str) -> None:
    filter_, match = MS_CASES[case](dataset)
    expected = sorted((m for m in dataset.mss if match(m)), key=ms_sort_key(order_by))
    if case != "nothing":
        assert expected, f"case {case} selects nothing: not a useful check"
    got: list[measurement_sets_pb2.MeasurementSet] = []
    token = ""
    while True:
        page = await dataset.stubs.ms.ListMeasurementSets(
            measurement_sets_pb2.ListMeasurementSetsRequest(
                filter=filter_, order_by=order_by, page_size=17, page_token=token
            )
        )
        assert page.total_size == len(expected)
        got.extend(page.measurement_sets)
        token = page.next_page_token
        if not token:
            break
    assert [m.name for m in got] == [m.name for m in expected]
    assert got == expected


async def test_image_filter_on_ms_counts_match_image_count(dataset: Dataset) -> None:
    """Every MS's image_count agrees with ListImages filtered on it (by name and by path)."""
    for ms in sorted(dataset.mss, key=lambda m: -m.image_count)[:10]:
        for ref in (ms.name, ms.path):
            page = await dataset.stubs.images.ListImages(
                images_pb2.ListImagesRequest(filter=f'measurement_set = "{ref}"', page_size=1)
            )
            assert page.total_size == ms.image_count == sum(i.measurement_set == ms.name for i in dataset.images)


async def test_dataset_paths_are_distinct(dataset: Dataset) -> None:
    # Guards the tiebreak reasoning above: MS paths and image ids are unique keys.
    assert len({m.path for m in dataset.mss}) == len(dataset.mss)
    assert len({image_id(i.name) for i in dataset.images}) == len(dataset.images)
    assert unique_path("x") != unique_path("x")


async def test_page_size_above_the_maximum_is_coerced_to_1000(stubs: Any) -> None:
    create = measurement_sets_pb2.CreateMeasurementSetRequest
    for _ in range(17):  # in rounds: one burst of 1,003 calls would open more streams than a connection may
        await asyncio.gather(*(stubs.ms.CreateMeasurementSet(create(measurement_set=ms_message())) for _ in range(59)))
    first = await stubs.ms.ListMeasurementSets(measurement_sets_pb2.ListMeasurementSetsRequest(page_size=5000))
    assert len(first.measurement_sets) == 1000 and first.total_size == 1003 and first.next_page_token
    rest = await stubs.ms.ListMeasurementSets(
        measurement_sets_pb2.ListMeasurementSetsRequest(page_size=5000, page_token=first.next_page_token)
    )
    assert len(rest.measurement_sets) == 3 and rest.next_page_token == ""
    assert {m.path for m in first.measurement_sets}.isdisjoint(m.path for m in rest.measurement_sets)
    default = await stubs.ms.ListMeasurementSets(measurement_sets_pb2.ListMeasurementSetsRequest())
    assert len(default.measurement_sets) == 50

"""The column-wise validation of photometry batches accepts exactly what the detailed checks accept."""

from __future__ import annotations

import math

from dsa110.contimg.server.domain import photometry_rules as rules
from dsa110.contimg.server.domain.checks import Checker
from dsa110.contimg.server.domain.photometry_request import column_field, row_field
from dsa110.contimg.server.domain.records import PHOTOMETRY_NUMBERS, Photometry, PhotometryBatch
from hypothesis import given, settings
from hypothesis import strategies as st

NUMBER_RULES = {name: rule for name, rule in rules.PHOTOMETRY_RULES.items() if isinstance(rule, rules.Number)}
# Each bound of the table and its neighbours on both sides.
TABLE_EDGES = sorted(
    {
        v
        for rule in NUMBER_RULES.values()
        for bound in (rule.lo, rule.hi)
        for v in (bound, math.nextafter(bound, -math.inf), math.nextafter(bound, math.inf))
    }
)
EDGES = [
    *TABLE_EDGES,
    0.0,
    -0.0,
    1e-300,
    -1e-300,
    359.999999,
    360.0,
    -90.0,
    90.0,
    90.0000001,
    15000.0,
    100000.0,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
]
num = st.one_of(
    st.sampled_from(EDGES), st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=-400, max_value=400)
)
flags = st.one_of(st.sampled_from(["", "good", "x" * 32, "x" * 33, "é" * 16, "é" * 17, "a\x00b"]), st.text(max_size=40))
row = st.builds(
    Photometry,
    source_id=st.sampled_from(["A", "B", "C", "D"]),
    ra_deg=num,
    dec_deg=num,
    catalog_flux_mjy=num,
    peak_flux_jy=num,
    peak_flux_err_jy=num,
    integrated_flux_jy=num,
    integrated_flux_err_jy=num,
    normalized_flux=num,
    normalized_flux_err=num,
    snr=num,
    local_rms_jy=num,
    separation_from_center_deg=num,
    quality_flag=flags,
    observation_mjd=st.one_of(st.sampled_from(EDGES), st.floats(min_value=10000, max_value=110000)),
)


def detailed(rows: list[Photometry]) -> bool:
    """True when the field-by-field checks find nothing."""
    c = Checker()
    rules.check_measurements(rows, c, row_field, "measurements")
    return not c.violations


@settings(max_examples=400, deadline=None)
@given(st.lists(row, min_size=1, max_size=4))
def test_fast_path_agrees_with_the_detailed_checks(rows: list[Photometry]) -> None:
    fast = rules.batch_plainly_valid(PhotometryBatch.of_rows(rows))
    assert fast == detailed(rows), rows


def test_a_plainly_valid_batch_takes_the_fast_path() -> None:
    rows = [
        Photometry(source_id=f"S{i}", ra_deg=10.0, dec_deg=54.5, peak_flux_jy=0.1, peak_flux_err_jy=0.001)
        for i in range(3)
    ]
    assert rules.batch_plainly_valid(PhotometryBatch.of_rows(rows)) and detailed(rows)


def test_the_table_rules_every_field_of_a_measurement_but_its_source() -> None:
    assert set(rules.PHOTOMETRY_RULES) == {*PHOTOMETRY_NUMBERS, "observation_mjd", "quality_flag"}
    suffixes = {"deg": "deg", "jy": "Jy", "mjy": "mJy", "mjd": "MJD"}
    for name, rule in NUMBER_RULES.items():  # a bound in the wrong unit shows as a unit unlike the name's
        assert rule.unit == suffixes.get(name.rsplit("_", 1)[-1], ""), name


UNSENT: dict[str, list[float]] = {name: [] for name in rules.PHOTOMETRY_RULES}


def test_every_bound_of_the_table_is_where_every_path_puts_it() -> None:
    """At each end of each range and just past it, the detailed checks, the row path and the column
    path agree, and a refusal names the field with the table's bound."""
    base = {"peak_flux_err_jy": 0.001}
    for name, rule in NUMBER_RULES.items():
        for bound, is_open, outward in ((rule.lo, rule.lo_open, -math.inf), (rule.hi, rule.hi_open, math.inf)):
            for value, allowed in ((bound, not is_open), (math.nextafter(bound, outward), False)):
                allowed = allowed or (rule.zero_is_unset and value == 0.0)
                rows = [Photometry("A", **(base | {name: value})), Photometry("B", **base)]
                c = Checker()
                rules.check_measurements(rows, c, column_field, "columns.source")
                assert [v.field for v in c.violations] == ([] if allowed else [f"columns.{name}[0]"]), (name, value)
                if not allowed:
                    assert c.violations[0].description.endswith(f"{bound:g}"), c.violations
                batch = PhotometryBatch.of_rows(rows)
                assert rules.batch_plainly_valid(batch) == allowed, (name, value)
                sent = UNSENT | {"peak_flux_err_jy": [0.001, 0.001], name: [value, (rule.lo + rule.hi) / 2]}
                assert rules.columns_plainly_valid(["A", "B"], sent.__getitem__) == allowed, (name, value)


def test_photometry_from_proto_fills_every_field_by_name() -> None:
    """The ingest conversion builds the tuple positionally: every field must land under its own name."""
    from dsa110.contimg.server.servicers.convert import photometry_from_proto
    from dsa110.contimg.v1 import sources_pb2
    from google.protobuf import timestamp_pb2

    floats = [f for f in Photometry._fields if f not in ("source_id", "image_id", "quality_flag", "measure_time")]
    values = {f: 1.0 + i for i, f in enumerate(floats)}
    message = sources_pb2.PhotometryMeasurement(
        source="sources/X",
        quality_flag="blended",
        measure_time=timestamp_pb2.Timestamp(seconds=7, nanos=8000),
        **values,
    )
    got = photometry_from_proto(message, "X")
    assert type(got) is Photometry and len(got) == len(Photometry._fields)
    assert got == Photometry(source_id="X", quality_flag="blended", measure_time=7_000_008, **values)


COLUMN_FLOATS = [*Photometry._fields[2:14], "observation_mjd"]
mjd_values = st.one_of(
    st.sampled_from([*EDGES, 60000.0, 10000.0, 109999.0]), st.floats(min_value=10000, max_value=110000)
)


@st.composite
def column_batches(draw: st.DrawFn) -> tuple[list[str], dict[str, list[float]], list[str]]:
    n = draw(st.integers(min_value=0, max_value=4))
    ids = draw(st.lists(st.sampled_from(["A", "B", "C", "D", "E"]), min_size=n, max_size=n))
    columns = {}
    for name in COLUMN_FLOATS:
        values = mjd_values if name == "observation_mjd" else num
        columns[name] = draw(st.one_of(st.just([]), st.lists(values, min_size=n, max_size=n)))
    quality = draw(st.one_of(st.just([]), st.lists(flags, min_size=n, max_size=n)))
    return ids, columns, quality


@settings(max_examples=600, deadline=None)
@given(column_batches())
def test_columnar_fast_path_agrees_with_the_detailed_checks(
    batch: tuple[list[str], dict[str, list[float]], list[str]],
) -> None:
    ids, columns, quality = batch
    rows = [
        Photometry(
            ids[i],
            0,
            *(columns[f][i] if columns[f] else 0.0 for f in COLUMN_FLOATS[:-1]),
            quality[i] if quality else "",
            columns["observation_mjd"][i] if columns["observation_mjd"] else 0.0,
        )
        for i in range(len(ids))
    ]
    sent = columns | {"quality_flag": quality}
    assert rules.columns_plainly_valid(ids, sent.__getitem__) == (len(ids) > 0 and detailed(rows)), rows


def test_a_plainly_valid_column_batch_takes_the_columnar_fast_path() -> None:
    columns = {f: [] for f in COLUMN_FLOATS} | {"peak_flux_err_jy": [0.001, 0.002], "ra_deg": [0.0, 359.9]}
    assert rules.columns_plainly_valid(["A", "B"], (columns | {"quality_flag": ["good", ""]}).__getitem__)
    assert not rules.columns_plainly_valid(["A", "A"], (columns | {"quality_flag": []}).__getitem__)  # a source twice
    mixed = columns | {"observation_mjd": [0.0, 60000.5], "quality_flag": ["x" * 32, "é" * 16]}
    assert rules.columns_plainly_valid(["A", "B"], mixed.__getitem__)  # unset dates, long flags: exact, not doubt

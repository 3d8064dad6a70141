"""RecordPhotometry's request rules (domain/photometry_request.py) on plain values, without a server.

tests/test_sources.py and tests/test_photometry_columns.py hold the same rules through gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence

from dsa110.contimg.server.domain import photometry_request as request
from dsa110.contimg.server.domain.checks import MAX_VIOLATIONS, Checker
from dsa110.contimg.server.domain.photometry_rules import MAX_MEASUREMENTS
from dsa110.contimg.server.domain.records import Photometry, PhotometryBatch


def fields(c: Checker) -> list[str]:
    return [v.field for v in c.violations]


def test_source_names_and_measure_times_are_reported_measurement_by_measurement() -> None:
    c = Checker()
    times = {0: (1_790_000_000, 0), 1: (0, -1), 2: (253_402_300_800, 0)}
    ids = request.row_source_ids(["sources/A", "B", "sources/C"], times, c)
    assert ids == ["A", "invalid-1", "C"]  # a placeholder stands in, so the other fields are still checked
    assert fields(c) == ["measurements[1].source", "measurements[1].measure_time", "measurements[2].measure_time"]


def test_source_names_stop_at_the_violation_cap() -> None:
    c = Checker()
    ids = request.row_source_ids(["bad"] * 150, {}, c)
    assert len(c.violations) == MAX_VIOLATIONS and len(ids) == MAX_VIOLATIONS  # the rest is not converted
    c = Checker()
    assert request.column_source_ids(["bad"] * 150, c) == [f"invalid-{i}" for i in range(150)]
    assert len(c.violations) == MAX_VIOLATIONS


def test_count_limits_and_one_form() -> None:
    c = Checker()
    request.check_one_form(True, True, c)
    request.check_one_form(True, False, c)
    assert request.column_source_ids(["sources/A"] * (MAX_MEASUREMENTS + 1), c) is None
    request.batch_of_rows([], MAX_MEASUREMENTS + 1, c)
    assert fields(c) == ["columns", "columns.source", "measurements", "measurements"]
    assert [v.description for v in c.violations][1:] == [
        f"at most {MAX_MEASUREMENTS} measurements per call",
        f"at most {MAX_MEASUREMENTS} measurements per call",
        f"must contain between 1 and {MAX_MEASUREMENTS} items (got 0)",
    ]


def test_columns_of_the_wrong_length_are_read_as_defaults_and_reported() -> None:
    sent = {"peak_flux_err_jy": [0.01], "measure_time_unix_micros": [-(10**18), 0]}

    def column(name: str) -> Sequence[float]:
        return sent.get(name, [])

    rows = [Photometry("A"), Photometry("B")]  # what the conversion read: the short column as zeros
    c = Checker()
    request.check_columns(PhotometryBatch.of_rows(rows), column, ["peak_flux_err_jy"], c)
    assert fields(c) == [
        "columns.peak_flux_err_jy",
        "columns.measure_time_unix_micros[0]",
        "columns.peak_flux_err_jy[0]",
        "columns.peak_flux_err_jy[1]",
    ]
    assert c.violations[0].description == "has 1 values for 2 sources (or leave it empty)"

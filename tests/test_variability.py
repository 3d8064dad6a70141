"""Running flux sums (domain/variability.py): the per-row fold used by photometry ingest gives
exactly what FluxSums.add of each measurement gives, and the statistics are total."""

from __future__ import annotations

import math

from dsa110.contimg.server.domain.variability import FluxSums, add_rows, derive, weights
from hypothesis import given
from hypothesis import strategies as st

finite = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False, allow_infinity=False)
rows = st.lists(
    st.tuples(st.integers(0, 5), finite, st.floats(min_value=1e-4, max_value=1.0), st.floats(50000.0, 70000.0)),
    max_size=60,
)


@given(rows, rows)
def test_add_rows_equals_adding_each_measurement(first: list, second: list):
    expected: dict[int, FluxSums] = {}
    got: dict[int, list[float]] = {}
    for batch in (first, second):  # two batches into one set of sums, as a write group does
        for key, flux, err, mjd in batch:
            expected.setdefault(key, FluxSums()).add(flux, err, mjd)
        if batch:
            keys, fluxes, errors, mjds = zip(*batch, strict=True)
            add_rows(got, keys, fluxes, weights(errors), mjds)
    assert {k: FluxSums.of(v) for k, v in got.items()} == expected
    assert {k: derive(FluxSums.of(v)) for k, v in got.items()} == {k: derive(v) for k, v in expected.items()}


extreme = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324]))


@given(st.integers(0, 10**6), extreme, extreme, extreme, extreme, extreme, extreme, extreme, extreme)
def test_statistics_are_total_for_any_sums(n, sum_f, sum_f2, sum_w, sum_wf, sum_wf2, low, high, mjd) -> None:
    """Sums stored before today's bounds (a weight of 0 from an error of 1.4e154 Jy divided by zero
    here, failing every write group and delete that touched the source) give statistics, never an
    exception, and every statistic is a finite number SQLite can store."""
    got = derive(FluxSums(n, sum_f, sum_f2, sum_w, sum_wf, sum_wf2, low, high, mjd, mjd))
    assert got.epoch_count == n
    for value in (got.mean_flux_jy, got.std_flux_jy, got.min_flux_jy, got.max_flux_jy, got.chi2_reduced,
                  got.eta, got.v, got.sigma_deviation, got.last_mjd):  # fmt: skip
        assert math.isfinite(value)


def test_two_measurements_with_a_zero_weight_were_a_division_by_zero() -> None:
    sums = FluxSums()
    for flux in (0.5, 0.7):
        sums.add(flux, 1.4e154, 60000.0)  # 1 / err^2 underflows to 0
    assert sums.sum_w == 0.0
    got = derive(sums)
    assert got.eta == 0.0 and got.mean_flux_jy == 0.6

"""Running flux sums (domain/variability.py): the per-row fold used by photometry ingest gives
exactly what FluxSums.add of each measurement gives."""

from __future__ import annotations

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

"""The rules of a RecordPhotometry request beyond each field's own (photometry_rules.py): one form
of the batch, how many measurements, their source names and measure times.

The servicer reads the message's fields and converts them; these functions take what it read and
a Checker, and report every problem at its request field: `measurements[i].{field}` for a batch
sent as messages, `columns.{field}[i]` for one sent as columns, up to MAX_VIOLATIONS in all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from . import names
from .checks import TIMESTAMP_MAX_US, TIMESTAMP_MIN_US, Checker, timestamp_ok
from .errors import InvalidArgument
from .photometry_rules import MAX_MEASUREMENTS, batch_plainly_valid, check_measurements, columns_plainly_valid
from .records import Photometry, PhotometryBatch


def row_field(i: int, name: str) -> str:
    """Where field `name` of measurement i is in a RecordPhotometryRequest's `measurements`."""
    return f"measurements[{i}].{name}"


def column_field(i: int, name: str) -> str:
    """Where field `name` of measurement i is in a RecordPhotometryRequest's `columns`."""
    return f"columns.{name}[{i}]"


def check_one_form(has_columns: bool, has_measurements: bool, c: Checker) -> None:
    if has_columns and has_measurements:
        c.add("columns", "set measurements or columns, not both")


def row_source_ids(source_names: Sequence[str], measure_times: Mapping[int, tuple[int, int]], c: Checker) -> list[str]:
    """The source ids of the first measurements sent as messages: their `source` names, and their
    `measure_time`s (seconds, nanos) by index where set, checked measurement by measurement until
    MAX_VIOLATIONS are collected. Measurements after that are not worth converting: fewer ids come
    back. A malformed name stands as a placeholder id, so that the other fields are still checked."""
    found = [names.source_id_or_none(name) for name in source_names]
    if None not in found and not c.full and all(timestamp_ok(*t) for t in measure_times.values()):
        return cast(list[str], found)  # no violation: the common case, without a call per measurement
    ids = []
    for i, name in enumerate(source_names):
        ids.append(_source_id(name, i, row_field, c))
        if i in measure_times:
            c.timestamp(row_field(i, "measure_time"), *measure_times[i])
        if c.full:
            break
    return ids


def batch_of_rows(rows: list[Photometry], sent: int, c: Checker) -> PhotometryBatch:
    """The measurements sent as messages (at most MAX_MEASUREMENTS of the `sent`), checked."""
    if sent > MAX_MEASUREMENTS:
        c.add("measurements", f"at most {MAX_MEASUREMENTS} measurements per call")
    batch = PhotometryBatch.of_rows(rows)
    if not batch_plainly_valid(batch):
        check_measurements(rows, c, row_field, "measurements")
    return batch


def column_source_ids(source_names: Sequence[str], c: Checker) -> list[str] | None:
    """The source ids of measurements sent as columns; None (reported) when there are too many to read."""
    if len(source_names) > MAX_MEASUREMENTS:
        c.add("columns.source", f"at most {MAX_MEASUREMENTS} measurements per call")
        return None
    found = [names.source_id_or_none(name) for name in source_names]
    if None not in found:
        return cast(list[str], found)
    return [_source_id(name, i, column_field, c) for i, name in enumerate(source_names)]


def check_columns(
    batch: PhotometryBatch, column: Callable[[str], Sequence[Any]], wrong: Sequence[str], c: Checker
) -> None:
    """Check measurements sent as columns: `column(name)` is column `name` as sent, `batch` the
    measurements read from them, `wrong` the columns whose length was neither 0 nor one per source
    (read as empty)."""
    for name in wrong:
        c.add(
            f"columns.{name}",
            f"has {len(column(name))} values for {len(batch.source_ids)} sources (or leave it empty)",
        )
    times = column("measure_time_unix_micros")
    if times and not (TIMESTAMP_MIN_US <= min(times) and max(times) <= TIMESTAMP_MAX_US):
        for i, t in enumerate(times):
            if not c.full:
                c.unix_micros(column_field(i, "measure_time_unix_micros"), t)
    # After any violation, field by field: a column of the wrong length was read as defaults, which
    # the columns as sent do not show (and a failing request is not the one to make fast).
    if c.violations or not columns_plainly_valid(batch.source_ids, column):
        check_measurements(batch.rows(), c, column_field, "columns.source")


def _source_id(name: str, i: int, field: Callable[[int, str], str], c: Checker) -> str:
    """The id in measurement i's source name; if malformed, parse_source_name's violation is collected
    (unless MAX_VIOLATIONS are) and a placeholder id stands in."""
    source_id = names.source_id_or_none(name)
    if source_id is not None:
        return source_id
    try:
        return names.parse_source_name(name, field(i, "source"))
    except InvalidArgument as exc:
        if not c.full:
            c.violations.extend(exc.violations)
        return f"invalid-{i}"

"""Turning parsed list queries into PostgreSQL WHERE / ORDER BY / keyset clauses ($n parameters)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ...domain.errors import InvalidArgument
from ...domain.query import Condition, Not, Or, OrderKey, Term
from ...domain.records import Page
from ...repositories.protocols import ListQuery
from ...slices import map_in_slices

if TYPE_CHECKING:
    from .database import Database

K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")
Row = Sequence[Any]

_OPS = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class Params:
    """Numbered parameters: `add(value)` gives the `$n` that binds it."""

    def __init__(self, *values: Any):
        self.values: list[Any] = list(values)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def where(conditions: Sequence[Term], columns: Mapping[str, str], params: Params) -> list[str]:
    """One clause per term (the caller ANDs them), values bound as `$n` parameters, never written
    into the SQL. A list of comparisons (an AND-only filter) gives the clauses it always did."""
    clauses: list[str] = []
    for c in conditions:
        if isinstance(c, Condition):
            value = int(c.value) if isinstance(c.value, bool) else c.value
            clauses.append(f"{columns[c.field]} {_OPS[c.op]} {params.add(value)}")
        else:
            clauses.append(_clause(c, columns, params))
    return clauses


def _clause(term: Term, columns: Mapping[str, str], params: Params) -> str:
    """OR/NOT/parenthesized terms; their depth is bounded by the parser (query.MAX_DEPTH)."""
    if isinstance(term, Condition):
        value = int(term.value) if isinstance(term.value, bool) else term.value
        return f"{columns[term.field]} {_OPS[term.op]} {params.add(value)}"
    if isinstance(term, Not):  # a comparison with NULL is not true: NOT of it is
        return f"({_clause(term.term, columns, params)}) IS NOT TRUE"
    joiner = " OR " if isinstance(term, Or) else " AND "
    return "(" + joiner.join([_clause(t, columns, params) for t in term.terms]) + ")"


def order_keys(order: Sequence[OrderKey], columns: Mapping[str, str], tiebreak: str) -> list[tuple[str, bool]]:
    keys = [(columns[k.field], k.desc) for k in order]
    keys.append((tiebreak, order[-1].desc if order else False))
    return keys


def order_by(keys: Sequence[tuple[str, bool]]) -> str:
    return ", ".join(f"{col} {'DESC' if desc else 'ASC'}" for col, desc in keys)


def check_after(after: list[object] | None, n: int, *, numeric: bool = False) -> None:
    """The token is signed, but may come from another version of the server: each value must be one
    PostgreSQL can compare with its column (an int64, a float or a string; only numbers when
    `numeric`)."""
    if after is None:
        return
    kinds = (int, float) if numeric else (int, float, str)
    if len(after) != n or not all(
        isinstance(v, kinds) and not isinstance(v, bool) and (not isinstance(v, int) or -(2**63) <= v < 2**63)
        for v in after
    ):
        raise InvalidArgument.single("page_token", "invalid page token", reason="INVALID_PAGE_TOKEN")


_INTEGRAL = {"smallint": 15, "integer": 31, "bigint": 63}
_REAL = {"double precision", "real", "float8"}


def _fits(value: object, sql_type: str) -> bool:
    """Whether a keyset value can be bound as `sql_type` (check_after has vetted its kind)."""
    if sql_type == "text":
        return isinstance(value, str)
    if sql_type in _INTEGRAL:
        bits = _INTEGRAL[sql_type]
        return isinstance(value, int) and -(2**bits) <= value < 2**bits
    if sql_type in _REAL:
        return isinstance(value, int | float)
    return True


def keyset(
    keys: Sequence[tuple[str, bool]], after: list[object] | None, params: Params, types: Sequence[str] | None = None
) -> str | None:
    """Rows strictly after `after` in the order `keys` (one value per key, as the last row had).
    `types`: SQL types to cast the values to (a float token compared with a bigint column)."""
    check_after(after, len(keys))
    if after is None:
        return None
    casts = list(types) if types is not None else [""] * len(keys)
    if not all(_fits(v, t) for v, t in zip(after, casts, strict=True)):
        # PostgreSQL, unlike SQLite, refuses a string where its column holds numbers (and the reverse).
        raise InvalidArgument.single("page_token", "invalid page token", reason="INVALID_PAGE_TOKEN")
    marks = [params.add(v) + (f"::{t}" if t else "") for v, t in zip(after, casts, strict=True)]
    if all(desc == keys[0][1] for _, desc in keys):
        cols = ", ".join(col for col, _ in keys)
        return f"({cols}) {'<' if keys[0][1] else '>'} ({', '.join(marks)})"
    parts: list[str] = []
    for i, (col, desc) in enumerate(keys):
        eq = [f"{c} = {marks[j]}" for j, (c, _) in enumerate(keys[:i])]
        parts.append("(" + " AND ".join([*eq, f"{col} {'<' if desc else '>'} {marks[i]}"]) + ")")
    return "(" + " OR ".join(parts) + ")"


@dataclass(frozen=True, slots=True)
class Table(Generic[K, T]):
    """Reads of one table's records by key and by page (as storage/sqlite/sql.py's Table)."""

    name: str
    key: str
    select: str
    row: Callable[[Row], T]
    columns: Mapping[str, str]
    tiebreak: str
    types: Mapping[str, str]  # column -> SQL type, for keyset values (e.g. "images.id" -> "bigint")
    key_type: str  # the key column's array type for `= ANY($1::...)`, e.g. "bigint[]"

    async def get_many(self, db: Database, keys: Sequence[K]) -> list[T | None]:
        unique = list(dict.fromkeys(keys))
        found = await db.fetch(
            f"SELECT {self.key}, {self.select} FROM {self.name} WHERE {self.key} = ANY($1::{self.key_type})", unique
        )
        by_key = {r[0]: self.row(r[1:]) for r in found}
        return [by_key.get(k) for k in keys]

    async def page(self, db: Database, query: ListQuery) -> Page[T]:
        return await self.page_of(db, query, self.select, self.row)

    async def page_of(self, db: Database, query: ListQuery, select: str, row: Callable[[Row], R]) -> Page[R]:
        params = Params()
        clauses = where(query.conditions, self.columns, params)
        keys = order_keys(query.order, self.columns, self.tiebreak)
        ks = keyset(keys, query.after, params, [self.types.get(col, "") for col, _ in keys])
        page_clauses = [*clauses, ks] if ks else clauses
        where_sql = f" WHERE {' AND '.join(page_clauses)}" if page_clauses else ""
        key_cols = ", ".join(col for col, _ in keys)
        limit = params.add(query.page_size + 1)
        found = await db.fetch(
            f"SELECT {select}, {key_cols} FROM {self.name}{where_sql} ORDER BY {order_by(keys)} LIMIT {limit}",
            *params.values,
        )
        count_params = Params()
        count_clauses = where(query.conditions, self.columns, count_params)
        count_where = f" WHERE {' AND '.join(count_clauses)}" if count_clauses else ""
        total = await db.count(f"SELECT count(*) FROM {self.name}{count_where}", *count_params.values)
        more = len(found) > query.page_size
        found = found[: query.page_size]
        n = len(keys)
        next_after = list(found[-1][-n:]) if more and found else None
        return Page(await map_in_slices(row, [r[:-n] for r in found]), next_after, int(total))

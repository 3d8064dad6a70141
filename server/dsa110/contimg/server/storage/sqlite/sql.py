"""Turning parsed list queries into SQLite WHERE / ORDER BY / keyset clauses."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
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


def placeholders(n: int) -> str:
    return ",".join("?" * n)


def chunks(items: Sequence[T], size: int = 500) -> Iterable[Sequence[T]]:
    """`items` in slices of at most `size`: SQLite caps a statement's parameters."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


_OPS = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def where(
    conditions: Sequence[Term], columns: Mapping[str, str], *, unindexed: bool = False
) -> tuple[list[str], list[Any]]:
    """One clause per term (the caller ANDs them), values bound as `?` parameters, never written
    into the SQL. `unindexed` writes `+column`: the same test, but SQLite may not answer it from an
    index. A list of comparisons (an AND-only filter) gives the clauses it always did."""
    clauses: list[str] = []
    params: list[Any] = []
    plus = "+" if unindexed else ""
    for c in conditions:
        if isinstance(c, Condition):
            clauses.append(f"{plus}{columns[c.field]} {_OPS[c.op]} ?")
            params.append(int(c.value) if isinstance(c.value, bool) else c.value)
        else:
            clauses.append(_clause(c, columns, params, plus))
    return clauses, params


def _clause(term: Term, columns: Mapping[str, str], params: list[Any], plus: str) -> str:
    """OR/NOT/parenthesized terms; their depth is bounded by the parser (query.MAX_DEPTH)."""
    if isinstance(term, Condition):
        params.append(int(term.value) if isinstance(term.value, bool) else term.value)
        return f"{plus}{columns[term.field]} {_OPS[term.op]} ?"
    if isinstance(term, Not):  # a comparison with NULL is not true: NOT of it is
        return f"({_clause(term.term, columns, params, plus)}) IS NOT TRUE"
    joiner = " OR " if isinstance(term, Or) else " AND "
    return "(" + joiner.join([_clause(t, columns, params, plus) for t in term.terms]) + ")"


def order_keys(order: Sequence[OrderKey], columns: Mapping[str, str], tiebreak: str) -> list[tuple[str, bool]]:
    keys = [(columns[k.field], k.desc) for k in order]
    keys.append((tiebreak, order[-1].desc if order else False))
    return keys


def order_by(keys: Sequence[tuple[str, bool]]) -> str:
    return ", ".join(f"{col} {'DESC' if desc else 'ASC'}" for col, desc in keys)


def keyset(
    keys: Sequence[tuple[str, bool]], after: list[object] | None, *, numeric: bool = False
) -> tuple[str | None, list[Any]]:
    """Rows strictly after `after` in the order `keys` (one value per key, as the last row had).

    The token is signed, but may come from another version of the server: check each value is one
    SQLite can bind (an int64, a float or a string; only numbers when `numeric`).
    """
    if after is None:
        return None, []
    kinds = (int, float) if numeric else (int, float, str)
    if len(after) != len(keys) or not all(
        isinstance(v, kinds) and not isinstance(v, bool) and (not isinstance(v, int) or -(2**63) <= v < 2**63)
        for v in after
    ):
        raise InvalidArgument.single("page_token", "invalid page token", reason="INVALID_PAGE_TOKEN")
    if all(desc == keys[0][1] for _, desc in keys):
        cols = ", ".join(col for col, _ in keys)
        return f"({cols}) {'<' if keys[0][1] else '>'} ({', '.join('?' * len(keys))})", list(after)
    parts: list[str] = []
    params: list[Any] = []
    for i, (col, desc) in enumerate(keys):
        eq = [f"{c} = ?" for c, _ in keys[:i]]
        parts.append("(" + " AND ".join([*eq, f"{col} {'<' if desc else '>'} ?"]) + ")")
        params.extend(after[: i + 1])
    return "(" + " OR ".join(parts) + ")", params


@dataclass(frozen=True, slots=True)
class Table(Generic[K, T]):
    """Reads of one table's records by key and by page: what each repository's get_many, list_page
    and list_refs have in common."""

    name: str
    key: str  # the key column (`images.id`, `measurement_sets.path`)
    select: str  # the columns `row` reads, in its order
    row: Callable[[Row], T]
    columns: Mapping[str, str]  # filterable/sortable field -> column
    tiebreak: str  # unique column closing every sort order

    async def get_many(self, db: Database, keys: Sequence[K]) -> list[T | None]:
        """The record of each key (None where there is none), in the order asked."""
        unique = list(dict.fromkeys(keys))
        found = await db.lookup(
            f"SELECT {self.key}, {self.select} FROM {self.name} WHERE {self.key} IN ({placeholders(len(unique))})",
            unique,
        )
        by_key = {r[0]: self.row(r[1:]) for r in found}
        return [by_key.get(k) for k in keys]

    async def page(self, db: Database, query: ListQuery) -> Page[T]:
        """One keyset page of records."""
        return await self.page_of(db, query, self.select, self.row)

    async def page_of(self, db: Database, query: ListQuery, select: str, row: Callable[[Row], R]) -> Page[R]:
        """One keyset page of `row(r)` for each row of `select` (refs: (id, update_time))."""
        found, after, total = await _page(db, select, self.name, self.columns, self.tiebreak, query)
        return Page(await map_in_slices(row, found), after, total)


async def _page(
    db: Database, select: str, table: str, columns: Mapping[str, str], tiebreak: str, query: ListQuery
) -> tuple[list[Sequence[Any]], list[object] | None, int]:
    conditions, order, page_size, after = query.conditions, query.order, query.page_size, query.after
    clauses, params = where(conditions, columns)
    keys = order_keys(order, columns, tiebreak)
    ks_clause, ks_params = keyset(keys, after)
    page_clauses = [*clauses, ks_clause] if ks_clause else clauses
    where_sql = f" WHERE {' AND '.join(page_clauses)}" if page_clauses else ""
    key_cols = ", ".join(col for col, _ in keys)
    tail = f" ORDER BY {order_by(keys)} LIMIT ?"
    rows = None
    if order and conditions:
        # A filter and a sort on different columns: SQLite tends to use the filter's index and sort
        # every match (660k rows for a declination strip of 1M images). Walking the sort's index
        # and testing the filter stops after one page when matches are common; when they are rare
        # it runs out of the on-loop budget, and the usual plan (filter index, then sort) answers.
        plain_where, _ = where(conditions, columns, unindexed=True)
        walk = [*plain_where, *([ks_clause] if ks_clause else [])]
        rows = await db.try_inline(
            f"SELECT {select}, {key_cols} FROM {table} WHERE {' AND '.join(walk)}{tail}",
            [*params, *ks_params, page_size + 1],
        )
    if rows is None:
        rows = await db.lookup(
            f"SELECT {select}, {key_cols} FROM {table}{where_sql}{tail}", [*params, *ks_params, page_size + 1]
        )
    count_where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    total = await db.count(f"SELECT count(*) FROM {table}{count_where}", params)
    more = len(rows) > page_size
    rows = rows[:page_size]
    n_keys = len(keys)
    next_after = list(rows[-1][-n_keys:]) if more and rows else None
    return [r[:-n_keys] for r in rows], next_after, int(total)

"""The AIP-160 filter grammar: AND, OR, NOT / `-`, parentheses.

Parser unit tests (precedence: NOT binds tightest, then OR, then AND, as AIP-160 says: `a AND b OR c`
is `a AND (b OR c)`), errors naming `filter` with the offset where parsing failed, the limits that
refuse pathological filters quickly, and a Hypothesis property: random OR/NOT/AND/parenthesized
filters over ListImages return exactly the images a brute-force evaluation in Python picks, on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from dsa110.contimg.server.domain.errors import InvalidArgument
from dsa110.contimg.server.domain.listing import IMAGE_FIELDS, JOB_WATCH_FIELDS
from dsa110.contimg.server.domain.query import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_FILTER_LEN,
    And,
    Condition,
    Not,
    Or,
    Term,
    fields_of,
    matches,
    parse_filter,
)
from dsa110.contimg.server.domain.records import ImageType
from dsa110.contimg.server.storage.postgres import sql as pg_sql
from dsa110.contimg.server.storage.sqlite import sql as sqlite_sql
from dsa110.contimg.v1 import images_pb2
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from helpers import Image, bad_request, expect_error, list_all_images, make_image, make_ms

ENGINES = ("sqlite", "postgres")

A = Condition("mid_mjd", ">", 1.0)
B = Condition("noise_jy", "<", 2.0)
C = Condition("type", "=", int(ImageType.CONTINUUM))
TEXT = {"a": "mid_mjd > 1", "b": "noise_jy < 2", "c": "type = CONTINUUM"}


def parse(text: str) -> list[Term]:
    return parse_filter(text.format(**TEXT), IMAGE_FIELDS)


def refusal(text: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        parse_filter(text, IMAGE_FIELDS)
    (violation,) = caught.value.violations
    assert violation.field == "filter"
    return violation.description


# ---- parsing --------------------------------------------------------------------------------------


def test_and_only_filters_parse_as_before():
    """Today's filters: a flat list of comparisons, which the storage layer turns into the same SQL."""
    assert parse("{a} AND {b} AND {c}") == [A, B, C]
    assert parse("{a} and {b}") == [A, B]
    assert parse("") == [] and parse("   ") == []
    assert parse("({a} AND {b}) AND {c}") == [A, B, C]  # parentheses around a conjunction flatten
    assert parse("((({a})))") == [A]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{a} OR {b}", [Or((A, B))]),
        ("{a} OR {b} OR {c}", [Or((A, B, C))]),
        ("{a} AND {b} OR {c}", [A, Or((B, C))]),  # OR binds tighter than AND (AIP-160)
        ("{a} OR {b} AND {c}", [Or((A, B)), C]),
        ("({a} AND {b}) OR {c}", [Or((And((A, B)), C))]),
        ("NOT {a}", [Not(A)]),
        ("not {a} AND {b}", [Not(A), B]),  # NOT binds tightest
        ("NOT {a} OR {b}", [Or((Not(A), B))]),
        ("NOT ({a} OR {b})", [Not(Or((A, B)))]),
        ("-{a}", [Not(A)]),
        ("-({a} AND {b})", [Not(And((A, B)))]),
        ("- ({a})", [Not(A)]),
        ("NOT (NOT {a})", [Not(Not(A))]),
        ("({a} OR {b}) OR ({c})", [Or((A, B, C))]),
        ("{a} AND ({b} OR ({c} AND NOT {a}))", [A, Or((B, And((C, Not(A)))))]),
    ],
)
def test_precedence_and_grouping(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("mid_mjd > 1 OR", "expected a comparison at the end of the filter"),
        ("mid_mjd > 1 AND", "expected a comparison at the end of the filter"),
        ("OR mid_mjd > 1", "at offset 0, got 'OR'"),
        ("mid_mjd > 1 AND OR noise_jy < 2", "at offset 16, got 'OR'"),
        ("NOT", "expected a comparison at the end of the filter"),
        ("NOT NOT mid_mjd > 1", "at offset 4, got 'NOT'"),
        ("(mid_mjd > 1", "unclosed '(' at offset 0"),
        ("(mid_mjd > 1 OR (noise_jy < 2)", "unclosed '(' at offset 0"),
        ("mid_mjd > 1)", "unmatched ')' at offset 11"),
        ("()", "at offset 1, got ')'"),
        ("(mid_mjd > 1 noise_jy < 2)", "expected ')' closing the '(' at offset 0, or AND or OR at offset 13"),
        ("mid_mjd > 1 noise_jy < 2", "expected AND or OR at offset 12, got 'noise_jy'"),
        ("mid_mjd", "expected an operator after 'mid_mjd' at the end of the filter"),
        ("mid_mjd >", "expected a value after 'mid_mjd' > at the end of the filter"),
        ("mid_mjd > (1)", "expected a value after 'mid_mjd' > at offset 10, got '('"),
        ("mid_mjd > 1 OR nope = 2", "unknown field 'nope' at offset 15"),
        ("-nope = 2", "unknown field 'nope' at offset 1"),
        ("mid_mjd > 1 OR type > CONTINUUM", "field 'type' supports only = and !="),
        ("NOT noise_jy < abc", "field 'noise_jy' needs a number, got 'abc'"),
        ("mid_mjd > 1 OR mid_mjd ~ 2", "unexpected character '~' at offset 23"),
    ],
)
def test_errors_say_where(text, needle):
    description = refusal(text)
    assert needle in description, description


def test_limits_refuse_pathological_filters_quickly():
    deep = "(" * 1000 + "mid_mjd > 1" + ")" * 1000
    assert f"parentheses nested deeper than {MAX_DEPTH}" in refusal(deep)
    assert "longer than" in refusal("(" * 1100 + "mid_mjd > 1" + ")" * 1100)
    nested = "(" * (MAX_DEPTH + 1) + "mid_mjd > 1" + ")" * (MAX_DEPTH + 1)
    assert len(nested) < MAX_FILTER_LEN
    assert f"parentheses nested deeper than {MAX_DEPTH} at offset {MAX_DEPTH}" in refusal(nested)
    assert parse("(" * MAX_DEPTH + "{a}" + ")" * MAX_DEPTH) == [A]
    negated = "NOT (" * MAX_DEPTH + "mid_mjd > 1" + ")" * MAX_DEPTH
    assert len(parse_filter(negated, IMAGE_FIELDS)) == 1
    assert "nested deeper" in refusal("NOT (" * (MAX_DEPTH + 1) + "mid_mjd > 1" + ")" * (MAX_DEPTH + 1))
    assert "longer than" in refusal(" OR ".join(["mid_mjd > 1"] * 10_000))
    many = " OR ".join(["mid_mjd > 1"] * (MAX_CONDITIONS + 1))
    assert len(many) < MAX_FILTER_LEN
    assert f"at most {MAX_CONDITIONS} comparisons" in refusal(many)
    (widest,) = parse_filter(" OR ".join(["mid_mjd > 1"] * MAX_CONDITIONS), IMAGE_FIELDS)
    assert isinstance(widest, Or) and len(widest.terms) == MAX_CONDITIONS
    start = time.perf_counter()
    for text in (deep, nested, many, "(" * 2000, ")" * 2000, "NOT " * 500, "- " * 1000):
        for _ in range(100):
            with pytest.raises(InvalidArgument):
                parse_filter(text, IMAGE_FIELDS)
    assert time.perf_counter() - start < 2.0  # 700 refusals: milliseconds each at worst


def test_sql_binds_values_and_keeps_and_only_clauses():
    columns = {"mid_mjd": "images.mid_mjd", "noise_jy": "images.noise_jy", "type": "images.type"}
    clauses, params = sqlite_sql.where(parse("{a} AND {b}"), columns)
    assert clauses == ["images.mid_mjd > ?", "images.noise_jy < ?"] and params == [1.0, 2.0]
    clauses, params = sqlite_sql.where(parse("{a} AND NOT ({b} OR -{c})"), columns)
    assert clauses == ["images.mid_mjd > ?", "((images.noise_jy < ? OR (images.type = ?) IS NOT TRUE)) IS NOT TRUE"]
    assert params == [1.0, 2.0, int(ImageType.CONTINUUM)]
    clauses, params = sqlite_sql.where(parse("{a} OR {b}"), columns, unindexed=True)
    assert clauses == ["(+images.mid_mjd > ? OR +images.noise_jy < ?)"]
    pg_params = pg_sql.Params()
    assert pg_sql.where(parse("{a} AND {b}"), columns, pg_params) == ["images.mid_mjd > $1", "images.noise_jy < $2"]
    pg_params = pg_sql.Params("x")
    assert pg_sql.where(parse("-{a} OR ({b} AND {c})"), columns, pg_params) == [
        "((images.mid_mjd > $2) IS NOT TRUE OR (images.noise_jy < $3 AND images.type = $4))"
    ]
    assert pg_params.values == ["x", 1.0, 2.0, int(ImageType.CONTINUUM)]
    # A string value is a parameter, never SQL text.
    clauses, params = sqlite_sql.where(parse_filter('field_name = "x\' OR 1=1 --"', IMAGE_FIELDS), {"field_name": "f"})
    assert clauses == ["f = ?"] and params == ["x' OR 1=1 --"]


def test_matches_and_fields_of():
    terms = parse_filter("state = RUNNING OR NOT type = IMAGE", JOB_WATCH_FIELDS)
    assert sorted(fields_of(terms)) == ["state", "type"]
    running = {"state": int(terms[0].terms[0].value), "type": 0, "measurement_set": ""}  # type: ignore[union-attr]
    assert matches(terms, running.__getitem__)
    image_type = terms[0].terms[1].term.value  # type: ignore[union-attr]
    assert not matches(terms, {"state": 0, "type": image_type, "measurement_set": ""}.__getitem__)
    assert matches(terms, {"state": 0, "type": image_type + 1, "measurement_set": ""}.__getitem__)
    assert matches([Not(Condition("x", ">", 1))], {"x": None}.__getitem__)  # as SQL's IS NOT TRUE
    assert not matches([Condition("x", "!=", 1)], {"x": None}.__getitem__)


# ---- the property: the server's answer is the brute-force answer ----------------------------------

TYPES = ["CONTINUUM", "DIRTY", "RESIDUAL"]
NOISES = [0.001, 0.002, 0.003, 0.004]
RANGES = [100.0, 200.0, 300.0]
FIELD_NAMES = ["a", "b", "c"]
N_IMAGES = 48


@dataclass(frozen=True)
class Seeded:
    stubs: Any
    values: dict[str, dict[str, object]]  # image name -> field -> value, as the filter compares


@pytest.fixture
async def seeded(stubs) -> Seeded:
    ms = await make_ms(stubs, "/data/ms/filters.ms")
    values: dict[str, dict[str, object]] = {}
    for i in range(N_IMAGES):
        fields: dict[str, object] = {
            "type": TYPES[i % 3],
            "noise_jy": NOISES[(i // 3) % 4],
            "dynamic_range": RANGES[(i // 12) % 3],
            "pbcor": i % 5 < 2,
            "field_name": FIELD_NAMES[(i * 7) % 3],
        }
        image = await make_image(
            stubs,
            ms.name,
            type=getattr(Image, f"TYPE_{fields['type']}"),
            noise_jy=fields["noise_jy"],
            dynamic_range=fields["dynamic_range"],
            pbcor=fields["pbcor"],
            field_name=fields["field_name"],
        )
        values[image.name] = fields
    return Seeded(stubs, values)


_OPS = {
    "=": lambda x, y: x == y,
    "!=": lambda x, y: x != y,
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
}
# (filter text, predicate over an image's values)
Expr = tuple[str, Any]


@st.composite
def comparisons(draw: st.DrawFn) -> Expr:
    field = draw(st.sampled_from(["type", "noise_jy", "dynamic_range", "pbcor", "field_name"]))
    if field in ("type", "pbcor", "field_name"):
        op = draw(st.sampled_from(["=", "!="]))
    else:
        op = draw(st.sampled_from(list(_OPS)))
    if field == "type":
        value: object = draw(st.sampled_from([*TYPES, "PSF"]))
        text = str(value)
    elif field == "pbcor":
        value = draw(st.booleans())
        text = str(value).lower()
    elif field == "field_name":
        value = draw(st.sampled_from([*FIELD_NAMES, "d"]))
        text = f'"{value}"'
    else:
        grid = NOISES if field == "noise_jy" else RANGES
        value = draw(st.sampled_from([*grid, grid[0] / 2, grid[-1] * 2]))
        text = repr(value)
    compare = _OPS[op]
    return f"{field} {op} {text}", lambda v: compare(v[field], value)


def _combine(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    """AND, OR and NOT of smaller expressions, parenthesized so that the text means the tree."""

    def conj(parts: list[Expr]) -> Expr:
        preds = [p for _, p in parts]
        return "(" + " AND ".join(t for t, _ in parts) + ")", lambda v: all(p(v) for p in preds)

    def disj(parts: list[Expr]) -> Expr:
        preds = [p for _, p in parts]
        # OR binds tighter than AND: its operands need no parentheses unless they are ANDs (which are).
        return " OR ".join(t for t, _ in parts), lambda v: any(p(v) for p in preds)

    def neg(pair: tuple[str, Expr]) -> Expr:
        prefix, (text, pred) = pair
        return f"{prefix}({text})", lambda v: not pred(v)

    return st.one_of(
        st.lists(children, min_size=2, max_size=3).map(conj),
        st.lists(children, min_size=2, max_size=3).map(lambda parts: ("(" + disj(parts)[0] + ")", disj(parts)[1])),
        st.tuples(st.sampled_from(["NOT ", "-"]), children).map(neg),
    )


filters = st.recursive(comparisons(), _combine, max_leaves=8)


def _depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        deepest = max(deepest, depth)
    return deepest


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(expr=filters, tail=st.lists(comparisons(), max_size=2), or_tail=st.booleans())
async def test_filters_match_brute_force(seeded: Seeded, expr: Expr, tail: list[Expr], or_tail: bool):
    text, predicate = expr
    assume(_depth(text) <= MAX_DEPTH)
    preds = [predicate] + [p for _, p in tail]
    if or_tail and tail:  # an unparenthesized `x OR y` at the top level, ANDed with the rest
        text = " AND ".join([text, " OR ".join(t for t, _ in tail)])
        expected = {n for n, v in seeded.values.items() if predicate(v) and any(p(v) for _, p in tail)}
    else:
        text = " AND ".join([text, *(t for t, _ in tail)])
        expected = {n for n, v in seeded.values.items() if all(p(v) for p in preds)}
    got = await list_all_images(seeded.stubs, filter=text, page_size=7)  # several pages: keyset + filter
    assert sorted(i.name for i in got) == sorted(expected), text
    total = (await seeded.stubs.images.ListImages(images_pb2.ListImagesRequest(filter=text, page_size=1))).total_size
    assert total == len(expected), text
    by_noise = await list_all_images(seeded.stubs, filter=text, order_by="noise_jy desc", page_size=5)
    assert sorted(i.name for i in by_noise) == sorted(expected), text


async def test_server_errors_name_the_filter_and_tokens_stay_bound(seeded: Seeded):
    stubs = seeded.stubs
    for text in ["type = CONTINUUM OR", "(type = CONTINUUM", "NOT nope = 1", "(" * 40 + "type = DIRTY" + ")" * 40]:
        err = await expect_error(
            stubs.images.ListImages(images_pb2.ListImagesRequest(filter=text)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FILTER",
            field="filter",
        )
        (violation,) = bad_request(err).field_violations  # type: ignore[union-attr]
        assert violation.field == "filter"
        assert "offset" in violation.description or "end of the filter" in violation.description, violation
    first = await stubs.images.ListImages(
        images_pb2.ListImagesRequest(filter="type = CONTINUUM OR pbcor = true", page_size=2)
    )
    assert first.next_page_token
    await expect_error(
        stubs.images.ListImages(
            images_pb2.ListImagesRequest(
                filter="type = CONTINUUM AND pbcor = true", page_size=2, page_token=first.next_page_token
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        field="page_token",
    )

"""The list query language: AIP-160 filters (comparisons, AND, OR, NOT, parentheses), AIP-132
order_by, opaque signed page tokens.

Parsing and validation live here; turning a parsed query into SQL is the storage layer's job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import operator
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, IntEnum
from typing import Any

from .errors import InvalidArgument
from .page_keys import PageKey, signing_key

MAX_FILTER_LEN = 2048
MAX_CONDITIONS = 32  # comparisons in one filter
MAX_DEPTH = 16  # parentheses nested in one filter


class Kind(Enum):
    NUMBER = "number"
    INTEGER = "integer"
    STRING = "string"
    BOOL = "bool"
    ENUM = "enum"
    TIME = "time"  # RFC 3339 string in the filter, microseconds in storage
    REF = "ref"  # a resource name, equality only; `parse` turns it into the stored key


@dataclass(frozen=True, slots=True)
class FieldSpec:
    kind: Kind
    sortable: bool = False
    enum: type[IntEnum] | None = None
    parse: Callable[[str], object] | None = None  # REF fields: name -> key (raises InvalidArgument)


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    op: str
    value: object


@dataclass(frozen=True, slots=True)
class And:
    """All of `terms` (a parenthesized conjunction inside an OR or a NOT)."""

    terms: tuple[Term, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """Any of `terms`."""

    terms: tuple[Term, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """`term` is not true: false, or a comparison with a field that has no value (SQL's NULL)."""

    term: Term


# A parsed filter is a list of terms, all of which must hold; today's AND-only filters are lists of
# Conditions, as they always were, so their SQL (and query plans) are unchanged.
Term = Condition | And | Or | Not


@dataclass(frozen=True, slots=True)
class OrderKey:
    field: str
    desc: bool


_TOKEN = re.compile(
    r"""\s*(?:(?P<op><=|>=|!=|=|<|>)|(?P<paren>[()])|(?P<str>"(?:[^"\\]|\\.)*")|(?P<word>[A-Za-z0-9_.:+\-]+))"""
)
_KEYWORDS = frozenset(("AND", "OR", "NOT"))
Token = tuple[str, str, int]  # (kind, text, offset)


def _tokens(text: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    end = len(text)
    match = _TOKEN.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            rest = text[pos:]
            if rest.isspace():
                break
            offset = end - len(rest.lstrip())
            raise _bad_filter(f"unexpected character {text[offset]!r} at offset {offset}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


def _bad_filter(description: str) -> InvalidArgument:
    return InvalidArgument.single("filter", description, reason="INVALID_FILTER")


def _convert(spec: FieldSpec, name: str, op: str, kind: str, raw: str) -> object:
    if kind == "str":
        try:
            text = json.loads(raw)
            text.encode("utf-8")  # a lone surrogate escape ("\ud800") decodes, but is no text
        except ValueError:  # UnicodeEncodeError too
            raise _bad_filter(f"field {name!r}: malformed string literal") from None
    else:
        text = raw
    if spec.kind in (Kind.REF, Kind.STRING, Kind.BOOL, Kind.ENUM) and op not in ("=", "!="):
        raise _bad_filter(f"field {name!r} supports only = and !=")
    if spec.kind in (Kind.NUMBER, Kind.INTEGER):
        try:
            value = float(text) if spec.kind is Kind.NUMBER else int(text)
        except ValueError:
            raise _bad_filter(f"field {name!r} needs a number, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad_filter(f"field {name!r} needs a finite number")
        if isinstance(value, int) and abs(value) >= 2**63:
            raise _bad_filter(f"field {name!r}: number out of range")
        return value
    if spec.kind is Kind.BOOL:
        if text.lower() not in ("true", "false"):
            raise _bad_filter(f"field {name!r} needs true or false")
        return text.lower() == "true"
    if spec.kind is Kind.ENUM:
        assert spec.enum is not None
        key = text.upper()
        prefixes = [p for p in ("STATE_", "STAGE_", "STATUS_", "TYPE_", "GRADE_") if key.startswith(p)]
        for candidate in [key] + [key[len(p) :] for p in prefixes]:
            if candidate in spec.enum.__members__ and candidate != "UNSPECIFIED":
                return int(spec.enum[candidate])
        allowed = ", ".join(m for m in spec.enum.__members__ if m != "UNSPECIFIED")
        raise _bad_filter(f"field {name!r} needs one of {allowed}")
    if spec.kind is Kind.TIME:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise _bad_filter(f"field {name!r} needs an RFC 3339 time, got {text!r}") from None
        if moment.tzinfo is None:
            raise _bad_filter(f"field {name!r}: the time needs a zone (e.g. Z)")
        return int(moment.timestamp() * 1_000_000)
    if spec.kind is Kind.REF:
        assert spec.parse is not None
        try:
            return spec.parse(text)
        except InvalidArgument as exc:
            raise _bad_filter(f"field {name!r}: {exc.violations[0].description}") from None
    if len(text) > 1024:
        raise _bad_filter(f"field {name!r}: value longer than 1024 characters")
    return text


def parse_filter(text: str, specs: Mapping[str, FieldSpec]) -> list[Term]:
    """An AIP-160 filter -> the terms all of which must hold; every field must be known.

    filter      = conjunction
    conjunction = disjunction {AND disjunction}
    disjunction = term {OR term}          (OR binds tighter than AND, as AIP-160 says:
    term        = [NOT | -] simple         `a AND b OR c` is `a AND (b OR c)`)
    simple      = "(" conjunction ")" | field operator value

    At most MAX_FILTER_LEN characters, MAX_CONDITIONS comparisons and MAX_DEPTH nested
    parentheses, so recursion and the SQL built from a filter stay small."""
    if not text.strip():
        return []
    if len(text) > MAX_FILTER_LEN:
        raise _bad_filter(f"longer than {MAX_FILTER_LEN} characters")
    tokens = _tokens(text)
    flat = _comparisons_joined_by_and(tokens, specs)
    if flat is not None:
        return flat
    parser = _Parser(tokens, specs)
    terms = parser.conjunction(0)
    if parser.i < len(parser.tokens):
        kind, token, at = parser.tokens[parser.i]
        if kind == "paren" and token == ")":
            raise _bad_filter(f"unmatched ')' at offset {at}")
        raise _bad_filter(f"expected AND or OR at offset {at}, got {token!r}")
    return terms


def _comparisons_joined_by_and(tokens: list[Token], specs: Mapping[str, FieldSpec]) -> list[Term] | None:
    """The common filter, `a >= 1 AND b = "x"`, read without the general parser's calls (as fast
    as before OR and NOT); None for anything else, which the general parser reads (or refuses, with
    the same errors: values are converted left to right by both)."""
    conditions: list[Term] = []
    n = len(tokens)
    i = 0
    while True:
        if i + 3 > n:
            return None
        (k_field, name, _), (k_op, op, _), (k_val, raw, _) = tokens[i : i + 3]
        if k_field != "word" or k_op != "op" or (k_val != "word" and k_val != "str"):
            return None
        spec = specs.get(name)  # never a keyword, nor `-field`
        if spec is None or len(conditions) == MAX_CONDITIONS:
            return None
        conditions.append(Condition(name, op, _convert(spec, name, op, k_val, raw)))
        i += 3
        if i == n:
            return conditions
        k_and, word, _ = tokens[i]
        if k_and != "word" or word.upper() != "AND":
            return None
        i += 1


class _Parser:
    """Recursive descent over the tokens; the depth of recursion is bounded by MAX_DEPTH."""

    __slots__ = ("count", "i", "specs", "tokens")

    def __init__(self, tokens: list[Token], specs: Mapping[str, FieldSpec]):
        self.tokens = tokens
        self.specs = specs
        self.i = 0
        self.count = 0

    def _keyword(self) -> str:
        """The keyword at the current token (upper case), or ""."""
        if self.i < len(self.tokens):
            kind, token, _ = self.tokens[self.i]
            if kind == "word" and len(token) <= 3:
                word = token.upper()
                if word in _KEYWORDS:
                    return word
        return ""

    def _expected(self, what: str) -> InvalidArgument:
        if self.i >= len(self.tokens):
            return _bad_filter(f"expected {what} at the end of the filter")
        _, token, at = self.tokens[self.i]
        return _bad_filter(f"expected {what} at offset {at}, got {token!r}")

    def conjunction(self, depth: int) -> list[Term]:
        terms: list[Term] = []
        while True:
            term = self.disjunction(depth)
            if isinstance(term, And):
                terms.extend(term.terms)
            else:
                terms.append(term)
            if self._keyword() != "AND":
                return terms
            self.i += 1

    def disjunction(self, depth: int) -> Term:
        first = self.term(depth)
        if self._keyword() != "OR":
            return first
        alternatives: list[Term] = list(first.terms) if isinstance(first, Or) else [first]
        while self._keyword() == "OR":
            self.i += 1
            term = self.term(depth)
            if isinstance(term, Or):
                alternatives.extend(term.terms)
            else:
                alternatives.append(term)
        return Or(tuple(alternatives))

    def term(self, depth: int) -> Term:
        tokens = self.tokens
        negate = False
        if self.i < len(tokens):
            kind, token, at = tokens[self.i]
            if kind == "word" and token[0] in "Nn-":
                if token.upper() == "NOT":
                    negate = True
                    self.i += 1
                elif token[0] == "-":  # AIP-160's `-field = 1` / `-(...)`
                    negate = True
                    if token == "-":
                        self.i += 1
                    else:
                        tokens[self.i] = ("word", token[1:], at + 1)
        term = self.simple(depth)
        return Not(term) if negate else term

    def simple(self, depth: int) -> Term:
        tokens = self.tokens
        if self.i >= len(tokens):
            raise self._expected("a comparison")
        kind, token, at = tokens[self.i]
        if kind != "paren":
            return self.comparison()
        if token == ")":
            raise self._expected("a comparison")
        if depth >= MAX_DEPTH:
            raise _bad_filter(f"parentheses nested deeper than {MAX_DEPTH} at offset {at}")
        self.i += 1
        terms = self.conjunction(depth + 1)
        if self.i >= len(tokens):
            raise _bad_filter(f"unclosed '(' at offset {at}")
        if tokens[self.i][:2] != ("paren", ")"):
            raise self._expected(f"')' closing the '(' at offset {at}, or AND or OR")
        self.i += 1
        return terms[0] if len(terms) == 1 else And(tuple(terms))

    def comparison(self) -> Condition:
        tokens = self.tokens
        i = self.i
        kind, name, at = tokens[i]
        if kind != "word" or name.upper() in _KEYWORDS:
            raise self._expected("a comparison 'field operator value'")
        if i + 1 >= len(tokens) or tokens[i + 1][0] != "op":
            self.i = i + 1
            raise self._expected(f"an operator after {name!r}")
        op = tokens[i + 1][1]
        if i + 2 >= len(tokens) or tokens[i + 2][0] not in ("word", "str"):
            self.i = i + 2
            raise self._expected(f"a value after {name!r} {op}")
        k_val, raw, _ = tokens[i + 2]
        spec = self.specs.get(name)
        if spec is None:
            known = ", ".join(sorted(self.specs))
            raise _bad_filter(f"unknown field {name!r} at offset {at}; known fields: {known}")
        self.count += 1
        if self.count > MAX_CONDITIONS:
            raise _bad_filter(f"at most {MAX_CONDITIONS} comparisons (offset {at})")
        self.i = i + 3
        return Condition(name, op, _convert(spec, name, op, k_val, raw))


_COMPARE: dict[str, Callable[[Any, Any], object]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def matches(terms: Sequence[Term], value_of: Callable[[str], object]) -> bool:
    """Whether a record whose fields `value_of` gives passes the filter, as the SQL decides: a
    comparison with a field that has no value (None) is false, and NOT of it true."""
    return all(_holds(t, value_of) for t in terms)


def _holds(term: Term, value_of: Callable[[str], object]) -> bool:
    if isinstance(term, Condition):
        value = value_of(term.field)
        return value is not None and bool(_COMPARE[term.op](value, term.value))
    if isinstance(term, Not):
        return not _holds(term.term, value_of)
    if isinstance(term, Or):
        return any(_holds(t, value_of) for t in term.terms)
    return all(_holds(t, value_of) for t in term.terms)


def fields_of(terms: Sequence[Term]) -> Iterator[str]:
    """Every field the filter compares (with repeats)."""
    for term in terms:
        if isinstance(term, Condition):
            yield term.field
        elif isinstance(term, Not):
            yield from fields_of((term.term,))
        else:
            yield from fields_of(term.terms)


def parse_order_by(text: str, specs: Mapping[str, FieldSpec], default: Sequence[OrderKey]) -> list[OrderKey]:
    if not text.strip():
        return list(default)
    keys: list[OrderKey] = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise InvalidArgument.single(
                "order_by", f"cannot parse {part.strip()!r}; use 'field [desc]'", reason="INVALID_ORDER_BY"
            )
        spec = specs.get(words[0])
        if spec is None or not spec.sortable:
            sortable = ", ".join(sorted(k for k, s in specs.items() if s.sortable))
            raise InvalidArgument.single(
                "order_by", f"cannot sort on {words[0]!r}; sortable: {sortable}", reason="INVALID_ORDER_BY"
            )
        if any(k.field == words[0] for k in keys):
            raise InvalidArgument.single("order_by", f"{words[0]!r} given twice", reason="INVALID_ORDER_BY")
        keys.append(OrderKey(words[0], len(words) == 2 and words[1].lower() == "desc"))
    return keys


def fingerprint(*parts: object) -> str:
    """What a page token is bound to: the method and every request field but page_size/page_token."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PageTokens:
    """Opaque tokens: the keyset of the last row, bound to the query and signed with HMAC-SHA256 by
    the database's current page-token key; any key of its set is accepted (page_keys.py)."""

    def __init__(self, keys: bytes | Sequence[PageKey]):
        self.use((PageKey(keys, 0),) if isinstance(keys, bytes) else keys)

    def use(self, keys: Sequence[PageKey]) -> None:
        """Sign and check with `keys` from now on (a reloaded set)."""
        self.keys = tuple(keys)
        self._accepted = tuple(k.key for k in self.keys)
        self._signing = b""
        self._next_switch_us = -1  # re-chosen at the next encode

    def _signing_key(self) -> bytes:
        now = time.time_ns() // 1000
        if now >= self._next_switch_us:
            self._signing = signing_key(self.keys, now).key
            later = [k.signs_from_us for k in self.keys if k.signs_from_us > now]
            self._next_switch_us = min(later) if later else 1 << 62
        return self._signing

    @staticmethod
    def _mac(key: bytes, body: bytes) -> bytes:
        return hmac.new(key, body, hashlib.sha256).digest()[:16]

    def encode(self, after: Sequence[object], query: str) -> str:
        body = json.dumps({"a": list(after), "q": query}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._mac(self._signing_key(), body) + body).decode().rstrip("=")

    def decode(self, token: str, query: str) -> list[object] | None:
        if not token:
            return None
        bad = InvalidArgument.single("page_token", "invalid page token", reason="INVALID_PAGE_TOKEN")
        if len(token) > 4096:
            raise bad
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raise bad from None
        mac, body = raw[:16], raw[16:]
        if len(mac) != 16 or not any(hmac.compare_digest(mac, self._mac(key, body)) for key in self._accepted):
            raise bad
        try:
            data = json.loads(body)
        except ValueError:
            raise bad from None
        if not isinstance(data, dict):
            raise bad
        if data.get("q") != query:
            raise InvalidArgument.single(
                "page_token",
                "the page token was issued for a different query: keep filter and order_by unchanged while paging",
                reason="INVALID_PAGE_TOKEN",
            )
        after = data.get("a")
        if not isinstance(after, list):
            raise bad
        return after

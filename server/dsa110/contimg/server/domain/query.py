"""The list query language: AIP-160 filter subset, AIP-132 order_by, opaque signed page tokens.

Parsing and validation live here; turning a parsed query into SQL is the storage layer's job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, IntEnum

from .errors import InvalidArgument
from .page_keys import PageKey, signing_key

MAX_FILTER_LEN = 2048
MAX_CONDITIONS = 32


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
class OrderKey:
    field: str
    desc: bool


_TOKEN = re.compile(r"""\s*(?:(?P<op><=|>=|!=|=|<|>)|(?P<str>"(?:[^"\\]|\\.)*")|(?P<word>[A-Za-z0-9_.:+\-]+))""")


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise _bad_filter(f"unexpected character {text[pos:].lstrip()[:1]!r} at offset {pos}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
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


def parse_filter(text: str, specs: Mapping[str, FieldSpec]) -> list[Condition]:
    """`a >= 1 AND b = "x"` -> conditions. Only conjunctions; every field must be known."""
    if not text.strip():
        return []
    if len(text) > MAX_FILTER_LEN:
        raise _bad_filter(f"longer than {MAX_FILTER_LEN} characters")
    tokens = _tokens(text)
    conditions: list[Condition] = []
    i = 0
    while True:
        if i + 3 > len(tokens):
            raise _bad_filter("expected 'field operator value'")
        (k_field, name), (k_op, op), (k_val, raw) = tokens[i : i + 3]
        if k_field != "word" or k_op != "op" or k_val == "op":
            raise _bad_filter("expected 'field operator value'")
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(sorted(specs))
            raise _bad_filter(f"unknown field {name!r}; known fields: {known}")
        conditions.append(Condition(name, op, _convert(spec, name, op, k_val, raw)))
        i += 3
        if i == len(tokens):
            break
        if tokens[i] != ("word", "AND") and tokens[i][1].upper() != "AND":
            raise _bad_filter(f"expected AND, got {tokens[i][1]!r} (only conjunctions are supported)")
        i += 1
        if len(conditions) >= MAX_CONDITIONS:
            raise _bad_filter(f"at most {MAX_CONDITIONS} conditions")
    return conditions


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

"""Request plumbing shared by every servicer: list queries, page tokens, idempotency keys."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

from ..domain.checks import Checker, page_size
from ..domain.errors import InvalidArgument
from ..domain.page_keys import PageKey
from ..domain.query import FieldSpec, OrderKey, PageTokens, fingerprint, parse_filter, parse_order_by
from ..domain.records import Page
from ..domain.validation import MAX_BATCH_GET, check_request_id
from ..repositories.protocols import Idempotency, ListQuery
from .encoded import Encoded, field_bytes, page

M = TypeVar("M", bound=Message)
T = TypeVar("T")
K = TypeVar("K")

# A List/Search request parsed: its query and the fingerprint its page tokens are bound to.
Planned = tuple[ListQuery, str]
MAX_PAGE_SIZE = 1000
# Searches' pages are smaller: every page of a search at a new position is built from scratch (its
# items are rarely cached), and 1,000 sources cost ~40 ms of Python each; eight callers asking for
# such pages back to back took GetImage's p99 into the hundreds of ms.
SEARCH_MAX_PAGE_SIZE = 100


class Paging:
    """Builds ListQuery objects from List/Search requests and signs their next page tokens."""

    def __init__(self, keys: Sequence[PageKey]):
        self.tokens = PageTokens(keys)

    def query(
        self,
        method: str,
        request: Any,
        specs: Mapping[str, FieldSpec],
        default_order: Sequence[OrderKey],
        *,
        bound_to: Sequence[object] = (),
        sortable: bool = True,
        checks: Checker | None = None,
        max_page_size: int = MAX_PAGE_SIZE,
    ) -> Planned:
        """The request's query; `checks` holds violations the caller found in its other fields,
        raised together with any of the query's own. A larger page_size than `max_page_size` is
        coerced to it (AIP-158)."""
        if checks is None or not checks.violations:
            try:
                return self._plan(method, request, specs, default_order, bound_to, sortable, max_page_size)
            except InvalidArgument:
                pass
        # Something is wrong: parse each field on its own so the error names every bad one.
        c = checks or Checker()
        c.parsed(parse_filter, request.filter, specs)
        if sortable:
            c.parsed(parse_order_by, request.order_by, specs, default_order)
        if not c.violations:  # a token is bound to every other field but page_size: judged only when they are valid
            fp = fingerprint(method, request.filter, request.order_by if sortable else "", *bound_to)
            c.parsed(self.tokens.decode, request.page_token, fp)
        c.parsed(page_size, request.page_size)
        c.raise_if_any()
        return self._plan(method, request, specs, default_order, bound_to, sortable, max_page_size)

    def _plan(
        self,
        method: str,
        request: Any,
        specs: Mapping[str, FieldSpec],
        default_order: Sequence[OrderKey],
        bound_to: Sequence[object],
        sortable: bool,
        max_page_size: int,
    ) -> Planned:
        size = page_size(request.page_size, maximum=max_page_size)
        conditions = parse_filter(request.filter, specs)
        order = parse_order_by(request.order_by, specs, default_order) if sortable else []
        fp = fingerprint(method, request.filter, request.order_by if sortable else "", *bound_to)
        after = self.tokens.decode(request.page_token, fp)
        return ListQuery(conditions, order, size, after), fp

    def next_token(self, page: Page[Any], fp: str) -> str:
        return self.tokens.encode(page.next_after, fp) if page.next_after is not None else ""


async def list_reply(
    paging: Paging,
    method: str,
    request: Any,
    specs: Mapping[str, FieldSpec],
    default_order: Sequence[OrderKey],
    list_page: Callable[[ListQuery], Awaitable[Page[T]]],
    items: Callable[[list[T]], Awaitable[list[bytes]]],
    response: type[M],
) -> Encoded[M]:
    """A List reply: the framed bytes `items` gives for a page's items (field 1 of `response`), the
    next page token and the total."""
    query, fp = paging.query(method, request, specs, default_order)
    found = await list_page(query)
    return page(response, await items(found.items), paging.next_token(found, fp), found.total_size)


def framed(to_proto: Callable[[T], Message]) -> Callable[[list[T]], Awaitable[list[bytes]]]:
    """`list_reply` items built as messages, each framed as field 1."""

    async def items(records: list[T]) -> list[bytes]:
        return [field_bytes(1, to_proto(r).SerializeToString()) for r in records]

    return items


def idempotency(method: str, request: Message, c: Checker) -> Idempotency | None:
    """The request's idempotency key; a malformed request_id is added to `c`, which the caller
    raises (with the request's other violations). None when there is no key or `c` holds violations."""
    request_id: str = getattr(request, "request_id", "")
    if not request_id:
        return None
    check_request_id(request_id, c)
    if c.violations:  # the call fails: no need to fingerprint it
        return None
    body = type(request)()
    body.CopyFrom(request)
    body.ClearField("request_id")  # type: ignore[arg-type]
    digest = hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()
    return Idempotency(request_id, method, digest)


def batch_keys(names: Sequence[str], parse: Callable[[str, str], K]) -> list[K]:
    """The keys of a BatchGet request's `names`; on failure every malformed name is reported
    (the first 100 of them), not only the first."""
    count_ok = 1 <= len(names) <= MAX_BATCH_GET
    if count_ok:
        try:
            return [parse(n, f"names[{i}]") for i, n in enumerate(names)]
        except InvalidArgument:
            pass
    c = Checker()
    if not count_ok:
        c.add("names", f"must contain between 1 and {MAX_BATCH_GET} names")
    for i, n in enumerate(names[:MAX_BATCH_GET]):
        if len(c.violations) >= 100:
            break
        c.parsed(parse, n, f"names[{i}]")
    c.raise_if_any()
    raise AssertionError("unreachable: a name failed to parse")


def require(request: Message, field: str, c: Checker) -> bool:
    """Whether the message field is set; if not, its violation goes to `c`."""
    if request.HasField(field):
        return True
    c.add(field, "required")
    return False

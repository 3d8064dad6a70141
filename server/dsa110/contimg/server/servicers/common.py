"""Request plumbing shared by every servicer: list queries, page tokens, idempotency keys."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

from ..domain.checks import Checker, page_size
from ..domain.errors import InvalidArgument
from ..domain.query import FieldSpec, OrderKey, PageTokens, fingerprint, parse_filter, parse_order_by
from ..domain.records import Page
from ..domain.validation import MAX_BATCH_GET, check_request_id
from ..repositories.protocols import Idempotency, ListQuery
from .encoded import Encoded, reply_size
from .memo import ReplyMemo

M = TypeVar("M", bound=Message)
T = TypeVar("T")

# A List/Search request parsed: its query and the fingerprint its page tokens are bound to.
Planned = tuple[ListQuery, str]


class Paging:
    """Builds ListQuery objects from List/Search requests and signs their next page tokens."""

    def __init__(self, secret: bytes):
        self.tokens = PageTokens(secret)

    def query(
        self,
        method: str,
        request: Any,
        specs: Mapping[str, FieldSpec],
        default_order: Sequence[OrderKey],
        *,
        bound_to: Sequence[object] = (),
        sortable: bool = True,
    ) -> Planned:
        size = page_size(request.page_size)
        conditions = parse_filter(request.filter, specs)
        order = parse_order_by(request.order_by, specs, default_order) if sortable else []
        fp = fingerprint(method, request.filter, request.order_by if sortable else "", *bound_to)
        after = self.tokens.decode(request.page_token, fp)
        return ListQuery(conditions, order, size, after), fp

    def next_token(self, page: Page[Any], fp: str) -> str:
        return self.tokens.encode(page.next_after, fp) if page.next_after is not None else ""


async def message_page(
    replies: ReplyMemo,
    paging: Paging,
    method: str,
    request: Any,
    specs: Mapping[str, FieldSpec],
    default_order: Sequence[OrderKey],
    list_page: Callable[[ListQuery], Awaitable[Page[T]]],
    response: type[M],
    to_proto: Callable[[T], Message],
) -> Encoded[M]:
    """A List reply whose items are built as messages (field 1 of `response`), reused while the
    repository returns the same page (servicers/memo.py)."""

    def plan() -> Planned:
        return paging.query(method, request, specs, default_order)

    async def build(planned: Planned, page: Page[T]) -> Encoded[M]:
        reply = response()
        getattr(reply, response.DESCRIPTOR.fields_by_number[1].name).extend([to_proto(i) for i in page.items])
        reply.next_page_token = paging.next_token(page, planned[1])  # type: ignore[attr-defined]
        reply.total_size = page.total_size  # type: ignore[attr-defined]
        return Encoded(response, reply.SerializeToString())

    key = (method, request.SerializeToString())
    return await replies.reply(key, plan, lambda p: list_page(p[0]), build, reply_size)


def idempotency(method: str, request: Message) -> Idempotency | None:
    request_id: str = getattr(request, "request_id", "")
    if not request_id:
        return None
    c = Checker()
    check_request_id(request_id, c)
    c.raise_if_any()
    body = type(request)()
    body.CopyFrom(request)
    body.ClearField("request_id")  # type: ignore[arg-type]
    digest = hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()
    return Idempotency(request_id, method, digest)


def batch_names(names: Sequence[str]) -> None:
    if not 1 <= len(names) <= MAX_BATCH_GET:
        raise InvalidArgument.single("names", f"must contain between 1 and {MAX_BATCH_GET} names")


def require(request: Message, field: str) -> None:
    if not request.HasField(field):
        raise InvalidArgument.single(field, "required")

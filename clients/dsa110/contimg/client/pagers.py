"""Pagers: iterate every item of a List/Search RPC, fetching pages on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from typing import Generic, Protocol, TypeVar


class Page(Protocol):
    """What every List/Search response has in common."""

    @property
    def next_page_token(self) -> str: ...
    @property
    def total_size(self) -> int: ...


PageT = TypeVar("PageT", bound=Page)
ItemT = TypeVar("ItemT")


class Pager(Generic[PageT, ItemT]):
    """`for item in pager` walks all items; `pager.pages` yields the raw responses.

    The first page is fetched on first use and kept, so reading `total_size` before iterating
    costs no extra call. Iterating again starts over (from the kept first page).
    """

    def __init__(self, fetch: Callable[[str], PageT], items: Callable[[PageT], Sequence[ItemT]]) -> None:
        self._fetch = fetch
        self._items = items
        self._first: PageT | None = None

    @property
    def first_page(self) -> PageT:
        if self._first is None:
            self._first = self._fetch("")
        return self._first

    @property
    def total_size(self) -> int:
        return self.first_page.total_size

    @property
    def pages(self) -> Iterator[PageT]:
        page = self.first_page
        yield page
        while page.next_page_token:
            page = self._fetch(page.next_page_token)
            yield page

    def __iter__(self) -> Iterator[ItemT]:
        for page in self.pages:
            yield from self._items(page)


class AsyncPager(Generic[PageT, ItemT]):
    """`async for item in pager` walks all items; `pager.pages` yields the raw responses.

    `total_size` needs the first page: `pager = await client.list_images(...)` fetches it (and
    returns the pager), as does starting an iteration.
    """

    def __init__(self, fetch: Callable[[str], Awaitable[PageT]], items: Callable[[PageT], Sequence[ItemT]]) -> None:
        self._fetch = fetch
        self._items = items
        self._first: PageT | None = None

    async def fetch_first_page(self) -> PageT:
        if self._first is None:
            self._first = await self._fetch("")
        return self._first

    @property
    def first_page(self) -> PageT:
        if self._first is None:
            raise RuntimeError("the first page was not fetched yet: await the pager first")
        return self._first

    @property
    def total_size(self) -> int:
        return self.first_page.total_size

    def __await__(self) -> Generator[object, None, AsyncPager[PageT, ItemT]]:
        return self._ready().__await__()

    async def _ready(self) -> AsyncPager[PageT, ItemT]:
        await self.fetch_first_page()
        return self

    @property
    def pages(self) -> AsyncIterator[PageT]:
        return self._pages()

    async def _pages(self) -> AsyncIterator[PageT]:
        page = await self.fetch_first_page()
        yield page
        while page.next_page_token:
            page = await self._fetch(page.next_page_token)
            yield page

    async def __aiter__(self) -> AsyncIterator[ItemT]:
        async for page in self._pages():
            for item in self._items(page):
                yield item

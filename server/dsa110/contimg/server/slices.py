"""Python work over many items, done in slices with a turn of the event loop between them.

Every RPC shares one event loop. A List or Search of 1,000 items converts and encodes 1,000 records
in Python (~30 ms when none is cached); done in one go, every other call waits for it, and eight
callers asking for wide cones back to back held GetImage's p99 in the hundreds of ms. In slices of
`SLICE` items, a call waiting behind them waits for one slice (~3 ms), not the whole reply. A small
page (<= SLICE) costs a length check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

SLICE = 128


async def map_in_slices(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`[fn(x) for x in items]`, yielding to the event loop between slices."""
    if len(items) <= SLICE:
        return [fn(x) for x in items]
    out: list[R] = []
    for start in range(0, len(items), SLICE):
        if start:
            await asyncio.sleep(0)
        out.extend([fn(x) for x in items[start : start + SLICE]])
    return out

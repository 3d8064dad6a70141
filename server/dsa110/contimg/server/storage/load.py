"""What an engine's storage is doing now, for the metrics (metrics.py): read by a sampler, never pushed.

Both engines fill the same shapes: writes taken and not yet committed, readers busy, and each
commit's duration and how many writes it carried (SQLite commits queued writes in groups:
writer.py; PostgreSQL commits each write alone, a group of 1).
"""

from __future__ import annotations

from dataclasses import dataclass

# Commits kept between two samples, at most (the sampler takes them every second).
MAX_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class Load:
    writes_pending: int  # taken by the storage, not yet committed (SQLite: the writer's queue)
    readers_in_use: int
    readers: int


class CommitLog:
    """(seconds, writes in the commit) of each commit since the last `take`, kept only once someone
    takes them (the metrics are on): with nobody taking, `add` is one attribute test."""

    __slots__ = ("_kept", "enabled")

    def __init__(self) -> None:
        self.enabled = False
        self._kept: list[tuple[float, int]] = []

    def add(self, seconds: float, writes: int) -> None:
        if self.enabled and len(self._kept) < MAX_KEPT:
            self._kept.append((seconds, writes))

    def take(self) -> list[tuple[float, int]]:
        self.enabled = True
        kept, self._kept = self._kept, []
        return kept

"""Cone search latency on PostgreSQL in process: PostgresSources.search, q3c's index against the GiST boxes.

    python bench/postgres_cone.py --database postgresql://postgres@127.0.0.1/DB [--radius 1] [--calls 1000]

Runs on a database already holding sources (e.g. `contimg-server copy-data` of a bench/run.py
database: 1,000,001 sources), opened twice in this process: once finding candidates through q3c's
index (made at open if the server has the extension), once with the off switch
(PostgresSettings.q3c = False, the GiST index over point(ra_deg, dec_deg)). One caller, one call at
a time, the two paths interleaved in rounds; page_size 100, as SearchSources' largest page.

Two workloads: the same cone again and again (bench/run.py's "SearchSources r=1 deg, 1 caller":
centred on the most-detected source), and a different cone each call, centred on a random source
(as a user browsing the sky). Each call's answer is checked to be the same on both paths.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from dsa110.contimg.server.repositories.protocols import ListQuery
from dsa110.contimg.server.storage.postgres.database import Database, PostgresSettings
from dsa110.contimg.server.storage.postgres.sources import PostgresSources

Cone = tuple[float, float, float]


async def timed(repo: PostgresSources, cones: list[Cone]) -> tuple[list[float], list[list[str]]]:
    """Milliseconds per call, and each call's ids."""
    took, answers = [], []
    for ra, dec, radius in cones:
        start = time.perf_counter()
        page = await repo.search(ra, dec, radius, ListQuery([], [], 100, None))
        took.append((time.perf_counter() - start) * 1000.0)
        answers.append([m.item.id for m in page.items])
    return took, answers


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main_async(url: str, radius: float, calls: int, rounds: int) -> None:
    q3c_db = Database(PostgresSettings(url, pool_min=1, pool_max=2, q3c=True))
    box_db = Database(PostgresSettings(url, pool_min=1, pool_max=2, q3c=False))
    await q3c_db.open()
    await box_db.open()
    try:
        if not q3c_db.q3c:
            raise SystemExit("the database has no q3c index (is postgresql-15-q3c installed?)")
        paths = {"q3c": PostgresSources(q3c_db), "GiST boxes": PostgresSources(box_db)}
        n = await q3c_db.fetchval("SELECT count(*) FROM sources")
        top = await q3c_db.fetchrow("SELECT ra_deg, dec_deg FROM sources ORDER BY detection_count DESC LIMIT 1")
        assert top is not None, "the database holds no sources"
        ra, dec = top
        rng = random.Random(7)
        picks = await q3c_db.fetch(
            "SELECT ra_deg, dec_deg FROM sources WHERE sid = ANY($1::bigint[])",
            [rng.randrange(1, n + 1) for _ in range(calls)],
        )
        workloads = {
            "same cone": [(ra, dec, radius)] * calls,
            "random cones": [(r[0], r[1], radius) for r in picks],
        }
        hits = await paths["q3c"].search(ra, dec, radius, ListQuery([], [], 100, None))
        print(f"{n:,} sources; the same cone: ({ra:.4f}, {dec:.4f}) r={radius} holds {hits.total_size:,}")
        for name, cones in workloads.items():
            await timed(paths["q3c"], cones[:50])  # warm: connections, statements, pages
            await timed(paths["GiST boxes"], cones[:50])
            took: dict[str, list[float]] = {p: [] for p in paths}
            for _ in range(rounds):
                answers = {}
                for path, repo in paths.items():
                    ms, answers[path] = await timed(repo, cones)
                    took[path] += ms
                assert answers["q3c"] == answers["GiST boxes"], "the two paths answered differently"
            for path, ms in took.items():
                print(
                    f"{name}, {path}: p50 {statistics.median(ms):.2f} ms, p90 {pct(ms, 0.9):.2f}, "
                    f"p99 {pct(ms, 0.99):.2f} ({len(ms)} calls)",
                    flush=True,
                )
    finally:
        await q3c_db.close()
        await box_db.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database", required=True, help="postgresql://... of a database holding sources")
    p.add_argument("--radius", type=float, default=1.0)
    p.add_argument("--calls", type=int, default=1000, help="calls per path per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    asyncio.run(main_async(args.database, args.radius, args.calls, args.rounds))


if __name__ == "__main__":
    main()

"""RecordPhotometry under two server configurations, interleaved: rows/s and server CPU us/row.

    python bench/ingest_ab.py --data-dir /tmp/b100k --rounds 4 --a=--write-process --b=--no-write-process
    git worktree add /tmp/old HEAD~3 && python bench/ingest_ab.py --data-dir /tmp/new --b= --b-checkout /tmp/old \
        --b-data-dir /tmp/old-data   # two copies of one database if the checkouts' schemas differ

Each round starts the server once per configuration (order alternating between rounds, so a drift
in the machine's speed falls on both) and runs bench/run.py's ingest cases on it: 1,000-row batches
from 64 writers as messages and as columns, and from 4 writers as columns. The database must
already hold demo data (bench/run.py --data-dir seeds it); each round adds its batches to it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
from pathlib import Path

import run

CASES = ((False, 64, 256), (True, 64, 256), (True, 4, 40))  # (columns, writers, batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--a", default="--write-process", help="server flags of configuration A")
    p.add_argument("--b", default="--no-write-process", help="server flags of configuration B")
    p.add_argument(
        "--b-checkout",
        type=Path,
        help="run B's server from this checkout of the repository (its source roots first on PYTHONPATH)",
    )
    p.add_argument("--b-data-dir", type=Path, help="B's database, if not --data-dir's")
    args = p.parse_args()
    data_dirs = {"A": args.data_dir, "B": args.b_data_dir or args.data_dir}
    configs = {"A": shlex.split(args.a), "B": shlex.split(args.b)}
    envs: dict[str, dict[str, str] | None] = {"A": None, "B": None}
    if args.b_checkout is not None:
        roots = [str(args.b_checkout.resolve() / d) for d in ("server", "generated", "clients")]
        path = [*roots, os.environ.get("PYTHONPATH", "")]
        envs["B"] = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    results: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
            port = run.free_port()
            proc = run.start(run.serve_cmd(data_dirs[name], port, *configs[name]), port, env=envs[name])
            try:
                line = []
                for i, (columnar, writers, batches) in enumerate(CASES):
                    res = asyncio.run(run.ingest(port, proc.pid, 1000, batches, writers, columnar))
                    results.setdefault((name, i), []).append(res["rows_per_s"])
                    line.append(
                        f"{'columns' if columnar else 'messages'} x{writers}: "
                        f"{res['rows_per_s']:,.0f} rows/s ({res['cpu_us_per_row']:.1f} us/row)"
                    )
                print(f"round {r} {name} {' '.join(configs[name])}: " + " | ".join(line), flush=True)
            finally:
                proc.terminate()
                proc.wait()
    for i, (columnar, writers, _) in enumerate(CASES):
        a, b = statistics.mean(results[("A", i)]), statistics.mean(results[("B", i)])
        print(
            f"{'columns' if columnar else 'messages'} x{writers}: A {a:,.0f} vs B {b:,.0f} rows/s "
            f"({(a / b - 1) * 100:+.0f} %)"
        )


if __name__ == "__main__":
    main()
